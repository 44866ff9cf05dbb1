"""The clock: one median timer for every latency kopt reports.

It lives in kopt/runtime/time_bundle.py, the standalone script that times latency bundles on a
device (it cannot import kopt there), so that the host and the device time with the same code.
"""

from kopt.runtime.time_bundle import median_ms

__all__ = ["median_ms"]
