"""Empirical bias correction (Nagel et al. 2019, section 4.2): take out of each conv / dense
bias the mean output shift that int8 weight quantisation adds (approximate; needs data).

TFLite's int8 converter quantises each kernel per output channel, symmetrically:
W_q[..., c] = clip(round(W[..., c] / d_c), -127, 127) * d_c with d_c = max |W[..., c]| / 127.
Before its activation a layer of the int8 model computes x~ (*) W_q + b, where x~ is its input
in that model, while the float model computes x (*) W + b. Over the calibration data the mean
output is off by

    e_c = E[(x~ (*) W_q)_c] - E[(x (*) W)_c]
        = mean over positions of (E[x~] (*) W_q - E[x] (*) W)_c

(a convolution is linear, so the expectation over the data goes inside; E[x] is the mean input
*image*, so the border windows of a "same"-padded conv count as they are). For the first layer
x~ = x and e = E[x (*) (W_q - W)]. Setting b' = b - e makes the layer right on average. Layers
are corrected in order, and x~ is taken in a copy of the model whose kernels are all rounded as
above and whose earlier layers are already corrected, so a layer takes out its own shift plus
what earlier rounding still moves in its input mean (through ReLUs, say); in a chain of linear
layers the int8-rounded model's mean output then equals the float model's exactly. The float
model moves by -e on purpose, hence exact=False; the int8 exporter (kopt.runtime.int8_prep)
keeps the result only if int8 agreement with the float model improves on calibration data.

All layers are one match, so that the float and the rounded models are emitted once each:
layers are corrected one level at a time (a level: layers with the same number of corrected
layers on their longest path from the input, which cannot affect each other), the new biases
set in the rounded model between its passes over the data. Activation rounding is not
simulated.

Declined, each with its reason: no calibration data; a BatchNormalization after the layer
(the converter quantises the kernel with that BN folded in: run fold_batchnorm first, the
rule is ordered after it); channels_first; an input from a shared layer's call (its tensor
cannot be told apart in the emitted model); a shared layer (the pass manager declines it);
already corrected (marked in node.meta, so the rule reaches a fixed point).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.keras_io.batches import as_batches, take
from kopt.keras_io.emitter import to_keras
from kopt.keras_io.probes import node_output
from kopt.rewriting import Match, Rule, register
from rewrites._linear import CONV, DEPTHWISE

LAYERS = CONV | DEPTHWISE | {"Dense"}
CORRECTED = "bias_corrected"


@register(exact=False, after=("fold_batchnorm",))
class CorrectBias(Rule):
    """Subtract the mean int8 weight-quantisation error from every conv / dense bias."""

    def __init__(self, data: Any = None, samples: int = 128, batch_size: int = 32):
        self.data = None if data is None else take(as_batches(data), samples)
        self.batch_size = batch_size

    def matches(self, g: Graph) -> Iterator[Match]:
        layers = []
        for node in g.nodes_of(*LAYERS):
            if g.is_shared(node) or _reason(g, node):
                yield Match(layers=[node])  # declined on its own, with its reason
            else:
                layers.append(node)
        if layers:
            yield Match(layers=layers)

    def reject(self, g: Graph, m: Match) -> str | None:
        if self.data is None:
            return "bias correction needs calibration data"
        for node in m.layers:
            reason = _reason(g, node)
            if reason:
                return reason
        return None

    def apply(self, g: Graph, m: Match) -> None:
        layers = m.layers
        for node in layers:  # a zero bias first, so the emitted layers have one to set
            if "bias" not in node.weights:
                kernel = node.weights["kernel"]
                node.weights["bias"] = np.zeros(kernel.shape[-1] * (
                    kernel.shape[-2] if node.op in DEPTHWISE else 1), kernel.dtype)
                node.config["use_bias"] = True
        float_means = dict(zip([n.name for n in layers], _MeanInputs(g, to_keras(g), layers)(
            self.data, layers, self.batch_size)))
        rounded = to_keras(g)
        for node in layers:
            layer = rounded.get_layer(node.name)
            layer.kernel.assign(quantize_kernel(node.weights["kernel"], node.op in DEPTHWISE))
        means = _MeanInputs(g, rounded, layers)
        for level in _levels(g, layers):
            for node, mean in zip(level, means(self.data, level, self.batch_size)):
                layer = rounded.get_layer(node.name)
                shift = (_mean_output(layer, np.asarray(layer.kernel), mean)
                         - _mean_output(layer, node.weights["kernel"], float_means[node.name]))
                bias = np.asarray(node.weights["bias"], np.float64) - shift
                node.weights["bias"] = bias.astype(node.weights["bias"].dtype)
                layer.bias.assign(node.weights["bias"])
        for node in layers:
            node.meta[CORRECTED] = True


def quantize_kernel(kernel: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """The kernel as TFLite's int8 converter stores it, back in float: per output channel
    (the last axis; for a depthwise kernel (k..., in, m) each (in, m) pair), symmetric,
    d = max |W| / 127, round to nearest."""
    w = np.asarray(kernel, np.float64)
    axes = tuple(range(w.ndim - 2)) if depthwise else tuple(range(w.ndim - 1))
    d = np.abs(w).max(axis=axes, keepdims=True) / 127.0
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, np.clip(np.round(w / safe), -127, 127) * safe, 0.0)


def _mean_output(layer: Any, kernel: np.ndarray, mean_input: np.ndarray) -> np.ndarray:
    """Per output channel, the mean over positions of (mean_input (*) kernel), computed with a
    linear, bias-free copy of the Keras layer."""
    config = layer.get_config()
    config.update(activation="linear", use_bias=False, name=None)
    copy = type(layer).from_config(config)
    copy.build((1,) + mean_input.shape)
    copy.set_weights([np.asarray(kernel, np.float32)])
    out = np.asarray(copy(mean_input[None].astype(np.float32)), np.float64)
    return out.reshape(-1, out.shape[-1]).mean(axis=0)


class _MeanInputs:
    """Mean over the data (per position and channel) of each layer's input tensor, from one
    Keras model that outputs all of them, each summed over its batch (small outputs: one
    image per layer)."""

    def __init__(self, g: Graph, model: Any, layers: list[Node]):
        import keras

        self.index = {node.name: i for i, node in enumerate(layers)}
        taken = {layer.name for layer in model.layers}
        outs = []
        for i, node in enumerate(layers):
            src, port, _ = g.in_edges(node.name)[0]
            # a named layer: keras.ops.sum would be named "sum", which a layer of the user's
            # model may be called already (Keras then refuses the model)
            name = next(f"kopt_batch_sum_{i}_{k}" for k in range(len(taken) + 1)
                        if f"kopt_batch_sum_{i}_{k}" not in taken)
            outs.append(keras.layers.Lambda(lambda t: keras.ops.sum(t, axis=0), name=name)(
                node_output(model, src, port)))
        self.tap = keras.Model(model.inputs, outs)

    def __call__(self, data: np.ndarray, level: list[Node], batch_size: int
                 ) -> list[np.ndarray]:
        """The mean inputs of the layers in `level`, in its order."""
        totals = None
        for i in range(0, len(data), batch_size):
            outs = self.tap.predict_on_batch(data[i:i + batch_size])
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            picked = [np.asarray(outs[self.index[n.name]], np.float64) for n in level]
            totals = picked if totals is None else [t + p for t, p in zip(totals, picked)]
        return [t / len(data) for t in totals]


def _levels(g: Graph, layers: list[Node]) -> list[list[Node]]:
    """Layers grouped by how many of `layers` lie on their longest path from the inputs."""
    chosen = {n.name for n in layers}
    depth: dict[str, int] = {}
    levels: dict[int, list[Node]] = {}
    for node in g.topological():
        before = max((depth[p.name] for p in g.producers(node.name)), default=0)
        if node.name in chosen:
            levels.setdefault(before, []).append(node)
            depth[node.name] = before + 1
        else:
            depth[node.name] = before
    return [levels[k] for k in sorted(levels)]


def _reason(g: Graph, node: Node) -> str | None:
    if node.meta.get(CORRECTED):
        return "already corrected"
    if not channels_last(node):
        return f"'{node.name}' is channels_first"
    if len(g.in_edges(node.name)) != 1:
        return f"'{node.name}' reads {len(g.in_edges(node.name))} inputs"
    if g.is_shared(g.producers(node.name)[0]):
        return (f"'{node.name}' reads a call of a shared layer, whose tensors cannot be told "
                "apart in the emitted model")
    reader = g.only_consumer(node.name)
    if reader is not None and reader.op == "BatchNormalization":
        return (f"BatchNormalization '{reader.name}' follows '{node.name}': the converter "
                "quantises the kernel with it folded in (run fold_batchnorm first)")
    return None
