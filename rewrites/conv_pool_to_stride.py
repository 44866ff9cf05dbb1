"""A conv (+ BN / activation) followed by a p x p pool with stride p -> the same conv with
stride p (approximate; a search move, never a default).

Why: on LiteRT/XNNPACK a pool is an op of its own (a pass over the conv's whole output), and
the conv before it computes p^2 times more pixels than survive the pool. Giving the conv the
pool's stride removes the pool op and cuts the conv's work by p^2, where narrowing the conv
may buy nothing (XNNPACK runs whole channel tiles). `maxpool_to_conv` keeps an op (the pool
becomes a depthwise conv, with more MACs); this rule removes one.

The algebra, per spatial axis. Let c1 be the conv with stride 1 and cp the same conv (same
kernel, bias, padding) with stride p, and f the chain of per-pixel layers after it (BN over
channels, activations; rewrites._conv.PER_PIXEL). A strided conv is a subsampled stride-1 conv:

    cp(x)[i] = c1(x)[p*i + d]

with d = 0 for "valid" padding, and for "same" padding (TensorFlow's: pad_before =
floor(pad_total / 2)) d = floor((k - 1) / 2) - floor(max(k - p, 0) / 2), the difference of
the stride-1 and stride-p padding before the first pixel (k the kernel size; d = 1 for the
usual k = 3, p = 2). Per-pixel layers commute with subsampling, so f(cp(x))[i] = f(c1(x))[p*i
+ d], and 0 <= d < p: the new output is one of the p x p pixels the pool read for output i.

    max pool:     pool(f(c1 x))[i] = max over the window  >=  f(c1 x)[p*i + d]
    average pool: pool(f(c1 x))[i] = mean over the window,  one of whose terms is the new value

So the rewrite is exact only where the window is constant, and otherwise an approximation that
retraining (distillation) has to recover: it is registered exact=False, default=False and
offered by the latency search (kopt/flows/targeted.py), which keeps it only where the measured
latency drops and the accuracy holds.

Conditions (each a decline reason): the pool is p x p with stride p (overlapping or gapped
windows are not one pixel's neighbourhood), channels last, fed through per-pixel layers only
(each read by nothing else) by a 2-D conv (Conv2D, DepthwiseConv2D, SeparableConv2D) with
stride 1 and dilation 1, whose strided output has the pool's output shape (for "same" padding:
spatial sizes divisible by p; a "same" pool on an odd size keeps a partial window the stride
would not).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from kopt.ir import Graph
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._conv import PER_PIXEL, pair2, per_pixel_chain, pool_geometry

POOLS = {"MaxPooling2D", "AveragePooling2D"}
CONVS = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D"}


def strided_shape(in_shape: tuple, kernel: tuple[int, int], strides: tuple[int, int],
                  padding: str) -> tuple | None:
    """The spatial output size of a 2-D conv (dilation 1), None where the input's is unknown."""
    out = []
    for n, k, s in zip(in_shape[1:3], kernel, strides):
        if n is None:
            return None
        out.append(math.ceil(n / s) if padding == "same" else (n - k) // s + 1)
    return tuple(out)


def sample_offset(kernel: int, stride: int, padding: str) -> int:
    """d in cp(x)[i] = c1(x)[stride * i + d] (see the module docstring)."""
    if padding != "same":
        return 0
    return (kernel - 1) // 2 - max(kernel - stride, 0) // 2


@register(exact=False, default=False)
class ConvPoolToStride(Rule):
    """conv -> [BN / activations] -> p x p pool (stride p)  =>  conv(stride p) -> [BN / ...].

    only: the name of the one pool to rewrite (a search move rewrites one place at a time)."""

    def __init__(self, only: str | None = None):
        self.only = only

    def matches(self, g: Graph) -> Iterator[Match]:
        for pool in g.nodes_of(*POOLS):
            if self.only is not None and pool.name != self.only:
                continue
            node = g.single_producer(pool.name)
            while node is not None and node.op in PER_PIXEL:
                node = g.single_producer(node.name)
            if node is None or node.op not in CONVS:
                yield Match(pool=pool, conv=None, chain=[],
                            producer=None if node is None else node.op)
                continue
            chain = per_pixel_chain(g, node)
            end = chain[-1] if chain else node
            if g.only_consumer(end.name) is not pool:
                yield Match(pool=pool, conv=None, chain=[], producer=None,
                            read_elsewhere=end.name)
                continue
            yield Match(pool=pool, conv=node, chain=chain)

    def reject(self, g: Graph, m: Match) -> str | None:
        pool, conv = m.pool, m.conv
        if conv is None:
            if getattr(m, "read_elsewhere", None) is not None:
                return (f"'{m.read_elsewhere}' is also read elsewhere: its other readers need "
                        "every pixel")
            return (f"{pool.op} follows {m.producer or 'several inputs'}, not a 2-D conv "
                    "(through BN / activations)")
        size, strides = pool_geometry(pool)
        if size != strides:
            return (f"pool_size {size} with strides {strides}: the windows are not tiles, a "
                    "stride cannot stand for them")
        if not channels_last(pool) or not channels_last(conv):
            return "channels_first pool or conv"
        if pair2(conv.config.get("strides", 1)) != (1, 1):
            return f"'{conv.name}' already has strides {pair2(conv.config['strides'])}"
        if pair2(conv.config.get("dilation_rate", 1)) != (1, 1):
            return f"'{conv.name}' is dilated (Keras refuses a stride with a dilation)"
        want = tuple(pool.output_shape[1:3])
        got = strided_shape(g.input_shapes(conv.name)[0], pair2(conv.config["kernel_size"]),
                            strides, conv.config.get("padding", "valid"))
        if got is None or None in want:
            return "spatial size unknown"
        if got != want:
            return (f"'{conv.name}' with strides {strides} would give {got}, the pool gives "
                    f"{want} (a partial window at the edge)")
        return None

    def apply(self, g: Graph, m: Match) -> None:
        _, strides = pool_geometry(m.pool)
        shape = tuple(m.pool.output_shape)
        m.conv.config["strides"] = strides
        for node in [m.conv] + list(m.chain):
            node.output_shapes = [shape[:-1] + (node.output_shape[-1],)]
        g.bypass(m.pool.name)
