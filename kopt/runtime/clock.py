"""The clock: one median timer for every latency kopt reports."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

_BUDGET_S = 0.1  # time spent measuring one part when runs is not given


def median_ms(fn: Callable[[], Any], runs: int | None = None, warmup: int = 5) -> float:
    """Median wall time of fn() in ms after warm-up; runs=None fits ~0.1 s of runs (10..300)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    if runs is None:
        each = (time.perf_counter() - t0) / max(warmup, 1)
        runs = int(min(300, max(10, _BUDGET_S / max(each, 1e-6))))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)
