"""Fuse parallel convs (or Dense layers) that read one tensor and meet in one Concatenate.

Output channels of a conv are independent and the op is linear in its kernel, so
    concat[x (*) W_1 + b_1, ..., x (*) W_n + b_n] = x (*) concat[W_1..W_n] + concat[b_1..b_n]
(concatenating kernels and biases on the output axis), and an element-wise activation commutes
with the concatenation. n convs with the same geometry (kernel size, strides, padding,
dilation), activation and bias use, whose outputs fill a contiguous run of a channel
Concatenate's slots in order, are therefore one wider conv feeding that run (the inception case).

Convs that read one tensor but go elsewhere would need a channel split after the fused conv;
Keras has no Split layer and a Lambda would be opaque to every later rule, so they are declined.
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


def _source(g: Graph, node: Node) -> tuple[str, int] | None:
    edges = g.in_edges(node.name)
    return (edges[0][0], edges[0][1]) if node.op in OPS and len(edges) == 1 else None


def _difference(a: Node, b: Node) -> str | None:
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
                        and _source(g, node) == _source(g, run[0]))
                if same:
                    run.append(node)
                    continue
                if len(run) >= 2:
                    yield from self._runs(run, cat, covered)
                run = [node] if node is not None and sp == 0 and _source(g, node) else []
        groups: dict[tuple, list[Node]] = defaultdict(list)
        for node in g.nodes_of(*OPS):
            if node.name not in covered and _source(g, node):
                key = (node.op, _source(g, node), repr(sorted(
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
            if i == len(run) or _difference(run[start], run[i]):
                if i - start >= 2:
                    subs.append(run[start:i])
                start = i
        for sub in subs or [run]:
            covered.update(n.name for n in sub)
            yield Match(convs=sub, concat=cat)

    def reject(self, g: Graph, m: Match) -> str | None:
        if m.concat is None:
            return ("outputs not consumed by one Concatenate in order (fusing would need a "
                    "channel split, which Keras has no layer for)")
        rank = len(m.concat.output_shape)
        if m.concat.config.get("axis", -1) not in (-1, rank - 1):
            return "Concatenate is not on the channel axis"
        for node in m.convs:
            if not channels_last(node):
                return f"'{node.name}' is channels_first"
            if node.config.get("groups", 1) != 1:
                return f"'{node.name}' is a grouped conv"
            if not reads_only(g, node, m.concat):
                return f"output of '{node.name}' is also read elsewhere"
        for node in m.convs[1:]:
            key = _difference(m.convs[0], node)
            if key:
                return f"'{m.convs[0].name}' and '{node.name}' have different {key}"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        first, width = m.convs[0], WIDTH[m.convs[0].op]
        parts = [kernel_bias(n) for n in m.convs]
        weights = {"kernel": np.concatenate([k for k, _ in parts], axis=-1)}
        if first.config.get("use_bias", True):
            weights["bias"] = np.concatenate([b for _, b in parts])
        total = weights["kernel"].shape[-1]
        fused = derive(g, first, f"{first.name}_fused", weights,
                       first.output_shape[:-1] + (total,), **{width: total})
        src, port = _source(g, first)
        g.add(fused)
        g.connect(src, fused.name, port, 0)
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
