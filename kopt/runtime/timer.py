"""Running a Keras model once in one runtime, ready for `clock.median_ms` to time.

Shared by the per-layer timing report (kopt.runtime.timing) and the latency model
(kopt.runtime.latency): both time small pieces of a model in the same way, so a time in one is
a time in the other. Conversion, calibration and input copies happen when the callable is
built, never inside it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kopt.errors import RuntimeChoiceError
from kopt.runtime.clock import median_ms
from kopt.runtime.convert import convert_tflite
from kopt.runtime.litert import LiteRTRunner

RUNTIMES = ("keras", "litert", "litert-int8")


def random_inputs(shapes: list[tuple], rng: np.random.Generator) -> list[np.ndarray]:
    """Float inputs of `shapes`, the magnitudes of normal draws: timings do not depend on the
    values, but an op timed alone may refuse negative ones (TFLite's RSQRT fails to invoke on
    them, and expand_layer_norm's rsqrt reads a variance)."""
    return [np.abs(rng.normal(0, 1, s)).astype(np.float32) for s in shapes]


def check_threads(threads: Any) -> int:
    """`threads` as an int >= 1, or RuntimeChoiceError (0 or a negative count would silently
    mean "let LiteRT choose", which makes tables from different calls incomparable)."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise RuntimeChoiceError(f"threads must be an integer >= 1, got {threads!r}")
    return int(threads)


class Timer:
    """Builds a callable that runs a Keras model once in one runtime."""

    def __init__(self, runtime: str, threads: int = 1):
        if runtime not in RUNTIMES:
            raise RuntimeChoiceError(f"runtime '{runtime}': use one of {RUNTIMES}")
        self.runtime, self.threads = runtime, check_threads(threads)

    @property
    def quantize(self) -> str | None:
        return "int8" if self.runtime == "litert-int8" else None

    def flatbuffer(self, model: Any, shapes: list[tuple], data: Any = None) -> bytes:
        """The .tflite file this timer runs for `model` (LiteRT runtimes only)."""
        if self.runtime == "keras":
            raise RuntimeChoiceError("the keras runtime runs no .tflite file")
        if self.quantize and data is None:
            rng = np.random.default_rng(1)
            data = random_inputs(shapes, rng) if len(shapes) > 1 else np.concatenate(
                [random_inputs(shapes, rng)[0] for _ in range(4)])
        return convert_tflite(model, quantize=self.quantize, representative_data=data)

    def callable(self, model: Any, shapes: list[tuple], data: Any = None) -> Callable[[], Any]:
        if self.runtime == "keras":
            import tensorflow as tf

            arg = [tf.constant(x) for x in random_inputs(shapes, np.random.default_rng(0))]
            fn = tf.function(lambda *a: model(a[0] if len(a) == 1 else list(a), training=False))
            return lambda: fn(*arg)
        return self.file_callable(self.flatbuffer(model, shapes, data), shapes)

    def file_callable(self, flatbuffer: bytes, shapes: list[tuple]) -> Callable[[], Any]:
        """One run of a .tflite file (from `flatbuffer`) in this timer's LiteRT runtime."""
        runner = LiteRTRunner(flatbuffer, threads=self.threads)
        runner.set_inputs(random_inputs(shapes, np.random.default_rng(0)))
        return runner.invoke


def trivial_model() -> tuple[Any, list[tuple]]:
    """The smallest model a runtime runs (one ReLU on 4 numbers): its time is the fixed cost
    of one call, which every timed part pays and the whole model pays once."""
    import keras

    x = keras.Input(batch_shape=(1, 4))
    return keras.Model(x, keras.layers.ReLU()(x)), [(1, 4)]


def overhead_ms(timer: Timer, runs: int | None) -> float:
    """Cost of one call of a trivial model: what every per-part measurement pays extra."""
    model, shapes = trivial_model()
    return median_ms(timer.callable(model, shapes), runs)
