"""What a model's outputs are and how compress scores it: class heads or dense heads, labels
checked against them, and the metric that decides which approximate step is kept.

A head (one model output) is a class head when its samples are vectors of two or more scores
and either its labels are class indices or one-hot / probability rows, or, without labels, it
ends in softmax. Class heads get top-1 accuracy and soft-target distillation; every other head
(a regression value, a box, a feature map, or logits nobody labelled) is scored by fidelity to
the original model's outputs and distilled with a mean squared error.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from kopt.errors import DataError
from kopt.keras_io.batches import Batches
from kopt.keras_io.probes import predict_outputs

ACCURACY = ("accuracy", "acc", "top1", "top-1", "top_1")
FIDELITY_DROP = 0.02  # default max_metric_drop for fidelity: 2% relative RMS error allowed


@dataclass(frozen=True)
class Head:
    """One model output: its name, sample shape, and how it is read."""

    name: str
    shape: tuple
    classes: bool  # a vector of class scores: top-1 and soft targets make sense
    probs: bool  # ends in softmax: its scores are probabilities, not logits


def output_names(model: Any) -> list[str]:
    return [t._keras_history.operation.name if hasattr(t, "_keras_history") else f"output_{i}"
            for i, t in enumerate(model.outputs)]


def labels_per_output(model: Any, y: Any) -> list[np.ndarray | None] | None:
    """Labels as a list aligned with the model's outputs (y may be an array for a single
    output, a list in output order, or a dict by output name); None without labels."""
    ys = split_labels(model, y)
    return None if ys is None else [None if v is None else np.asarray(v) for v in ys]


def split_labels(model: Any, y: Any) -> list | None:
    """labels_per_output without converting to numpy: the labels' own objects (tensors in a
    tf.data pipeline) in output order."""
    if y is None:
        return None
    names = output_names(model)
    if isinstance(y, dict):
        unknown = sorted(set(y) - set(names))
        if unknown:
            raise DataError(f"labels for {unknown}, but the model's outputs are {names}")
        return [y.get(n) for n in names]
    ys = list(y) if isinstance(y, (list, tuple)) else [y]
    if len(ys) != len(names):
        raise DataError(f"{len(ys)} label arrays for the model's {len(names)} outputs {names}")
    return ys


def heads(model: Any, ys: list | None) -> list[Head]:
    """One Head per model output; `ys` (labels per output, or None) decides class or not, and
    is checked against the output (class range, shape), raising DataError."""
    out = []
    for i, (t, name) in enumerate(zip(model.outputs, output_names(model))):
        shape = tuple(t.shape[1:])
        y = None if ys is None else ys[i]
        vector = len(shape) == 1 and (shape[0] or 0) >= 2
        probs = _ends_in_softmax(t)
        classes = vector and (probs if y is None else _class_labels(y, shape[0]))
        head = Head(name, shape, bool(classes), probs)
        if y is not None:
            _check_labels(head, y)
        out.append(head)
    return out


def _ends_in_softmax(t: Any) -> bool:
    layer = t._keras_history.operation if hasattr(t, "_keras_history") else None
    act = getattr(layer, "activation", None)
    return type(layer).__name__ == "Softmax" or getattr(act, "__name__", "") == "softmax"


def _class_labels(y: np.ndarray, width: int) -> bool:
    """Class indices ((n,) or (n, 1) whole numbers) or class rows ((n, width), each a
    probability distribution: one-hot or smoothed)."""
    if y.ndim == 1 or y.ndim == 2 and y.shape[1] == 1:
        return y.dtype.kind in "iub" or y.dtype.kind == "f" and bool(np.all(y == np.round(y)))
    if y.ndim == 2 and y.shape[1] == width and y.dtype.kind in "iubf":
        return bool(np.all((y >= 0) & (y <= 1)) and np.allclose(y.sum(axis=1), 1, atol=1e-3))
    return False


def _check_labels(head: Head, y: np.ndarray) -> None:
    if y.dtype.kind not in "iubf":
        raise DataError(f"labels for output '{head.name}' have dtype {y.dtype}: need numbers")
    if head.classes:
        if y.ndim == 2 and y.shape[1] == head.shape[0]:
            return
        lo, hi, width = int(np.min(y)), int(np.max(y)), head.shape[0]
        if lo < 0 or hi >= width:
            raise DataError(f"labels out of range for output '{head.name}': they run from "
                            f"{lo} to {hi}, the output has {width} classes (0..{width - 1})")
        return
    size = int(np.prod([d or 0 for d in head.shape]))
    got = int(np.prod(y.shape[1:]))
    if size and got != size:
        raise DataError(f"labels of shape {y.shape} do not fit output '{head.name}' of shape "
                        f"{(None,) + head.shape}")


def class_indices(y: np.ndarray) -> np.ndarray:
    """Class indices from indices or class rows."""
    return np.argmax(y, axis=-1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)


def class_targets(head: Head, y: np.ndarray) -> np.ndarray:
    """One-hot (or the given class rows) as float32, for the cross-entropy part of distillation."""
    if y.ndim == 2 and y.shape[1] == head.shape[0]:
        return y.astype(np.float32)
    return np.eye(head.shape[0], dtype=np.float32)[y.reshape(-1).astype(int)]


# ---- metrics --------------------------------------------------------------------------------
class Metric:
    """What decides whether a step is kept: `score` on validation data, and `kept(score, base)`:
    within `drop` of the original's score (in the metric's units; for mode "min", a rise).

    kind "accuracy": top-1 on the first output, against labels or, without them, the
    original's top-1. kind "fidelity": 1 - relative RMS error of every output against the
    original's, averaged over outputs (1.0 is the original itself). kind "keras": a Keras
    metric (name or object) on the first output, fresh state each evaluation. kind "callable":
    fn(y_true, y_pred) -> float per batch, averaged over samples (arrays for a single output,
    lists for several). Without labels, y_true is the original's output.
    """

    def __init__(self, kind: str, name: str, mode: str, drop: float, fn: Any = None):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got '{mode}'")
        self.kind, self.name, self.mode, self.drop, self.fn = kind, name, mode, float(drop), fn

    def __repr__(self) -> str:
        sign = "-" if self.mode == "max" else "+"
        return f"{self.name} ({'higher' if self.mode == 'max' else 'lower'} is better, " \
               f"kept within {sign}{self.drop:g})"

    @property
    def is_accuracy(self) -> bool:
        return self.kind == "accuracy"

    def kept(self, score: float, base: float, drop: float | None = None) -> bool:
        """Whether `score` is within `drop` (default: this metric's) of `base`."""
        drop = self.drop if drop is None else drop
        if self.mode == "max":
            return score >= base - drop - 1e-9
        return score <= base + drop + 1e-9

    def needs_reference(self, labelled: bool) -> bool:
        return self.kind == "fidelity" or not labelled

    def score(self, model: Any, data: Batches, reference: Any = None,
              cache: dict | None = None) -> float:
        """The metric of `model` on `data`: arrays in one predict (batches of 256), streams
        batch by batch. `reference` is the original model (fidelity, or labels missing);
        `cache` keeps its outputs on in-memory data between calls."""
        acc = _Accumulator(self)
        if data.arrays is not None:
            x, y, sw = data.arrays
            ys = labels_per_output(model, y)
            ref = None
            if self.needs_reference(_labelled(ys)):
                key = id(data)
                if cache is not None and key in cache:
                    ref = cache[key]
                else:
                    ref = predict_outputs(reference, x, batch_size=256)
                    if cache is not None:
                        cache[key] = ref
            acc.update(ys, predict_outputs(model, x, batch_size=256), ref, sw)
            return acc.result()
        for x, y, sw in data:
            ys = labels_per_output(model, y)
            if ys is not None:
                heads(model, ys)  # every batch's labels are checked against the outputs
            ref = batch_outputs(reference, x) if self.needs_reference(_labelled(ys)) else None
            acc.update(ys, batch_outputs(model, x), ref, sw)
        if acc.count < data.batch_size:
            raise DataError(f"{data.what} holds {acc.count} samples, fewer than one batch "
                            f"({data.batch_size}): too few to decide on")
        return acc.result()


def _labelled(ys: list | None) -> bool:
    """Whether the first output, the one metrics score, has labels."""
    return ys is not None and ys[0] is not None


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def batch_outputs(model: Any, x: Any) -> list[np.ndarray]:
    """Inference outputs of one batch, always a list, through a tf.function compiled once per
    model: Keras' predict costs milliseconds of set-up per call, and predict_on_batch inside a
    MirroredStrategy returns every replica's copy of the batch."""
    fn = _COMPILED.get(model)
    if fn is None:
        import tensorflow as tf

        ref = weakref.ref(model)  # the cache must not keep candidate models alive
        fn = _COMPILED[model] = tf.function(lambda v: ref()(v, training=False),
                                            reduce_retracing=True)
    out = fn(tuple(x) if isinstance(x, list) else x)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


class _Accumulator:
    """Sums over batches, so a stream is scored without keeping it."""

    def __init__(self, metric: Metric):
        self.metric, self.count, self.total, self.weight = metric, 0, 0.0, 0.0
        self.sums: dict[int, list[float]] = {}
        self.keras = None
        if metric.kind == "keras":
            self.keras = type(metric.fn).from_config(metric.fn.get_config())

    def update(self, ys: list | None, preds: list, ref: list | None, sw: Any) -> None:
        m, n = self.metric, len(preds[0])
        truth = ys if _labelled(ys) else ref
        w = np.ones(n) if sw is None else np.asarray(sw, np.float64).reshape(-1)
        self.count += n
        if m.kind == "accuracy":
            labels = class_indices(ys[0]) if _labelled(ys) else np.argmax(ref[0], axis=-1)
            self.total += float(np.sum((np.argmax(preds[0], axis=-1) == labels) * w))
            self.weight += float(np.sum(w))
        elif m.kind == "fidelity":
            for i, (p, r) in enumerate(zip(preds, ref)):
                wi = w.reshape((-1,) + (1,) * (p.ndim - 1))
                sums = self.sums.setdefault(i, [0.0, 0.0])
                sums[0] += float(np.sum(wi * np.square(p - r)))
                sums[1] += float(np.sum(wi * np.square(r)))
        elif m.kind == "keras":
            self.keras.update_state(truth[0], preds[0], sample_weight=sw)
        else:
            single = len(preds) == 1
            self.total += float(m.fn(truth[0] if single else truth,
                                     preds[0] if single else preds)) * n

    def result(self) -> float:
        m = self.metric
        if m.kind == "accuracy":
            return self.total / self.weight
        if m.kind == "fidelity":
            errors = [np.sqrt(d / max(r, 1e-30)) for d, r in self.sums.values()]
            return float(1.0 - np.mean(errors))
        if m.kind == "keras":
            return float(self.keras.result())
        return self.total / self.count


def resolve_metric(metric: Any, mode: str | None, max_metric_drop: float | None,
                   max_accuracy_drop: float, hs: list[Head]) -> Metric:
    """The Metric for compress's `metric=` (None: top-1 accuracy when the first output is a
    class head, else fidelity), `mode` (None: from the metric; callables default to "max")
    and tolerance: `max_metric_drop` in the metric's units; without it, `max_accuracy_drop`
    for accuracy metrics and FIDELITY_DROP for fidelity; other metrics must be given one."""
    if metric is None:
        metric = "accuracy" if hs[0].classes else "fidelity"
    if isinstance(metric, str) and metric.lower() in ACCURACY:
        if not hs[0].classes and not (len(hs[0].shape) == 1 and (hs[0].shape[0] or 0) >= 2):
            raise DataError(f"metric 'accuracy' needs class scores, but output '{hs[0].name}' "
                            f"has samples of shape {hs[0].shape}")
        return Metric("accuracy", f"top-1 accuracy of '{hs[0].name}'", mode or "max",
                      max_accuracy_drop if max_metric_drop is None else max_metric_drop)
    if isinstance(metric, str) and metric.lower() == "fidelity":
        return Metric("fidelity", "fidelity to the original's outputs", mode or "max",
                      FIDELITY_DROP if max_metric_drop is None else max_metric_drop)
    kind, fn, name = _user_metric(metric)
    if mode is None:
        mode = "min" if getattr(fn, "_direction", "up") == "down" else "max"
    if max_metric_drop is None:
        if "acc" not in name.lower():
            raise TypeError(f"metric '{name}' is in its own units: pass max_metric_drop= (the "
                            "largest drop allowed, or rise for mode='min')")
        max_metric_drop = max_accuracy_drop
    return Metric(kind, name, mode, max_metric_drop, fn)


def _user_metric(metric: Any) -> tuple[str, Any, str]:
    import keras

    if isinstance(metric, str) or isinstance(metric, type):
        try:
            metric = keras.metrics.get(metric)
        except ValueError as err:
            raise ValueError(f"unknown metric {metric!r}: {err}") from None
    if isinstance(metric, type):
        metric = metric()
    if isinstance(metric, keras.metrics.Metric):
        return "keras", metric, metric.name
    if callable(metric):
        if getattr(metric, "__module__", "").startswith("keras."):  # a Keras loss or metric fn
            wrapped = keras.metrics.MeanMetricWrapper(metric, name=metric.__name__)
            return "keras", wrapped, wrapped.name
        return "callable", metric, getattr(metric, "__name__", type(metric).__name__)
    raise ValueError(f"metric must be a name, a keras.metrics.Metric or a callable "
                     f"(y_true, y_pred) -> float, got {type(metric).__name__}")
