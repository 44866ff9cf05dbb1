"""Keras 3 / tf_keras model -> Graph. Nested models are flattened into one graph.

Both Keras versions keep a functional model as nodes grouped by depth; walking them from the
deepest depth gives a topological order without recursion (NASNetLarge is ~1000 layers deep).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from kopt.errors import UnsupportedModelError
from kopt.ir import Graph, Node, Port
from kopt.keras_io.loading import load_model

log = logging.getLogger(__name__)


def from_keras(model: Any) -> Graph:
    """Lift a functional or Sequential Keras 3 / tf_keras model (or a model file) into a Graph."""
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    api = _api_of(model)
    functional = _functional_of(model, api)
    g = Graph(model.name)
    bindings: dict[int, tuple[str, int]] = {}
    layer_keys: dict[int, str] = {}
    for t in _flat(functional.inputs):
        layer = t._keras_history[0]
        node = g.add(Node(name=g.unique_name(layer.name), op="InputLayer",
                          config=_plain(layer.get_config()), output_shapes=[_shape(t)],
                          output_dtypes=[_dtype(t)], source=api))
        g.inputs.append(node.name)
        bindings[id(t)] = (node.name, 0)
    _lift(functional, g, bindings, layer_keys, api)
    g.outputs = [bindings[id(t)] for t in _flat(functional.outputs)]
    g.lint()
    return g


def check_model(model: Any) -> None:
    """Raise UnsupportedModelError, saying what to do, unless kopt can lift `model`: a
    functional or built Sequential Keras 3 / tf_keras model (not a subclassed one)."""
    _functional_of(model, _api_of(model))


def _api_of(model: Any) -> str:
    import keras

    if isinstance(model, keras.Model):
        return "keras"
    try:
        import tf_keras

        if isinstance(model, tf_keras.Model):
            return "tf_keras"
    except ImportError:
        pass
    raise UnsupportedModelError(
        f"expected a Keras model or a model file path, got {type(model).__name__}")


def _functional_of(model: Any, api: str) -> Any:
    """The functional graph behind a model, or an error that says how to get one."""
    if api == "keras":
        import keras

        if isinstance(model, keras.Sequential):
            fn = getattr(model, "_functional", None)
            if fn is None:
                raise UnsupportedModelError(
                    f"Sequential model '{model.name}' has no input shape yet: start it with "
                    "keras.Input(shape=...) or call model.build(input_shape) first")
            return fn
        if _is_functional_subclass(model):
            return model
    else:
        if getattr(model, "_is_graph_network", False):
            return model
    raise UnsupportedModelError(
        f"'{model.name}' ({type(model).__name__}) is a subclassed model: its call() is Python "
        "code, not a graph kopt can rewrite. Rebuild it with the functional API "
        "(inputs = keras.Input(...); outputs = ...; keras.Model(inputs, outputs)) and copy the "
        "weights across with set_weights(), then pass that model")


def _is_functional_subclass(model: Any) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def _nested_functional(op: Any, api: str) -> Any | None:
    if api == "keras":
        import keras

        if isinstance(op, keras.Sequential):
            return getattr(op, "_functional", None)
        return op if isinstance(op, keras.Model) and _is_functional_subclass(op) else None
    return op if getattr(op, "_is_graph_network", False) else None


def _lift(fn: Any, g: Graph, bindings: dict, layer_keys: dict, api: str) -> None:
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        for knode in fn._nodes_by_depth[depth]:
            op = knode.operation if api == "keras" else knode.layer
            if knode.is_input:
                continue
            in_tensors = _node_inputs(knode, api)
            outs = _flat(knode.outputs)
            nested = _nested_functional(op, api)
            if nested is not None:
                inner_in = _flat(nested.inputs)
                for inner, outer in zip(inner_in, in_tensors):
                    bindings[id(inner)] = bindings[id(outer)]
                _lift(nested, g, bindings, layer_keys, api)
                for inner, outer in zip(_flat(nested.outputs), outs):
                    bindings[id(outer)] = bindings[id(inner)]
                continue
            node = _make_node(op, knode, g, layer_keys, api, outs)
            g.add(node)
            for port, t in enumerate(in_tensors):
                src, sp = bindings[id(t)]
                g.connect(src, node.name, sp, port)
            for port, t in enumerate(outs):
                bindings[id(t)] = (node.name, port)


def _make_node(op: Any, knode: Any, g: Graph, layer_keys: dict, api: str, outs: list) -> Node:
    name = g.unique_name(op.name)
    shared_key = layer_keys.setdefault(id(op), name)
    if shared_key != name:
        log.info("layer '%s' is called more than once; node '%s' shares its weights",
                 op.name, name)
    kind = type(op).__name__
    known = _is_known_layer(op, api)
    is_layer = hasattr(op, "get_weights")
    weights = _named_weights(op, api) if is_layer else {}
    try:
        config = _plain(op.get_config()) if is_layer else {}
    except Exception as err:  # noqa: BLE001 - an opaque layer may not serialise; kept as object
        log.warning("layer '%s' (%s) has no usable get_config (%s); kept as an opaque object",
                    op.name, kind, err)
        config = {}
    if not known:
        log.info("layer '%s' (%s) is not a built-in op: kept as an opaque node", op.name, kind)
    return Node(name=name, op=kind if is_layer else f"ops.{kind}", config=config,
                weights=weights, output_shapes=[_shape(t) for t in outs],
                output_dtypes=[_dtype(t) for t in outs], call=_call_template(knode, api),
                shared_key=shared_key if shared_key != name or _called_again(op) else None,
                layer_class=type(op), source=api, layer=None if known else op)


def _called_again(op: Any) -> bool:
    return len(getattr(op, "_inbound_nodes", [])) > 1


def _is_known_layer(op: Any, api: str) -> bool:
    if api == "keras":
        import keras

        if _is_get_item(op):
            return True  # a slice (GET_ITEM): the emitter rebuilds it, no object is kept
        layers = keras.layers
    else:
        import tf_keras

        layers = tf_keras.layers
    kind = type(op).__name__
    return kind != "Lambda" and getattr(layers, kind, None) is type(op)


def _is_get_item(op: Any) -> bool:
    from keras.src.ops.numpy import GetItem

    return type(op) is GetItem


def _node_inputs(knode: Any, api: str) -> list:
    if api == "keras":
        return list(knode.arguments.keras_tensors)
    return _flat(knode.keras_inputs)


def _call_template(knode: Any, api: str) -> tuple | None:
    """(args, kwargs) with Port placeholders, or None for the plain `layer(x)`/`layer([..])`."""
    if api == "keras":
        from keras import tree
        from keras.src.backend import KerasTensor

        args, kwargs = knode.arguments.args, knode.arguments.kwargs
        is_tensor = lambda x: isinstance(x, KerasTensor)
    else:
        import tensorflow as tf

        tree = None
        args, kwargs = knode.call_args, knode.call_kwargs
        is_tensor = lambda x: hasattr(x, "_keras_history")
    counter = iter(range(10**9))

    def place(x: Any) -> Any:
        return Port(next(counter)) if is_tensor(x) else x

    if tree is not None:
        args, kwargs = tree.map_structure(place, (tuple(args), dict(kwargs)))
    else:
        args, kwargs = tf.nest.map_structure(place, (tuple(args), dict(kwargs)))
    args = tuple(args)
    n = next(counter)
    if not kwargs and args == (Port(0),) and n == 1:
        return None
    if not kwargs and len(args) == 1 and isinstance(args[0], list) and \
            args[0] == [Port(i) for i in range(n)] and n > 1:
        return None
    return (args, dict(kwargs))


def _named_weights(layer: Any, api: str) -> dict[str, np.ndarray]:
    return dict(zip(weight_names(layer, api), (np.asarray(v) for v in layer.get_weights())))


def _flat(x: Any) -> list:
    if isinstance(x, Mapping):
        return [v for k in sorted(x) for v in _flat(x[k])]
    if isinstance(x, (list, tuple)) or type(x).__name__ == "ListWrapper":
        return [v for item in x for v in _flat(item)]
    return [x]


def _shape(t: Any) -> tuple:
    shape = t.shape
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
    return tuple(None if d is None else int(d) for d in dims)


def _dtype(t: Any) -> str:
    dtype = t.dtype
    return getattr(dtype, "name", str(dtype))


def _plain(value: Any) -> Any:
    """Config with tf_keras' ListWrapper/DictWrapper turned into plain lists and dicts."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if type(value).__name__ == "ListWrapper" or isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


# tf_keras names a few weights differently; the IR always uses the Keras 3 names.
_TF_KERAS_RENAMES = {("DepthwiseConv1D", "depthwise_kernel"): "kernel",
                     ("DepthwiseConv2D", "depthwise_kernel"): "kernel"}


def weight_names(layer: Any, backend: str) -> list[str]:
    """Canonical, unique names of a layer's weights, in the layer's own order."""
    names: list[str] = []
    op = type(layer).__name__
    for var in layer.weights:
        base = var.name
        if backend == "tf_keras":
            base = base.split("/")[-1].split(":")[0]
            base = _TF_KERAS_RENAMES.get((op, base), base)
        name, i = base, 1
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names
