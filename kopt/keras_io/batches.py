"""Calibration data as numpy batches, from what users hold (arrays, (x, y), datasets)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from kopt.errors import DataError


def as_batches(data: Any, batch_size: int = 32, max_batches: int | None = None,
               input_shape: tuple | None = None) -> list[np.ndarray]:
    """Turn calibration data into a list of float arrays of at most `batch_size` samples.

    `data` may be an array (split into batches), an (x, y) pair (x is used), a tf.data.Dataset
    or any iterable of arrays or (x, y) pairs (taken as batches as they come). With
    `input_shape` (a model input shape, None for free dimensions) each batch is checked
    against it, so a wrong-shaped data set fails here and not deep inside a rewrite.
    """
    if data is None:
        raise DataError("no calibration data given: pass an array, (x, y), a tf.data.Dataset "
                        "or an iterable of batches")
    if isinstance(data, tuple) and len(data) == 2:  # (x, y); pass a list for a list of batches
        data = data[0]
    if hasattr(data, "__array__"):
        x = np.asarray(data)
        batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)] if x.ndim else []
    else:
        batches = []
        for item in data:
            x = item[0] if isinstance(item, (tuple, list)) and len(item) == 2 else item
            batches.append(np.asarray(x))
            if max_batches is not None and len(batches) >= max_batches:
                break
    batches = batches[:max_batches] if max_batches is not None else batches
    if not batches or sum(len(b) for b in batches) == 0:
        raise DataError("calibration data is empty")
    for b in batches:
        _check(b, input_shape)
    return [b.astype(np.float32) if b.dtype.kind == "f" else b for b in batches]


def _check(batch: np.ndarray, input_shape: tuple | None) -> None:
    if batch.ndim < 2:
        raise DataError(f"calibration batch has shape {batch.shape}: need (batch, features...)")
    if input_shape is None:
        return
    want = tuple(input_shape)[1:]
    got = batch.shape[1:]
    if len(want) != len(got) or any(w is not None and w != d for w, d in zip(want, got)):
        raise DataError(f"calibration batch has sample shape {got}, the model input needs "
                        f"{want}")


def take(batches: Iterable[np.ndarray], n: int) -> np.ndarray:
    """The first `n` samples of a list of batches, as one array."""
    out, count = [], 0
    for b in batches:
        out.append(b[:n - count])
        count += len(out[-1])
        if count >= n:
            break
    if not out:
        raise DataError("calibration data is empty")
    return np.concatenate(out)
