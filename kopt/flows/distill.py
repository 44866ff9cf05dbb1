"""Recover what an approximate rewrite cost: distil from the original model, or fine-tune.

Distillation (Hinton et al. 2015) trains the student on the teacher's softened distribution:
    L = alpha * CE(y, p_s) + (1 - alpha) * T^2 * CE(softmax(z_t / T), softmax(z_s / T))
The teacher is run once over the data before training (its outputs ride along as targets), so
no custom train step is needed and the student compiles in whatever tf.distribute scope the
caller opened. Models ending in softmax are handled by taking log-probabilities as logits
(softmax(log p / T) == softmax(z / T)). Outputs that are not class scores are distilled with a
mean squared error. Early stopping on a held-out split restores the best weights.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
from keras import ops

from kopt.errors import DataError

log = logging.getLogger(__name__)


def retrain(student: Any, teacher: Any = None, data: Any = None, epochs: int = 10,
            temperature: float = 4.0, alpha: float = 0.5, validation_split: float = 0.1,
            patience: int = 5, batch_size: int = 64, learning_rate: float = 1e-3,
            verbose: int = 0, seed: int = 0, recalibrate: bool = True) -> Any:
    """Train `student` (a Keras 3 model, changed in place and returned) on `data`: (x, y) or
    x alone. With a teacher: distillation (plus cross-entropy on y if given, weight `alpha`);
    without one: plain fine-tuning on y. Adam, its rate cosine-decayed from learning_rate to 0;
    Keras' global seeds are set to `seed` so that a run can be repeated.
    BatchNormalization moving statistics are re-estimated
    on x afterwards (recalibrate_bn), unless recalibrate=False."""
    x, y = data if isinstance(data, tuple) else (data, None)
    if x is None or len(x) == 0:
        raise DataError("retrain needs data: (x, y) or x")
    if teacher is None and y is None:
        raise DataError("retrain without a teacher needs labels: pass data=(x, y)")
    keras.utils.set_random_seed(seed)  # shuffling and dropout: the same run gives the same model
    x = np.asarray(x)
    order = np.random.default_rng(seed).permutation(len(x))
    x = x[order]
    out_dim = int(student.output_shape[-1])
    classes = len(student.output_shape) == 2
    probs = _ends_in_softmax(student)
    targets, parts = [], []
    if y is not None:
        y = np.asarray(y)[order]
        targets.append(y.astype(np.float32) if y.ndim == 2 else
                       np.eye(out_dim, dtype=np.float32)[y.astype(int)])
        parts.append(("labels", out_dim))
    if teacher is not None:
        soft = np.asarray(teacher.predict(x, batch_size=256, verbose=0), np.float32)
        targets.append(soft.reshape(len(x), -1))
        parts.append(("teacher", targets[-1].shape[1]))
    weight = 1.0 if teacher is None else (alpha if y is not None else 0.0)
    loss = DistillLoss(parts, classes, probs, temperature, weight)
    # the rate decays to 0 over the run (cosine): a rewritten model starts near a good optimum,
    # and a constant 1e-3 keeps bouncing around it (VGG width 48, prune 0.5: 98.7% vs 99.7%)
    steps = epochs * -(-int(len(x) * (1 - validation_split)) // batch_size)
    rate = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps))
    student.compile(optimizer=keras.optimizers.Adam(rate), loss=loss)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss" if validation_split else "loss",
                                         patience=patience, restore_best_weights=True)
    history = student.fit(x, np.concatenate(targets, axis=1), epochs=epochs,
                          batch_size=batch_size, validation_split=validation_split,
                          callbacks=[stop], verbose=verbose, shuffle=True)
    log.info("retrain: %d epochs, loss %.4f -> %.4f", len(history.history["loss"]),
             history.history["loss"][0], min(history.history["loss"]))
    return recalibrate_bn(student, x, seed=seed) if recalibrate else student


def _ends_in_softmax(model: Any) -> bool:
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    return type(last).__name__ == "Softmax" or getattr(act, "__name__", "") == "softmax"


@keras.saving.register_keras_serializable(package="kopt")
class DistillLoss(keras.losses.Loss):
    """Loss over y_true = [one-hot labels | teacher outputs] (either may be absent); a
    registered class so that a retrained model still clones and saves."""

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


def recalibrate_bn(model: Any, x: np.ndarray, batches: int = 60, batch_size: int = 64,
                   momentum: float = 0.9, seed: int = 0) -> Any:
    """Re-estimate BatchNormalization moving statistics with the weights as they now are.

    On a small data set Adam moves the weights faster than BN's moving averages (momentum
    0.99) follow them, so a model can score 99% in training mode and 15% in inference mode.
    Forward passes in training mode with a short memory fix that without touching any weight.
    """
    bns = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    if not bns:
        return model
    saved = [layer.momentum for layer in bns]
    rng = np.random.default_rng(seed)
    try:
        for layer in bns:
            layer.momentum = momentum
        for _ in range(batches):
            model(x[rng.choice(len(x), min(batch_size, len(x)), replace=False)], training=True)
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m
    return model
