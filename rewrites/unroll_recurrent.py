"""Recurrent layers with a fixed sequence length -> the same layers with unroll=True (exact).

Why: TFLite's int8 calibrator crashes the whole Python process (a segmentation fault, no
exception) on the while loop a GRU, LSTM or SimpleRNN becomes when it is not unrolled, in Keras 3
and tf_keras alike (tensorflow#62281, #76672, #87468; TensorFlow 2.21 here). An unrolled layer
is the same cell applied step by step with the same weights, which converts and quantises like
any feed-forward graph. So full-int8 conversion (kopt.runtime.recurrent) applies this rule
before it calls the converter; registered default=False because in float the loop converts
fine and unrolling only makes the graph longer.

Which layers: every node whose config has `unroll` (GRU, LSTM, SimpleRNN, ConvLSTM1D/2D/3D,
keras.layers.RNN and subclasses of it), and Bidirectional wrappers of them. Declined when the
sequence length is not fixed in the model (an Input with None steps): Keras can only unroll a
known number of steps.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

from kopt.ir import Graph, Node
from kopt.rewriting import Match, Rule, register

WRAPPED = ("layer", "backward_layer")
"""The keys under which Bidirectional keeps the configs of the layers it runs."""


def rolled(node: Node) -> bool:
    """The node runs a recurrent loop: `unroll` is False in its config or a wrapped layer's."""
    return any(not cfg["unroll"] for cfg in _recurrent_configs(node.config))


@register(exact=True, default=False)
class UnrollRecurrent(Rule):
    """A recurrent layer (or Bidirectional wrapper) over a fixed number of steps is unrolled."""

    changes_shared = True  # the weights and the function are the same for every call

    def matches(self, g: Graph) -> Iterator[Match]:
        for node in g:
            if rolled(node):
                yield Match(node=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        shapes = g.input_shapes(m.node.name)
        if not shapes or len(shapes[0]) < 3:
            return "its input is not a sequence (batch, steps, ...)"
        steps_axis = 0 if m.node.config.get("time_major") else 1
        if shapes[0][steps_axis] is None:
            return ("its sequence length is not fixed (None steps): Keras unrolls only a "
                    "known number of steps")
        return None

    def apply(self, g: Graph, m: Match) -> None:
        config = copy.deepcopy(m.node.config)
        for cfg in _recurrent_configs(config):
            cfg["unroll"] = True
        m.node.config = config


def _recurrent_configs(config: dict) -> list[dict]:
    """The configs holding `unroll`: the layer's own, or those of the layers it wraps."""
    if "unroll" in config:
        return [config]
    wrapped = [config[key].get("config", {}) for key in WRAPPED
               if isinstance(config.get(key), dict)]
    return [cfg for cfg in wrapped if "unroll" in cfg]
