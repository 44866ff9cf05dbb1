"""Rule and Match: what a rewrite is, and the contract every rule keeps.

The contract (the pass manager relies on each point):

1. `matches(g)` yields every place the rule *could* apply, including places it will then
   decline: a declined match is how the reason reaches `Report.declined` and
   `Report.why(node)`. It must not change the graph.
2. The nodes a Match binds (directly or in lists) are the nodes the rule changes or removes.
   Nodes it only reads go in as names or other values. The manager declines a match that
   binds a shared layer (one Keras layer called more than once) unless the rule sets
   `changes_shared = True`, because changing one call would change the others.
3. `reject(g, m)` returns a reason string to decline, or None to go ahead. It has no side
   effects: it may be called on matches that are then skipped because an earlier match in the
   same sweep touched their nodes.
4. `apply(g, m)` rewrites `g` in place. New nodes get fresh names (`g.unique_name`); the
   manager records the nodes removed and added, and the params/MACs before and after.
5. A rule keeps no state between matches (an approximate rule may hold its calibration data
   and settings, set in `__init__`). Applying it repeatedly must reach a fixed point: a rule
   that could match its own output marks it (`node.meta`) and declines it.
6. `exact = True` promises the emitted model computes the same function (to float rounding);
   the manager verifies that on probe inputs and rolls the rule back if not. Approximate rules
   set `exact = False`; what they change is measured by the flows (accuracy on held-out data),
   not by the manager.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from kopt.ir import Graph, Node


class Match:
    """One place a rule could apply: named roles bound to nodes (or lists of nodes)."""

    def __init__(self, **roles: Any):
        self.__dict__.update(roles)

    def nodes(self) -> list[Node]:
        found: list[Node] = []
        for value in self.__dict__.values():
            items = value if isinstance(value, (list, tuple)) else [value]
            found += [v for v in items if isinstance(v, Node)]
        return found

    def names(self) -> list[str]:
        return list(dict.fromkeys(n.name for n in self.nodes()))

    def __repr__(self) -> str:
        return f"Match({', '.join(self.names())})"


class Rule:
    """A rewrite. Subclasses define matches(), reject() and apply(); see the module docstring
    for the contract. Register a rule with `kopt.rewriting.register` (in `rewrites/`)."""

    exact: bool = True
    changes_shared: bool = False
    name: str = ""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__module__.rsplit(".", 1)[-1]

    def matches(self, g: Graph) -> Iterable[Match]:
        raise NotImplementedError

    def reject(self, g: Graph, m: Match) -> str | None:
        return None

    def apply(self, g: Graph, m: Match) -> None:
        raise NotImplementedError

    def places(self, g: Graph, role: str) -> list[str]:
        """The names bound to `role` in the matches on `g` that this rule does not decline
        (the node's name, or the name itself for a node the match only reads): what a rule's
        `only=` takes, for a flow that prices or decides each place on its own."""
        bound = [getattr(m, role) for m in self.matches(g) if self.reject(g, m) is None]
        return [getattr(value, "name", value) for value in bound]

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


class PlacedRule(Rule):
    """A rule a flow may apply at chosen places only (kopt.flows.for_runtime prices each place
    and passes those it keeps). only: the names of the places, as `places(g, role)` gives them
    for the rule's role, or None for every place; `matches` yields a match only where
    `chosen(name)`."""

    def __init__(self, only: Collection[str] | None = None):
        self.only = None if only is None else set(only)

    def chosen(self, name: str | None) -> bool:
        """Whether the place `name` is one to rewrite."""
        return self.only is None or name in self.only

