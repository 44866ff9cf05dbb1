"""Scores of channels from their activations on calibration data, shared by the rules that
choose which channels to keep (entropy pruning, block merging)."""

from __future__ import annotations

import numpy as np


def channel_entropy(acts: np.ndarray, bins: int = 32, max_rows: int = 20_000) -> np.ndarray:
    """Shannon entropy (nats) of each channel's histogram over its own range."""
    flat = acts.reshape(-1, acts.shape[-1])
    if len(flat) > max_rows:
        flat = flat[np.random.default_rng(0).choice(len(flat), max_rows, replace=False)]
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    span = np.where(hi - lo > 1e-12 * np.maximum(1.0, np.abs(hi)), hi - lo, np.inf)
    idx = np.clip(((flat - lo) / span * bins).astype(int), 0, bins - 1)
    out = np.zeros(flat.shape[1])
    for c in range(flat.shape[1]):
        p = np.bincount(idx[:, c], minlength=bins) / len(flat)
        p = p[p > 0]
        out[c] = float(-(p * np.log(p)).sum())
    return out
