"""The rule registry: EXACT rules and APPROXIMATE rules, in their default order.

Order matters: identities go first (they hide BN/activation pairs), BN folding before
activation fusion (conv-BN-ReLU must fold the BN before the ReLU can join the conv), and
horizontal fusion last, once parallel convs carry their activations.
"""

from rewrites.fold_batchnorm import FoldBatchNorm
from rewrites.fuse_horizontal import FuseHorizontal
from rewrites.fuse_vertical import FuseVertical
from rewrites.merge_branches import MergeBranches
from rewrites.pool_to_conv import PoolToConv
from rewrites.remove_identity import RemoveIdentity

EXACT = [RemoveIdentity, FoldBatchNorm, MergeBranches, PoolToConv, FuseVertical, FuseHorizontal]

__all__ = ["EXACT", "FoldBatchNorm", "FuseHorizontal", "FuseVertical", "MergeBranches",
           "PoolToConv", "RemoveIdentity"]
