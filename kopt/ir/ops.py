"""Op kinds: the families of Keras layer names rules and reports group by."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kopt.ir.node import Node

CONV_OPS = {"Conv1D", "Conv2D", "Conv3D"}
DEPTHWISE_OPS = {"DepthwiseConv1D", "DepthwiseConv2D"}
SEPARABLE_OPS = {"SeparableConv1D", "SeparableConv2D"}
TRANSPOSE_OPS = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
DENSE_OPS = {"Dense", "EinsumDense"}
MATMUL_OPS = {"Dot", "MultiHeadAttention", "GroupedQueryAttention"}
TENSOR_OPS = CONV_OPS | DEPTHWISE_OPS | SEPARABLE_OPS | TRANSPOSE_OPS | DENSE_OPS | MATMUL_OPS
GET_ITEM = "ops.GetItem"
"""A tensor slice `x[key]` (Keras 3's GetItem operation; the key is in the node's call
template). Unlike other raw keras.ops calls it is not opaque: the emitter rebuilds it for
either backend, and rules may create it (fuse_horizontal_split's channel slices)."""

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
                "RepeatVector", GET_ITEM},
    "io": {"InputLayer"},
}
_KIND_OF = {op: kind for kind, ops in KINDS.items() for op in ops}


def kind(op: str) -> str:
    """Fine category used by the timing report: conv, fc, bn, pool, activation, merge, ..."""
    return _KIND_OF.get(op, "other")


def category(op: str) -> str:
    """'tensor' for ops that multiply weights into data (conv, dense, matmul); else 'non-tensor'."""
    return "tensor" if op in TENSOR_OPS else "non-tensor"


def channels_last(node: Node) -> bool:
    """True unless the layer says data_format="channels_first" (rules assume channels last)."""
    return node.config.get("data_format", "channels_last") in ("channels_last", None)


def single_axis(config: dict) -> int | None:
    """A layer's `axis` setting as one int (BN stores a one-element list), None if several."""
    axis = config.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        return axis[0] if len(axis) == 1 else None
    return axis


def last_axis(config: dict, rank: int) -> bool:
    """True if the layer's `axis` is the last axis of a rank-`rank` tensor: the channel axis
    in channels-last layouts."""
    return single_axis(config) in (-1, rank - 1)
