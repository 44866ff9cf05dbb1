"""The rule registry: EXACT rules and APPROXIMATE rules, in their default order.

Order matters: identities go first (they hide BN/activation pairs), BN folding before
activation fusion (conv-BN-ReLU must fold the BN before the ReLU can join the conv), and
horizontal fusion last, once parallel convs carry their activations.
"""

from rewrites.fold_batchnorm import FoldBatchNorm
from rewrites.fuse_horizontal import FuseHorizontal
from rewrites.fuse_vertical import FuseVertical
from rewrites.maxpool_to_conv import MaxPoolToConv
from rewrites.merge_branches import MergeBranches
from rewrites.merge_inception import MergeInception
from rewrites.pool_to_conv import PoolToConv
from rewrites.prune_entropy import PruneEntropy
from rewrites.remove_identity import RemoveIdentity
from rewrites.svd_dense import SvdDense
from rewrites.svd_spatial import SvdSpatial

EXACT = [RemoveIdentity, FoldBatchNorm, MergeBranches, PoolToConv, FuseVertical, FuseHorizontal]
# Approximate rules need calibration data (constructor arguments) and retraining afterwards.
# SvdDense runs after the exact fusions: fuse_vertical would multiply its two factors back.
APPROXIMATE = [MergeInception, MaxPoolToConv, PruneEntropy, SvdDense, SvdSpatial]

__all__ = ["APPROXIMATE", "EXACT", "FoldBatchNorm", "FuseHorizontal", "FuseVertical",
           "MaxPoolToConv", "MergeBranches", "MergeInception", "PoolToConv", "PruneEntropy",
           "RemoveIdentity", "SvdDense", "SvdSpatial"]
