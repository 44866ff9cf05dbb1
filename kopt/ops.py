"""What kopt knows about each op kind: category, MAC formula, expected weight shapes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from kopt.errors import GraphLintError

if TYPE_CHECKING:
    from kopt.ir import Graph, Node

CONV_OPS = {"Conv1D", "Conv2D", "Conv3D"}
DEPTHWISE_OPS = {"DepthwiseConv1D", "DepthwiseConv2D"}
SEPARABLE_OPS = {"SeparableConv1D", "SeparableConv2D"}
TRANSPOSE_OPS = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
DENSE_OPS = {"Dense", "EinsumDense"}
MATMUL_OPS = {"Dot", "MultiHeadAttention", "GroupedQueryAttention"}
TENSOR_OPS = CONV_OPS | DEPTHWISE_OPS | SEPARABLE_OPS | TRANSPOSE_OPS | DENSE_OPS | MATMUL_OPS

KINDS: dict[str, set[str]] = {
    "conv": CONV_OPS | DEPTHWISE_OPS | SEPARABLE_OPS | TRANSPOSE_OPS,
    "fc": DENSE_OPS | MATMUL_OPS,
    "bn": {"BatchNormalization", "LayerNormalization", "GroupNormalization",
           "UnitNormalization", "Normalization", "Rescaling"},
    "pool": {"MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
             "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
             "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
             "GlobalMaxPooling2D", "GlobalMaxPooling3D"},
    "activation": {"ReLU", "Activation", "Softmax", "LeakyReLU", "PReLU", "ELU"},
    "merge": {"Concatenate", "Add", "Multiply", "Subtract", "Average", "Maximum", "Minimum"},
    "reshape": {"Reshape", "Flatten", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
                "Cropping1D", "Cropping2D", "Cropping3D", "Permute", "UpSampling2D",
                "RepeatVector"},
    "io": {"InputLayer"},
}
_KIND_OF = {op: kind for kind, ops in KINDS.items() for op in ops}


def kind(op: str) -> str:
    """Fine category used by the timing report: conv, fc, bn, pool, activation, merge, ..."""
    return _KIND_OF.get(op, "other")


def category(op: str) -> str:
    """'tensor' for ops that multiply weights into data (conv, dense, matmul); else 'non-tensor'."""
    return "tensor" if op in TENSOR_OPS else "non-tensor"


# tf_keras names a few weights differently; the IR always uses the Keras 3 names.
_TF_KERAS_RENAMES = {("DepthwiseConv1D", "depthwise_kernel"): "kernel",
                     ("DepthwiseConv2D", "depthwise_kernel"): "kernel"}


def weight_names(layer: Any, backend: str) -> list[str]:
    """Canonical, unique names of a layer's weights, in the layer's own order."""
    names: list[str] = []
    op = type(layer).__name__
    for var in layer.weights:
        base = var.name
        if backend == "tf_keras":
            base = base.split("/")[-1].split(":")[0]
            base = _TF_KERAS_RENAMES.get((op, base), base)
        name, i = base, 1
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


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


def _channels_in(g: Graph, node: Node) -> int | None:
    shapes = g.input_shapes(node.name)
    return shapes[0][-1] if shapes and shapes[0] else None


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
        axis = cfg.get("axis", -1)
        if isinstance(axis, (list, tuple)):
            if len(axis) != 1:
                return None
            axis = axis[0]
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
