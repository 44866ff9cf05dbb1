"""Graph -> functional Keras 3 (default) or tf_keras model, weights set.

Layers are rebuilt from their configs (never shared with the input model), so training the
emitted model cannot change the original. Only opaque layers that cannot be rebuilt (a Lambda,
a raw keras.ops call) are reused as objects; they hold no weights. A tensor slice (x[key],
GET_ITEM) is rebuilt, not reused, so that rules can create one and it emits as tf_keras too.
"""

from __future__ import annotations

import copy
import inspect
import logging
from functools import cache
from typing import Any

import numpy as np

from kopt.errors import EmitError
from kopt.ir import Graph, Node, Port
from kopt.ir.ops import GET_ITEM
from kopt.keras_io.frontend import weight_names

log = logging.getLogger(__name__)

BACKENDS = ("keras", "tf_keras")


def to_keras(g: Graph, backend: str = "keras") -> Any:
    """Re-emit the graph as a functional model of `backend` ("keras" or "tf_keras")."""
    api = _api(backend)
    tensors: dict[tuple[str, int], Any] = {}
    layers: dict[str, Any] = {}
    for node in g.topological():
        if node.op == "InputLayer":
            tensors[(node.name, 0)] = _input(api, node)
            continue
        key = node.shared_key or node.name
        if key not in layers:
            layers[key] = _build_layer(node, backend, api)
        inputs = [tensors[(src, sp)] for src, sp, _ in g.in_edges(node.name)]
        try:
            out = _call(layers[key], node, inputs)
        except Exception as err:
            raise EmitError(f"layer '{node.name}' ({node.op}) failed when called on inputs "
                            f"{[tuple(t.shape) for t in inputs]}: {err}") from err
        for port, t in enumerate(_flat_outputs(out)):
            tensors[(node.name, port)] = t
    ins = [tensors[(n, 0)] for n in g.inputs]
    outs = [tensors[o] for o in g.outputs]
    model = api.Model(inputs=ins[0] if len(ins) == 1 else ins,
                      outputs=outs[0] if len(outs) == 1 else outs, name=g.name)
    assigned: set[str] = set()
    for node in g.topological():
        key = node.shared_key or node.name
        if node.op != "InputLayer" and key not in assigned and node.weights:
            assigned.add(key)
            _assign_weights(layers[key], node, backend)
    return model


def _api(backend: str) -> Any:
    if backend == "keras":
        import keras

        return keras
    if backend == "tf_keras":
        import tf_keras

        return tf_keras
    raise EmitError(f"unknown backend '{backend}': use one of {BACKENDS}")


def _input(api: Any, node: Node) -> Any:
    shape = node.output_shapes[0]
    dtype = node.output_dtypes[0] if node.output_dtypes else "float32"
    return api.Input(batch_shape=shape, dtype=dtype, name=node.name)


def _build_layer(node: Node, backend: str, api: Any) -> Any:
    if node.op == GET_ITEM and node.layer is None:
        return _get_item(node, backend)
    if node.layer is not None:  # opaque: a custom class, a Lambda or a keras.ops operation
        return _build_opaque(node, backend)
    cls = getattr(api.layers, node.op, None)
    if cls is None:
        raise EmitError(f"layer '{node.name}': {backend} has no layer class '{node.op}'")
    config = copy.deepcopy(node.config)
    config["name"] = node.shared_key or node.name
    if node.source != backend:
        config = _adapt_config(config, cls, backend)
    try:
        return cls.from_config(config)
    except Exception as err:
        raise EmitError(f"layer '{node.name}' ({node.op}) cannot be rebuilt in {backend} from "
                        f"its config: {err}") from err


def _get_item(node: Node, backend: str) -> Any:
    """What `x[key]` is called with (node.call holds x's Port and the key): Keras 3's GetItem
    operation, named after the node so that the name survives a round trip; in tf_keras plain
    indexing, which records a SlicingOpLambda. Both serialise without code and convert to a
    TFLite STRIDED_SLICE."""
    if backend == "keras":
        from keras.src.ops.numpy import GetItem

        return GetItem(name=node.shared_key or node.name)
    return _index


def _index(x: Any, key: Any) -> Any:
    """x[key]. A key read back from a .keras file is a list, which Keras 3's GetItem takes as
    a tuple (TensorFlow would not)."""
    return x[tuple(key) if isinstance(key, list) else key]


def _build_opaque(node: Node, backend: str) -> Any:
    if node.source != backend:
        raise EmitError(
            f"layer '{node.name}' ({node.op}) is a custom/opaque {node.source} layer and cannot "
            f"be emitted as {backend}: emit with backend='{node.source}' or replace the layer")
    if node.op == "Lambda" or node.op.startswith("ops.") or not node.config:
        if node.layer.weights if hasattr(node.layer, "weights") else False:
            log.warning("layer '%s' is reused as an object: it shares weights with the original",
                        node.name)
        return node.layer
    config = copy.deepcopy(node.config)
    config["name"] = node.shared_key or node.name
    try:
        return node.layer_class.from_config(config)
    except Exception as err:  # noqa: BLE001 - fall back to the original object, loudly
        log.warning("custom layer '%s' (%s) could not be rebuilt from its config (%s); the "
                    "original layer object is reused", node.name, node.op, err)
        return node.layer


def _adapt_config(config: dict, cls: type, backend: str) -> dict:
    """Translate a config between Keras 3 and tf_keras: dtype policy form, unknown keys."""
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        config["dtype"] = dtype.get("config", {}).get("name", "float32")
    config.pop("batch_input_shape", None)
    for key, value in config.items():  # initializer configs differ (Keras 3 adds axes args);
        if key.endswith("_initializer") and isinstance(value, dict):  # weights are set anyway
            config[key] = value.get("class_name", value)
    axis = config.get("axis")
    if backend == "keras" and isinstance(axis, list) and len(axis) == 1:
        config["axis"] = axis[0]  # tf_keras stores BN's axis as a list
    allowed = _init_params(cls)
    return {k: v for k, v in config.items() if k in allowed}


@cache
def _init_params(cls: type) -> frozenset:
    names = {"name", "trainable", "dtype"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= set(inspect.signature(init).parameters) - {"self", "kwargs", "args"}
    return frozenset(names)


def _call(layer: Any, node: Node, inputs: list) -> Any:
    if node.call is None:
        return layer(inputs[0] if len(inputs) == 1 else inputs)
    args, kwargs = node.call
    fill = lambda x: _fill(x, inputs)
    return layer(*fill(args), **fill(kwargs))


def _fill(x: Any, inputs: list) -> Any:
    if isinstance(x, Port):
        return inputs[x.index]
    if isinstance(x, dict):
        return {k: _fill(v, inputs) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_fill(v, inputs) for v in x)
    return x


def _flat_outputs(out: Any) -> list:
    if isinstance(out, dict):
        return [v for k in sorted(out) for v in _flat_outputs(out[k])]
    if isinstance(out, (list, tuple)):
        return [v for item in out for v in _flat_outputs(item)]
    return [out]


def _assign_weights(layer: Any, node: Node, backend: str) -> None:
    names = weight_names(layer, backend)
    if sorted(names) == sorted(node.weights):
        values = [node.weights[n] for n in names]
    elif len(names) == len(node.weights):
        values = list(node.weights.values())
    else:
        raise EmitError(f"layer '{node.name}' ({node.op}) has weights {names} in {backend}, "
                        f"the graph holds {list(node.weights)}")
    for var, value in zip(layer.weights, values):
        if tuple(var.shape) != np.shape(value):
            raise EmitError(f"layer '{node.name}' ({node.op}): weight '{var.name}' has shape "
                            f"{tuple(var.shape)} but the graph holds {np.shape(value)}")
    layer.set_weights(values)
