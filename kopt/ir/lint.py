"""Invariants of a node's weights: the shapes its config and input imply (what lint checks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kopt.errors import GraphLintError
from kopt.ir.ops import (
    CONV_OPS,
    DEPTHWISE_OPS,
    SEPARABLE_OPS,
    TRANSPOSE_OPS,
    channels_last,
    single_axis,
)

if TYPE_CHECKING:
    from kopt.ir.graph import Graph
    from kopt.ir.node import Node


def _channels_in(g: Graph, node: Node) -> int | None:
    """The input's channel count: axis 1 for channels_first layers, else the last axis."""
    shapes = g.input_shapes(node.name)
    if not shapes or not shapes[0]:
        return None
    return shapes[0][1] if not channels_last(node) else shapes[0][-1]


def expected_weight_shapes(g: Graph, node: Node) -> dict[str, tuple] | None:
    """Weight shapes implied by the config and input shape, for the ops rules rewrite."""
    op, cfg = node.op, node.config
    cin = _channels_in(g, node)
    if cin is None:
        return None
    if op in CONV_OPS | DEPTHWISE_OPS | SEPARABLE_OPS | TRANSPOSE_OPS:
        k = tuple(cfg["kernel_size"])
    shapes: dict[str, tuple]
    if op in CONV_OPS:
        out = cfg["filters"]
        shapes = {"kernel": k + (cin // cfg.get("groups", 1), out)}
    elif op in DEPTHWISE_OPS:
        out = cin * cfg["depth_multiplier"]
        shapes = {"kernel": k + (cin, cfg["depth_multiplier"])}
    elif op in SEPARABLE_OPS:
        out, mid = cfg["filters"], cin * cfg["depth_multiplier"]
        ones = (1,) * len(k)
        shapes = {"depthwise_kernel": k + (cin, cfg["depth_multiplier"]),
                  "pointwise_kernel": ones + (mid, out)}
    elif op in TRANSPOSE_OPS:
        out = cfg["filters"]
        shapes = {"kernel": k + (out, cin)}
    elif op == "Dense":
        out = cfg["units"]
        shapes = {"kernel": (cin, out)}
    elif op == "BatchNormalization":
        axis = single_axis(cfg)
        if axis is None:
            return None
        c = g.input_shapes(node.name)[0][axis]
        names = ["moving_mean", "moving_variance"]
        names = (["gamma"] if cfg.get("scale", True) else []) + \
                (["beta"] if cfg.get("center", True) else []) + names
        return {n: (c,) for n in names}
    else:
        return None
    if cfg.get("use_bias", True):
        shapes["bias"] = (out,)
    return shapes


def check_weight_shapes(g: Graph, node: Node) -> None:
    expected = expected_weight_shapes(g, node)
    if expected is None:
        return
    actual = {k: tuple(v.shape) for k, v in node.weights.items()}
    if actual != expected:
        raise GraphLintError(
            f"'{node.name}' ({node.op}): weights {actual} do not match its config and input, "
            f"which need {expected}")
