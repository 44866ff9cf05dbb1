"""Issue 13: no model or data file runs code on load unless the caller opts in, through every
entry point, and broken files give a clear `KoptError` (the CLI: exit 2, one line, no traceback).

The "armed" files hold a Lambda whose stored bytecode writes a marker file when called: each
refusal test asserts the marker never appears, and `test_armed_files_do_run_code_when_opted_in`
proves the files really are armed.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tf_keras

import kopt
from kopt.cli import main
from kopt.errors import DataError, KoptError, UnsafeModelError, UnsupportedModelError
from kopt.keras_io.loading import StoredModel, check_model_config, load_arrays, load_model

REPO = Path(__file__).resolve().parents[1]
X = np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4)


def _small(lib, lambda_fn=None):
    """Input(4) [-> Lambda(lambda_fn)] -> Dense(2), with lib = keras or tf_keras."""
    inp = lib.Input((4,))
    h = inp if lambda_fn is None else lib.layers.Lambda(lambda_fn, name="lambda")(inp)
    return lib.Model(inp, lib.layers.Dense(2, name="fc")(h))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Plain and armed models, Keras 3 and tf_keras, .keras and .h5; `marker` is the armed
    Lambdas' marker file (building a model calls its Lambda, so it is removed afterwards)."""
    d = tmp_path_factory.mktemp("models")
    marker = d / "marker"
    ns: dict = {}
    exec(f"fn = lambda t: (open({str(marker)!r}, 'w').write('ran'), t * 2)[1]", ns)
    out = {"dir": d, "marker": marker}
    for lib, tag in ((keras, "k3"), (tf_keras, "tfk")):
        lib.utils.set_random_seed(0)
        plain, armed = _small(lib), _small(lib, ns["fn"])
        for ext in ("keras", "h5"):
            plain.save(d / f"{tag}.{ext}")
            armed.save(d / f"armed_{tag}.{ext}")
            out[f"{tag}.{ext}"] = d / f"{tag}.{ext}"
            out[f"armed_{tag}.{ext}"] = d / f"armed_{tag}.{ext}"
        out[f"{tag}_y"] = np.asarray(plain(X))
    marker.unlink()
    return out


ARMED = ["armed_k3.keras", "armed_k3.h5", "armed_tfk.keras", "armed_tfk.h5"]


def _refusal_checks(files, message):
    """What every refusal of an armed file must look like."""
    assert not files["marker"].exists(), "stored code ran"
    assert "'lambda' (Lambda)" in message and "bytecode" in message
    assert "Traceback" not in message and "\n" not in message.strip()


@pytest.mark.parametrize("name", ARMED)
def test_armed_files_are_refused_in_every_format(files, name):
    with pytest.raises(UnsafeModelError) as info:
        kopt.load_model(files[name])
    _refusal_checks(files, str(info.value))
    assert "safe_mode=False" in str(info.value) and "--unsafe" in str(info.value)
    assert isinstance(info.value, UnsupportedModelError)


def test_armed_files_do_run_code_when_opted_in(files):
    """The original hole (tf_keras HDF5) and safe_mode=False: the stored code really runs."""
    try:
        for name in ARMED:
            model = kopt.load_model(files[name], safe_mode=False)
            assert files["marker"].exists(), name
            files["marker"].unlink()
            assert model.get_layer("lambda") is not None
    finally:
        files["marker"].unlink(missing_ok=True)


def test_one_loader_behind_the_python_entry_points(files):
    assert kopt.load_model is load_model
    assert kopt.keras_io.load_model is load_model
    for name in ARMED:
        with pytest.raises(UnsafeModelError) as info:
            kopt.from_keras(files[name])
        _refusal_checks(files, str(info.value))


@pytest.mark.parametrize("command", [["inspect"], ["optimize", "-o", "OUT.keras"],
                                     ["report"], ["export", "-o", "OUT.tflite"]])
def test_cli_refuses_armed_files(files, command, capsys):
    for name in ("armed_tfk.h5", "armed_k3.keras"):
        argv = [command[0], str(files[name])] + [
            str(files["dir"] / a) if a.startswith("OUT") else a for a in command[1:]]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("kopt: error: ") and err.count("\n") == 1, err
        assert "--unsafe" in err
        _refusal_checks(files, err)


def test_python_m_kopt_refuses_armed_file(files):
    """A real process: exit code 2, one line on stderr, no traceback, no marker."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "kopt", "inspect", str(files["armed_tfk.h5"])],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kopt: error: ")]
    assert len(lines) == 1 and "--unsafe" in lines[0], proc.stderr
    _refusal_checks(files, lines[0])
    assert "Traceback" not in proc.stderr


def test_export_tool_refuses_armed_file(files, capsys, load_tool):
    out = files["dir"] / "tool.tflite"
    assert load_tool("export_tflite").main([str(files["armed_tfk.h5"]), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export_tflite: error: ") and "--unsafe" in err
    _refusal_checks(files, err)
    assert not out.exists()


@pytest.mark.parametrize("name", ["k3.keras", "k3.h5", "tfk.keras", "tfk.h5"])
def test_plain_files_load_and_compute_the_same(files, name):
    model = kopt.load_model(files[name])
    np.testing.assert_allclose(np.asarray(model(X)), files[name.split(".")[0] + "_y"],
                               rtol=1e-6)


# --- the config walk, on hand-written configs (no Keras saving needed) ---------------------

def _dense(name):
    return {"class_name": "Dense", "config": {"name": name, "units": 2}}


def _tf_keras_lambda(name):
    return {"class_name": "Lambda", "config": {"name": name, "function": ["4wEAAA==", None,
                                                                          None],
                                               "function_type": "lambda"}}


def _keras3_lambda(name):
    return {"class_name": "Lambda", "config": {"name": name, "function": {
        "class_name": "__lambda__", "config": {"code": "4wEAAA==", "defaults": None}}}}


@pytest.mark.parametrize("config,layer", [
    # Sequential in Functional, Bidirectional wrapping a layer
    ({"class_name": "Functional", "config": {"layers": [_dense("a"), {
        "class_name": "Sequential", "config": {"name": "inner", "layers": [
            {"class_name": "Bidirectional", "config": {"name": "bi",
                                                       "layer": _tf_keras_lambda("deep")}}]}}]}},
     "deep"),
    # old tf_keras Sequential: the config is the layer list; TimeDistributed
    ({"class_name": "Sequential", "config": [_dense("a"), {
        "class_name": "TimeDistributed", "config": {"name": "td",
                                                    "layer": _keras3_lambda("k3lam")}}]},
     "k3lam"),
    # an RNN cell
    ({"class_name": "Sequential", "config": {"layers": [{"class_name": "RNN", "config": {
        "name": "rnn", "cell": {"class_name": "StackedRNNCells", "config": {
            "name": "cells", "cells": [_keras3_lambda("celllam")]}}}}]}}, "celllam"),
    # a lambda anywhere in a layer's config (here an activation) names that layer
    ({"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {
        "name": "act", "activation": {"class_name": "__lambda__", "config": {}}}}]}}, "act"),
])
def test_code_is_found_at_any_depth(config, layer):
    with pytest.raises(UnsafeModelError, match=f"layer '{layer}' .*bytecode"):
        check_model_config(StoredModel(config, None, ""), "m.h5")


def test_objects_from_non_keras_modules_are_refused():
    """tf_keras' .keras loader imports any module a config names and takes objects from it."""
    system = {"module": "os", "class_name": "function", "config": "system",
              "registered_name": "system"}
    config = {"class_name": "Sequential", "config": {"layers": [{
        "class_name": "Dense", "module": "keras.layers",
        "config": {"name": "fc", "units": 2, "activation": system}}]}}
    with pytest.raises(UnsafeModelError, match="layer 'fc' .*module 'os'"):
        check_model_config(StoredModel(config, None, "2.21.0"), "m.keras")
    check_model_config(StoredModel(config, None, "2.21.0"), "m.keras", {"system": print})


def test_code_in_the_training_config_is_refused():
    config = {"class_name": "Sequential", "config": {"layers": [_dense("a")]}}
    training = {"loss": {"class_name": "__lambda__", "config": {}}}
    with pytest.raises(UnsafeModelError, match="training config .*bytecode"):
        check_model_config(StoredModel(config, training, "2.21.0"), "m.h5")


def test_deep_nesting_does_not_overflow_the_walk():
    config = {"class_name": "Sequential", "config": {"layers": [_dense("a")]}}
    leaf = config["config"]
    for _ in range(100_000):
        leaf["extra"] = {"x": [1]}
        leaf = leaf["extra"]
    check_model_config(StoredModel(config, None, ""), "m.keras")


# --- layer classes --------------------------------------------------------------------------

def _edit_config(src: Path, dst: Path, edit) -> Path:
    """A copy of model file `src` whose stored config went through `edit(config)`."""
    if src.suffix == ".keras":
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item)
                if item.filename == "config.json":
                    data = json.dumps(edit(json.loads(data))).encode()
                zout.writestr(item, data)
    else:
        shutil.copy(src, dst)
        with h5py.File(dst, "r+") as f:
            f.attrs["model_config"] = json.dumps(edit(json.loads(f.attrs["model_config"])))
    return dst


def _rename_class(new):
    def edit(config):
        config["config"]["layers"][-1]["class_name"] = new
        return config
    return edit


@pytest.mark.parametrize("name", ["k3.keras", "k3.h5", "tfk.h5"])
@pytest.mark.parametrize("cls,reason", [("NoSuchLayer", "not a Keras layer kopt knows"),
                                        ("TFSMLayer", "SavedModel")])
def test_unknown_or_refused_layer_classes(files, tmp_path, name, cls, reason):
    path = _edit_config(files[name], tmp_path / f"x{files[name].suffix}", _rename_class(cls))
    with pytest.raises(UnsafeModelError, match=f"layer 'fc' \\({cls}\\) .*{reason}"):
        kopt.load_model(path)
    if cls == "NoSuchLayer":  # opting in cannot load a class that does not exist: still clear
        with pytest.raises(UnsupportedModelError, match=f"cannot load .*{cls}"):
            kopt.load_model(path, safe_mode=False)


def test_tf_op_layers_may_only_call_pure_functions(tmp_path):
    """tf_keras stores `tf.*` calls as TFOpLambda layers naming a TensorFlow function, which
    runs whenever the model does: tf.math.add loads; tf.io.write_file is refused."""
    import tensorflow as tf

    inp = tf_keras.Input((4,))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="fc")(tf.math.add(inp, 1.0)))
    model.save(tmp_path / "op.h5")
    loaded = kopt.load_model(tmp_path / "op.h5")
    np.testing.assert_allclose(np.asarray(loaded(X)), np.asarray(model(X)), rtol=1e-6)

    def to_write_file(config):
        op = next(layer for layer in config["config"]["layers"]
                  if layer["class_name"] == "TFOpLambda")
        op["config"]["function"] = "io.write_file"
        return config

    path = _edit_config(tmp_path / "op.h5", tmp_path / "writes.h5", to_write_file)
    with pytest.raises(UnsafeModelError, match=r"TFOpLambda\) calls tf.io.write_file.*--unsafe"):
        kopt.load_model(path)
    for name in ("raw_ops.WriteFile", "py_function", "compat.v1.py_func", "math.sub.x"):
        config = {"class_name": "Functional", "config": {"layers": [
            {"class_name": "TFOpLambda", "config": {"name": "op", "function": name}}]}}
        with pytest.raises(UnsafeModelError, match="side-effect-free"):
            check_model_config(StoredModel(config, None, "2.21.0"), "m.h5")


def test_custom_layers_need_custom_objects_or_registration(tmp_path):
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2

    @keras.saving.register_keras_serializable(package="kopt_test_loading")
    class Thrice(keras.layers.Layer):
        def call(self, x):
            return x * 3

    inp = keras.Input((4,))
    keras.Model(inp, Twice()(inp)).save(tmp_path / "twice.keras")
    keras.Model(inp, Thrice()(inp)).save(tmp_path / "thrice.keras")
    with pytest.raises(UnsafeModelError, match=r"'twice' \(Twice\).*custom_objects"):
        kopt.load_model(tmp_path / "twice.keras")
    model = kopt.load_model(tmp_path / "twice.keras", custom_objects={"Twice": Twice})
    np.testing.assert_allclose(np.asarray(model(X)), X * 2)
    np.testing.assert_allclose(np.asarray(kopt.load_model(tmp_path / "thrice.keras")(X)), X * 3)


# --- broken files ---------------------------------------------------------------------------

def _truncated_zip(files, d):
    data = files["k3.keras"].read_bytes()
    (d / "trunc.keras").write_bytes(data[: len(data) // 2])
    return d / "trunc.keras", "not a readable .keras zip archive"


def _crc_broken_zip(files, d):
    data = bytearray(files["k3.keras"].read_bytes())
    with zipfile.ZipFile(files["k3.keras"]) as zf:
        info = zf.getinfo("model.weights.h5")
    # a byte inside the stored weights member (past its local header)
    data[info.header_offset + 30 + len(info.filename) + info.file_size // 2] ^= 0xFF
    (d / "crc.keras").write_bytes(bytes(data))
    return d / "crc.keras", "CRC"


def _random(suffix, reason):
    def make(files, d):
        (d / f"random{suffix}").write_bytes(np.random.default_rng(0).bytes(4096))
        return d / f"random{suffix}", reason
    return make


def _no_weights_h5(files, d):
    shutil.copy(files["k3.h5"], d / "noweights.h5")
    with h5py.File(d / "noweights.h5", "r+") as f:
        del f["model_weights"]
    return d / "noweights.h5", "weights group 'model_weights' is missing"


def _weights_only_h5(files, d):
    _small(keras).save_weights(d / "only.weights.h5")
    return d / "only.weights.h5", "no 'model_config'"


def _directory(files, d):
    (d / "somedir").mkdir()
    return d / "somedir", "is a directory.*model.keras"


def _saved_model(files, d):
    (d / "sm").mkdir()
    (d / "sm" / "saved_model.pb").write_bytes(b"\x08\x01")  # never parsed: kopt stops first
    return d / "sm", "TensorFlow SavedModel.*model.keras"


def _empty(files, d):
    (d / "empty.keras").write_bytes(b"")
    return d / "empty.keras", "empty"


def _missing(files, d):
    return d / "missing.h5", "no such model file"


def _bad_json(files, d):
    shutil.copy(files["k3.h5"], d / "badjson.h5")
    with h5py.File(d / "badjson.h5", "r+") as f:
        f.attrs["model_config"] = "{not json"
    return d / "badjson.h5", "model_config is not valid JSON"


def _other_suffix(files, d):
    shutil.copy(files["k3.keras"], d / "model.pt")
    return d / "model.pt", "reads .keras and .h5"


BROKEN = [_truncated_zip, _crc_broken_zip, _random(".h5", "not a readable HDF5"),
          _random(".keras", "not a readable .keras zip"), _no_weights_h5, _weights_only_h5,
          _directory, _saved_model, _empty, _missing, _bad_json, _other_suffix]


@pytest.mark.parametrize("make", BROKEN, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("safe_mode", [True, False])
def test_broken_files_fail_clearly(files, tmp_path, make, safe_mode):
    path, reason = make(files, tmp_path)
    with pytest.raises(UnsupportedModelError, match=reason) as info:
        kopt.load_model(path, safe_mode=safe_mode)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_broken_file_at_the_cli_is_one_line(files, tmp_path, capsys):
    path, _ = _truncated_zip(files, tmp_path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kopt: error: cannot load") and err.count("\n") == 1


# --- data files -----------------------------------------------------------------------------

class _Armed:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture
def armed_data(tmp_path):
    marker = tmp_path / "data_marker"
    payload = np.array([_Armed(marker)], dtype=object)
    np.save(tmp_path / "evil.npy", payload, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", x=payload)
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps(_Armed(marker)))
    return tmp_path, marker


def test_load_arrays_reads_npy_and_npz(tmp_path):
    x, y = np.ones((3, 4), "float32"), np.arange(3)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    np.savez(tmp_path / "x.npz", x=x)
    np.savez(tmp_path / "other.npz", images=x)
    assert load_arrays(tmp_path / "a.npy")[1] is None
    np.testing.assert_array_equal(load_arrays(tmp_path / "a.npy")[0], x)
    np.testing.assert_array_equal(load_arrays(tmp_path / "xy.npz")[1], y)
    assert load_arrays(tmp_path / "x.npz")[1] is None
    with pytest.raises(DataError, match="needs an array named 'x'"):
        load_arrays(tmp_path / "other.npz")
    with pytest.raises(DataError, match="cannot read"):
        load_arrays(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="cannot read"):
        load_arrays(tmp_path / "junk.npz")


@pytest.mark.parametrize("name", ["evil.npy", "evil.npz", "pickle.npy"])
def test_pickled_data_is_refused_and_never_runs(armed_data, name):
    d, marker = armed_data
    with pytest.raises(DataError, match="pickled Python objects.*never unpickles") as info:
        load_arrays(d / name)
    assert name in str(info.value)
    assert not marker.exists()
    np.load(d / "evil.npy", allow_pickle=True)  # the file really is armed
    assert marker.exists()


def test_cli_and_tool_refuse_pickled_data(files, armed_data, capsys, load_tool):
    d, marker = armed_data
    model = str(files["k3.keras"])
    runs = [
        lambda: main(["optimize", model, "-o", str(d / "o.keras"), "--data", str(d / "evil.npz")]),
        lambda: main(["optimize", model, "-o", str(d / "o.keras"), "--data", str(d / "a.npz"),
                      "--validation", str(d / "evil.npy")]),
        lambda: main(["export", model, "-o", str(d / "o.tflite"), "--data", str(d / "evil.npy")]),
    ]
    np.savez(d / "a.npz", x=X)
    for run in runs:
        assert run() == 2
        err = capsys.readouterr().err
        assert err.startswith("kopt: error: ") and "pickled" in err and err.count("\n") == 1
    assert load_tool("export_tflite").main([model, "-o", str(d / "t.tflite"), "--data",
                                str(d / "pickle.npy")]) == 2
    assert "pickled" in capsys.readouterr().err
    assert not marker.exists()


def test_every_kopt_error_is_a_kopt_error():
    assert issubclass(UnsafeModelError, UnsupportedModelError)
    assert issubclass(UnsupportedModelError, KoptError) and issubclass(DataError, KoptError)
