"""The public entry points: optimize() and Optimizer. The input model is never mutated.

Without data: lift, run the exact rules (verified), emit. With data, the approximate flow runs
first (kopt.flows.compress: merge blocks, prune, factor Dense layers, each retrained and kept
only within max_accuracy_drop) and ends in this Optimizer's own exact pass, so its rules,
verify and tolerance apply there too and its report describes that pass.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from kopt.flows.compress import compress
from kopt.ir import Graph
from kopt.keras_io import from_keras, to_keras
from kopt.rewriting import PassManager, Report, Rule
from rewrites import exact_rules

log = logging.getLogger(__name__)


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
        self.steps: list[dict] = []

    def optimize_graph(self, g: Graph, reference: Any = None) -> Graph:
        rules = self.rules if self.rules is not None else exact_rules()
        manager = PassManager(rules, verify=self.verify, tolerance=self.tolerance)
        self.graph, self.report = manager.run(g, reference=reference)
        log.info("%s", self.report)
        return self.graph

    def optimize(self, model: Any, data: Any = None, validation: Any = None,
                 max_accuracy_drop: float = 0.005, **compress_options: Any) -> Any:
        """Exact rules only, or with `data` the whole compression flow (see kopt.compress);
        then self.steps logs each step (params, MACs, validation accuracy, kept or not)."""
        if data is None:
            if compress_options:
                raise TypeError(f"{sorted(compress_options)} apply only with data=")
            return self._exact(model, self.backend)
        compress_options.setdefault("progress", sys.stderr.isatty())  # long: show it at a TTY
        small, self.steps = compress(model, data, validation, max_accuracy_drop,
                                     finish=lambda m: self._exact(m, self.backend),
                                     **compress_options)
        return small

    def _exact(self, model: Any, backend: str) -> Any:
        g = from_keras(model)
        return to_keras(self.optimize_graph(g, reference=model), backend=backend)


def optimize(model: Any, data: Any = None, validation: Any = None,
             max_accuracy_drop: float = 0.005, rules: list[Rule] | None = None,
             verify: bool = True, tolerance: float = 1e-4, backend: str = "keras",
             **compress_options: Any) -> Any:
    """A new model computing the same function with fewer layers and less work.

    Without data: exact rules only; the result is checked against `model` on seeded probe
    inputs and any rule that changes outputs by more than `tolerance` (relative) is rolled back
    with a warning. With data=(x, y) (labels optional) and validation=(x, y): the approximate
    flow, keeping each step only while validation accuracy stays within max_accuracy_drop of
    the original's (kopt.compress.compress documents the options). Use `Optimizer` to keep the
    report and the steps.
    """
    return Optimizer(rules, verify, tolerance, backend).optimize(
        model, data, validation, max_accuracy_drop, **compress_options)

