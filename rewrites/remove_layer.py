"""Depth pruning: a conv or Dense layer (with the BN / activations after it) whose output has
its input's shape is removed, and distillation recovers (approximate; a search move).

Why: where the latency table says a narrower conv costs what the full one does (XNNPACK runs
whole channel tiles), removing the layer is the cut that still buys time: its whole group
leaves the model.

The algebra. Let L be the layer and f the per-pixel chain after it (BN over channels,
activations; rewrites._conv.PER_PIXEL, each read only by the next). Where y = f(L(x)) has x's
shape the rewrite sets

    y := x                                        (a plain chain, or inside a branch)
    x + f(L(x)) := x                              (a residual branch that is only L and f:
                                                   the Add goes too, leaving the skip)

The second form is why residual networks tolerate depth pruning (Veit et al. 2016: a residual
block's branch adds a correction to x, and dropping one perturbs the sum rather than breaking
the path). It also avoids the 2x that replacing the branch by identity would give (x + x).
Nothing is exact here: the rule is registered exact=False, default=False, and the latency
search (kopt/flows/targeted.py) offers one move per removable layer, distils the result from
the original and keeps it only where the measured latency drops and the accuracy holds.

Declined: a layer whose output shape differs from its input's (channels change, a stride, a
"valid" kernel larger than 1), a layer with several inputs, and a layer whose removal would
make a model output be a model input.
"""

from __future__ import annotations

from collections.abc import Iterator

from kopt.ir import Graph, Node
from kopt.ir.ops import CONV_OPS, DEPTHWISE_OPS, SEPARABLE_OPS
from kopt.rewriting import Match, Rule, register
from rewrites._conv import per_pixel_chain

LAYERS = CONV_OPS | DEPTHWISE_OPS | SEPARABLE_OPS | {"Dense"}


def _skip_add(g: Graph, layer: Node, end: Node) -> Node | None:
    """The two-input Add that sums f(L(x)) with the same x L reads, if `end` feeds only it."""
    add = g.only_consumer(end.name)
    if add is None or add.op != "Add":
        return None
    edges = g.in_edges(add.name)
    source = g.in_edges(layer.name)
    if len(edges) != 2 or len(source) != 1:
        return None
    others = [(s, p) for s, p, _ in edges if s != end.name]
    return add if others == [source[0][:2]] else None


@register(exact=False, default=False)
class RemoveLayer(Rule):
    """conv / Dense (+ BN / activations) with equal input and output shapes -> identity, or a
    residual branch of just that -> the skip alone.

    only: the name of the one layer to remove (a search move removes one layer at a time)."""

    def __init__(self, only: str | None = None):
        self.only = only

    def matches(self, g: Graph) -> Iterator[Match]:
        for layer in g.nodes_of(*LAYERS):
            if self.only is not None and layer.name != self.only:
                continue
            chain = per_pixel_chain(g, layer)
            end = chain[-1] if chain else layer
            yield Match(layer=layer, chain=chain, add=_skip_add(g, layer, end))

    def reject(self, g: Graph, m: Match) -> str | None:
        edges = g.in_edges(m.layer.name)
        if len(edges) != 1:
            return f"'{m.layer.name}' reads {len(edges)} inputs"
        end = m.chain[-1] if m.chain else m.layer
        shape_in, shape_out = tuple(g.input_shapes(m.layer.name)[0]), tuple(end.output_shape)
        if shape_in != shape_out:
            return (f"'{m.layer.name}' maps {shape_in} to {shape_out}: an identity cannot stand "
                    "in for it")
        last = m.add if m.add is not None else end
        if edges[0][0] in g.inputs and g.is_output(last.name):
            return "a model output would be a model input"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        src, port, _ = g.in_edges(m.layer.name)[0]
        # looked up again: removing an earlier layer of the branch in the same sweep can have
        # made this one the whole branch since the match was made
        add = m.add or _skip_add(g, m.layer, m.chain[-1] if m.chain else m.layer)
        for node in [m.layer, *m.chain]:
            g.bypass(node.name)
        if add is not None:  # x + x now: keep the skip only
            g.set_inputs(add.name, [(src, port)])
            g.bypass(add.name)
