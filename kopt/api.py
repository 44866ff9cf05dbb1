"""The public entry points: optimize() and Optimizer. The input model is never mutated.

Without data: lift, run the exact rules (verified), emit. With data, the approximate flow runs
first (kopt.flows.compress: merge blocks, prune, factor Dense layers, each retrained and kept
only within the allowed drop of the validation metric) and ends in this Optimizer's own exact
pass, so its rules, verify and tolerance apply there too and its report describes that pass.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from kopt.flows.compress import compress
from kopt.flows.search import SearchResult
from kopt.flows.targeted import optimize_for_latency
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
        self.search: SearchResult | None = None

    def optimize_graph(self, g: Graph, reference: Any = None) -> Graph:
        manager = PassManager(self._rules(), verify=self.verify, tolerance=self.tolerance)
        self.graph, self.report = manager.run(g, reference=reference)
        log.info("%s", self.report)
        return self.graph

    def optimize(self, model: Any, data: Any = None, validation: Any = None,
                 max_accuracy_drop: float = 0.005, *, metric: Any = None,
                 mode: str | None = None, max_metric_drop: float | None = None,
                 steps_per_epoch: int | None = None, validation_steps: int | None = None,
                 recalibrate_bn: bool = False, target: Any = None,
                 **compress_options: Any) -> Any:
        """Exact rules only, or with `data` the whole compression flow (see `optimize` and
        kopt.flows.compress.compress), or with `data` and `target` the latency search
        (kopt.flows.targeted); then self.steps logs each step (params, MACs, validation score,
        kept or not; for the search also predicted and measured ms) and, for the search,
        self.search holds its result (reached, message, measured speed-up)."""
        data_options = dict(metric=metric, mode=mode, max_metric_drop=max_metric_drop,
                            steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                            recalibrate_bn=recalibrate_bn)
        if data is None:
            if target is not None:
                raise TypeError("target= needs data= (the search fine-tunes and scores "
                                "every candidate)")
            given = sorted(compress_options) + sorted(
                k for k, v in data_options.items() if v is not None and v is not False)
            if given:
                raise TypeError(f"{given} apply only with data=")
            return self._exact(model, self.backend)
        compress_options.setdefault("progress", sys.stderr.isatty())  # long: show it at a TTY
        if target is not None:
            small, self.steps, self.search = optimize_for_latency(
                model, data, target, validation, max_accuracy_drop,
                finish=lambda m: self._exact(m, self.backend), shipped=self._shipped,
                **data_options, **compress_options)
            return small
        small, self.steps = compress(model, data, validation, max_accuracy_drop,
                                     finish=lambda m: self._exact(m, self.backend),
                                     **data_options, **compress_options)
        return small

    def _exact(self, model: Any, backend: str) -> Any:
        g = from_keras(model)
        return to_keras(self.optimize_graph(g, reference=model), backend=backend)

    def _shipped(self, model: Any) -> Any:
        """The exact pass, unverified and unrecorded: how the latency search measures a
        candidate as it will ship (the pass proper, verified, runs once on the result)."""
        return to_keras(PassManager(self._rules(), verify=False).run(from_keras(model))[0])

    def _rules(self) -> list[Rule]:
        return self.rules if self.rules is not None else exact_rules()


def optimize(model: Any, data: Any = None, validation: Any = None,
             max_accuracy_drop: float = 0.005, rules: list[Rule] | None = None,
             verify: bool = True, tolerance: float = 1e-4, backend: str = "keras", *,
             metric: Any = None, mode: str | None = None, max_metric_drop: float | None = None,
             steps_per_epoch: int | None = None, validation_steps: int | None = None,
             recalibrate_bn: bool = False, target: Any = None,
             **compress_options: Any) -> Any:
    """A new model computing the same function with fewer layers and less work.

    Without data: exact rules only; the result is checked against `model` on seeded probe
    inputs and any rule that changes outputs by more than `tolerance` (relative) is rolled back
    with a warning. With data: the approximate flow (kopt.flows.compress.compress), keeping each
    step only while the validation score stays within the allowed drop of the original's.

    data / validation: any form Keras takes: arrays x, (x, y) or (x, y, sample_weight) (dicts
    or lists of arrays for several inputs or outputs), a tf.data.Dataset (batched or not), a
    keras.utils.PyDataset, a generator or a function returning a fresh one. Labels are optional.
    Arrays are used in memory; everything else is streamed (the rules calibrate on a bounded
    sample). steps_per_epoch / validation_steps: batches per pass, needed for endless streams.
    Without validation, 15% of data is held out.

    metric: what decides. None: top-1 accuracy when the first output is a class-score vector
    (integer or one-hot labels, or a softmax without labels), else fidelity to the original's
    outputs (1 - relative RMS error); the log says which. Or "accuracy", "fidelity", a Keras
    metric name or object, or a callable (y_true, y_pred) -> float on the first output (lists
    for several outputs). Higher is better unless mode="min" (Keras losses are "min" already).
    max_accuracy_drop: the tolerance for accuracy. max_metric_drop: the tolerance in the
    metric's own units (a rise for mode="min"); default max_accuracy_drop for accuracy, 0.02
    for fidelity, required for other metrics.
    recalibrate_bn: compress a copy whose BatchNormalization statistics were re-estimated on
    data (without it, stale statistics only raise a kopt.StaleBatchNormWarning).
    compress_options: epochs, prune_ratio, svd_energy, merge_width, batch_size, probes, seed...
    (kopt.flows.compress.compress). Use `Optimizer` to keep the report and the steps.

    target: instead of the fixed recipe, search for the most accurate model meeting a latency
    target measured on LiteRT (kopt.flows.targeted.optimize_for_latency): a number is a
    speed-up over int8 PTQ of the original (target=3); kopt.Target(ms=..., runtime="litert",
    threads=2) sets an absolute latency, the runtime and threads. When no model within the
    allowed drop meets it, the fastest one that is within it is returned and a warning says
    what was reached (Optimizer.search holds the details).
    """
    return Optimizer(rules, verify, tolerance, backend).optimize(
        model, data, validation, max_accuracy_drop, metric=metric, mode=mode,
        max_metric_drop=max_metric_drop, steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps, recalibrate_bn=recalibrate_bn, target=target,
        **compress_options)
