"""The clock: one median timer for every latency kopt reports, and one interleaved loop for
every latency ratio.

median_ms lives in kopt/runtime/time_bundle.py, the standalone script that times latency
bundles on a device (it cannot import kopt there), so that the host and the device time with
the same code.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from kopt.runtime.time_bundle import median_ms

__all__ = ["interleaved_ms", "median_ms"]


def interleaved_ms(calls: list[Callable[[], object]], per_round: int, rounds: int
                   ) -> list[list[np.ndarray]]:
    """Per call, the ms of each of its runs, one array per round: `rounds` rounds of
    `per_round` runs of each call in turn, so that drift of the machine reaches every call
    alike (warm them up first). A ratio of two latencies is only as good as the time between
    their measurements."""
    times: list[list[np.ndarray]] = [[] for _ in calls]
    for _ in range(rounds):
        for call, spent in zip(calls, times):
            run = np.empty(per_round)
            for i in range(per_round):
                start = time.perf_counter()
                call()
                run[i] = time.perf_counter() - start
            spent.append(run * 1e3)
    return times
