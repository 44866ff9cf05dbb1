"""Choose the rewrites that make a model's full-int8 file agree best with it, on calibration data.

Full-int8 PTQ (per-channel int8 weights, per-tensor int8 activations) loses accuracy where a
tensor's channels have very different ranges, or where weight rounding shifts a layer's mean
output. Three rules address that (rewrites/):

- equalize_cross_layer (exact): even out the weight ranges of consecutive linear layers;
- equalize_concat_ranges (exact): widen the narrow channels of a Concatenate at their
  producers and narrow them back in its per-channel readers (DenseNet blocks);
- correct_bias (approximate): take the mean int8 weight-rounding error out of each bias.

Whether one helps depends on the model, so `prepare_for_int8` measures. Every candidate is a
fresh model emitted from the IR (the caller's model is never changed), converted to full int8
with the calibration samples and run in LiteRT on those same samples; its outputs are compared
with the caller's float model's:

    agreement  top-1 agreement of output 0 (when it has class scores: (N, k), k > 1)
    error      mean |int8 - float| of output 0, over max |float|

The search is greedy, in a fixed order, and small:

1. plain PTQ of the caller's model. If it already agrees on every sample with an error of at
   most `enough` (1e-3), the search stops there;
2. BN folded by kopt (fold_batchnorm). TFLite's converter folds a BN that follows a conv, but
   leaves one that precedes a conv (conv -> ReLU -> BN -> conv) as int8 MUL and ADD ops; only
   when kopt folds such a BN is this a candidate of its own. Every later candidate starts
   from this graph;
3. each rule in STEPS on top of the best so far, tried only where it applies (a rule that
   matches nothing costs no conversion), kept only if it beats the best so far: agreement up
   by `margin` (0.01), or agreement within half that and `error_gain` (a fifth) less error.
   Once a kept step agrees on every sample within `enough`, the later ones are not tried.

The result is kept only if it beats plain PTQ in the same sense; otherwise the caller's model
comes back unchanged. Scoring on the calibration samples themselves favours the data-taking
rules a little (they were fitted there); the margins are there for that. The cost is one int8
conversion and one LiteRT pass over the samples per candidate tried, plus the rules' own
passes over the data; `figures` records the seconds of each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kopt.errors import ExportError, KoptError
from kopt.keras_io import from_keras, to_keras
from kopt.keras_io.probes import predict_outputs
from kopt.ir import Graph
from kopt.rewriting import PassManager, Report, Rule
from kopt.runtime.litert import LiteRTRunner
from rewrites.correct_bias import CorrectBias
from rewrites.equalize_concat_ranges import EqualizeConcatRanges
from rewrites.equalize_cross_layer import EqualizeCrossLayer
from rewrites._linear import FOLDS_INTO
from rewrites.fold_batchnorm import FoldBatchNorm

log = logging.getLogger(__name__)

STEPS = ("equalize_cross_layer", "equalize_concat_ranges", "correct_bias")
MARGIN = 0.01
ERROR_GAIN = 0.2
ENOUGH = 1e-3
METRIC = ("int8 vs float on the calibration samples: top-1 agreement of output 0 first, then "
          "mean |int8 - float| / max |float| of output 0")


def prepare_for_int8(model: Any, samples: list, convert: Callable[[Any], bytes],
                     steps: tuple[str, ...] = STEPS, margin: float = MARGIN,
                     error_gain: float = ERROR_GAIN, enough: float = ENOUGH
                     ) -> tuple[Any, list[str], dict]:
    """(model to convert, rewrites chosen, figures). `samples` are calibration samples as
    kopt.runtime.convert.representative_samples returns them (batch-1 lists, one array per
    input); `convert(model)` returns a model's full-int8 flatbuffer calibrated on them, as the
    exporter will write it. Returns the caller's model itself when nothing beats plain PTQ."""
    start = time.perf_counter()
    figures: dict[str, Any] = {"chosen": [], "metric": METRIC, "candidates": {}}
    x = _stack(model, samples)
    if isinstance(x, str):
        figures["skipped"] = x
        return model, [], _done(figures, start)
    figures["samples"] = len(x)
    search = _Search(model, x, convert, figures["candidates"])
    plain = search.score("plain", model)
    if good_enough(plain, enough):
        figures["skipped"] = f"plain PTQ already agrees (error <= {enough})"
    graph = None
    try:
        graph = None if "skipped" in figures else from_keras(model)
    except KoptError as err:
        figures["skipped"] = f"the model does not lift into kopt's IR: {err}"
    if graph is None:
        figures["chosen"], figures["plain"], figures["best"] = [], plain, plain
        return model, [], _done(figures, start)

    best_graph, report = PassManager([FoldBatchNorm()]).run(graph, reference=model)
    best_model, best, chosen = model, plain, []
    if _converter_would_not_fold(graph, report):
        best_model = to_keras(best_graph)
        best = search.score("fold_batchnorm", best_model, applied=len(report.applied))
        chosen = ["fold_batchnorm"]
    elif report.applied:  # the converter folds these BNs itself: same file as plain PTQ
        best_model = to_keras(best_graph)
    for name in steps:
        rule = rule_for(name, x)
        t0 = time.perf_counter()
        try:
            new_graph, report = PassManager([rule], verify=rule.exact).run(
                best_graph, reference=best_model)
        except KoptError as err:  # a verification or lint failure: leave this rule out
            search.candidates[name] = {"failed": str(err)}
            continue
        if not report.applied:
            search.candidates[name] = {"applied": 0}
            continue
        new_model = to_keras(new_graph)
        rule_seconds = round(time.perf_counter() - t0, 2)
        score = search.score(name, new_model, applied=len(report.applied),
                             rule_seconds=rule_seconds)
        if better(score, best, margin, error_gain):
            best_graph, best_model, best = new_graph, new_model, score
            chosen.append(name)
            if good_enough(best, enough):
                break  # nothing left to gain: the later steps are not tried
    if not chosen or not better(best, plain, margin, error_gain):
        best_model, chosen, best = model, [], plain
    figures["chosen"], figures["plain"], figures["best"] = chosen, plain, best
    return best_model, chosen, _done(figures, start)


def good_enough(score: dict, enough: float = ENOUGH) -> bool:
    """Plain PTQ needs no search: every top-1 agrees and the error is at most `enough`."""
    return "error" in score and score.get("agreement", 1.0) == 1.0 and score["error"] <= enough


def better(a: dict, b: dict, margin: float = MARGIN, error_gain: float = ERROR_GAIN) -> bool:
    """Does score a beat score b: agreement up by `margin`, or the same agreement (within
    half the margin) and the error down by the fraction `error_gain`?"""
    if "error" not in a or "error" not in b:
        return False
    if a.get("agreement") is not None and b.get("agreement") is not None:
        if a["agreement"] >= b["agreement"] + margin:
            return True
        if a["agreement"] < b["agreement"] - margin / 2:
            return False
    return a["error"] <= (1.0 - error_gain) * b["error"]


class _Search:
    """Converts candidates and scores them against the float model's outputs."""

    def __init__(self, model: Any, x: np.ndarray, convert: Callable[[Any], bytes],
                 candidates: dict):
        self.x, self.convert = x, convert
        self.expected = predict_outputs(model, x, batch_size=64)[0]
        self.candidates = candidates

    def score(self, name: str, model: Any, **extra: Any) -> dict:
        start = time.perf_counter()
        try:
            flat = self.convert(model)
            got = LiteRTRunner(flat).run_all(self.x)[0]
        except ExportError:  # the model itself cannot be converted: no candidate can
            raise
        except Exception as err:  # noqa: BLE001 - a candidate that fails to convert is skipped
            log.warning("int8 candidate '%s' failed: %s", name, err)
            self.candidates[name] = {"failed": f"{type(err).__name__}: {err}"}
            return {}
        score = dict(extra, **self.compare(got))
        score["seconds"] = round(time.perf_counter() - start, 2)
        self.candidates[name] = score
        log.info("int8 candidate %s: %s", name, score)
        return score

    def compare(self, got: np.ndarray) -> dict:
        exp = self.expected.reshape(len(self.expected), -1)
        got = np.asarray(got, np.float64).reshape(exp.shape)
        scale = float(np.abs(exp).max()) or 1.0
        out = {"error": float(np.abs(got - exp).mean() / scale)}
        if self.expected.ndim == 2 and self.expected.shape[1] > 1:
            out["agreement"] = float(np.mean(exp.argmax(1) == got.argmax(1)))
        return out


def _converter_would_not_fold(graph: Graph, report: Report) -> bool:
    """Did kopt fold a BN that TFLite's converter leaves as MUL + ADD? The converter folds a BN
    that follows a conv / dense (linear, read by the BN alone), not one before a conv."""
    for app in report.applied:
        bn = next(graph[n] for n in app.nodes if graph[n].op == "BatchNormalization")
        lin = graph.single_producer(bn.name)
        if lin is None or lin.op not in FOLDS_INTO or lin.activation != "linear" \
                or graph.only_consumer(lin.name) is not bn:
            return True
    return False


def rule_for(name: str, x: np.ndarray) -> Rule:
    """A fresh instance of the rule STEPS names, given the calibration data it needs."""
    if name == "equalize_cross_layer":
        return EqualizeCrossLayer()
    if name == "equalize_concat_ranges":
        return EqualizeConcatRanges(x)
    if name == "correct_bias":
        return CorrectBias(x)
    raise KoptError(f"unknown int8 rewrite '{name}': choose from {STEPS}")


def _stack(model: Any, samples: list) -> np.ndarray | str:
    """The calibration samples as one array, or why the search does not run."""
    if len(getattr(model, "inputs", None) or []) != 1:
        return "the search runs on single-input models only"
    if model.inputs[0].shape[0] is not None:
        return "the model has a fixed batch size"
    if not samples:
        return "no calibration samples"
    return np.concatenate([np.asarray(s[0], np.float32) for s in samples])


def _done(figures: dict, start: float) -> dict:
    figures["seconds"] = round(time.perf_counter() - start, 2)
    return figures
