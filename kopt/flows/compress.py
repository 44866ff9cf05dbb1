"""compress(): the seed's data-driven flows, for linear (VGG) and tree (inception) models alike.

merge each inception / residual block into one narrower conv (MergeInception), one block at a
time, distilling after each -> prune (PruneEntropy, one global ratio over every prunable group)
-> distil from the original -> factor Dense layers (SvdDense) -> distil -> exact fusions
(the registered exact rules, verified). A VGG-style model has no block to merge, so its flow
starts at pruning. The approximate steps try their settings from most to least aggressive and
keep the first whose validation score stays within the allowed drop of the original's (top-1
accuracy for classifiers, fidelity to the original's outputs otherwise: kopt.flows.tasks);
a step with no such setting is rolled back (the previous model is kept, and the attempt is
logged with kept=False). A prune ratio that misses by less than twice the allowed drop is
distilled for another round first (a pruned tree lost 0.79 pt after one round, against a 0.5 pt
gate). Only pruning: a merge kept after a second round left the tree no room to prune at all
(seeds 0 and 1: 3.3x fewer parameters, against 6.4x and 5.3x without it). The last kept model
gets one more round at the end, kept when validation does not fall (the search ends with a
longer distillation too). The exact fusions are verified by the pass manager and change no
outputs, so they are always kept. The input model is never mutated: every step works on a
fresh model emitted from the IR.

Data comes in any form Keras takes (kopt.keras_io.batches.Batches; set up by
kopt.flows.prepare, shared with the latency search). Arrays are used in memory,
as they always were. Streams are never stored: the rules calibrate on a bounded sample (the
first CALIBRATION samples), distillation reads the stream batch by batch, and validation is
scored batch by batch on every evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kopt.flows.distill import retrain
from kopt.flows.prepare import prepare, validation_batches
from kopt.keras_io import from_keras, to_keras
from kopt.progress import bar, say
from kopt.rewriting import PassManager, Rule
from rewrites import exact_rules
from rewrites.merge_inception import JOINS, MergeInception
from rewrites.prune_entropy import PruneEntropy
from rewrites.svd_dense import SvdDense

log = logging.getLogger(__name__)


def compress(model: Any, data: Any, validation: Any = None, max_accuracy_drop: float = 0.005,
             merge_width: float | Sequence[float] = (0.25, 0.375, 0.5),
             prune_ratio: float | Sequence[float] = (0.75, 0.5, 0.25),
             svd_energy: float | Sequence[float] = (0.9, 0.97), epochs: int = 5,
             criterion: str = "entropy", round_to: int = 8, progress: bool = False,
             probes: dict[str, Any] | None = None, seed: int = 0,
             finish: Callable[[Any], Any] | None = None, *, metric: Any = None,
             mode: str | None = None, max_metric_drop: float | None = None,
             batch_size: int = 64, steps_per_epoch: int | None = None,
             validation_steps: int | None = None,
             recalibrate_bn: bool = False) -> tuple[Any, list[dict]]:
    """A smaller model computing nearly what `model` does, and the log of its steps.

    data trains (calibration for the rules, and distillation); validation decides what is
    kept. Both may be any form Keras takes: arrays x, (x, y) or (x, y, sample_weight) (dicts
    or lists of arrays for several inputs or outputs), a tf.data.Dataset (batched or not), a
    keras.utils.PyDataset, a generator or a function returning one; `steps_per_epoch` /
    `validation_steps` bound each pass (needed for endless streams), `batch_size` batches
    arrays and unbatched datasets. Labels are optional: without them a classifier's own top-1
    predictions stand in (accuracy then means agreement with the original), so users with
    unlabelled images can still compress. Without validation, the last 15% of array data, or
    the first 15% of a stream's batches in each pass, is held out for it (pass your own if
    data holds augmented copies or reshuffles: a twin in training leaks).

    `metric` decides what is kept (kopt.flows.tasks.resolve_metric): None picks top-1
    accuracy when the first output is a class-score vector (labels are class indices or
    one-hot, or it ends in softmax), else fidelity (1 - relative RMS error against the
    original's outputs, over all outputs); or "accuracy", "fidelity", a Keras metric name or
    object, or a callable (y_true, y_pred) -> float, on the first output. Higher is better
    unless mode="min" (Keras losses and error metrics are "min" by themselves). A step is kept
    when its score is within `max_metric_drop` of the original's, in the metric's units;
    without it, max_accuracy_drop for accuracy, 0.02 for fidelity, and other metrics must give
    one. Before anything else the BatchNormalization statistics are checked on the
    calibration sample: when they lag the weights (inference and training mode disagree)
    a StaleBatchNormWarning says what was measured, and recalibrate_bn=True works on a copy
    recalibrated on data instead (kopt.recalibrate_bn).

    `prune_ratio` / `svd_energy` may be one value or several to try in order (put the most
    aggressive first); so may `merge_width`, the fraction of a block's output channels its
    merged conv keeps (an empty tuple skips merging). `probes` maps a name to extra data sets
    whose score each step also records as "acc_<name>" (e.g. a harder test variant).
    Each entry of the returned steps is {step, params, macs, val_score, val_acc, metric, kept}
    (+ probe scores); val_acc is val_score under its old name, whatever the metric.
    `finish` turns the last kept model into the result (default: the registered exact rules,
    verified); kopt.Optimizer passes its own exact pass so its rules, verify and tolerance
    apply and its report is filled.
    """
    prep = prepare(model, data, validation, max_accuracy_drop, metric=metric, mode=mode,
                   max_metric_drop=max_metric_drop, batch_size=batch_size,
                   steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                   recalibrate_bn=recalibrate_bn)
    original, metric, calibration = prep.original, prep.metric, prep.calibration
    probes = {k: validation_batches(v, batch_size, None, original, f"probe '{k}'")
              for k, v in (probes or {}).items()}

    def record(name: str, candidate: Any, kept: bool | None = None,
               against: float | None = None, drop: float | None = None,
               score: float | None = None) -> dict:
        """Score `candidate` (unless its score is given), log it and say whether it is kept:
        `kept` if given, else whether it is within `drop` (the metric's by default) of
        `against` (the original's score by default)."""
        g = from_keras(candidate)
        score = prep.score(candidate) if score is None else score
        ok = metric.kept(score, base if against is None else against, drop) \
            if kept is None else kept
        step = dict(step=name, params=g.count_params(), macs=g.count_macs(), val_score=score,
                    val_acc=score, metric=metric.name, kept=bool(ok))
        step.update({f"acc_{k}": prep.score(candidate, v) for k, v in probes.items()})
        label = "val_acc" if metric.is_accuracy else "val"
        line = (f"compress: {name:<14} params {step['params']:>8}  MACs {step['macs']:>10}  "
                f"{label} {score:.4f}  {'kept' if ok else 'rolled back'}")
        log.info("%s", line)
        say(line, progress and not log.isEnabledFor(logging.INFO))
        return step

    base = prep.score(original)
    steps = [record("original", original, kept=True, score=base)]
    current = original
    stages: list[tuple[str, Sequence[float], Callable[[float], Rule]]] = [
        (f"merge {join}", _values(merge_width),
         lambda w, j=join: _merge_rule(calibration, w, j, seed)) for join in blocks(model)]
    stages += [
        ("prune", _values(prune_ratio),
         lambda r: _prune_rule(calibration, r, criterion, round_to)),
        ("svd", _values(svd_energy), lambda e: _svd_rule(e)),
    ]

    def distil(candidate: Any) -> None:
        retrain(candidate, teacher=original, data=prep.fit_data, epochs=epochs, seed=seed,
                batch_size=batch_size, teacher_cache=prep.teacher_cache)

    for name, values, make in bar(stages, progress, "compress"):
        tried: set[tuple[int, int]] = set()
        for value in values:
            candidate, why = _rewrite(current, [make(value)], verify=False)
            if candidate is None:
                log.info("compress: %s %s changed nothing%s", name, value, why)
                continue
            shape = (candidate.count_params(), from_keras(candidate).count_macs())
            if shape in tried:  # channel rounding made two settings the same model
                log.info("compress: %s %s gives the model already tried", name, value)
                continue
            tried.add(shape)
            distil(candidate)
            step = record(f"{name} {value}", candidate)
            steps.append(step)
            if name == "prune" and not step["kept"] \
                    and metric.kept(step["val_score"], base, 2 * metric.drop):
                distil(candidate)  # a near miss: one more round before it is rolled back
                step = record(f"{name} {value} (+{epochs} epochs)", candidate)
                steps.append(step)
            if step["kept"]:
                current = candidate
                break
    if current is not original and epochs > 0:
        polished = to_keras(from_keras(current))  # a copy: kept only if it scores no lower
        distil(polished)
        last = next(s for s in reversed(steps) if s["kept"])["val_score"]
        step = record("final distillation", polished, against=last, drop=0.0)
        steps.append(step)
        current = polished if step["kept"] else current
    fused = (finish or exact_fusion)(current)
    steps.append(record("fuse (exact)", fused, kept=True))
    return fused, steps


def exact_fusion(model: Any) -> Any:
    """`model` after the registered exact rules, verified against it."""
    g, _ = PassManager(exact_rules()).run(from_keras(model), reference=model)
    return to_keras(g)


def _values(v: float | Sequence[float]) -> list[float]:
    return [float(v)] if np.isscalar(v) else [float(a) for a in v]


def _prune_rule(x: Any, ratio: float, criterion: str, round_to: int) -> Rule:
    return PruneEntropy(x, ratio, criterion, round_to=round_to, min_channels=round_to)


def _merge_rule(x: Any, width: float, join: str, seed: int) -> Rule:
    return MergeInception(x, width=width, only=join, seed=seed)


def blocks(model: Any) -> list[str]:
    """Joins (Concatenate / Add) of the model, in graph order: the candidate blocks to merge."""
    return [n.name for n in from_keras(model).nodes_of(*JOINS)]


def _svd_rule(energy: float) -> Rule:
    return SvdDense(energy=energy)


def _rewrite(model: Any, rules: list[Rule], verify: bool) -> tuple[Any | None, str]:
    """A new Keras model after `rules` (None when no rule applied) and why not, if not."""
    g, report = PassManager(rules, verify=verify).run(from_keras(model))
    if report.applied:
        return to_keras(g), ""
    return None, "".join(f"; {d.reason}" for d in report.declined[:3])
