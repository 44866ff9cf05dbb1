"""Remove layers that are the identity at inference.

Dropout and its variants, the noise layers and ActivityRegularization only act when training;
Activation("linear") is f(x) = x, and a Reshape to the shape it already has moves no data.
So at inference each is y = x and its readers can take its input directly. A layer called with
training=True is not an identity and is kept. Removing one call of a shared identity layer is
safe (it has no weights and its other calls stay as they are).
"""

from __future__ import annotations

from collections.abc import Iterator

from kopt.ir import Graph, Node
from kopt.rewriting import Match, Rule, register

TRAINING_ONLY = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                 "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
                 "Identity"}
"""Ops whose inference output is their input."""


@register(exact=True)
class RemoveIdentity(Rule):
    """Inference no-ops are bypassed."""

    changes_shared = True  # removing one call of a weightless layer leaves the others

    def matches(self, g: Graph) -> Iterator[Match]:
        for node in g.nodes_of(*TRAINING_ONLY, "Activation", "Reshape"):
            if node.op != "Activation" or node.activation == "linear":
                yield Match(node=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        node = m.node
        if node.call is not None and node.call[1].get("training"):
            return f"{node.op} is called with training=True"
        if len(g.in_edges(node.name)) != 1 or len(node.output_shapes) != 1:
            return f"{node.op} does not have exactly one input and one output"
        if node.op == "Reshape" and not _same_shape(g, node):
            return "Reshape changes the shape"
        src = g.in_edges(node.name)[0][0]
        if g.is_output(node.name) and src in g.inputs:
            return "removing it would make a model input a model output"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        g.bypass(m.node.name)


def _same_shape(g: Graph, node: Node) -> bool:
    """The Reshape's output shape equals its input shape (batch axis aside)."""
    (shape,) = g.input_shapes(node.name)
    return tuple(shape[1:]) == tuple(node.output_shape[1:]) and None not in shape[1:]
