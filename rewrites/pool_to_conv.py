"""Turn an average pool with "valid" padding into a conv, and fold it into a 1x1 conv after it.

A valid k_h x k_w average pool with strides s is a depthwise conv with strides s whose kernel is
1/(k_h k_w) everywhere: every window sees exactly k_h k_w real cells. A 1x1 conv W after it
commutes with the averaging (both are linear), so pool + 1x1 is one k_h x k_w conv with strides s:
    W'[i, j, c, o] = W[0, 0, c, o] / (k_h k_w),  same bias and activation.
With "same" padding the border windows average fewer cells, so that case is not exact and is
declined (the approximate rules handle it).

Cost (P output pixels, C in, O out channels): pool-as-depthwise + 1x1 = P (k C + C O) MACs,
merged = P k C O, where k = k_h k_w. The merge grows MACs unless O (k - 1) <= k, i.e. almost
always; it only saves the pool's memory pass and one op. So the fold applies only when the merged
MACs are at most `max_mac_growth` times the pool-as-depthwise + 1x1 MACs (default 1.0: never
grow the cost model's count; raise it where per-op overhead dominates, e.g. tiny models on
micro-controllers). A standalone pool → depthwise conv adds P k C MACs and removes a non-tensor
op; it is off unless `standalone=True`. Note that Graph.count_macs counts pooling as 0 MACs, so
the pass report shows an applied fold as growth (P C O -> P k C O) even when the comparison
above, which counts the pool's k adds per output, does not.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._conv import average_pool_into_conv, pair, pool_geometry

POOL = "AveragePooling2D"


def _fold_macs(g: Graph, pool: Node, conv: Node) -> tuple[int, int]:
    """(pool-as-depthwise + 1x1, merged k_h x k_w conv) MACs at the model's input shape."""
    size, _ = pool_geometry(pool)
    pixels = math.prod(d for d in pool.output_shape[1:-1] if d is not None)
    k, c, o = size[0] * size[1], g.input_shapes(pool.name)[0][-1], conv.config["filters"]
    return pixels * (k * c + c * o), pixels * k * c * o


@register(exact=True, after=("fold_batchnorm",))
class PoolToConv(Rule):

    def __init__(self, standalone: bool = False, max_mac_growth: float = 1.0):
        self.standalone = standalone
        self.max_mac_growth = max_mac_growth

    def matches(self, g: Graph) -> Iterator[Match]:
        for pool in g.nodes_of(POOL):
            conv = g.only_consumer(pool.name)
            if conv is not None and conv.op == "Conv2D" and \
                    pair(conv.config["kernel_size"]) == (1, 1):
                yield Match(pool=pool, conv=conv)
                if not self.standalone:
                    continue
            yield Match(pool=pool, conv=None)

    def reject(self, g: Graph, m: Match) -> str | None:
        if m.pool.config.get("padding", "valid") != "valid":
            return "padding='same': border windows average fewer cells (not exact)"
        if not channels_last(m.pool):
            return "pool is channels_first"
        if m.conv is None:
            return None if self.standalone else (
                "a standalone avg-pool as depthwise conv adds MACs (enable with standalone=True)")
        conv = m.conv
        if pair(conv.config.get("strides", (1, 1))) != (1, 1):
            return f"1x1 conv '{conv.name}' has strides {pair(conv.config['strides'])}"
        if conv.config.get("groups", 1) != 1 or not channels_last(conv):
            return f"1x1 conv '{conv.name}' is grouped or channels_first"
        before, after = _fold_macs(g, m.pool, conv)
        if after > self.max_mac_growth * before:
            return (f"merged conv needs {after:,} MACs vs {before:,} for pool-as-depthwise + 1x1 "
                    f"({after / before:.1f}x > max_mac_growth={self.max_mac_growth})")
        return None

    def apply(self, g: Graph, m: Match) -> None:
        size, strides = pool_geometry(m.pool)
        src, port, _ = g.in_edges(m.pool.name)[0]
        if m.conv is None:
            new = _depthwise(g, m.pool, size, strides)
            g.replace([m.pool.name], new, [(src, port)], output_of=m.pool.name)
            return
        new = average_pool_into_conv(g, m.conv, size, strides=strides, padding="valid")
        g.replace([m.pool.name, m.conv.name], new, [(src, port)], output_of=m.conv.name)


def _depthwise(g: Graph, pool: Node, size: tuple, strides: tuple) -> Node:
    import keras

    channels = g.input_shapes(pool.name)[0][-1]
    config = keras.layers.DepthwiseConv2D(size, strides=strides, padding="valid",
                                          use_bias=False).get_config()
    kernel = np.full(size + (channels, 1), 1.0 / (size[0] * size[1]), np.float32)
    return Node(name=g.unique_name(f"{pool.name}_dw"), op="DepthwiseConv2D", config=config,
                weights={"kernel": kernel}, output_shapes=list(pool.output_shapes),
                output_dtypes=list(pool.output_dtypes) or ["float32"])
