"""Export: full-int8 / float TFLite read back in LiteRT, data errors, ONNX via onnxruntime."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kopt.errors import DataError  # noqa: E402
from kopt.runtime import LiteRTRunner, export_onnx, export_tflite  # noqa: E402
from kopt.testing import randomize_weights  # noqa: E402


@pytest.fixture(scope="module")
def model():
    i = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(i)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5)(x)
    return randomize_weights(keras.Model(i, x), seed=3)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(0, 1, (40, 12, 12, 3)).astype("float32")


def test_int8_export_is_all_int8_and_agrees(model, data, tmp_path):
    path = tmp_path / "m.tflite"
    result = export_tflite(model, path, representative_data=data)
    assert path.stat().st_size == result.bytes > 0
    assert result.ops["CONV_2D"] == 1 and result.ops["FULLY_CONNECTED"] == 1
    assert result.xnnpack_ops == result.total_ops and not result.fallback_ops
    runner = LiteRTRunner(path)
    assert runner.inputs[0]["dtype"] == np.int8 and runner.outputs[0]["dtype"] == np.int8
    details = runner.interpreter.get_tensor_details()
    ops = runner.interpreter._get_ops_details()
    for op in ops:  # every op's activations and weights are int8 (biases int32)
        for i in list(op["inputs"]) + list(op["outputs"]):
            if i >= 0:
                assert details[i]["dtype"] in (np.int8, np.int32), (op["op_name"], details[i])
    fig = result.verification
    assert fig["top1_agreement"] >= 0.9
    assert fig["mean_abs_error"] < 0.05 * fig["max_abs_output"]
    out = runner.run(data[:3])  # float in, float out, any batch
    assert out.shape == (3, 5) and out.dtype == np.float32
    assert runner.latency(n=20, warmup=2) > 0


def test_float_io_int8(model, data, tmp_path):
    result = export_tflite(model, tmp_path / "f.tflite", representative_data=iter(data[:20]),
                           int8_io=False)
    runner = LiteRTRunner(result.path)
    assert runner.inputs[0]["dtype"] == np.float32
    assert result.verification["top1_agreement"] >= 0.9


def test_float_export_agrees(model, tmp_path):
    result = export_tflite(model, tmp_path / "f32.tflite", quantize=None)
    assert result.verification["max_relative_error"] <= 1e-4
    x = np.random.default_rng(5).normal(0, 1, (2, 12, 12, 3)).astype("float32")
    got = LiteRTRunner(result.path).run(x)
    np.testing.assert_allclose(got, np.asarray(model(x)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad, words", [
    (None, "needed"),
    (np.zeros((0, 12, 12, 3), "float32"), "empty"),
    (np.zeros((4, 10, 10, 3), "float32"), "(None, 12, 12, 3)"),
    (iter([]), "empty"),
])
def test_data_errors(model, tmp_path, bad, words):
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        export_tflite(model, tmp_path / "x.tflite", representative_data=bad)


def test_onnx_export_agrees(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result.verification["max_relative_error"] <= 1e-4
    x = np.random.default_rng(7).normal(0, 1, (3, 12, 12, 3)).astype("float32")
    sess = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, np.asarray(model(x)), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_qat_export(model, data, tmp_path):
    y = np.random.default_rng(1).integers(0, 5, len(data))
    result = export_tflite(model, tmp_path / "q.tflite", representative_data=data,
                           qat=dict(data=(data, y), epochs=1))
    runner = LiteRTRunner(result.path)
    assert runner.inputs[0]["dtype"] == np.int8
    assert result.quantize == "int8" and "mean_abs_error" in result.verification
