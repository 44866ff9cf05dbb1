"""SeparableConv1D/2D -> a depthwise conv, then a 1x1 conv (exact).

Keras computes a separable conv as exactly these two: the depthwise kernel (no bias, no
activation), then the pointwise kernel with the layer's bias and activation. TFLite has no
separable op either, so the converter writes the same two ops for both forms (the test compares
the .tflite files' op lists): the split changes neither outputs nor runtime cost. One caveat,
seen once in a test run and not reproduced over five seeds: a BN between a separable conv's
activation and the next separable conv was folded forward into the depthwise conv by the int8
converter in the unsplit model and left as MUL + ADD in the split one.

What it changes is what pruning can see. A SeparableConv is one layer whose output width is
free but whose weights kopt.ir.channels cannot slice, so every channel group that reaches one is
frozen: a model built of them has nothing to prune (the latency search said "no prunable channel
group" on one). Split, the pointwise conv is an ordinary 1x1 Conv (a group source and reader)
and the depthwise conv passes its channels through. Registered default=False, since it adds a
layer and saves no work: the data flows split a model's separable convs before they prune
(kopt.flows.prepare).
"""

from __future__ import annotations

import keras
import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register

SEPARABLE = {"SeparableConv1D": (keras.layers.DepthwiseConv1D, keras.layers.Conv1D),
             "SeparableConv2D": (keras.layers.DepthwiseConv2D, keras.layers.Conv2D)}


@register(exact=True, default=False)
class SplitSeparable(Rule):
    """SeparableConv(f, k, ...) -> DepthwiseConv(k, ...) then Conv(f, 1) with its bias and
    activation."""

    def matches(self, g: Graph):
        for node in g.nodes_of(*SEPARABLE):
            yield Match(node=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        node = m.node
        if not channels_last(node):
            return "channels_first separable convs are not split"
        if g.is_shared(node):
            return "a shared layer is not split (both calls would need the same two layers)"
        if "depthwise_kernel" not in node.weights or "pointwise_kernel" not in node.weights:
            return "no depthwise / pointwise kernels"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        node, cfg = m.node, m.node.config
        depthwise_layer, conv_layer = SEPARABLE[node.op]
        dw_kernel = np.asarray(node.weights["depthwise_kernel"])
        name = g.unique_name(f"{node.name}_depthwise")
        depthwise = depthwise_layer(
            cfg["kernel_size"], strides=cfg["strides"], padding=cfg["padding"],
            depth_multiplier=cfg.get("depth_multiplier", 1), dilation_rate=cfg["dilation_rate"],
            use_bias=False, name=name).get_config()
        shape = tuple(node.output_shape[:-1]) + (dw_kernel.shape[-2] * dw_kernel.shape[-1],)
        first = Node(name=name, op=depthwise_layer.__name__, config=depthwise,
                     weights={"kernel": dw_kernel}, output_shapes=[shape],
                     output_dtypes=list(node.output_dtypes))
        g.replace([node.name], first, [(s, p) for s, p, _ in g.in_edges(node.name)],
                  output_of=node.name)
        pointwise = conv_layer(cfg["filters"], 1, activation=cfg.get("activation", "linear"),
                               use_bias=cfg.get("use_bias", True), name=node.name).get_config()
        weights = {"kernel": np.asarray(node.weights["pointwise_kernel"])}
        if "bias" in node.weights:
            weights["bias"] = np.asarray(node.weights["bias"])
        g.insert_after(first.name, Node(name=node.name, op=conv_layer.__name__,
                                        config=pointwise, weights=weights,
                                        output_shapes=list(node.output_shapes),
                                        output_dtypes=list(node.output_dtypes)))
