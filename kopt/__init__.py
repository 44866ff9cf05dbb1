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
    GraphLintError,
    KoptError,
    UnsupportedModelError,
    VerificationError,
)

__version__ = "0.1.0"

_LAZY = {
    "Graph": "kopt.ir",
    "Node": "kopt.ir",
    "from_keras": "kopt.frontend",
    "load_model": "kopt.frontend",
    "to_keras": "kopt.emitter",
    "Rule": "kopt.rewrite",
    "Match": "kopt.rewrite",
    "PassManager": "kopt.rewrite",
    "Report": "kopt.rewrite",
    "optimize": "kopt.pipeline",
    "Optimizer": "kopt.pipeline",
    "retrain": "kopt.distill",
    "export_tflite": "kopt.export",
    "export_onnx": "kopt.export",
    "LiteRTRunner": "kopt.export",
    "timing_report": "kopt.timing",
    "compare_reports": "kopt.timing",
    "load_digits": "kopt.data",
    "digits_splits": "kopt.data",
}

__all__ = sorted(_LAZY) + ["KoptError", "UnsupportedModelError", "EmitError", "GraphLintError",
                           "VerificationError", "DataError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kopt' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
