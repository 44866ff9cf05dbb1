"""Fuse parallel convs (or Dense layers) that read one tensor and meet in one Concatenate.

Output channels of a conv are independent and the op is linear in its kernel, so
    concat[x (*) W_1 + b_1, ..., x (*) W_n + b_n] = x (*) concat[W_1..W_n] + concat[b_1..b_n]
(concatenating kernels and biases on the output axis), and an element-wise activation commutes
with the concatenation. n convs with the same geometry (kernel size, strides, padding,
dilation), activation and bias use, whose outputs fill a contiguous run of a channel
Concatenate's slots in order, are therefore one wider conv feeding that run (the inception case).

Convs that read one tensor but go elsewhere need a channel slice per branch after the fused
conv: that is `fuse_horizontal_split` (opt-in, since an extra slice op per branch is not always
faster), so this rule declines them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._conv import derive, kernel_bias, pair, reads_only

OPS = {"Conv2D", "Dense"}
WIDTH = {"Conv2D": "filters", "Dense": "units"}
IGNORED = {"name", "filters", "units", "kernel_initializer", "bias_initializer"}
"""Config keys that may differ between fused layers (they do not change the function)."""
MIXING = {"softmax", "log_softmax"}
"""Activations that mix a pixel's channels: not element-wise, so they do not commute with
concatenating (or slicing) channels."""


def source(g: Graph, node: Node) -> tuple[str, int] | None:
    """The (producer, port) a conv/Dense reads, None for other ops: layers that read the same
    one are candidates for fusing."""
    edges = g.in_edges(node.name)
    return (edges[0][0], edges[0][1]) if node.op in OPS and len(edges) == 1 else None


def difference(a: Node, b: Node) -> str | None:
    """The first config key (activation first) on which two layers disagree."""
    keys = ["activation"] + sorted((set(a.config) | set(b.config)) - IGNORED - {"activation"})
    for key in keys:
        if pair(a.config.get(key)) != pair(b.config.get(key)):
            return key
    return None


@register(exact=True, after=("fuse_vertical",))
class FuseHorizontal(Rule):

    def matches(self, g: Graph) -> Iterator[Match]:
        covered: set[str] = set()
        for cat in g.nodes_of("Concatenate"):
            run: list[Node] = []
            for src, sp, _ in g.in_edges(cat.name) + [(None, 0, 0)]:
                node = g[src] if src is not None else None
                same = (node is not None and run and node.op == run[0].op
                        and node.name not in {n.name for n in run}
                        and source(g, node) == source(g, run[0]))
                if same:
                    run.append(node)
                    continue
                if len(run) >= 2:
                    yield from self._runs(run, cat, covered)
                run = [node] if node is not None and sp == 0 and source(g, node) else []
        groups: dict[tuple, list[Node]] = defaultdict(list)
        for node in g.nodes_of(*OPS):
            if node.name not in covered and source(g, node):
                key = (node.op, source(g, node), repr(sorted(
                    (k, pair(v)) for k, v in node.config.items() if k not in IGNORED)))
                groups[key].append(node)
        for nodes in groups.values():
            if len(nodes) >= 2:
                yield Match(convs=nodes, concat=None)

    def _runs(self, run: list[Node], cat: Node, covered: set[str]) -> Iterator[Match]:
        """Each maximal sub-run of agreeing layers; the whole run (to be declined with the
        reason) when no two neighbours agree."""
        subs, start = [], 0
        for i in range(1, len(run) + 1):
            if i == len(run) or difference(run[start], run[i]):
                if i - start >= 2:
                    subs.append(run[start:i])
                start = i
        for sub in subs or [run]:
            covered.update(n.name for n in sub)
            yield Match(convs=sub, concat=cat)

    def reject(self, g: Graph, m: Match) -> str | None:
        if m.concat is None:
            return ("outputs not consumed by one Concatenate in order (fusing would need "
                    "channel slices: the opt-in fuse_horizontal_split)")
        rank = len(m.concat.output_shape)
        if m.concat.config.get("axis", -1) not in (-1, rank - 1):
            return "Concatenate is not on the channel axis"
        for node in m.convs:
            if not reads_only(g, node, m.concat):
                return f"output of '{node.name}' is also read elsewhere"
        return unfusable(m.convs)

    def apply(self, g: Graph, m: Match) -> None:
        fused = fused_layer(g, m.convs)
        names = {n.name for n in m.convs}
        inputs: list[tuple[str, int]] = []
        for src, sp, _ in g.in_edges(m.concat.name):
            if src not in names:
                inputs.append((src, sp))
            elif (fused.name, 0) not in inputs:
                inputs.append((fused.name, 0))
        g.set_inputs(m.concat.name, inputs)
        for name in names:
            g.remove(name)
        if len(inputs) == 1:
            g.bypass(m.concat.name)


def unfusable(convs: list[Node]) -> str | None:
    """Why `convs` (reading one tensor) cannot be one wider layer, or None: a channels_first
    or grouped layer, a softmax, or two layers that differ in more than width and
    initialisers."""
    for node in convs:
        if not channels_last(node):
            return f"'{node.name}' is channels_first"
        if node.activation in MIXING:
            return f"'{node.name}' has activation {node.activation}, which mixes channels"
        if node.config.get("groups", 1) != 1:
            return f"'{node.name}' is a grouped conv"
    for node in convs[1:]:
        key = difference(convs[0], node)
        if key:
            return f"'{convs[0].name}' and '{node.name}' have different {key}"
    return None


def fused_layer(g: Graph, convs: list[Node]) -> Node:
    """One layer computing `convs` side by side (kernels and biases concatenated on the output
    axis, in order), added to `g` reading their common input; the caller rewires their readers
    and removes them."""
    first, width = convs[0], WIDTH[convs[0].op]
    parts = [kernel_bias(n) for n in convs]
    weights = {"kernel": np.concatenate([k for k, _ in parts], axis=-1)}
    if first.config.get("use_bias", True):
        weights["bias"] = np.concatenate([b for _, b in parts])
    total = weights["kernel"].shape[-1]
    fused = derive(g, first, f"{first.name}_fused", weights,
                   first.output_shape[:-1] + (total,), **{width: total})
    src, port = source(g, first)
    g.add(fused)
    g.connect(src, fused.name, port, 0)
    return fused
