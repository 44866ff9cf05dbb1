"""What both data flows (kopt.flows.compress and the latency search, kopt.flows.targeted)
start from: the data read as Batches, the metric that decides, validation held out of the data
when none is given, the BatchNormalization check, and the calibration sample the rules read.

Arrays are used in memory, as they always were. Streams are never stored: the rules calibrate
on a bounded sample (the first CALIBRATION samples), distillation reads the stream batch by
batch, and validation is scored batch by batch on every evaluation.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kopt.errors import DataError, StaleBatchNormWarning
from kopt.flows.distill import TeacherCache, bn_drift, recalibrate_bn as _recalibrate
from kopt.flows.tasks import Metric, heads, labels_per_output, resolve_metric
from kopt.keras_io import from_keras, to_keras
from kopt.keras_io.frontend import check_model
from kopt.keras_io.batches import Batches, sample_count, take_rows
from kopt.rewriting import PassManager
from rewrites.split_separable import SEPARABLE, SplitSeparable

log = logging.getLogger(__name__)

CALIBRATION = 512  # samples drawn once: the BN check reads all, the rules their first 256
HOLD_OUT = 0.15  # share of data held out for validation when none is given
STALE_RELATIVE = 0.25  # BN statistics are stale when recalibrating moves outputs this much
STALE_AGREEMENT = 0.9  # ... or keeps fewer top-1 predictions than this


@dataclass
class Prepared:
    """The start of a data flow. `original`: the model every candidate is distilled from and
    compared with (the caller's, or a recalibrated copy); `fit_data`: what retrain reads
    (arrays, or the training stream); `calibration`: samples in memory for the rules (all of
    the training arrays, or the first CALIBRATION samples of a stream); `teacher_cache`: the
    original's outputs kept across calls (arrays) or passes (a finite stream)."""

    original: Any
    train: Batches
    val: Batches
    fit_data: Any
    calibration: Any
    metric: Metric
    teacher_cache: TeacherCache | None
    references: dict = field(default_factory=dict)  # the original's outputs, per data set

    def score(self, candidate: Any, on: Batches | None = None) -> float:
        """The metric of `candidate` on validation (or `on`), in the metric's own sense."""
        return self.metric.score(candidate, self.val if on is None else on,
                                 reference=self.original, cache=self.references)


def prepare(model: Any, data: Any, validation: Any = None, max_accuracy_drop: float = 0.005,
            *, metric: Any = None, mode: str | None = None, max_metric_drop: float | None = None,
            batch_size: int = 64, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, recalibrate_bn: bool = False) -> Prepared:
    """Read `data` and `validation` (any form kopt.keras_io.batches.Batches takes), resolve
    the metric (kopt.flows.tasks.resolve_metric), hold out validation when none is given,
    check (or with recalibrate_bn re-estimate) BatchNormalization statistics, and split
    separable convs (split_separable: the original keeps its function and its .tflite). Raises
    DataError on data that does not fit the model, UnsupportedModelError on a model kopt
    cannot lift (checked first: reading data needs the model's inputs)."""
    check_model(model)
    train = Batches(data, batch_size, steps_per_epoch, model, "data")
    given = labels_per_output(model, train.arrays[1] if train.arrays is not None else
                              train.peek(1)[0][1])
    hs = heads(model, given)
    chosen = resolve_metric(metric, mode, max_metric_drop, max_accuracy_drop, hs)
    log.info("deciding on %r", chosen)
    if train.arrays is not None:
        calib_x, calib_y = train.sample(CALIBRATION)
        original = _check_batchnorm(model, train, calib_x, calib_y, recalibrate_bn)
        train, val = _split_arrays(original, train, validation, hs, given)
        calibration = train.arrays[0]  # the rules take their first samples
        fit_data: Any = train.arrays if train.arrays[2] is not None else train.arrays[:2]
    else:  # held out first, so that the rules never calibrate on validation batches
        train, val = _split_stream(train, validation, validation_steps)
        calib_x, calib_y = train.sample(CALIBRATION)
        original = _check_batchnorm(model, train, calib_x, calib_y, recalibrate_bn)
        calibration, fit_data = calib_x, train
    if validation is not None:
        val = validation_batches(validation, batch_size, validation_steps, original,
                                 "validation")
    # arrays, or a stream read again, give the same samples back: their teacher outputs are kept
    cache = TeacherCache() if train.arrays is not None or train.reiterable else None
    return Prepared(split_separable(original), train, val, fit_data, calibration, chosen, cache)


def split_separable(model: Any) -> Any:
    """`model` with its SeparableConv layers split into a depthwise and a 1x1 conv (exact, and
    the same .tflite ops: rewrites/split_separable.py), so that pruning can reach their
    widths; `model` itself when it has none."""
    g = from_keras(model)
    if not g.nodes_of(*SEPARABLE):
        return model
    g, report = PassManager([SplitSeparable()]).run(g, reference=model)
    log.info("split %d separable conv(s) for pruning", len(report.applied))
    return to_keras(g)


def _split_arrays(model: Any, train: Batches, validation: Any, hs: list, given: list | None
                  ) -> tuple[Batches, Batches | None]:
    """In-memory data as it always was: a single classifier without labels gets the
    original's top-1 as labels; the last HOLD_OUT of the samples is validation unless given."""
    x, y, sw = train.arrays
    if given is None and len(hs) == 1 and hs[0].classes:
        y = np.argmax(np.asarray(model.predict(x, batch_size=256, verbose=0)), axis=-1)
    n = sample_count(x)
    if validation is not None:
        return _arrays(train, x, y, sw, "data"), None
    cut = int((1 - HOLD_OUT) * n)
    log.info("no validation data given; holding out the last %d samples of data",
             n - cut)
    head, tail = slice(0, cut), slice(cut, n)
    val = _arrays(train, take_rows(x, tail), take_rows(y, tail), take_rows(sw, tail),
                  "validation (held out of data)")
    _at_least_a_batch(val)
    return _arrays(train, take_rows(x, head), take_rows(y, head), take_rows(sw, head), "data"), val


def _arrays(like: Batches, x: Any, y: Any, sw: Any, what: str) -> Batches:
    out = Batches((x, y, sw), like.batch_size, what=what)
    out.inputs = like.inputs
    return out


def _split_stream(train: Batches, validation: Any, validation_steps: int | None
                  ) -> tuple[Batches, Batches | None]:
    """Without validation the first HOLD_OUT of each pass's batches is held out: read again
    each time from a source that restarts, kept in memory from a one-shot generator."""
    if validation is not None:
        return train, None
    n = train.count()
    k = validation_steps or max(1, math.ceil(HOLD_OUT * n))
    if k >= n:
        raise DataError(f"data has {n} batches per pass: too few to hold out {k} for "
                        "validation; pass validation= (or more steps_per_epoch)")
    log.info("no validation data given; holding out the first %d of %d batches of "
             "each pass", k, n)
    if train.reiterable:
        return train.view(k, None, steps=n - k), train.view(0, k)
    val = train.head(k, "validation (held out of data)")
    train.steps = n - k
    return train, val


def validation_batches(data: Any, batch_size: int, steps: int | None, model: Any,
                what: str) -> Batches:
    """Validation (or a probe set) read as Batches: a one-shot generator is read once and kept,
    so that every step is scored on the same samples."""
    val = Batches(data, batch_size, steps, model, what)
    if not val.reiterable:
        log.info("%s is a one-shot generator: keeping its batches in memory to score "
                 "every step on them (pass a function returning a fresh one to stream it)", what)
        val = val.head(steps or 2**62, what)
    if val.arrays is not None:
        _at_least_a_batch(val)
        heads(model, labels_per_output(model, val.arrays[1]))  # labels fit the outputs
    return val


def _at_least_a_batch(val: Batches) -> None:
    n = sample_count(val.arrays[0])
    if n < val.batch_size:
        raise DataError(f"{val.what} holds {n} samples, fewer than one batch "
                        f"({val.batch_size}): too few to decide on (its accuracy moves in steps "
                        f"of 1/{n})")


def _check_batchnorm(model: Any, train: Batches, x: Any, y: Any, recalibrate: bool) -> Any:
    """The model the flow starts from: `model`, or with recalibrate a recalibrated copy.
    Warns when BatchNormalization's moving statistics disagree with the data."""
    if recalibrate:
        copy = to_keras(from_keras(model))
        log.info("recalibrating BatchNormalization statistics on a copy of the model")
        return _recalibrate(copy, train.arrays[0] if train.arrays is not None else train)
    drift = bn_drift(model, x, y)
    if drift is None:
        return model
    stale = drift["relative"] > STALE_RELATIVE or drift.get("agreement", 1.0) < STALE_AGREEMENT
    log.info("BatchNormalization check on %d samples: %s", drift["samples"], drift)
    if stale:
        warnings.warn(_stale_message(drift), StaleBatchNormWarning, stacklevel=3)
    return model


def _stale_message(d: dict) -> str:
    parts = [f"outputs change by {d['relative']:.0%} (relative RMS)"]
    if "agreement" in d:
        parts.append(f"top-1 changes on {1 - d['agreement']:.0%} of samples")
    if "accuracy" in d:
        parts.append(f"accuracy {d['accuracy']:.1%} in inference mode against "
                     f"{d['accuracy_recalibrated']:.1%} with statistics from the data")
    return ("BatchNormalization moving statistics look stale: re-estimating them on "
            f"{d['samples']} samples of the data, {', '.join(parts)}. Inference and training "
            "mode disagree, so every score kopt measures (in inference mode) starts from a "
            "broken baseline. Call kopt.recalibrate_bn(model, data) first (it changes the model "
            "in place), or pass recalibrate_bn=True to optimize a recalibrated copy.")
