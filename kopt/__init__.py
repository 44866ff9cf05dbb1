"""kopt: a graph-rewriting optimizer for Keras 3 / TensorFlow models.

    import kopt
    g = kopt.from_keras(model)           # networkx IR
    fast = kopt.optimize(model)          # exact rewrites, verified; the input is not mutated
    kopt.export_tflite(fast, "m.tflite", representative_data=x)

The public API is what this module exports; names load lazily so `import kopt` stays cheap.
"""

from importlib import import_module
from typing import Any

from kopt.errors import (
    DataError,
    EmitError,
    ExportError,
    GraphLintError,
    KoptError,
    UnsafeModelError,
    UnsupportedModelError,
    VerificationError,
)

__version__ = "0.1.0"

_LAZY = {
    "Graph": "kopt.ir",
    "Node": "kopt.ir",
    "from_keras": "kopt.keras_io",
    "load_model": "kopt.keras_io",
    "to_keras": "kopt.keras_io",
    "Rule": "kopt.rewriting",
    "Match": "kopt.rewriting",
    "PassManager": "kopt.rewriting",
    "Report": "kopt.rewriting",
    "register": "kopt.rewriting",
    "optimize": "kopt.api",
    "Optimizer": "kopt.api",
    "retrain": "kopt.flows.distill",
    "recalibrate_bn": "kopt.flows.distill",
    "StaleBatchNormWarning": "kopt.errors",
    "export_tflite": "kopt.runtime",
    "export_onnx": "kopt.runtime",
    "LiteRTRunner": "kopt.runtime",
    "timing_report": "kopt.runtime",
    "compare_reports": "kopt.runtime",
    "int8_layer_errors": "kopt.runtime",
    "Int8ErrorReport": "kopt.runtime",
    "LatencyModel": "kopt.runtime",
    "predict_latency": "kopt.runtime",
    "Target": "kopt.flows.search",
    "TargetNotReachedWarning": "kopt.errors",
    "load_digits": "kopt.flows.data",
    "digits_splits": "kopt.flows.data",
}

__all__ = sorted(_LAZY) + ["KoptError", "UnsupportedModelError", "UnsafeModelError", "EmitError",
                           "ExportError", "GraphLintError", "VerificationError", "DataError",
                           "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kopt' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
