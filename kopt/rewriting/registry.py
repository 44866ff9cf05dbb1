"""The rule registry: rules declare their exactness and ordering; the order is derived.

    @register(exact=True, after=("fold_batchnorm",))
    class FuseVertical(Rule): ...

`after=("x",)` means "run after rule x" (and `before=` the converse). The default order is a
topological sort of these constraints, ties broken by name, so adding a rule is one new module
in `rewrites/` (which imports every module it holds) and nothing else edited. A constraint
naming a rule that is not registered is an error, so a renamed rule cannot silently reorder
the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from kopt.errors import KoptError
from kopt.rewriting.rule import Rule


@dataclass(frozen=True)
class Entry:
    rule: type[Rule]
    after: tuple[str, ...]
    before: tuple[str, ...]
    default: bool


_REGISTRY: dict[str, Entry] = {}


def register(*, exact: bool, after: tuple[str, ...] = (), before: tuple[str, ...] = (),
             default: bool = True):
    """Class decorator: record a Rule subclass under its `name`, with its exactness.

    default=False keeps an exact rule out of `kopt.optimize`'s default set: for rules that are
    exact in float but worth applying only when a measurement says so (e.g. int8 range
    equalisation, chosen by the exporter on calibration data)."""

    def decorate(cls: type[Rule]) -> type[Rule]:
        if not (isinstance(cls, type) and issubclass(cls, Rule)):
            raise KoptError(f"@register needs a Rule subclass, got {cls!r}")
        known = _REGISTRY.get(cls.name)
        if known is not None and known.rule.__qualname__ != cls.__qualname__:
            raise KoptError(f"two rules are named '{cls.name}': {known.rule} and {cls}")
        cls.exact = exact
        _REGISTRY[cls.name] = Entry(cls, tuple(after), tuple(before), default)
        return cls

    return decorate


def registered(exact: bool | None = None, default_only: bool = False) -> list[type[Rule]]:
    """Registered rule classes in their default order (only exact or approximate ones if
    `exact` is given; only those registered with default=True if `default_only`)."""
    order = nx.DiGraph()
    order.add_nodes_from(_REGISTRY)
    for name, entry in _REGISTRY.items():
        for other in entry.after + entry.before:
            if other not in _REGISTRY:
                raise KoptError(f"rule '{name}' is ordered against '{other}', which is not a "
                                f"registered rule (known: {sorted(_REGISTRY)})")
        order.add_edges_from((other, name) for other in entry.after)
        order.add_edges_from((name, other) for other in entry.before)
    try:
        names = list(nx.lexicographical_topological_sort(order))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(order)
        raise KoptError(f"rule ordering constraints form a cycle: {cycle}") from None
    entries = [_REGISTRY[n] for n in names]
    return [e.rule for e in entries
            if (exact is None or e.rule.exact == exact) and (e.default or not default_only)]
