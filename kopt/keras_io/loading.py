"""Loading model files (placeholder: moved verbatim from the frontend; see issue 13)."""

from __future__ import annotations

import os
from typing import Any

from kopt.errors import UnsupportedModelError


def load_model(path: str | os.PathLike, custom_objects: dict | None = None,
               safe_mode: bool = True) -> Any:
    """Load a .keras / .h5 file with Keras' safe_mode on, so no stored code (Lambda) runs."""
    import keras

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UnsupportedModelError(f"no such model file: '{path}'")
    if os.path.isdir(path):
        raise UnsupportedModelError(
            f"'{path}' is a directory (SavedModel?). kopt needs the Keras graph: save the model "
            "with model.save('model.keras') and pass that file")
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects, safe_mode=safe_mode)
    except Exception as keras3_error:  # noqa: BLE001 - retried with tf_keras below, then reported
        if path.endswith((".h5", ".hdf5")):
            try:
                import tf_keras

                return tf_keras.models.load_model(path, custom_objects=custom_objects,
                                                  safe_mode=safe_mode)
            except Exception:  # noqa: BLE001
                pass
        raise UnsupportedModelError(
            f"cannot load '{path}': {type(keras3_error).__name__}: {keras3_error}") from None


