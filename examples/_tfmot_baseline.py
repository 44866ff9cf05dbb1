"""Comparison baseline for the seed examples: tensorflow-model-optimization magnitude pruning.

tfmot zeroes the smallest weights of each Conv/Dense kernel while fine-tuning, then strips its
wrappers. The tensors keep their shapes, so the .tflite file is as large and as slow as the
unpruned one; only a general-purpose compressor sees the zeros. That is why the honest size to
report for this baseline is `gzip_bytes` of the file, next to kopt's structurally smaller model.
"""

from __future__ import annotations

import gzip
import math
import os
from typing import Any

import numpy as np

from kopt.flows.distill import recalibrate_bn
from kopt.keras_io import to_keras
from kopt.keras_io import from_keras

PRUNED_LAYERS = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv1D",
                 "SeparableConv2D", "Conv2DTranspose", "Dense")
PRUNING_UPDATES = 16  # mask updates over the ramp of the schedule
RAMP_FRACTION = 0.7   # the schedule reaches its final sparsity at ~70% of the fine-tuning steps


def magnitude_prune(model: Any, data: tuple, validation: tuple, max_accuracy_drop: float = 0.005,
                    sparsities: tuple[float, ...] = (0.9, 0.8, 0.7, 0.5), epochs: int = 5,
                    batch_size: int = 64, seed: int = 0) -> tuple[Any, dict]:
    """-> (stripped tf_keras model, info dict): the most aggressive of `sparsities` whose
    validation accuracy stays within `max_accuracy_drop` of the original's.

    `model` is a trained Keras 3 softmax classifier with integer labels. tfmot only wraps
    tf_keras models, so a tf_keras copy is emitted from kopt's IR (the original is untouched).
    Every try starts from a fresh copy of the original weights. If no sparsity qualifies the
    least aggressive one is returned and info["met"] is False.
    """
    import tf_keras

    tfmot = _tfmot()
    x, y = np.asarray(data[0]), np.asarray(data[1])
    xv, yv = np.asarray(validation[0]), np.asarray(validation[1])
    graph = from_keras(model)
    _check_conversion(model, to_keras(graph, backend="tf_keras"), xv)
    baseline = _accuracy(model, xv, yv)

    steps = epochs * math.ceil(len(x) / batch_size)
    ramp = max(1, int(RAMP_FRACTION * steps))
    # tfmot updates masks only on steps that are multiples of `frequency` counted from
    # begin_step; end_step must be one of them, or the final sparsity is never applied.
    frequency = max(1, ramp // PRUNING_UPDATES)
    end_step = ramp // frequency * frequency

    tried: list[tuple[float, float]] = []
    before_recal: list[tuple[float, float]] = []
    chosen: tuple[float, float, Any] | None = None
    last: tuple[float, float, Any] | None = None
    for sparsity in sparsities:
        tf_keras.utils.set_random_seed(seed)
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=float(sparsity), begin_step=0,
            end_step=end_step, frequency=frequency)
        pruned = tfmot.sparsity.keras.prune_low_magnitude(
            to_keras(graph, backend="tf_keras"), pruning_schedule=schedule)
        pruned.compile(optimizer=tf_keras.optimizers.Adam(1e-3),
                       loss="sparse_categorical_crossentropy")
        pruned.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
                   callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        stripped = tfmot.sparsity.keras.strip_pruning(pruned)
        before_recal.append((float(sparsity), _accuracy(stripped, xv, yv)))
        # BN moving averages (momentum 0.99) trail weights that Adam and the masks keep moving;
        # re-estimating them with the final weights fixes a model that only fails in inference
        # mode, and changes no weight (so sparsity is kept). kopt's side gets the same step.
        recalibrate_bn(stripped, x, seed=seed)
        acc = _accuracy(stripped, xv, yv)
        tried.append((float(sparsity), acc))
        last = (float(sparsity), acc, stripped)
        if acc >= baseline - max_accuracy_drop:
            chosen = last
            break
    if last is None:
        raise ValueError("magnitude_prune: `sparsities` is empty")
    met = chosen is not None
    sparsity, acc, stripped = chosen if met else last
    info = {"sparsity": sparsity, "measured_sparsity": measured_sparsity(stripped),
            "val_acc": acc, "baseline_val_acc": baseline, "tried": tried, "met": met,
            "tried_before_bn_recalibration": before_recal,
            "schedule": {"end_step": end_step, "frequency": frequency, "steps": steps}}
    return stripped, info


def measured_sparsity(model: Any) -> float:
    """Fraction of exactly-zero weights over all kernels of the Conv/Dense layers."""
    zeros = total = 0
    for layer in model.layers:
        if type(layer).__name__ not in PRUNED_LAYERS:
            continue
        for w in layer.weights:
            if "kernel" in w.name:
                v = np.asarray(w)
                zeros += int(np.count_nonzero(v == 0))
                total += v.size
    return zeros / total if total else 0.0


def gzip_bytes(path: str | os.PathLike) -> int:
    """Size of the file gzip-compressed at level 9: unstructured zeros shrink a .tflite only
    once compressed, so this is the size to compare for magnitude pruning."""
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9, mtime=0))


def _tfmot() -> Any:
    """Import tfmot without leaving TF_USE_LEGACY_KERAS=1 behind: it sets the variable
    process-wide, which would turn tf.keras into tf_keras for the caller (kopt.runtime.convert
    does the same)."""
    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    import tensorflow_model_optimization as tfmot

    if saved is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = saved
    return tfmot


def _check_conversion(model: Any, tk_model: Any, x: np.ndarray) -> None:
    """The tf_keras copy must compute the same function; Keras 3 and tf_keras kernels round
    differently (fused BN, oneDNN), hence a float tolerance, but no top-1 may change."""
    sample = x[:256]
    a = np.asarray(model.predict(sample, batch_size=256, verbose=0))
    b = np.asarray(tk_model.predict(sample, batch_size=256, verbose=0))
    err = float(np.max(np.abs(a - b)))
    if err > 1e-4 or not np.array_equal(a.argmax(-1), b.argmax(-1)):
        raise RuntimeError(f"tf_keras copy differs from the Keras 3 model: max abs error {err:.3g}")


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    scores = np.asarray(model.predict(x, batch_size=256, verbose=0))
    return float(np.mean(np.argmax(scores, axis=-1) == y))
