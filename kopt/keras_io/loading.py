"""Loading model and data files without running code stored in them (see docs/security.md).

Every kopt entry point that reads a model file (`kopt.load_model`, `kopt.from_keras(path)`, the
`kopt` CLI, tools/export_tflite.py) goes through `load_model`, and every data file the CLI reads
goes through `load_arrays`. Keras' own `safe_mode` covers Keras 3 files only: tf_keras' HDF5
loader turns a stored Lambda's marshalled bytecode back into a function and calls it while it
rebuilds the model. So before any Keras loader sees a file, `load_model` reads the stored config
itself (zipfile / h5py + json, no Keras deserialisation) and, in safe mode, refuses:

* Python code stored in the file: Keras 3 writes a lambda as `{"class_name": "__lambda__"}`,
  tf_keras as base64 marshal data next to a `"<something>_type": "lambda"` key
  (function_type, output_shape_type, mask_type, dropout_fn_type, residual_fn_type);
* a layer whose class is not a Keras layer kopt can vouch for: built into keras.layers or
  tf_keras.layers, in the caller's `custom_objects`, or registered with
  `keras.saving.register_keras_serializable`; TFSMLayer is refused too (it loads a
  TensorFlow SavedModel named in the file). Of Keras 3's raw operations only a tensor
  slice (GetItem) passes;
* any stored object naming a non-Keras Python `module`: tf_keras' .keras loader imports
  whatever module a file names and takes objects from it.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from typing import Any

from kopt.errors import DataError, KoptError, UnsafeModelError, UnsupportedModelError

ZIP_SUFFIXES = (".keras",)
HDF5_SUFFIXES = (".h5", ".hdf5")

# Config keys under which Keras stores sub-layers: models, wrappers (TimeDistributed,
# Bidirectional), RNNs and their cells.
_SUBLAYER_KEYS = ("layers", "layer", "forward_layer", "backward_layer", "cell", "cells")
# Packages a stored object's `module` may name: Keras 3 imports only these; tf_keras imports any.
_KERAS_PACKAGES = frozenset({"keras", "tf_keras", "keras_hub", "keras_cv", "keras_nlp"})
_MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})
# tf_keras records a `tf.*` call in a functional model as one of these; they call a TensorFlow
# API function named in the file (no Python code) whenever the model runs. Safe mode allows
# only side-effect-free math and array functions: a file naming tf.io.write_file,
# tf.py_function or tf.raw_ops.* would otherwise act on the machine each time kopt runs it.
_TF_KERAS_OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})
_PURE_TF_NAMESPACES = ("math.", "nn.", "linalg.", "__operators__.", "bitwise.", "signal.")
_PURE_TF_FUNCTIONS = frozenset({
    "abs", "add", "argmax", "argmin", "argsort", "boolean_mask", "broadcast_to", "cast",
    "clip_by_value", "concat", "divide", "einsum", "exp", "expand_dims", "fill", "gather",
    "gather_nd", "identity", "matmul", "maximum", "minimum", "multiply", "one_hot",
    "ones_like", "pad", "range", "rank", "reduce_max", "reduce_mean", "reduce_min",
    "reduce_prod", "reduce_sum", "repeat", "reshape", "reverse", "roll", "shape", "sigmoid",
    "size", "slice", "sort", "split", "sqrt", "square", "squeeze", "stack", "strided_slice",
    "subtract", "tanh", "tile", "transpose", "unstack", "where", "zeros_like",
    "image.resize", "image.crop_to_bounding_box", "image.pad_to_bounding_box"})
_REFUSED_LAYERS = {"TFSMLayer": "loads a TensorFlow SavedModel from a path named in the file"}
# Keras 3 operations (not layers) a stored functional model may call in safe mode: those kopt's
# own rules write, a tensor slice x[key] (fuse_horizontal_split) and rsqrt (expand_layer_norm).
# Other raw keras.ops calls in a file stay refused.
_KERAS_OPERATIONS = frozenset({("keras.src.ops.numpy", "GetItem"),
                               ("keras.src.ops.math", "Rsqrt")})
_MAX_CONFIG_BYTES = 64 << 20
# A zip member that inflates past both bounds is a decompression bomb (Keras uses the same rule).
_BOMB_FLOOR_BYTES, _BOMB_RATIO = 256 << 20, 100
_OPT_IN = "if you trust the file, load it with safe_mode=False (CLI: kopt ... --unsafe)"


@dataclass(frozen=True)
class StoredModel:
    """What a model file says about itself, read without Keras."""

    config: dict  # the serialized model Keras rebuilds
    training_config: Any  # HDF5's separate compile config (a .keras file keeps it in `config`)
    keras_version: str  # the Keras version that wrote the file; "" when the file does not say


def load_model(path: str | os.PathLike, custom_objects: dict | None = None,
               safe_mode: bool = True) -> Any:
    """Load a .keras / .h5 file (Keras 3 or tf_keras) without running code stored in it.

    safe_mode=False (CLI: --unsafe) skips the code checks, for files you trust: it is the only
    way a Lambda's stored bytecode runs. Broken files raise `UnsupportedModelError` either way.
    """
    path = os.fspath(path)
    stored = read_stored_model(path)
    if safe_mode:
        check_model_config(stored, path, custom_objects)
    return _keras_load(path, stored, custom_objects, safe_mode)


def read_stored_model(path: str) -> StoredModel:
    """The config of the model file at `path`; `UnsupportedModelError` when it is not one."""
    if not os.path.exists(path):
        raise UnsupportedModelError(f"no such model file: '{path}'")
    if os.path.isdir(path):
        kind = ("a TensorFlow SavedModel (kopt does not load those: loading one runs its graph)"
                if os.path.exists(os.path.join(path, "saved_model.pb")) else "a directory")
        raise UnsupportedModelError(
            f"cannot load '{path}': it is {kind}. kopt needs the Keras graph: save the model "
            "with model.save('model.keras') and pass that file")
    if os.path.getsize(path) == 0:
        raise UnsupportedModelError(f"cannot load '{path}': the file is empty")
    if path.lower().endswith(ZIP_SUFFIXES):
        return _read_keras_zip(path)
    if path.lower().endswith(HDF5_SUFFIXES):
        return _read_hdf5(path)
    raise UnsupportedModelError(
        f"cannot load '{path}': kopt reads .keras and .h5 model files (model.save('m.keras'))")


def _read_keras_zip(path: str) -> StoredModel:
    """config.json and metadata.json of a .keras archive, after checking every member's CRC
    (Keras may read the weights without checking it, so a corrupted file could load quietly)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                raise _broken(path, "the zip archive lists a member twice")
            for info in infos:
                if info.file_size > max(_BOMB_FLOOR_BYTES, _BOMB_RATIO * info.compress_size):
                    raise _broken(path, f"zip member '{info.filename}' inflates to "
                                        f"{info.file_size:,} bytes (a decompression bomb?)")
            if "config.json" not in names:
                raise _broken(path, "no config.json inside: not a Keras model archive")
            if not {"model.weights.h5", "model.weights.npz"} & set(names):
                raise _broken(path, "no model.weights.h5 inside: the weights are missing")
            if zf.getinfo("config.json").file_size > _MAX_CONFIG_BYTES:
                raise _broken(path, "config.json is larger than 64 MiB")
            bad = zf.testzip()
            if bad is not None:
                raise _broken(path, f"zip member '{bad}' fails its CRC check (file corrupted)")
            config = _parse_json(zf.read("config.json"), path, "config.json")
            meta = (_parse_json(zf.read("metadata.json"), path, "metadata.json")
                    if "metadata.json" in names else {})
    except KoptError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to parse untrusted bytes is reported
        raise _broken(path, f"not a readable .keras zip archive ({_one_line(err)})") from err
    return StoredModel(_model_config(config, path), None, str(_get(meta, "keras_version", "")))


def _read_hdf5(path: str) -> StoredModel:
    """The `model_config` (and `training_config`) attributes of a legacy HDF5 model file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise _broken(path, "no 'model_config' attribute: a weights-only file "
                                    "(save_weights)? save the whole model with model.save()")
            if "model_weights" not in f:
                raise _broken(path, "its weights group 'model_weights' is missing")
            config = _parse_json(raw, path, "model_config")
            training = f.attrs.get("training_config")
            training = None if training is None else _parse_json(training, path,
                                                                 "training_config")
            version = _text(f.attrs.get("keras_version", ""))
    except KoptError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to parse untrusted bytes is reported
        raise _broken(path, f"not a readable HDF5 model file ({_one_line(err)})") from err
    return StoredModel(_model_config(config, path), training, version)


def check_model_config(stored: StoredModel, path: str, custom_objects: dict | None = None):
    """Raise `UnsafeModelError` if loading `stored` could run code; see the module docstring.

    Walks the config iteratively: a hostile file may nest deeper than Python's recursion limit.
    """
    custom_objects = custom_objects or {}
    layers = list(_layer_entries(stored.config))
    owners = {id(entry) for entry in layers}
    for entry in layers:
        class_name = entry.get("class_name")
        if class_name in _REFUSED_LAYERS and class_name not in custom_objects:
            raise UnsafeModelError(f"cannot load '{path}' safely: {_describe(entry)} "
                                   f"{_REFUSED_LAYERS[class_name]}; {_OPT_IN}")
        function = _get(entry.get("config"), "function", None)
        if class_name in _TF_KERAS_OP_LAYERS and not _is_pure_tf_function(function):
            raise UnsafeModelError(
                f"cannot load '{path}' safely: {_describe(entry)} calls tf.{function}, which "
                "is not one of the side-effect-free math / array functions kopt allows in "
                f"safe mode; {_OPT_IN}")
        if not _is_known_layer(class_name, entry.get("module"), custom_objects):
            raise UnsafeModelError(
                f"cannot load '{path}' safely: {_describe(entry)} is not a Keras layer kopt "
                "knows (not in keras.layers / tf_keras.layers, not in custom_objects, not "
                "registered with keras.saving.register_keras_serializable); pass your class in "
                f"custom_objects, or {_OPT_IN}")
    todo: list[tuple[Any, Any]] = [(stored.config, stored.config)]
    if stored.training_config is not None:
        todo.append((stored.training_config, None))
    while todo:
        obj, owner = todo.pop()
        if isinstance(obj, dict):
            owner = obj if id(obj) in owners else owner
            reason = _unsafe_object(obj, custom_objects)
            if reason:
                what = ("the training config (loss / metrics)" if owner is None
                        else _describe(owner))
                raise UnsafeModelError(f"cannot load '{path}' safely: {what} {reason}; {_OPT_IN}")
            todo.extend((value, owner) for value in obj.values())
        elif isinstance(obj, list):
            todo.extend((value, owner) for value in obj)


def _is_pure_tf_function(name: Any) -> bool:
    """Whether a TFOpLambda's `function` (a tf API path like "math.add") is allowed."""
    if not isinstance(name, str):
        return False
    return name in _PURE_TF_FUNCTIONS or (name.startswith(_PURE_TF_NAMESPACES)
                                          and name.count(".") == 1)


def _unsafe_object(obj: dict, custom_objects: dict) -> str | None:
    """Why one dict of a stored config could run code, or None."""
    if obj.get("class_name") == "__lambda__" or any(
            isinstance(key, str) and key.endswith("_type") and value == "lambda"
            for key, value in obj.items()):
        return ("stores a Python function as bytecode (a lambda), which Keras would run while "
                "rebuilding the model")
    module, name = obj.get("module"), obj.get("class_name")
    if module is None or not isinstance(name, str):
        return None
    package = module.split(".", 1)[0] if isinstance(module, str) else None
    if package in _KERAS_PACKAGES or (package == "tensorflow" and name == "__typespec__"):
        return None
    registered = obj.get("registered_name")
    if _is_custom(name, custom_objects) or (
            isinstance(registered, str) and _is_custom(registered, custom_objects)):
        return None
    return (f"names the Python module {module!r} (for {name!r}), which tf_keras' loader would "
            "import and take objects from; kopt allows Keras modules, and your own objects when "
            "they are in custom_objects or registered with keras.saving")


def _layer_entries(config: dict):
    """Every layer entry of a model config: the model itself, nested models and wrapped layers."""
    todo = [config]
    while todo:
        entry = todo.pop()
        if not (isinstance(entry, dict) and "class_name" in entry):
            continue
        yield entry
        inner = entry.get("config")
        if isinstance(inner, list):  # old tf_keras Sequential: the config is the layer list
            todo.extend(inner)
        elif isinstance(inner, dict):
            for key in _SUBLAYER_KEYS:
                sub = inner.get(key)
                todo.extend(sub if isinstance(sub, list) else [sub])


def _is_known_layer(class_name: Any, module: Any, custom_objects: dict) -> bool:
    if not isinstance(class_name, str):
        return False
    return (class_name in _keras_layer_names() or _is_custom(class_name, custom_objects)
            or (module, class_name) in _KERAS_OPERATIONS
            or _is_keras_package_layer(module, class_name)
            or class_name in _tf_keras_layer_names())  # imports tf_keras: asked last


def _is_custom(name: str, custom_objects: dict) -> bool:
    """Whether `name` is in the caller's custom_objects or registered with Keras / tf_keras."""
    import keras

    registries = [custom_objects, keras.saving.get_custom_objects()]
    if "tf_keras" in sys.modules:  # nothing is registered with tf_keras before it is imported
        registries.append(sys.modules["tf_keras"].saving.get_custom_objects())
    return any(_names_in(registry, name) for registry in registries)


def _is_keras_package_layer(module: Any, class_name: str) -> bool:
    """A layer Keras itself ships outside keras.layers (e.g. ConvNeXt's LayerScale in
    keras.src.applications.convnext): Keras 3 imports the file's `module` only from these
    packages, and so do we (importing Keras' own modules runs no code from the file)."""
    if not isinstance(module, str) or module.split(".", 1)[0] not in _KERAS_PACKAGES:
        return False
    import keras

    try:
        cls = getattr(importlib.import_module(module), class_name, None)
    except Exception:  # noqa: BLE001 - a module that does not import is not a known layer
        return False
    return isinstance(cls, type) and issubclass(cls, keras.layers.Layer) and (
        class_name not in _REFUSED_LAYERS)


def _names_in(objects: dict, class_name: str) -> bool:
    """Whether `objects` (name -> class) holds `class_name`, by key, registered name
    ("package>Name") or class name."""
    return any(class_name in (key, key.rsplit(">", 1)[-1], getattr(obj, "__name__", None))
               for key, obj in objects.items())


@functools.cache
def _keras_layer_names() -> frozenset:
    import keras

    return _layer_classes(keras.layers, keras.layers.Layer) | _MODEL_CLASSES


@functools.cache
def _tf_keras_layer_names() -> frozenset:
    import tf_keras

    return (_layer_classes(tf_keras.layers, tf_keras.layers.Layer) | _MODEL_CLASSES
            | _TF_KERAS_OP_LAYERS)


def _layer_classes(module: Any, base: type) -> frozenset:
    names = {name for name in dir(module)
             if isinstance(getattr(module, name), type) and issubclass(getattr(module, name), base)}
    return frozenset(names - set(_REFUSED_LAYERS))


def _keras_load(path: str, stored: StoredModel, custom_objects: dict | None,
                safe_mode: bool) -> Any:
    """Keras 3 first; tf_keras for files Keras 2 (tf_keras) wrote that Keras 3 cannot read.
    Whatever a loader raises on a broken file becomes `UnsupportedModelError`."""
    import keras

    try:
        return keras.saving.load_model(path, custom_objects=custom_objects, safe_mode=safe_mode)
    except Exception as err:  # noqa: BLE001 - reported below, or retried with tf_keras
        error = err
    is_hdf5 = path.lower().endswith(HDF5_SUFFIXES)
    if stored.keras_version.startswith("2.") or (is_hdf5 and not stored.keras_version):
        try:
            import tf_keras

            return tf_keras.models.load_model(path, custom_objects=custom_objects,
                                              safe_mode=safe_mode)
        except Exception as err:  # noqa: BLE001 - the file's own Keras has the last word
            error = err
    raise UnsupportedModelError(
        f"cannot load '{path}': {type(error).__name__}: {_one_line(error)}") from error


def load_arrays(path: str | os.PathLike) -> tuple[Any, Any]:
    """(x, y or None) from a .npy file (y is None) or an .npz file holding 'x' and optionally
    'y'. Never unpickles: an object array (pickled Python objects) raises `DataError`."""
    import numpy as np

    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            return data, None
        with data:
            if "x" not in data.files:
                raise DataError(f"{path}: needs an array named 'x' (and optionally 'y'), "
                                f"found {data.files}")
            return data["x"], (data["y"] if "y" in data.files else None)
    except KoptError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to parse untrusted bytes is reported
        if isinstance(err, ValueError) and "pickle" in str(err):
            raise DataError(f"{path}: holds pickled Python objects (an object array or a "
                            "pickle); kopt never unpickles data files: save plain numeric "
                            "arrays with np.save / np.savez") from err
        raise DataError(f"cannot read {path}: {_one_line(err)}") from err


def _model_config(config: Any, path: str) -> dict:
    if not (isinstance(config, dict) and isinstance(config.get("class_name"), str)):
        raise _broken(path, "the stored config is not a Keras model config")
    return config


def _parse_json(raw: Any, path: str, what: str) -> Any:
    try:
        return json.loads(_text(raw))
    except Exception as err:  # noqa: BLE001 - RecursionError, UnicodeDecodeError, ValueError
        raise _broken(path, f"{what} is not valid JSON ({_one_line(err)})") from err


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _get(mapping: Any, key: str, default: Any) -> Any:
    return mapping.get(key, default) if isinstance(mapping, dict) else default


def _describe(entry: dict) -> str:
    name = entry.get("name") or _get(entry.get("config"), "name", "?")
    return f"layer '{name}' ({entry.get('class_name')})"


def _broken(path: str, reason: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"cannot load '{path}': {reason}")


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to `limit` characters: Keras puts whole
    configs into its messages, and the CLI prints one line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."
