"""The cost model: multiply-accumulates per node at batch 1, from config and weight shapes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from kopt.ir.ops import (
    CONV_OPS,
    DEPTHWISE_OPS,
    SEPARABLE_OPS,
    TENSOR_OPS,
    TRANSPOSE_OPS,
)

if TYPE_CHECKING:
    from kopt.ir.graph import Graph
    from kopt.ir.node import Node


def _spatial(shape: tuple) -> int:
    return math.prod(d for d in shape[1:-1] if d is not None)


def node_macs(g: Graph, node: Node) -> int:
    """Multiply-accumulates for one node at batch 1 (0 for ops that are not tensor ops)."""
    op, cfg, w = node.op, node.config, node.weights
    if op not in TENSOR_OPS or not node.output_shapes:
        return 0
    out = node.output_shapes[0]
    if op in CONV_OPS:
        return _spatial(out) * w["kernel"].size
    if op in DEPTHWISE_OPS:
        return _spatial(out) * w["kernel"].size
    if op in SEPARABLE_OPS:
        return _spatial(out) * (w["depthwise_kernel"].size + w["pointwise_kernel"].size)
    if op in TRANSPOSE_OPS:
        return _spatial(g.input_shapes(node.name)[0]) * w["kernel"].size
    if op == "Dense":
        rows = math.prod(d for d in out[1:-1] if d is not None)
        return rows * w["kernel"].size
    if op == "EinsumDense":  # each output element contracts kernel.size / (output-side dims)
        kernel = w["kernel"]
        out_elems = math.prod(d for d in out[1:] if d is not None)
        return out_elems * max(1, kernel.size // max(1, math.prod(out[-1:])))
    if op in ("MultiHeadAttention", "GroupedQueryAttention"):
        q_shape = g.input_shapes(node.name)[0]
        seq = math.prod(d for d in q_shape[1:-1] if d is not None)
        proj = sum(v.size for k, v in w.items() if k.endswith("kernel"))
        heads = cfg.get("num_heads", 1) * cfg.get("key_dim", 1)
        return seq * proj + 2 * seq * seq * heads
    return 0
