"""Cross-layer equalisation (Nagel et al. 2019, "Data-free quantization"): even out the
per-channel weight ranges of two consecutive linear layers, so that int8 loses less.

Layer a (conv, depthwise or dense) feeds layer b, possibly through ops f that a positive
per-channel scale passes through (ReLU, leaky ReLU, PReLU, pooling: f(x / s) = f(x) / s for
s > 0). Divide a's output channel c by s_c and multiply b's input channel c by s_c:

    b(f(a(x))) = b'(f(a'(x)))    with  W_a'[..., c] = W_a[..., c] / s_c,  b_a'[c] = b_a[c] / s_c
                                       W_b'[..., c, :] = W_b[..., c, :] * s_c

which is exact in float (any padding: b's padded zeros stay zero). With r1_c = max |W_a[..., c]|
(a's output channel c) and r2_c = max |W_b[..., c, :]| (b's input channel c),

    s_c = sqrt(r1_c / r2_c)   makes   r1_c / s_c = r2_c * s_c = sqrt(r1_c r2_c)

so both layers see the channel at the same range. In a chain a -> b -> c (the depthwise-
separable block: conv -> depthwise -> conv) b's ranges move with both pairs, so the pairs are
equalised in turn until the scales settle (Nagel et al.'s iteration). What it buys under
TFLite's int8 (per-channel weights, per-tensor activations): b's per-output-channel weight
scale is no longer set by one large input channel, and the tensor between a and b no longer
has a few channels far wider than the rest.

Declined, each with its reason:
- ReLU6 (or any clipped ReLU) between: relu6(x / s) = min(relu(x), 6 s) / s, so a's channel c
  would need its clip at 6 s_c; TFLite's RELU6 takes one clip for all channels. Keeping
  ReLU6 would change the function, so the pair is declined, not approximated;
- any other activation that does not commute with scaling (sigmoid, swish, ...);
- a BatchNormalization between (run fold_batchnorm first: the rule is ordered after it);
- a's output (or an op between) read by anything else, or a model output;
- b a grouped conv, or either layer channels_first;
- a chain already equalised (marked in node.meta, so the rule reaches a fixed point).

exact=True, default=False: it is exact, but worth it only where int8 accuracy improves, so
the int8 exporter (kopt.runtime.int8_prep) decides on calibration data and optimize() leaves
it out.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._linear import (
    CONV,
    DEPTHWISE,
    SCALE_THROUGH,
    input_scale_reason,
    scale_input_channels,
    scale_output_channels,
    scale_passes,
)

LAYERS = CONV | DEPTHWISE | {"Dense"}
EQUALISED = "cross_layer_equalised"


@register(exact=True, after=("fold_batchnorm",), default=False)
class EqualizeCrossLayer(Rule):
    """Equalise the weight ranges of every chain of linear layers joined by ReLU-like ops."""

    def __init__(self, iterations: int = 20, tolerance: float = 1e-3):
        self.iterations, self.tolerance = iterations, tolerance

    def matches(self, g: Graph) -> Iterator[Match]:
        links = [link for b in g.nodes_of(*LAYERS) if (link := _link_into(g, b)) is not None]
        good = {a.name: b for a, _, b in links if _link_reason(g, a, b) is None}
        for a, between, b in links:  # a near miss is declined as the pair it is
            if a.name not in good:
                yield Match(layers=[a, b], between=[n.name for n in between])
        for a in list(good):
            if a in {b.name for b in good.values()}:
                continue  # not the head of its chain
            chain = [g[a]]
            while chain[-1].name in good:
                chain.append(good[chain[-1].name])
            yield Match(layers=chain)

    def reject(self, g: Graph, m: Match) -> str | None:
        if any(n.meta.get(EQUALISED) for n in m.layers):
            return "already equalised"
        for a, b in zip(m.layers, m.layers[1:]):
            reason = _link_reason(g, a, b)
            if reason:
                return reason
        return None

    def apply(self, g: Graph, m: Match) -> None:
        layers = m.layers
        for _ in range(self.iterations):
            worst = 0.0
            for a, b in zip(layers, layers[1:]):
                s = equalising_scales(a, b)
                scale_output_channels(a, 1.0 / s, np.zeros_like(s))
                scale_input_channels(b, s, np.zeros_like(s))
                worst = max(worst, float(np.abs(np.log(s)).max()))
            if worst < self.tolerance:
                break
        for node in layers:
            node.meta[EQUALISED] = True


def equalising_scales(a: Node, b: Node) -> np.ndarray:
    """s_c = sqrt(r1_c / r2_c) per channel between a and b; 1 where either range is zero."""
    r1, r2 = output_ranges(a), input_ranges(b)
    ok = (r1 > 0) & (r2 > 0)
    return np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)


def output_ranges(node: Node) -> np.ndarray:
    """max |W| over each output channel's weights (conv, depthwise, dense)."""
    kernel = np.abs(np.asarray(node.weights["kernel"], np.float64))
    if node.op in DEPTHWISE:  # (k..., in, m): output channel c * m + j is kernel[..., c, j]
        return kernel.max(axis=tuple(range(kernel.ndim - 2))).reshape(-1)
    return kernel.reshape(-1, kernel.shape[-1]).max(axis=0)


def input_ranges(node: Node) -> np.ndarray:
    """max |W| over the weights reading each input channel (conv, depthwise, dense)."""
    kernel = np.abs(np.asarray(node.weights["kernel"], np.float64))
    axes = tuple(i for i in range(kernel.ndim) if i != kernel.ndim - 2)
    return kernel.max(axis=axes)


def _link_into(g: Graph, b: Node) -> tuple[Node, list[Node], Node] | None:
    """(a, ops between, b) if b reads a layer in LAYERS through ops in SCALE_THROUGH (or a
    BatchNormalization, which _link_reason then declines)."""
    between: list[Node] = []
    node = g.single_producer(b.name)
    while node is not None and (node.op in SCALE_THROUGH or node.op == "BatchNormalization"):
        between.insert(0, node)
        node = g.single_producer(node.name)
    return None if node is None or node.op not in LAYERS else (node, between, b)


def _link_reason(g: Graph, a: Node, b: Node) -> str | None:
    """Why the pair a -> b cannot be equalised exactly, or None."""
    path = [a]
    while path[-1] is not b:
        reader = g.only_consumer(path[-1].name)
        if reader is None:
            return f"output of '{path[-1].name}' is also read elsewhere (or is a model output)"
        path.append(reader)
    for node in path[1:-1]:
        if node.op == "BatchNormalization":
            return f"BatchNormalization '{node.name}' between: fold it first (fold_batchnorm)"
        reason = scale_passes(node)
        if reason:
            return f"'{node.name}': {reason}"
    reason = scale_passes(a)
    if reason:
        return f"'{a.name}': {reason}"
    if not channels_last(a):
        return f"'{a.name}' is channels_first"
    return input_scale_reason(b)
