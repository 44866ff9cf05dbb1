"""Per-layer int8 error: a layer made hard to quantise on purpose ranks first, an ordinary model
is above 20 dB everywhere, tensors are named after their Keras layers, and the CLI writes the
JSON and PNG."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kopt.cli import main  # noqa: E402
from kopt.errors import KoptError  # noqa: E402
from kopt.runtime import Int8ErrorReport, export_tflite, int8_layer_errors  # noqa: E402
from kopt.testing import randomize_weights  # noqa: E402

L = keras.layers


def _chain(seed=0, names=("conv_a", "conv_mid")):
    keras.utils.set_random_seed(seed)
    i = keras.Input((16, 16, 3), name="image")
    x = i
    for name in names:
        x = L.Conv2D(8, 3, padding="same", activation="relu", name=name)(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw_next")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return randomize_weights(keras.Model(i, L.Dense(4, name="logits")(x)), seed=seed)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(0, 1, (48, 16, 16, 3)).astype("float32")


@pytest.mark.parametrize("seed", [0, 4])
def test_a_channel_with_a_huge_range_ranks_its_layer_first(data, seed):
    """One output channel of conv_mid x1e3, the depthwise weights reading it x1e-3: the float
    function is unchanged, but that channel takes conv_mid's whole int8 scale and leaves the
    other seven channels a few steps. The tensor-wide SQNR of conv_mid stays high (the big
    channel dominates it) and collapses only after dw_next scales the channel back; per channel
    it shows at conv_mid. The next layer is depthwise because its weights are scaled per
    channel: a Conv2D's weights for the x1e-3 input channel would round to zero against its
    other weights (one int8 scale per output channel), a second badly quantised layer."""
    model = _chain(seed)
    before = np.asarray(model(data[:8]))
    mid, nxt = model.get_layer("conv_mid"), model.get_layer("dw_next")
    kernel, bias = mid.get_weights()
    kernel[..., 0] *= 1e3
    bias[0] *= 1e3
    mid.set_weights([kernel, bias])
    kernel, bias = nxt.get_weights()
    kernel[:, :, 0, :] *= 1e-3
    nxt.set_weights([kernel, bias])
    after = np.asarray(model(data[:8]))
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()

    report = int8_layer_errors(model, data)
    rows = {r["layer"]: r for r in report.rows}
    assert report.worst()["layer"] == "conv_mid", report.table()
    assert rows["conv_mid"]["sqnr_db"] > 20 > rows["conv_mid"]["channel_sqnr_db"]
    assert rows["dw_next"]["sqnr_db"] < 20  # where a tensor-wide ratio would see the damage
    assert report.ranked()[0]["added"] > 0.5


def test_an_ordinary_model_is_above_20_db_everywhere(data):
    model = _chain()
    report = int8_layer_errors(model, data)
    assert isinstance(report, Int8ErrorReport) and report.samples == len(data)
    assert [r["op"] for r in report.rows] == ["INPUT", "CONV_2D", "CONV_2D",
                                             "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED"]
    assert all(r["sqnr_db"] > 20 and r["cosine"] > 0.99 for r in report.rows), report.table()
    assert not report.unmatched


def test_tensors_are_named_after_keras_layers_despite_scope_suffixes(data):
    """Default Keras 3 names collide with the name-scope suffixes ("conv2d" traces as
    "conv2d_1", the layer "conv2d_1" as "conv2d_1_2"): values decide which layer it is."""
    i = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(i)
    x = L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(x))
    x = L.ReLU()(x)
    x = L.Flatten()(L.MaxPooling2D()(x))
    model = randomize_weights(keras.Model(i, L.Dense(5, activation="softmax")(x)), seed=1)
    names = [layer.name for layer in model.layers]
    report = int8_layer_errors(model, data)
    got = [(r["layer"], r["op"]) for r in report.rows]
    conv0, conv1, relu, pool, flat, dense = names[1], names[2], names[4], names[5], names[6], \
        names[7]
    assert got == [(names[0], "INPUT"), (conv0, "CONV_2D"), (relu, "CONV_2D"),
                   (pool, "MAX_POOL_2D"), (flat, "RESHAPE"), (dense, "FULLY_CONNECTED"),
                   (dense, "SOFTMAX")], (got, names)
    assert conv1 != relu and report.rows[4]["added"] == 0.0  # a flatten moves, adds nothing


def test_tf_keras_model(data):
    tf_keras = pytest.importorskip("tf_keras")
    i = tf_keras.Input((16, 16, 3))
    x = tf_keras.layers.Conv2D(4, 3, activation="relu", name="first")(i)
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = tf_keras.Model(i, tf_keras.layers.Dense(3, name="head")(x))
    report = int8_layer_errors(model, data[:16])
    assert [r["layer"] for r in report.rows] == [model.layers[0].name, "first", "pool", "head"]


def test_export_fills_layer_errors_on_request(data, tmp_path):
    model = _chain()
    result = export_tflite(model, tmp_path / "m.tflite", data, layer_errors=True)
    assert result.layer_errors is not None and len(result.layer_errors.rows) == 6
    assert "int8 error:" in result.summary()
    assert export_tflite(model, tmp_path / "n.tflite", data).layer_errors is None
    with pytest.raises(KoptError, match="post-training int8"):
        export_tflite(model, tmp_path / "f.tflite", quantize=None, layer_errors=True)


def test_cli_writes_json_and_png(data, tmp_path, capsys):
    model = _chain()
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "calib.npz", x=data)
    out_json, out_png = tmp_path / "e.json", tmp_path / "e.png"
    assert main(["report", str(tmp_path / "m.keras"), "--int8-error", "--data",
                 str(tmp_path / "calib.npz"), "--json", str(out_json), "--plot",
                 str(out_png), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "SQNR dB" in out and len(out.strip().splitlines()) == 2 + 3  # title, header, top 3
    saved = json.loads(out_json.read_text())
    assert saved["samples"] == len(data) and len(saved["rows"]) == 6
    assert {"layer", "tensor", "op", "sqnr_db", "cosine", "added"} <= set(saved["rows"][0])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_digits_and_missing_data(tmp_path, capsys):
    i = keras.Input((12, 12, 1))
    x = L.MaxPooling2D()(L.Conv2D(4, 3, activation="relu", name="c")(i))
    keras.Model(i, L.Dense(3, name="d")(L.Flatten()(x))).save(tmp_path / "d.keras")
    assert main(["report", str(tmp_path / "d.keras"), "--int8-error", "--digits"]) == 0
    assert "FULLY_CONNECTED" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "d.keras"), "--int8-error"]) == 2
    assert "--digits" in capsys.readouterr().err
