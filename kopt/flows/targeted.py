"""optimize(model, data=..., target=...): the latency search fed by the compression flow's data
handling.

The search (kopt.flows.search) takes a score and a fine-tune function; this module builds them
from the same start as compress() (kopt.flows.prepare): data in any form Keras takes, the
validation metric resolved by kopt.flows.tasks (accuracy, fidelity, a Keras metric or a
callable; "min" metrics negated, so higher is better), validation held out of data when not
given, the BatchNormalization check, and distillation from the original with
kopt.flows.distill.retrain.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

from kopt.errors import TargetNotReachedWarning
from kopt.flows.compress import blocks
from kopt.flows.distill import retrain
from kopt.flows.for_runtime import for_runtime
from kopt.flows.prepare import prepare
from kopt.flows.search import SearchResult, Target, latency_search
from kopt.keras_io import from_keras
from kopt.rewriting import Rule
from kopt.runtime.latency import LatencyModel
from rewrites.conv_pool_to_stride import ConvPoolToStride
from rewrites.fuse_horizontal_split import FuseHorizontalSplit
from rewrites.merge_inception import MergeInception
from rewrites.pool_branch_to_conv import PoolBranchToConv
from rewrites.remove_layer import RemoveLayer
from rewrites.svd_dense import SvdDense

log = logging.getLogger(__name__)

RULE_SAMPLES = 256  # calibration samples the rule moves and the ranking read


def as_target(target: Any) -> Target:
    """A Target from what optimize(target=) accepts: a Target, a number (a speed-up over int8
    PTQ of the original), or a dict of Target's fields."""
    if isinstance(target, Target):
        return target
    if isinstance(target, dict):
        return Target(**target)
    return Target(speedup=float(target))


def structural_moves(model: Any, calibration: Any, seed: int = 0) -> list[tuple[str, Rule]]:
    """The rule moves offered each iteration besides channel cuts, for where the latency table
    says width cuts buy nothing: each inception / residual block merged into one conv at half
    its output width; Dense layers factored by SVD; and, one move per place in `model`, a conv
    + pool turned into one strided conv, an inception pool branch ("same" average pool + 1x1
    conv) turned into one conv, the parallel convs reading one tensor (inception's 1x1
    reduce convs) fused into one wider conv and channel slices, and a layer removed (depth
    pruning). Each rewrites only its place (`only=`), so the search prices, ranks and
    measures every place on its own; a place an earlier move took away is simply no move any
    more. The fusion is exact; it is fine-tuned and scored like the other moves all the same
    (a short fine-tune of an unchanged function), so the search treats every move alike."""
    g = from_keras(model)
    moves: list[tuple[str, Rule]] = [
        (f"merge {join}", MergeInception(calibration, width=0.5, only=join, seed=seed))
        for join in blocks(model)]
    moves.append(("svd dense 0.9", SvdDense(energy=0.9)))
    moves += [(f"stride for pool {pool}", ConvPoolToStride(only=pool))
              for pool in ConvPoolToStride().places(g, "pool")]
    moves += [(f"pool branch {pool} as conv", PoolBranchToConv(only=pool))
              for pool in PoolBranchToConv().places(g, "pool")]
    moves += [(f"fuse convs reading {src} (sliced)", FuseHorizontalSplit(only=src))
              for src in dict.fromkeys(FuseHorizontalSplit().places(g, "source"))]
    moves += [(f"remove {layer}", RemoveLayer(only=layer))
              for layer in RemoveLayer().places(g, "layer")]
    return moves


def optimize_for_latency(model: Any, data: Any, target: Any, validation: Any = None,
                         max_accuracy_drop: float = 0.005, *, metric: Any = None,
                         mode: str | None = None, max_metric_drop: float | None = None,
                         batch_size: int = 64, steps_per_epoch: int | None = None,
                         validation_steps: int | None = None, recalibrate_bn: bool = False,
                         epochs: int = 5, short_epochs: int = 1, seed: int = 0,
                         criterion: str = "l1", structural: bool = True,
                         latency: LatencyModel | None = None, progress: bool = False,
                         finish: Callable[[Any], Any] | None = None,
                         **search_options: Any) -> tuple[Any, list[dict], SearchResult]:
    """(model, steps, search result): the most accurate model found that meets `target`
    (kopt.flows.search.latency_search), then `finish` (the exact pass) on it. epochs: the
    final distillation; short_epochs: each candidate's fine-tune. search_options go to
    latency_search (step, top_k, max_iterations, min_gain, measure_runs, ...)."""
    goal = as_target(target)
    prep = prepare(model, data, validation, max_accuracy_drop, metric=metric, mode=mode,
                   max_metric_drop=max_metric_drop, batch_size=batch_size,
                   steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                   recalibrate_bn=recalibrate_bn)
    original, chosen_metric = prep.original, prep.metric
    calibration = prep.train.sample(RULE_SAMPLES)[0]
    sign = 1.0 if chosen_metric.mode == "max" else -1.0

    def score(m: Any) -> float:
        return sign * prep.score(m)

    def finetune(m: Any, n: int) -> Any:
        return retrain(m, teacher=original, data=prep.fit_data, epochs=n, seed=seed,
                       batch_size=batch_size, teacher_cache=prep.teacher_cache)

    lm = latency or LatencyModel(goal.runtime, goal.threads)
    start, kept = for_runtime(original, lm)
    rules = structural_moves(start, calibration, seed) if structural else []
    result = latency_search(original, goal, score, finetune, calibration,
                            max_drop=chosen_metric.drop, latency=lm, short_epochs=short_epochs,
                            final_epochs=epochs, criterion=criterion, rules=rules,
                            progress=progress, start=start if kept else None,
                            **search_options)
    if not result.reached:
        warnings.warn(result.message, TargetNotReachedWarning, stacklevel=3)
    steps = [dict(s, val_score=None if s["val_score"] is None else sign * s["val_score"],
                  metric=chosen_metric.name) for s in result.steps]
    out = finish(result.model) if finish is not None else result.model
    if finish is not None:
        g = from_keras(out)
        steps.append(dict(step="fuse (exact)", params=g.count_params(), macs=g.count_macs(),
                          val_score=sign * score(out), metric=chosen_metric.name, kept=True))
    return out, steps, result
