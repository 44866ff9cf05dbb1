"""The Keras boundary: load model files safely, lift Keras models into the IR, emit them back,
and run emitted models (probe inputs, outputs, intermediate activations, calibration batches).

Imports `kopt.errors` and `kopt.ir` only.
"""

from kopt.keras_io.emitter import to_keras
from kopt.keras_io.frontend import from_keras
from kopt.keras_io.loading import load_model

__all__ = ["from_keras", "load_model", "to_keras"]
