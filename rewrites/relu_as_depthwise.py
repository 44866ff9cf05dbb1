"""A ReLU that no op before it absorbs -> a 1x1 depthwise conv with identity weights and that
ReLU as its activation (exact).

relu(x) = relu(1 * x + 0) per channel, so a DepthwiseConv1D/2D with kernel size 1, every
weight 1 and no bias, activation "relu" (or "relu6"), computes the same function. In int8 the
weight 1 is exact too: per-channel weight scales make it 127 * (1/127).

Why: LiteRT 2.3's XNNPACK delegate does not take an int8 RELU or RELU6 that stands alone (one
the converter could not fuse into the conv or ADD before it: after an Add whose sum is also
read elsewhere, as in Xception's and NASNet's pre-activation blocks, after a Concatenate or a
pooling), and TFLite's own int8 kernel for it is slow: 0.18 ms for 32x32x32 values on this
project's machine, where the three 1x1 convs and two ADDs around it took 0.02 ms. A depthwise
conv is delegated: the ReLU rides on it as a fused activation. In float XNNPACK takes the RELU
and the conv only adds work, so the rule is registered default=False and kopt.flows.for_runtime
applies it only at the places the latency model predicts faster, keeping the result only when
the runtime measures the model faster. A BN before the ReLU that no conv absorbed (after a
Concatenate) then folds into the new conv's weights (fold_batchnorm, in the exact pass).

Declined: a ReLU the op before it takes as its fused activation (a conv or Dense, through a
BN, or an Add / Subtract / Multiply, when the ReLU is its only reader), ReLUs with a
threshold, a negative slope or a max_value other than 6, and tensors that are not 3-D or 4-D
channels-last feature maps (a Dense output: no depthwise conv there).
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np

from kopt.ir import Graph, Node
from kopt.rewriting import Match, PlacedRule, register
from rewrites._conv import activation_name, new_node
from rewrites._linear import FOLDS_INTO

DEPTHWISE = {3: keras.layers.DepthwiseConv1D, 4: keras.layers.DepthwiseConv2D}


def relu_name(node: Node) -> str | None:
    """"relu" or "relu6" where `node` (a ReLU or Activation layer) computes exactly that."""
    name = activation_name(node)
    return name if name in ("relu", "relu6") else None


FUSES_ACTIVATION = FOLDS_INTO | {"Add", "Subtract", "Multiply"}
"""Ops the TFLite converter gives a following ReLU to as a fused activation."""


def _fused_before(g: Graph, node: Node) -> bool:
    """The ReLU `node` is the only reader of an op in FUSES_ACTIVATION (through a BN after a
    conv or Dense, which the converter folds first)."""
    producer = g.single_producer(node.name)
    if producer is not None and producer.op == "BatchNormalization" \
            and g.only_consumer(producer.name) is node:
        node, producer = producer, g.single_producer(producer.name)
        if producer is not None and producer.op not in FOLDS_INTO:
            return False
    return producer is not None and producer.op in FUSES_ACTIVATION \
        and g.only_consumer(producer.name) is node


@register(exact=True, default=False)
class ReluAsDepthwise(PlacedRule):
    """ReLU(x) -> DepthwiseConv(1, weights 1, activation relu / relu6)(x).

    only: the names of the ReLU layers to rewrite, or None for every one."""

    def matches(self, g: Graph) -> Iterator[Match]:
        for node in g.nodes_of("ReLU", "Activation"):
            if self.chosen(node.name):
                yield Match(relu=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        node = m.relu
        if relu_name(node) is None:
            return f"'{node.name}' is not a plain ReLU or ReLU6"
        shapes = g.input_shapes(node.name)
        if len(shapes) != 1 or len(shapes[0]) not in DEPTHWISE or shapes[0][-1] is None:
            return f"'{node.name}' does not act on a channels-last feature map"
        if g.is_shared(node):
            return f"'{node.name}' is a shared layer"
        if _fused_before(g, node):
            return f"the op before '{node.name}' takes it as its fused activation"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        node = m.relu
        rank = len(node.output_shape)
        channels = int(node.output_shape[-1])
        kernel = np.ones((1,) * (rank - 2) + (channels, 1), np.float32)
        conv = new_node(g, f"{node.name}_as_depthwise", lambda name: DEPTHWISE[rank](
            1, use_bias=False, activation=relu_name(node), name=name), node.output_shape,
            node.output_dtypes, {"kernel": kernel})
        g.replace([node.name], conv, [(s, p) for s, p, _ in g.in_edges(node.name)],
                  output_of=node.name)
