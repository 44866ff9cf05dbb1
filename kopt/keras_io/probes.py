"""Running an emitted model: seeded probe inputs, outputs as a list, intermediate activations.

Rules that need activations (entropy pruning, block merging) and verification all go through
these helpers, so that "run the model, give me numpy outputs" is written once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kopt.ir import Graph


def probe_inputs(g: Graph, batch: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs for every model input (ints for integer inputs)."""
    rng = np.random.default_rng(seed)
    probes = []
    for name in g.inputs:
        node = g[name]
        shape = tuple(batch if i == 0 else (d or 16) for i, d in enumerate(node.output_shape))
        dtype = node.output_dtypes[0] if node.output_dtypes else "float32"
        if "int" in dtype:
            probes.append(rng.integers(0, 8, shape).astype(dtype))
        else:
            probes.append(rng.normal(0, 1, shape).astype(dtype))
    return probes


def predict_outputs(model: Any, x: Any, batch_size: int | None = None) -> list[np.ndarray]:
    """Inference outputs of `model` on `x` (an array or a list of arrays), always a list.

    batch_size=None runs x in one call (exact comparisons want one graph execution);
    otherwise `model.predict` streams it in batches of that size (large calibration sets)."""
    if isinstance(x, list) and len(x) == 1:
        x = x[0]
    if batch_size is None:
        out = model(x, training=False)
    else:
        out = model.predict(x, batch_size=batch_size, verbose=0)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o) for o in outs]


def tensor_values(g: Graph, tensors: list[tuple[str, int]], x: Any,
                  batch_size: int = 64) -> list[np.ndarray]:
    """Values of the IR tensors (node, output port) on data `x`, as float32 arrays: the graph
    is emitted and a Keras model with those tensors as outputs is run over x."""
    import keras

    from kopt.keras_io.emitter import to_keras

    model = to_keras(g)
    tap = keras.Model(model.inputs, [node_output(model, name, port) for name, port in tensors])
    return [np.asarray(v, np.float32) for v in predict_outputs(tap, x, batch_size)]


def node_output(model: Any, name: str, port: int = 0) -> Any:
    """The symbolic output `port` of the layer or operation called `name` in an emitted model,
    to build a tap model from. get_layer alone would miss a Keras 3 operation that is not a
    layer (a slice, kopt.ir.ops.GET_ITEM)."""
    own = _own_outputs(model, name)
    if own is not None:
        return own[port]
    found = [op for op in getattr(model, "operations", []) if op.name == name]
    out = (found[0] if found else model.get_layer(name)).output
    return out[port] if isinstance(out, (list, tuple)) else out


def _own_outputs(model: Any, name: str) -> list | None:
    """The outputs of `name`'s call in `model` itself (Keras 3). `.output` is the first call's:
    a keras.ops operation is emitted as the same object into every model lifted from one
    original (kopt.keras_io.emitter), so its first call belongs to another model, and a tap
    built from it spans two graphs (Keras: 'the name "input_layer" is used 2 times').
    """
    for nodes in getattr(model, "_nodes_by_depth", {}).values():
        for node in nodes:
            if getattr(node, "operation", None) is not None and node.operation.name == name:
                return list(node.output_tensors)
    return None
