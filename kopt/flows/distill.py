"""Recover what an approximate rewrite cost: distil from the original model, or fine-tune.

Distillation (Hinton et al. 2015) trains the student on the teacher's softened distribution:
    L = alpha * CE(y, p_s) + (1 - alpha) * T^2 * CE(softmax(z_t / T), softmax(z_s / T))
Data in memory (arrays, dicts of arrays): the teacher is run once over it before training (its
outputs ride along as targets), which is the cheap way when the teacher is the big model. A
stream (tf.data, PyDataset, generator) cannot be stored, so the teacher runs on each batch as it
is read, in a tf.data pipeline that prefetches ahead of training: a tf.data.Dataset is mapped
in-graph (labels to targets, the teacher, the checks), other streams pass through a Python
generator. Either way no custom train step
is needed and the student compiles in whatever tf.distribute scope the caller opened. Models
ending in softmax are handled by taking log-probabilities as logits
(softmax(log p / T) == softmax(z / T)). Outputs that are not class scores (regression values,
boxes, feature maps: see kopt.flows.tasks) are distilled, and fitted to their labels, with a mean
squared error; each output of a multi-output model gets its own loss. Early stopping restores
the best weights (on a held-out tenth of the data, of each pass for a stream).
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Any

import keras
import numpy as np
from keras import ops

from kopt.errors import DataError
from kopt.flows.tasks import (
    Head,
    batch_outputs,
    class_indices,
    class_targets,
    heads,
    labels_per_output,
    split_labels,
)
from kopt.keras_io import from_keras, to_keras
from kopt.keras_io.batches import Batches, sample_count, take_rows, unpack
from kopt.keras_io.probes import predict_outputs

log = logging.getLogger(__name__)


def retrain(student: Any, teacher: Any = None, data: Any = None, epochs: int = 10,
            temperature: float = 4.0, alpha: float = 0.5, validation_split: float = 0.1,
            patience: int = 5, batch_size: int = 64, learning_rate: float = 1e-3,
            verbose: int = 0, seed: int = 0, recalibrate: bool = True,
            steps_per_epoch: int | None = None,
            teacher_cache: TeacherCache | None = None) -> Any:
    """Train `student` (a Keras 3 model, changed in place and returned) on `data`: any form
    kopt.keras_io.batches.Batches reads ((x, y), x, a tf.data.Dataset, a PyDataset, a
    generator or a function returning one; steps_per_epoch bounds endless streams). With a
    teacher: distillation (plus the labels' loss if given, weight `alpha`); without one: plain
    fine-tuning on the labels. Adam, its rate cosine-decayed from learning_rate to 0; Keras'
    global seeds are set to `seed` so that a run can be repeated. In-memory data is shuffled
    here and its last `validation_split` drives early stopping; a stream is read as it comes,
    and the first `validation_split` of each pass's batches drives early stopping (the training
    loss does for a one-shot generator).
    BatchNormalization moving statistics are re-estimated on the data afterwards
    (recalibrate_bn), unless recalibrate=False. `teacher_cache` (a TeacherCache, for this
    teacher only) remembers a stream's teacher outputs across epochs and calls."""
    if data is None:
        raise DataError("retrain needs data: (x, y) or x")
    src = data if isinstance(data, Batches) else Batches(data, batch_size, steps_per_epoch,
                                                         student, "retrain data")
    options = dict(temperature=temperature, alpha=alpha, patience=patience,
                   learning_rate=learning_rate, verbose=verbose, seed=seed)
    if src.arrays is not None:
        fitted = _retrain_arrays(student, teacher, src, epochs, validation_split, batch_size,
                                 teacher_cache, **options)
    else:
        fitted = _retrain_stream(student, teacher, src, epochs, validation_split,
                                 teacher_cache, **options)
    return recalibrate_bn(student, fitted, seed=seed) if recalibrate else student


def _retrain_arrays(student: Any, teacher: Any, src: Batches, epochs: int,
                    validation_split: float, batch_size: int, cache: TeacherCache | None,
                    temperature: float, alpha: float, patience: int, learning_rate: float,
                    verbose: int, seed: int) -> Any:
    """Teacher outputs computed once (once for all calls with a `cache`); returns the
    (shuffled) inputs, for recalibration."""
    x, y, sw = src.arrays
    ys = labels_per_output(student, y)
    hs = heads(student, ys)
    _need_targets(teacher, ys)
    _seed(student, seed)
    n = sample_count(x)
    order = np.random.default_rng(seed).permutation(n)
    soft = None if teacher is None else \
        predict_outputs(teacher, take_rows(x, order), batch_size=256) if cache is None else \
        [out[order] for out in cache.of_arrays(teacher, x)]
    x = take_rows(x, order)
    ys = None if ys is None else [None if v is None else v[order] for v in ys]
    losses, targets = _losses(hs, ys, teacher, temperature, alpha), _targets(hs, ys, soft)
    # the rate decays to 0 over the run (cosine): a rewritten model starts near a good optimum,
    # and a constant 1e-3 keeps bouncing around it (VGG width 48, prune 0.5: 98.7% vs 99.7%)
    steps = epochs * -(-int(n * (1 - validation_split)) // batch_size)
    rate = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps))
    student.compile(optimizer=keras.optimizers.Adam(rate), loss=_one(losses))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss" if validation_split else "loss",
                                         patience=patience, restore_best_weights=True)
    history = student.fit(x, _one(targets), epochs=epochs, batch_size=batch_size,
                          validation_split=validation_split, callbacks=[stop], verbose=verbose,
                          shuffle=True, sample_weight=None if sw is None else sw[order])
    _log(history)
    return x


def _retrain_stream(student: Any, teacher: Any, src: Batches, epochs: int,
                    validation_split: float, cache: TeacherCache | None, temperature: float,
                    alpha: float, patience: int, learning_rate: float, verbose: int,
                    seed: int) -> Batches:
    """Teacher outputs computed per batch as the stream is read (or found in `cache`); the
    first `validation_split` of each pass's batches drives early stopping when the stream can
    be read again (as the last tenth of in-memory data does; the first, so that reaching them
    does not mean reading the whole pass again), else the training loss does. Returns the
    stream."""
    import tensorflow as tf

    steps = src.count()
    held = int(steps * validation_split) if src.reiterable else 0
    train, val = (src.view(held, steps), src.view(0, held)) if held else (src, None)
    first = src.peek(1)[0]
    ys = labels_per_output(student, first[1])
    hs = heads(student, ys)
    _need_targets(teacher, ys)
    _seed(student, seed)
    failed: list[Exception] = []

    def batch(x: Any, y: Any, sw: Any) -> tuple:
        ys = labels_per_output(student, y)
        if ys is not None:
            heads(student, ys)  # the labels of every batch are checked (class range, shape)
        soft = None if teacher is None else \
            batch_outputs(teacher, x) if cache is None else cache.outputs(teacher, x)
        t = _one(_targets(hs, ys, soft))
        x = tuple(x) if isinstance(x, list) else x
        return (x, t) if sw is None else (x, t, sw)

    def dataset(part: Batches) -> Any:
        if part.dataset() is not None:  # tf.data: the per-batch work stays inside tf.data
            return part.dataset().map(_graph_targets(student, teacher, hs, part.what),
                                      num_parallel_calls=tf.data.AUTOTUNE
                                      ).repeat().prefetch(tf.data.AUTOTUNE)
        spec = tf.nest.map_structure(lambda a: tf.TensorSpec((None,) + a.shape[1:], a.dtype),
                                     batch(*first))

        def endless() -> Any:  # Keras reads `steps` batches per epoch from one long iterator
            try:
                while True:
                    for b in part.pass_():
                        yield batch(*b)
            except DataError as err:  # tf.data would wrap it: keep it to raise as it is
                failed.append(err)
                raise

        return tf.data.Dataset.from_generator(endless, output_signature=spec).prefetch(2)

    rate = keras.optimizers.schedules.CosineDecay(learning_rate,
                                                  max(1, epochs * (steps - held)))
    student.compile(optimizer=keras.optimizers.Adam(rate),
                    loss=_one(_losses(hs, ys, teacher, temperature, alpha)))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss" if held else "loss",
                                         patience=patience, restore_best_weights=True)
    try:
        history = student.fit(dataset(train), epochs=epochs, steps_per_epoch=steps - held,
                              validation_data=dataset(val) if held else None,
                              validation_steps=held or None, callbacks=[stop],
                              verbose=verbose, shuffle=False)  # a stream comes shuffled or not
    except tf.errors.InvalidArgumentError as err:
        if _BAD_BATCH in str(err):  # a check inside the tf.data pipeline: say it plainly
            raise DataError(str(err).split(_BAD_BATCH, 1)[1].split("\n")[0].strip()) from None
        raise
    except Exception:
        if failed:
            raise failed[0] from None
        raise
    _log(history)
    return src


_BAD_BATCH = "kopt bad batch:"  # marks the tf.data pipeline's own checks in TensorFlow errors


def _graph_targets(student: Any, teacher: Any, hs: list[Head], what: str) -> Any:
    """The stream's per-batch work as a tf.data map function: labels checked (finite, in the
    class range) and turned into targets, inputs checked for NaN/inf, the teacher run (as a
    graph, in tf.data's threads, while the student trains). What a Python generator does for
    other streams, without a trip through Python per batch, so a tf.data pipeline trains as
    fast as arrays do. The teacher runs every epoch: there is no TeacherCache in a graph, and
    its forward pass costs less than the student's training step it overlaps."""
    import tensorflow as tf

    def finite(v: Any, name: str) -> Any:
        if v.dtype.is_floating:
            return tf.debugging.check_numerics(v, f"{_BAD_BATCH} {what}: NaN or inf in the {name}")
        return v

    def fn(*element: Any) -> tuple:
        x, y, sw = unpack(element)
        x = tf.nest.map_structure(lambda v: finite(v, "inputs"), x)
        x = tuple(x) if isinstance(x, list) else x
        ys = split_labels(student, y)
        soft = None
        if teacher is not None:
            out = teacher(x, training=False)
            soft = list(out) if isinstance(out, (list, tuple)) else [out]
        targets = []
        for i, h in enumerate(hs):
            cols = []
            if ys is not None and ys[i] is not None:
                cols.append(_graph_labels(h, finite(ys[i], "labels"), what))
            if soft is not None:
                s = tf.cast(soft[i], tf.float32)
                cols.append(tf.reshape(s, (tf.shape(s)[0], -1)))
            targets.append(tf.concat(cols, axis=1))
        return (x, _one(targets)) if sw is None else (x, _one(targets), sw)

    return fn


def _graph_labels(h: Head, y: Any, what: str) -> Any:
    """class_targets or the flattened values, in TensorFlow ops; class indices checked."""
    import tensorflow as tf

    n = tf.shape(y)[0]
    if not h.classes:
        return tf.reshape(tf.cast(y, tf.float32), (n, -1))
    width = h.shape[0]
    if y.shape.rank == 2 and y.shape[1] == width:
        return tf.cast(y, tf.float32)
    index = tf.cast(tf.reshape(y, (-1,)), tf.int64)
    bad = f"{_BAD_BATCH} {what}: labels out of range for output '{h.name}', which has " \
          f"{width} classes (0..{width - 1})"
    with tf.control_dependencies([tf.debugging.assert_non_negative(index, message=bad),
                                  tf.debugging.assert_less(index, tf.constant(width, tf.int64),
                                                           message=bad)]):
        return tf.one_hot(index, width, dtype=tf.float32)


class TeacherCache:
    """The teacher's outputs remembered per sample, keyed by a hash of the sample's bytes.

    A stream has to run the teacher on every batch it reads, every epoch. A finite stream
    read again brings back the same samples (in any order, any batching), so with this cache
    it pays once for a whole compress run. Samples never seen before (an endless or
    augmenting stream) are computed as they come, and the cache stops growing at `limit`
    bytes. In-memory data pays once per retrain without the cache, and once per run with it
    (of_arrays): a latency search retrains dozens of candidates on the same arrays, and the
    teacher's pass over them took 0.9-2.6 s of each ~13-s fine-tune (digits, VGG and tree
    examples). One cache per teacher.
    """

    def __init__(self, limit: int = 256 * 2**20):
        self.limit, self.size, self.hits, self.store = limit, 0, 0, {}
        self.arrays_key: bytes | None = None
        self.arrays_outputs: list[np.ndarray] = []

    def of_arrays(self, teacher: Any, x: Any) -> list[np.ndarray]:
        """The teacher's outputs on all of `x` (in memory), in its order: computed once, and
        again only when `x` changes (its samples' keys differ) or they would not fit `limit`."""
        key = b"".join(_sample_keys(x))
        if key == self.arrays_key:
            self.hits += sample_count(x)
            return self.arrays_outputs
        outputs = predict_outputs(teacher, x, batch_size=256)
        if sum(out.nbytes for out in outputs) <= self.limit:
            self.arrays_key, self.arrays_outputs = key, outputs
        return outputs

    def outputs(self, teacher: Any, x: Any) -> list[np.ndarray]:
        keys = _sample_keys(x)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        if len(missing) == len(keys) and self.size >= self.limit:
            return batch_outputs(teacher, x)
        rows: dict[int, tuple] = {}
        if missing:
            part = x if len(missing) == len(keys) else take_rows(x, np.asarray(missing))
            new = batch_outputs(teacher, part)
            for j, i in enumerate(missing):
                rows[i] = tuple(o[j].copy() for o in new)
                if self.size < self.limit:
                    self.store[keys[i]] = rows[i]
                    self.size += sum(r.nbytes for r in rows[i]) + 150  # + dict, tuple, arrays
        per_sample = [rows[i] if i in rows else self.store[k] for i, k in enumerate(keys)]
        return [np.stack([r[h] for r in per_sample]) for h in range(len(per_sample[0]))]


def _sample_keys(x: Any) -> list[bytes]:
    """A 128-bit key per sample: two sums of its bytes, read as 64-bit words, times fixed random
    odd multipliers (mod 2^64). Distinct samples collide with probability about 2^-100, and it
    costs a tenth of a cryptographic hash (0.3 ms for 64 images of 64x64x3)."""
    leaves = [x[k] for k in sorted(x)] if isinstance(x, dict) else \
        list(x) if isinstance(x, (list, tuple)) else [x]
    parts = [np.ascontiguousarray(a).reshape(len(a), -1).view(np.uint8) for a in leaves]
    rows = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    if rows.shape[1] % 8:
        rows = np.pad(rows, ((0, 0), (0, -rows.shape[1] % 8)))
    words = rows.view(np.uint64)
    keys = np.einsum("ij,kj->ik", words, _multipliers(words.shape[1]))  # wraps mod 2^64
    return [k.tobytes() for k in keys]


@functools.lru_cache(maxsize=8)
def _multipliers(width: int) -> np.ndarray:
    m = np.random.default_rng(width).integers(0, 2**63, (2, width), dtype=np.uint64)
    return m * np.uint64(2) + np.uint64(1)  # odd: a change in any one word changes the sum


def _seed(model: Any, seed: int) -> None:
    """Seed everything random in training: Keras' global seeds (shuffling, tf.random) and the
    model's own seed generators. A Dropout layer draws its generator's seed from Python's
    random state when it is built, so a candidate built later in a process (after other
    training drew from that state) would drop other units; reset from `seed` and the layer's
    position, the same call gives the same model."""
    keras.utils.set_random_seed(seed)
    for i, layer in enumerate(model._flatten_layers()):
        for j, gen in enumerate(getattr(layer, "_seed_generators", [])):
            gen.state.assign(np.array([seed * 100003 + i * 101 + j + 1, 0],
                                      gen.state.dtype))


def _need_targets(teacher: Any, ys: list | None) -> None:
    if teacher is None and (ys is None or any(v is None for v in ys)):
        raise DataError("retrain without a teacher needs labels: pass data=(x, y)")


def _losses(hs: list[Head], ys: list | None, teacher: Any, temperature: float,
            alpha: float) -> list:
    out = []
    for i, h in enumerate(hs):
        labelled = ys is not None and ys[i] is not None
        parts = []
        if labelled:
            width = h.shape[0] if h.classes else int(np.prod(h.shape))
            parts.append(("labels" if h.classes else "values", width))
        if teacher is not None:
            parts.append(("teacher", int(np.prod(h.shape))))
        weight = 1.0 if teacher is None else (alpha if labelled else 0.0)
        out.append(DistillLoss(parts, h.classes, h.probs, temperature, weight))
    return out


def _targets(hs: list[Head], ys: list | None, soft: list | None) -> list[np.ndarray]:
    """Per output: [labels (one-hot for classes) | teacher outputs], flattened, float32."""
    out = []
    for i, h in enumerate(hs):
        cols = []
        if ys is not None and ys[i] is not None:
            y = ys[i]
            cols.append(class_targets(h, y) if h.classes else
                        y.reshape(len(y), -1).astype(np.float32))
        if soft is not None:
            cols.append(np.asarray(soft[i], np.float32).reshape(len(soft[i]), -1))
        out.append(np.concatenate(cols, axis=1))
    return out


def _one(values: list) -> Any:
    return values[0] if len(values) == 1 else tuple(values)


def _log(history: Any) -> None:
    log.info("retrain: %d epochs, loss %.4f -> %.4f", len(history.history["loss"]),
             history.history["loss"][0], min(history.history["loss"]))


@keras.saving.register_keras_serializable(package="kopt")
class DistillLoss(keras.losses.Loss):
    """Loss over y_true = [labels | teacher outputs] (either may be absent) for one output;
    parts name them: "labels" (one-hot or class rows: cross-entropy), "values" (regression
    labels: squared error), "teacher" (soft targets for class scores, else squared error).
    A registered class so that a retrained model still clones and saves."""

    def __init__(self, parts: list, classes: bool = True, probs: bool = False,
                 temperature: float = 4.0, alpha: float = 0.5, **kwargs: Any):
        super().__init__(name=kwargs.pop("name", "distill"), **kwargs)
        self.parts = [(str(k), int(w)) for k, w in parts]
        self.classes, self.probs = classes, probs
        self.temperature, self.alpha = temperature, alpha

    def _logits(self, p: Any) -> Any:
        return ops.log(ops.clip(p, 1e-7, 1.0)) if self.probs else p

    def call(self, y_true: Any, y_pred: Any) -> Any:
        total, start, t = 0.0, 0, self.temperature
        flat = ops.reshape(y_pred, (ops.shape(y_pred)[0], -1))
        for kind, width in self.parts:
            target = y_true[:, start:start + width]
            start += width
            if kind == "labels":
                ce = -ops.sum(target * ops.log_softmax(self._logits(flat), axis=-1), axis=-1)
                total = total + self.alpha * ce
            elif kind == "values":
                total = total + self.alpha * ops.mean(ops.square(target - flat), axis=-1)
            elif self.classes:
                soft = ops.softmax(self._logits(target) / t, axis=-1)
                log_s = ops.log_softmax(self._logits(flat) / t, axis=-1)
                total = total - (1.0 - self.alpha) * t * t * ops.sum(soft * log_s, axis=-1)
            else:
                total = total + (1.0 - self.alpha) * ops.mean(ops.square(target - flat), axis=-1)
        return total

    def get_config(self) -> dict:
        return dict(super().get_config(), parts=self.parts, classes=self.classes,
                    probs=self.probs, temperature=self.temperature, alpha=self.alpha)


def recalibrate_bn(model: Any, data: Any, batches: int = 60, batch_size: int = 64,
                   momentum: float = 0.9, seed: int = 0) -> Any:
    """Re-estimate BatchNormalization moving statistics with the weights as they now are.
    Changes `model` in place (no weight changes, only BN's moving mean and variance) and
    returns it; copy the model first to keep the old statistics.

    On a small data set Adam moves the weights faster than BN's moving averages (momentum
    0.99) follow them, so a model can score 99% in training mode and 15% in inference mode.
    Forward passes in training mode with a short memory fix that without touching any weight.
    `data` may be any form kopt reads: arrays (x or (x, y); `batches` random batches of
    `batch_size` are drawn from them) or a stream (a tf.data.Dataset, PyDataset, generator:
    its first `batches` batches are used as they come, passing over it again if it is shorter
    and can be read again).
    """
    bns = _bn_layers(model)
    if not bns:
        return model
    src = data if isinstance(data, Batches) else Batches(data, batch_size, model=model,
                                                         what="recalibration data")
    saved = [layer.momentum for layer in bns]
    rng = np.random.default_rng(seed)
    try:
        for layer in bns:
            layer.momentum = momentum
        forward = _training_pass(model)  # traced after the momentum is set: it is baked in
        if src.arrays is not None:
            x = src.arrays[0]
            n = sample_count(x)
            for _ in range(batches):
                forward(take_rows(x, rng.choice(n, min(batch_size, n), replace=False)))
        else:  # a re-iterable stream shorter than `batches` is read again
            passes = itertools.chain.from_iterable(src.pass_() for _ in itertools.count()) \
                if src.reiterable else src.pass_()
            for _, (x, _, _) in zip(range(batches), passes):
                forward(x)
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m
    return model


def _training_pass(model: Any) -> Any:
    """model(x, training=True) as one traced function: sixty eager passes of MobileNetV2 0.35
    at 96x96 took 14 s per candidate of a latency search, most of it Keras' per-layer Python,
    against a 30 s fine-tune."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=True), reduce_retracing=True)


def _bn_layers(model: Any) -> list:
    """BatchNormalization layers of `model`, inside nested models too."""
    out = []
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            out.append(layer)
        elif hasattr(layer, "layers"):
            out.extend(_bn_layers(layer))
    return out


def _average_bn(model: Any, x: Any, batch_size: int = 64) -> Any:
    """Set BN moving statistics to the mean of the batch statistics over one pass of x (in
    order): the momentum of batch i is i / (i + 1), so nothing of the old statistics is left
    and every batch counts the same. Less noisy on a small sample than recalibrate_bn's
    exponential average, which weighs the last ten batches most."""
    bns = _bn_layers(model)
    saved = [layer.momentum for layer in bns]
    try:
        for i, start in enumerate(range(0, sample_count(x), batch_size)):
            for layer in bns:
                layer.momentum = i / (i + 1)
            model(take_rows(x, slice(start, start + batch_size)), training=True)
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m
    return model


def bn_drift(model: Any, x: Any, labels: Any = None) -> dict | None:
    """How much re-estimating BatchNormalization statistics on `x` (a sample, in memory)
    would change the model's outputs on it; None when the model has no BatchNormalization.
    The copy's statistics are the mean over x's batches of 64 (what training mode uses).

    Inference mode normalises with the moving statistics, training mode with the batch's own;
    when the moving averages lag the weights the two disagree, and every accuracy measured in
    inference mode (the baseline compress compares against) is broken. A copy is recalibrated
    and both are run in inference mode, so dropout and other training-only layers do not
    count. Returns {samples, relative (RMS difference / RMS of the recalibrated outputs, the
    largest over outputs), and for class scores agreement (top-1 of both equal), and with
    labels accuracy and accuracy_recalibrated}.
    """
    if not _bn_layers(model):
        return None
    fresh = _average_bn(to_keras(from_keras(model)), x)
    before = predict_outputs(model, x, batch_size=256)
    after = predict_outputs(fresh, x, batch_size=256)
    rel = max(float(np.sqrt(np.sum(np.square(b - a)) / max(np.sum(np.square(a)), 1e-30)))
              for b, a in zip(before, after))
    out: dict = dict(samples=sample_count(x), relative=rel)
    hs = heads(model, None if labels is None else labels_per_output(model, labels))
    if hs[0].classes:
        top_b, top_a = np.argmax(before[0], axis=-1), np.argmax(after[0], axis=-1)
        out["agreement"] = float(np.mean(top_b == top_a))
        if labels is not None:
            truth = class_indices(labels_per_output(model, labels)[0])
            out["accuracy"] = float(np.mean(top_b == truth))
            out["accuracy_recalibrated"] = float(np.mean(top_a == truth))
    return out
