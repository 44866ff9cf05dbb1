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
    channels_last,
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


# ---- positive per-channel scales (range equalisation) -----------------------------------
# For s > 0 per channel, relu(s * x) = s * relu(x), and likewise leaky ReLU, PReLU, max and
# average pooling: a positive per-channel scale passes through them unchanged. The rules that
# move such a scale from one layer to another (equalize_cross_layer, equalize_concat_ranges)
# look through these ops with `scale_passes`.

SCALE_THROUGH = {"ReLU", "LeakyReLU", "PReLU", "Activation", "MaxPooling1D", "MaxPooling2D",
                 "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
                 "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
                 "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D"}
"""Ops that a positive per-channel scale may pass through (when `scale_passes` says so)."""

HOMOGENEOUS = {"linear", "relu", "leaky_relu"}
"""Activation names f with f(s * x) = s * f(x) for every s > 0."""


def scale_passes(node: Node) -> str | None:
    """None if a positive per-channel scale on `node`'s input comes out unchanged on its output,
    for an op in SCALE_THROUGH or the `activation` of a conv / dense; else the reason."""
    if node.op == "ReLU":
        cfg = node.config
        if cfg.get("max_value") is not None:
            return (f"ReLU clips at max_value={cfg['max_value']}: a channel scaled by s would "
                    "need its clip at max_value * s, which one ReLU cannot express")
        if cfg.get("threshold", 0):
            return f"ReLU threshold {cfg['threshold']} would have to move with the scale"
        return None
    if node.op in SCALE_THROUGH and node.op != "Activation":
        return None if channels_last(node) else f"{node.op} is channels_first"
    act = node.activation
    if act == "relu6":
        return ("activation 'relu6' clips at 6: a channel scaled by s would need its clip at "
                "6 * s, which RELU6 cannot express per channel")
    if act not in HOMOGENEOUS:
        return f"activation '{act}' does not commute with a per-channel scale"
    return None


def input_scale_reason(node: Node) -> str | None:
    """None if `scale_input_channels(node, s, 0)` is exact: a conv / depthwise / separable /
    dense with channels last and one group. A zero shift makes any padding exact (padded zeros
    stay zero)."""
    if node.op not in INPUT_FOLDS:
        return f"{node.op} cannot take a per-channel scale on its input"
    if not channels_last(node):
        return f"'{node.name}' is channels_first"
    if node.config.get("groups", 1) != 1:
        return f"'{node.name}' is a grouped conv (groups={node.config['groups']})"
    return None
