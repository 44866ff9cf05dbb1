"""Full-int8 conversion of recurrent layers: unroll them first, or refuse with a reason.

TFLite's int8 calibrator crashes the Python process (a segmentation fault: no exception, the
caller's work is lost) on a GRU, LSTM, SimpleRNN or ConvLSTM that is not unrolled, in Keras 3
and tf_keras alike (tensorflow#62281, #76672, #87468; TensorFlow 2.21 here). Every full-int8
conversion in kopt (export, the timing report, the latency tables and the search) goes through
`for_int8`: a model with such a layer is converted as an unrolled copy (rewrites/
unroll_recurrent: exact, the same cell step by step), and one whose sequence length is not
fixed is refused with an ExportError naming the layer, before the converter can crash.
"""

from __future__ import annotations

from typing import Any

from kopt.errors import ExportError
from kopt.keras_io import from_keras, to_keras
from rewrites.unroll_recurrent import UnrollRecurrent


_WHY = ("TFLite's int8 calibrator crashes the process on a recurrent loop (tensorflow#62281)")
_INSTEAD = "export it with quantize=None or 'float16'"


def for_int8(model: Any) -> Any:
    """`model` itself when no layer of it runs a recurrent loop, else an unrolled copy (the
    caller's model is not changed). Raises ExportError where a layer cannot be unrolled."""
    if not _rolled_layers(model):
        return model
    g = from_keras(model)
    rule = UnrollRecurrent()
    for match in list(rule.matches(g)):
        reason = rule.reject(g, match)
        if reason is not None:
            raise ExportError(f"layer '{match.node.name}' ({match.node.op}) cannot be converted "
                              f"to full int8: {reason}, and {_WHY}. Give the model's Input a "
                              f"fixed number of steps, or {_INSTEAD}")
        rule.apply(g, match)
    copy = to_keras(g, backend=next(iter(g)).source)  # the caller's Keras: 3 or tf_keras
    left = _rolled_layers(copy)
    if left:  # an opaque layer that could not be rebuilt from its changed config
        raise ExportError(f"layer '{left[0]}' could not be unrolled (its class did not rebuild "
                          f"from its config with unroll=True), and {_WHY}: build it with "
                          f"unroll=True, or {_INSTEAD}")
    return copy


def _rolled_layers(model: Any) -> list[str]:
    """Names of the layers (nested ones included) that run a recurrent loop."""
    return [layer.name for layer in model._flatten_layers(include_self=False)
            if getattr(layer, "unroll", True) is False]
