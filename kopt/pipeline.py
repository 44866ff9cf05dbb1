"""optimize(): lift, run the exact rules (verified), emit. The input model is never mutated."""

from __future__ import annotations

import logging
from typing import Any

from kopt.emitter import to_keras
from kopt.frontend import from_keras
from kopt.ir import Graph
from kopt.rewrite import PassManager, Report, Rule

log = logging.getLogger("kopt")


def exact_rules() -> list[Rule]:
    """Fresh instances of the registered exact rules, in their default order."""
    import rewrites

    return [cls() for cls in rewrites.EXACT]


class Optimizer:
    """Holds the settings and, after a run, the report of what was done and declined.

        opt = kopt.Optimizer()
        fast = opt.optimize(model)
        print(opt.report)              # rules applied, params/MACs, declines with reasons
        opt.report.why("bn_conv1")     # why a node was left alone
    """

    def __init__(self, rules: list[Rule] | None = None, verify: bool = True,
                 tolerance: float = 1e-4, backend: str = "keras"):
        self.rules = rules
        self.verify = verify
        self.tolerance = tolerance
        self.backend = backend
        self.report: Report | None = None
        self.graph: Graph | None = None

    def optimize_graph(self, g: Graph, reference: Any = None) -> Graph:
        rules = self.rules if self.rules is not None else exact_rules()
        manager = PassManager(rules, verify=self.verify, tolerance=self.tolerance)
        self.graph, self.report = manager.run(g, reference=reference)
        log.info("%s", self.report)
        return self.graph

    def optimize(self, model: Any) -> Any:
        g = from_keras(model)
        return to_keras(self.optimize_graph(g, reference=model), backend=self.backend)


def optimize(model: Any, rules: list[Rule] | None = None, verify: bool = True,
             tolerance: float = 1e-4, backend: str = "keras") -> Any:
    """A new model computing the same function with fewer layers and less work.

    Exact rules only; the result is checked against `model` on seeded probe inputs and any rule
    that changes outputs by more than `tolerance` (relative) is rolled back with a warning.
    Use `Optimizer` to keep the report.
    """
    return Optimizer(rules, verify, tolerance, backend).optimize(model)

