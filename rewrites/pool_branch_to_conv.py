"""The inception pool branch ("same" k x k average pooling, stride 1, then a 1x1 conv) -> one
k x k conv (approximate: exact inside the image, not at its border; a search move).

Why: int8 AVERAGE_POOL_2D is not an XNNPACK op, and in the tree example the two pool branches'
pools take about a third of the int8 run time; one k x k conv is one op XNNPACK runs.

The algebra. For odd k, "same" padding and stride 1 pad (k - 1) / 2 on each side, so output
pixel p's window N(p) is the k x k square centred on p, of which n(p) cells lie inside the
image: n = k^2 inside, fewer within (k - 1) / 2 pixels of the border (for k = 3: 6 on an edge,
4 at a corner). Keras' "same" average pooling divides by the count of *valid* cells:

    pool(x)[p] = (1 / n(p)) sum_{q in N(p)} x[q]
    conv1x1(pool(x))[p] = b + pool(x)[p] . W                            (the branch, z)

A k x k conv with zero padding and the kernel W / k^2 at every tap sums the same cells:

    conv_kxk(x)[p] = b + (1 / k^2) sum_{q in N(p)} x[q] . W = b + (n(p) / k^2) (z[p] - b)

so inside (n = k^2) it is the branch to float rounding, and at the border its pre-activation
output is the branch's, less the bias, scaled by n(p) / k^2 (4/9 at a corner, 6/9 on an edge
for k = 3), then the conv's activation. (`pool_to_conv` folds the "valid" case, which is
exact.) The error is confined to a ring (k - 1) / 2 pixels wide and is systematic, so
distillation recovers it; the rule is registered exact=False, default=False and offered by the
latency search (kopt/flows/targeted.py), which keeps it only where the measured latency drops.

MACs grow from P C O (the 1x1; pooling counted as free) to P k^2 C O: this trades arithmetic
for an op, which only a measurement can justify.

Declined: pool strides other than 1, "valid" padding (pool_to_conv's exact case), an even pool
size (padding is not symmetric), channels_first, a pool read by anything besides one 1x1 conv
(the other readers still need the pool), a 1x1 conv that is strided, dilated or grouped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from kopt.ir import Graph
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._conv import average_pool_into_conv, pair2, pool_geometry

POOL = "AveragePooling2D"


def valid_counts(height: int, width: int, size: tuple[int, int]) -> np.ndarray:
    """n(p): how many cells of each pixel's odd k_h x k_w window lie inside an H x W image,
    the divisor of Keras' "same" average pooling (see the module docstring)."""
    def along(n: int, k: int) -> np.ndarray:
        r = (k - 1) // 2
        i = np.arange(n)
        return np.minimum(i + r, n - 1) - np.maximum(i - r, 0) + 1

    return np.outer(along(height, size[0]), along(width, size[1]))


@register(exact=False, default=False)
class PoolBranchToConv(Rule):
    """AveragePooling2D(k, strides=1, "same") -> Conv2D 1x1  =>  Conv2D k x k ("same").

    only: the name of the one pool to rewrite (a search move rewrites one place at a time)."""

    def __init__(self, only: str | None = None):
        self.only = only

    def matches(self, g: Graph) -> Iterator[Match]:
        for pool in g.nodes_of(POOL):
            if self.only is not None and pool.name != self.only:
                continue
            conv = g.only_consumer(pool.name)
            readers = [d for d, _, _ in g.out_edges(pool.name)]
            if conv is not None and conv.op == "Conv2D" and \
                    pair2(conv.config["kernel_size"]) == (1, 1):
                yield Match(pool=pool, conv=conv, readers=readers)
            else:
                yield Match(pool=pool, conv=None, readers=readers)

    def reject(self, g: Graph, m: Match) -> str | None:
        pool, conv = m.pool, m.conv
        size, strides = pool_geometry(pool)
        if strides != (1, 1):
            return f"pool strides {strides}: only a stride-1 pool keeps every pixel"
        if pool.config.get("padding", "valid") != "same":
            return "padding='valid': that fold is exact, pool_to_conv's"
        if size[0] % 2 == 0 or size[1] % 2 == 0:
            return f"pool_size {size} is even: 'same' pads it unevenly"
        if not channels_last(pool) or (conv is not None and not channels_last(conv)):
            return "channels_first pool or conv"
        if conv is None:
            if len(m.readers) != 1 or g.is_output(pool.name):
                return (f"pool output is read by {len(m.readers)} layers {m.readers}"
                        f"{' and the model output' if g.is_output(pool.name) else ''}: the "
                        "others still need the pool")
            return f"pool feeds {g[m.readers[0]].op} '{m.readers[0]}', not a 1x1 Conv2D"
        if pair2(conv.config.get("strides", 1)) != (1, 1):
            return f"1x1 conv '{conv.name}' has strides {pair2(conv.config['strides'])}"
        if pair2(conv.config.get("dilation_rate", 1)) != (1, 1) or \
                conv.config.get("groups", 1) != 1:
            return f"1x1 conv '{conv.name}' is dilated or grouped"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        size, _ = pool_geometry(m.pool)
        new = average_pool_into_conv(g, m.conv, size, strides=(1, 1), padding="same")
        src, port, _ = g.in_edges(m.pool.name)[0]
        g.replace([m.pool.name, m.conv.name], new, [(src, port)], output_of=m.conv.name)
