"""IR nodes: one op (a Keras layer's kind, config and numpy weights) and the Port placeholder."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Port:
    """Placeholder for the input tensor arriving on `index` inside a node's call template."""

    index: int


@dataclass(eq=False)
class Node:
    """One op: a Keras layer with its config and named numpy weights.

    `call` is None for the usual `layer(x)` / `layer([a, b])` call; otherwise a pair
    (args, kwargs) with `Port` placeholders where input tensors go.
    `shared_key` groups nodes that are one Keras layer called several times.
    `layer_class` is the original class, needed to rebuild layers kopt does not know.
    """

    name: str
    op: str
    config: dict
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    output_shapes: list[tuple] = field(default_factory=list)
    output_dtypes: list[str] = field(default_factory=list)
    call: tuple | None = None
    shared_key: str | None = None
    layer_class: type | None = None
    source: str = "keras"
    layer: Any = None  # original layer object, kept only for opaque layers (never mutated)
    meta: dict = field(default_factory=dict)  # markers rules leave for themselves (e.g. pruned)

    @property
    def output_shape(self) -> tuple:
        return self.output_shapes[0]

    @property
    def activation(self) -> str:
        act = self.config.get("activation", "linear")
        if isinstance(act, dict):  # serialized activation object
            act = act.get("config", act.get("class_name", "custom"))
            act = act if isinstance(act, str) else "custom"
        return act or "linear"

    def weight_count(self) -> int:
        return int(sum(np.size(w) for w in self.weights.values()))

    def copy(self) -> Node:
        """A node that can be rewritten without touching this one. The weight arrays are
        shared, not copied, and made read-only for both: rules replace arrays, they never write
        into them (an in-place write raises instead of corrupting a snapshot). Copying every
        array held a 350M-parameter model several times over in the pass manager's snapshots."""
        new = copy.copy(self)
        new.config = copy.deepcopy(self.config)
        new.weights = {k: read_only(v) for k, v in self.weights.items()}
        new.output_shapes = list(self.output_shapes)
        new.output_dtypes = list(self.output_dtypes)
        new.meta = dict(self.meta)
        return new


def read_only(value: Any) -> Any:
    """`value` itself, made read-only when it is a numpy array (shared between graph copies)."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    return value
