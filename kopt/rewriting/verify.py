"""Verification: does a rewritten graph still compute what the reference did?

The graph is emitted and run on seeded probe inputs; the error is the largest absolute
difference of each output relative to that output's largest magnitude. When the end result
fails, the snapshots taken after each rule application are bisected to find the first one that
broke equivalence (a failure persists in every later snapshot).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from kopt.ir import Graph
from kopt.keras_io.emitter import to_keras
from kopt.keras_io.probes import predict_outputs


def max_relative_error(expected: Iterable[np.ndarray], got: Iterable[np.ndarray]) -> float:
    """Largest |a - b| over each output, relative to that output's largest magnitude."""
    worst = 0.0
    for a, b in zip(expected, got):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(a))), 1e-12)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def graph_error(g: Graph, probes: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """Max relative error of the emitted `g` on `probes` against `expected` outputs."""
    return max_relative_error(expected, predict_outputs(to_keras(g), probes))


def first_failing(graphs: list[Graph], probes: list, expected: list, tol: float) -> int:
    """Index of the first graph whose outputs differ by more than `tol` (binary search; the
    last one is known to fail)."""
    lo, hi = 0, len(graphs) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if graph_error(graphs[mid], probes, expected) > tol:
            hi = mid
        else:
            lo = mid + 1
    return lo
