"""LayerNormalization over the channels -> its arithmetic written out in ops XNNPACK takes (exact).

    mean   = Dense(1, kernel 1/C, no bias)(x)                 per position, over the C channels
    centre = x - mean
    var    = Dense(1, kernel 1/C, bias epsilon)(centre * centre)
    y      = centre * rsqrt(var)                               then gamma and beta as a 1x1
                                                               depthwise conv (if it has them)

This is what LayerNormalization computes (Keras: the moments over the axis, then
(x - mean) * rsqrt(var + epsilon) * gamma + beta), so the float model does not change. In int8
the weights 1/C are exact (per-channel scales: 127 * (1/C) / 127); epsilon in an int8 bias may
round away, as it does in the converter's own lowering.

Why: the converter lowers a LayerNormalization into MEAN, SQUARED_DIFFERENCE, ADD, RSQRT and MUL
ops, and in full int8 LiteRT 2.3's XNNPACK takes neither SQUARED_DIFFERENCE nor the ADD of
epsilon, so the normalisation runs in TFLite's own kernels on every value. Written out as above
only the RSQRT (one value per position) is left to them. Measured on this project's machine
(AMD EPYC, 1 thread, between two Dense layers; `python tools/bench_runtime_rewrites.py --cases
ln_map ln_tokens ln_wide`): int8 14x14x32 0.0600 -> 0.0175 ms, 49 tokens x 32 0.0160 -> 0.0050
ms, 7x7x128 0.0512 -> 0.0108 ms; in float the written-out form is 10-14% slower, so the
rule is registered default=False and kopt.flows.for_runtime applies it only where the latency
model predicts the model faster, keeping it only when the runtime measures it faster.
(TFLite's int8 RSQRT costs about 55 ns per value: what is left.)

The two Dense layers that compute the statistics are frozen (trainable=False): a ConvNeXt-style
model the latency search distilled for five epochs after this rewrite went to chance (validation
97% -> 10%), its variance weights trained away from 1/C; gamma and beta stay trainable.

Declined: normalisation over other axes than the last, or over several; rms_scaling; epsilon 0
(an infinite rsqrt where a position's channels are equal breaks int8 calibration); a tensor
that is not (batch, steps, C) or (batch, H, W, C) (no depthwise conv for the scale otherwise);
tf_keras layers (the rsqrt is a Keras 3 operation); shared layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
from keras.src.ops.math import Rsqrt

from kopt.ir import Graph
from kopt.rewriting import Match, PlacedRule, register
from rewrites._conv import new_node

DEPTHWISE = {3: keras.layers.DepthwiseConv1D, 4: keras.layers.DepthwiseConv2D}


@register(exact=True, default=False)
class ExpandLayerNorm(PlacedRule):
    """LayerNormalization(axis=-1) -> mean, centre, variance, rsqrt, product, gamma/beta.

    only: the names of the LayerNormalization layers to expand, or None for every one."""

    def matches(self, g: Graph) -> Iterator[Match]:
        for node in g.nodes_of("LayerNormalization"):
            if self.chosen(node.name):
                yield Match(norm=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        node = m.norm
        shapes = g.input_shapes(node.name)
        rank = len(shapes[0]) if len(shapes) == 1 else 0
        if rank not in DEPTHWISE or shapes[0][-1] is None:
            return "it does not normalise a (batch, steps, C) or (batch, H, W, C) tensor"
        axis = node.config.get("axis", -1)
        axis = axis if isinstance(axis, (list, tuple)) else [axis]
        if [a % rank for a in axis] != [rank - 1]:
            return f"it normalises over axis {node.config.get('axis')}, not the channels alone"
        if node.config.get("rms_scaling"):
            return "rms_scaling"
        if not node.config.get("epsilon", 1e-3) > 0:
            return "epsilon is 0: a constant position's rsqrt is infinite, which int8 " \
                   "calibration cannot take"
        if node.source != "keras":
            return "a tf_keras layer (the rsqrt written out is a Keras 3 operation)"
        if g.is_shared(node):
            return "a shared layer"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        node, cfg = m.norm, m.norm.config
        shape = tuple(node.output_shape)
        channels, rank = int(shape[-1]), len(shape)
        per_position = shape[:-1] + (1,)
        average = np.full((channels, 1), 1.0 / channels, np.float32)
        inputs = [(s, p) for s, p, _ in g.in_edges(node.name)]

        def add(base: str, op: Any, reads: list, out_shape: tuple, **weights: np.ndarray) -> str:
            new = g.add(new_node(g, f"{node.name}_{base}", op, out_shape, node.output_dtypes,
                                 weights))
            g.set_inputs(new.name, reads)
            return new.name

        layers = keras.layers
        # the statistics are not parameters: frozen, so that retraining (the search distils
        # every model it keeps) cannot turn the variance's weights negative and its rsqrt NaN
        mean = add("mean", lambda name: layers.Dense(1, use_bias=False, trainable=False,
                                                     name=name), inputs,
                   per_position, kernel=average)
        centre = add("centre", layers.Subtract, inputs + [(mean, 0)], shape)
        square = add("square", layers.Multiply, [(centre, 0), (centre, 0)], shape)
        var = add("var", lambda name: layers.Dense(1, trainable=False, name=name),
                  [(square, 0)], per_position,
                  kernel=average, bias=np.full((1,), cfg.get("epsilon", 1e-3), np.float32))
        inverse = add("rsqrt", Rsqrt, [(var, 0)], per_position)
        last = add("normed", layers.Multiply, [(centre, 0), (inverse, 0)], shape)
        if cfg.get("scale", True) or cfg.get("center", True):
            gamma = np.asarray(node.weights.get("gamma", np.ones(channels)), np.float32)
            beta = node.weights.get("beta")
            weights = {"kernel": gamma.reshape((1,) * (rank - 2) + (channels, 1))}
            if beta is not None:
                weights["bias"] = np.asarray(beta, np.float32)
            last = add("affine", lambda name: DEPTHWISE[rank](1, use_bias=beta is not None,
                                                              name=name),
                       [(last, 0)], shape, **weights)
        g.rewire(node.name, last)
        g.remove(node.name)
