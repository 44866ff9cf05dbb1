"""Shared algebra for rules that push per-channel affine maps through linear ops.

Every op here computes y = x (*) W + b, linear in x and in W, with channels last. So

    s * y + t   = x (*) (W * s) + (b * s + t)           (scale over W's output axis)
    (s*x + t) (*) W = x (*) (W * s) + (b + t (*) W)      (scale over W's input axis)

where the second form needs t (*) W to be the same at every output position: true for Dense and
for convs with "valid" padding (every window sees only real inputs), false with "same" padding.
Kernel layouts are Keras 3's: conv (k..., in/groups, out), depthwise (k..., in, multiplier),
separable (depthwise (k..., in, m), pointwise (1..., in*m, out)), transpose (k..., out, in),
Dense (in, out).
"""

from __future__ import annotations

import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import (
    CONV_OPS,
    DEPTHWISE_OPS,
    SEPARABLE_OPS,
    TRANSPOSE_OPS,
    last_axis,
)

CONV, DEPTHWISE, SEPARABLE, TRANSPOSE = CONV_OPS, DEPTHWISE_OPS, SEPARABLE_OPS, TRANSPOSE_OPS
FOLDS_INTO = CONV | DEPTHWISE | SEPARABLE | TRANSPOSE | {"Dense"}
"""Ops whose output channels can absorb a per-channel affine map exactly."""

INPUT_FOLDS = CONV | DEPTHWISE | SEPARABLE | {"Dense"}
"""Ops whose input channels can absorb a per-channel affine map (with "valid" padding)."""


def out_kernel(node: Node) -> str:
    """Name of the weight whose last axes produce the output channels."""
    return "pointwise_kernel" if node.op in SEPARABLE else "kernel"


def out_channels(node: Node) -> int:
    """Number of output channels (the length a per-channel scale must have)."""
    if node.op == "Dense":
        return int(node.config["units"])
    if node.op in DEPTHWISE:
        kernel = node.weights["kernel"]
        return int(kernel.shape[-2] * kernel.shape[-1])
    return int(node.config["filters"])


def bn_axis_is_last(g: Graph, bn: Node) -> bool:
    """BN normalises the last axis (the channel axis of every op in FOLDS_INTO)."""
    return last_axis(bn.config, len(g.input_shapes(bn.name)[0]))


def bn_affine(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with BN(x) = scale * x + shift at inference, in float64."""
    w = bn.weights
    var = np.asarray(w["moving_variance"], np.float64)
    mean = np.asarray(w["moving_mean"], np.float64)
    gamma = np.asarray(w["gamma"], np.float64) if "gamma" in w else np.ones_like(var)
    beta = np.asarray(w["beta"], np.float64) if "beta" in w else np.zeros_like(var)
    scale = gamma / np.sqrt(var + float(bn.config.get("epsilon", 1e-3)))
    return scale, beta - mean * scale


def _set_bias(node: Node, bias: np.ndarray) -> None:
    """Store a bias (creating it after the kernels, as Keras orders weights) and use_bias."""
    dtype = node.weights[out_kernel(node)].dtype
    node.weights["bias"] = np.asarray(bias, dtype)
    node.config["use_bias"] = True


def _bias(node: Node) -> np.ndarray:
    if "bias" in node.weights:
        return np.asarray(node.weights["bias"], np.float64)
    return np.zeros(out_channels(node), np.float64)


def scale_output_channels(node: Node, scale: np.ndarray, shift: np.ndarray) -> None:
    """Make `node` compute scale * node(x) + shift per output channel (in place)."""
    scale = np.asarray(scale, np.float64)
    name = out_kernel(node)
    kernel = np.asarray(node.weights[name], np.float64)
    if node.op in DEPTHWISE:  # channel c*m + j lives at kernel[..., c, j]
        kernel = kernel * scale.reshape(kernel.shape[-2:])
    elif node.op in TRANSPOSE:  # (k..., out, in)
        kernel = kernel * scale[:, None]
    else:
        kernel = kernel * scale
    node.weights[name] = kernel.astype(node.weights[name].dtype)
    _set_bias(node, _bias(node) * scale + np.asarray(shift, np.float64))


def scale_input_channels(node: Node, scale: np.ndarray, shift: np.ndarray) -> None:
    """Make `node` compute node(scale * x + shift) (in place). Exact only for ops in
    INPUT_FOLDS with "valid" padding and groups == 1; callers check that."""
    scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
    first = "depthwise_kernel" if node.op in SEPARABLE else "kernel"
    kernel = np.asarray(node.weights[first], np.float64)
    spatial = tuple(range(kernel.ndim - 2))
    if node.op in DEPTHWISE | SEPARABLE:  # (k..., in, m): output c*m + j reads input c
        new = kernel * scale[:, None]
        added = (kernel * shift[:, None]).sum(axis=spatial).reshape(-1)
    else:  # conv (k..., in, out) and Dense (in, out)
        new = kernel * scale[:, None]
        added = np.tensordot(shift, kernel.sum(axis=spatial), axes=(0, 0))
    node.weights[first] = new.astype(node.weights[first].dtype)
    if node.op in SEPARABLE:  # the depthwise offset passes through the pointwise kernel
        pw = np.asarray(node.weights["pointwise_kernel"], np.float64)
        added = added @ pw.reshape(pw.shape[-2:])
    _set_bias(node, _bias(node) + added)
