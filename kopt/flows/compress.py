"""compress(): the seed's data-driven flows, for linear (VGG) and tree (inception) models alike.

merge each inception / residual block into one narrower conv (MergeInception), one block at a
time, distilling after each -> prune (PruneEntropy, one global ratio over every prunable group)
-> distil from the original -> factor Dense layers (SvdDense) -> distil -> exact fusions
(the registered exact rules, verified). A VGG-style model has no block to merge, so its flow
starts at pruning. The approximate steps try their settings from most to least aggressive and
keep the first whose validation accuracy stays within `max_accuracy_drop` of the original's;
a step with no such setting is rolled back (the previous model is kept, and the attempt is
logged with kept=False). The exact fusions are verified by the pass manager and change no
outputs, so they are always kept. The input model is never mutated: every step works on a
fresh model emitted from the IR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kopt.errors import DataError
from kopt.flows.distill import retrain
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
             probes: dict[str, tuple] | None = None, seed: int = 0,
             finish: Callable[[Any], Any] | None = None) -> tuple[Any, list[dict]]:
    """A smaller model computing nearly what `model` does, and the log of its steps.

    data=(x, y) trains (calibration for the entropy criterion, and distillation); validation
    (x, y) decides what is kept. Labels are optional: without them the original's own top-1
    predictions stand in (accuracy then means agreement with the original), so users with
    unlabelled images can still compress. Without validation, the last 15% of data is held
    out for it (pass your own if data holds augmented copies: a twin in training leaks).
    `prune_ratio` / `svd_energy` may be one value or several to try in order (put the most
    aggressive first); so may `merge_width`, the fraction of a block's output channels its
    merged conv keeps (an empty tuple skips merging). `probes` maps a name to extra (x, y)
    sets whose accuracy each step also records as "acc_<name>" (e.g. a harder test variant).
    Each entry of the returned steps is {step, params, macs, val_acc, kept} (+ probe accuracies).
    `finish` turns the last kept model into the result (default: the registered exact rules,
    verified); kopt.Optimizer passes its own exact pass so its rules, verify and tolerance
    apply and its report is filled.
    """
    x, y = _pair(model, data, "data")
    if validation is None:
        cut = int(0.85 * len(x))
        log.info("compress: no validation data given; holding out the last %d samples of data",
                 len(x) - cut)
        (x, y), (xv, yv) = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    else:
        xv, yv = _pair(model, validation, "validation")
    probes = probes or {}

    def record(name: str, candidate: Any, kept: bool | None = None) -> dict:
        g = from_keras(candidate)
        acc = _accuracy(candidate, xv, yv)
        ok = acc >= base_acc - max_accuracy_drop - 1e-9 if kept is None else kept
        step = dict(step=name, params=g.count_params(), macs=g.count_macs(), val_acc=acc,
                    kept=bool(ok))
        step.update({f"acc_{k}": _accuracy(candidate, *v) for k, v in probes.items()})
        line = (f"compress: {name:<14} params {step['params']:>8}  MACs {step['macs']:>10}  "
                f"val_acc {acc:.4f}  {'kept' if ok else 'rolled back'}")
        log.info("%s", line)
        say(line, progress and not log.isEnabledFor(logging.INFO))
        return step

    base_acc = _accuracy(model, xv, yv)
    steps = [record("original", model, kept=True)]
    current = model
    stages: list[tuple[str, Sequence[float], Callable[[float], Rule]]] = [
        (f"merge {join}", _values(merge_width), lambda w, j=join: _merge_rule(x, w, j, seed))
        for join in _blocks(model)]
    stages += [
        ("prune", _values(prune_ratio), lambda r: _prune_rule(x, r, criterion, round_to)),
        ("svd", _values(svd_energy), lambda e: _svd_rule(e)),
    ]
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
            retrain(candidate, teacher=model, data=(x, y), epochs=epochs, seed=seed)
            step = record(f"{name} {value}", candidate)
            steps.append(step)
            if step["kept"]:
                current = candidate
                break
    fused = (finish or exact_fusion)(current)
    steps.append(record("fuse (exact)", fused, kept=True))
    return fused, steps


def exact_fusion(model: Any) -> Any:
    """`model` after the registered exact rules, verified against it."""
    g, _ = PassManager(exact_rules()).run(from_keras(model), reference=model)
    return to_keras(g)


def _pair(model: Any, data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) from (x, y), (x, None) or x; missing labels are the model's top-1 predictions."""
    x, y = data if isinstance(data, (tuple, list)) and len(data) == 2 else (data, None)
    if x is None or not hasattr(x, "__len__") or len(x) == 0:
        raise DataError(f"compress: {what} must be images x or (x, y), got nothing usable")
    x = np.asarray(x)
    if y is None:
        y = np.argmax(np.asarray(model.predict(x, batch_size=256, verbose=0)), axis=-1)
    y = np.asarray(y)
    if len(y) != len(x):
        raise DataError(f"compress: {what} has {len(x)} samples but {len(y)} labels")
    return x, y


def _values(v: float | Sequence[float]) -> list[float]:
    return [float(v)] if np.isscalar(v) else [float(a) for a in v]


def _prune_rule(x: np.ndarray, ratio: float, criterion: str, round_to: int) -> Rule:
    return PruneEntropy(x, ratio, criterion, round_to=round_to, min_channels=round_to)


def _merge_rule(x: np.ndarray, width: float, join: str, seed: int) -> Rule:
    return MergeInception(x, width=width, only=join, seed=seed)


def _blocks(model: Any) -> list[str]:
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


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    scores = np.asarray(model.predict(x, batch_size=256, verbose=0))
    return float(np.mean(np.argmax(scores, axis=-1) == np.asarray(y)))
