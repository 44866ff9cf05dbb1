"""Max pooling -> depthwise convolution initialised as an average (approximate).

max over a k x k window is replaced by a learnable depthwise k x k convolution with the pool's
strides and padding, started at weights 1/(k*k): at first it computes the average pool (which
differs from the max pool), and it only earns its keep after retraining. It adds k*k*C MACs per
output pixel, so it is worth doing only before channel pruning or fusion can absorb it (a
depthwise conv can fold into a neighbouring conv; a max pool cannot). Opt-in, never by default.
"""

from __future__ import annotations

import keras
import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register


@register(exact=False)
class MaxPoolToConv(Rule):
    """MaxPooling2D(pool, strides, padding) -> DepthwiseConv2D(pool, strides, padding)."""

    def matches(self, g: Graph):
        for node in g.nodes_of("MaxPooling2D"):
            yield Match(pool=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        pool = m.pool
        if not channels_last(pool):
            return "channels_first pooling is not supported"
        shapes = g.input_shapes(pool.name)
        if len(shapes) != 1 or shapes[0][-1] is None:
            return "input channel count unknown"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        pool = m.pool
        channels = g.input_shapes(pool.name)[0][-1]
        kernel = tuple(pool.config["pool_size"])
        strides = tuple(pool.config.get("strides") or kernel)
        name = g.unique_name(f"{pool.name}_dwconv")
        config = keras.layers.DepthwiseConv2D(kernel, strides=strides,
                                              padding=pool.config.get("padding", "valid"),
                                              use_bias=True, name=name).get_config()
        weights = {"kernel": np.full(kernel + (channels, 1), 1.0 / np.prod(kernel), np.float32),
                   "bias": np.zeros(channels, np.float32)}
        conv = Node(name=name, op="DepthwiseConv2D", config=config, weights=weights,
                    output_shapes=list(pool.output_shapes), output_dtypes=list(pool.output_dtypes))
        g.replace([pool.name], conv, [(s, p) for s, p, _ in g.in_edges(pool.name)],
                  output_of=pool.name)
