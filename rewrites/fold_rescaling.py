"""Fold a Rescaling layer into the conv / dense layer before it.

`keras.layers.Rescaling` computes r(y) = y * s + t, where the scale s and the offset t are
scalars or per-channel vectors (any shape that broadcasts over the last axis only). After a
linear op y = x (*) W + b (conv, depthwise, separable, transposed conv or Dense, channels last):

    r(x (*) W + b) = (x (*) W + b) * s + t = x (*) (W * s) + (b * s + t)

with s scaling W's output channels: the same identity that folds BatchNormalization, done by
`rewrites._linear.scale_output_channels` (which knows each op's kernel layout). So the
Rescaling goes and the op gets new weights; a layer without a bias gains one.

An activation f between the op and the Rescaling is in the way unless r commutes with it. ReLU
is positively homogeneous: relu(z) * s = relu(z * s) for s >= 0, so with a non-negative scale
and a zero offset the fold is exact there too (the bias scales with the kernel). Any other
activation, or a ReLU with a negative scale or an offset, is declined.

Declined as well: the op's output read by anything else (it would see the rescaled values);
channels_first ops, and per-channel scales while Keras' image_data_format is channels_first
(Rescaling then reshapes a vector scale to (C, 1, 1)); a scale or offset whose shape reaches
any axis but the channel axis (e.g. (H, W, 1)), which no per-channel weight can express; a
Rescaling that changes the dtype. Shared layers are declined by the pass manager.

Order: after fold_batchnorm, so that conv -> BN -> Rescaling has lost its BN and the conv
is next to the Rescaling; before fuse_vertical, so that in conv -> Rescaling -> ReLU the
ReLU finds the conv right before it once the Rescaling is gone, and two linear 1x1 convs
around a Rescaling can merge.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._linear import FOLDS_INTO, out_channels, scale_output_channels


@register(exact=True, after=("fold_batchnorm",), before=("fuse_vertical",))
class FoldRescaling(Rule):
    """Rescaling after a conv / dense disappears into its kernel and bias."""

    def matches(self, g: Graph) -> Iterator[Match]:
        for node in g.nodes_of("Rescaling"):
            lin = g.single_producer(node.name)
            yield Match(lin=lin if lin is not None and lin.op in FOLDS_INTO else None,
                        rescaling=node, producer=None if lin is None else lin.op)

    def reject(self, g: Graph, m: Match) -> str | None:
        lin, r = m.lin, m.rescaling
        if lin is None:
            return f"Rescaling follows {m.producer or 'several inputs'}, not a conv or dense layer"
        if not channels_last(lin):
            return f"'{lin.name}' is channels_first: Rescaling scales the last axis"
        values = _scale_offset(r)
        if values is None:
            return "Rescaling's scale or offset is not a constant number or array"
        channels = out_channels(lin)
        rank = len(lin.output_shape)
        for what, value in zip(("scale", "offset"), values):
            if not _per_channel(value.shape, rank, channels):
                return (f"Rescaling {what} of shape {value.shape} does not broadcast over the "
                        f"channel axis only (output {tuple(lin.output_shape)})")
        if values[0].ndim and keras.config.image_data_format() == "channels_first":
            return ("Keras' image_data_format is channels_first: Rescaling would reshape its "
                    "per-channel scale to (C, 1, 1)")
        if r.output_dtypes[:1] != lin.output_dtypes[:1]:
            return f"Rescaling changes the dtype ({lin.output_dtypes} -> {r.output_dtypes})"
        if g.only_consumer(lin.name) is not r:
            return f"{lin.op} output is also read elsewhere"
        return _reject_activation(lin, *values)

    def apply(self, g: Graph, m: Match) -> None:
        scale, offset = _scale_offset(m.rescaling)
        channels = out_channels(m.lin)
        scale_output_channels(m.lin, _vector(scale, channels), _vector(offset, channels))
        g.bypass(m.rescaling.name)


def _reject_activation(lin: Node, scale: np.ndarray, offset: np.ndarray) -> str | None:
    act = lin.activation
    if act == "linear":
        return None
    if act == "relu":
        if np.all(scale >= 0) and np.all(offset == 0):
            return None
        return (f"activation 'relu' on {lin.op}: Rescaling commutes with it only for a "
                "non-negative scale and a zero offset")
    return f"activation '{act}' between {lin.op} and Rescaling"


def _scale_offset(r: Node) -> tuple[np.ndarray, np.ndarray] | None:
    scale, offset = _constant(r.config.get("scale")), _constant(r.config.get("offset", 0.0))
    return None if scale is None or offset is None else (scale, offset)


def _constant(value: Any) -> np.ndarray | None:
    """A Rescaling config value as float64: a number, a (nested) list, or Keras' serialized
    numpy array / tensor ({"class_name": "__numpy__", "config": {"value": ...}})."""
    if isinstance(value, dict):
        if value.get("class_name") not in ("__numpy__", "__tensor__"):
            return None
        value = value.get("config", {}).get("value")
    if value is None:
        return None
    try:
        array = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        return None
    return array if np.all(np.isfinite(array)) else None


def _per_channel(shape: tuple, rank: int, channels: int) -> bool:
    """`shape` broadcast against a rank-`rank` channels-last tensor varies over channels at
    most, and leaves the tensor's shape as it is."""
    if len(shape) > rank:
        return False
    return all(d == 1 for d in shape[:-1]) and (not shape or shape[-1] in (1, channels))


def _vector(value: np.ndarray, channels: int) -> np.ndarray:
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)
