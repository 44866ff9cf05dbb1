"""The final softmax on export (keep / drop / float), the XNNPACK coverage measured from the
interpreter, and a multi-input, multi-output model exported with its inputs in order."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kopt.errors import KoptError  # noqa: E402
from kopt.flows.data import digits_splits  # noqa: E402
from kopt.runtime import LiteRTRunner, export_tflite  # noqa: E402
from kopt.runtime.litert import op_table  # noqa: E402
from kopt.testing import randomize_weights  # noqa: E402

L = keras.layers


@pytest.fixture(scope="module")
def digits():
    return digits_splits(size=16)


@pytest.fixture(scope="module")
def classifier(digits):
    """A small digits CNN ending in Dense(10, softmax), trained briefly."""
    keras.utils.set_random_seed(0)
    i = keras.Input((16, 16, 1), name="image")
    x = L.Conv2D(16, 3, padding="same", activation="relu")(i)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = L.Flatten()(L.MaxPooling2D()(x))
    model = keras.Model(i, L.Dense(10, activation="softmax", name="predictions")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(*digits.train, epochs=3, batch_size=64, verbose=0)
    return model


def test_drop_ends_at_the_logits_and_keeps_top1(classifier, digits, tmp_path):
    x_cal, (x_test, _) = digits.train[0][:200], digits.test
    weights = [w.copy() for w in classifier.get_weights()]
    layers = list(classifier.layers)
    result = export_tflite(classifier, tmp_path / "d.tflite", x_cal, softmax="drop")
    assert result.softmax == "drop" and "SOFTMAX" not in result.ops
    assert result.xnnpack_ops == result.total_ops and not result.fallback_ops
    assert result.verification["top1_agreement"] >= 0.98  # against the copy's float logits
    logits = LiteRTRunner(result.path).run(x_test)
    probs = np.asarray(classifier.predict(x_test, verbose=0))
    assert not np.allclose(logits.sum(1), 1.0, atol=0.05)  # logits, not probabilities
    kept = export_tflite(classifier, tmp_path / "k.tflite", x_cal, verify=False)
    agreement = np.mean(logits.argmax(1) == probs.argmax(1))
    assert agreement >= 0.98
    assert agreement >= np.mean(LiteRTRunner(kept.path).run(x_test).argmax(1) == probs.argmax(1))
    # the caller's model is untouched: same layers, weights and softmax output
    assert list(classifier.layers) == layers
    assert classifier.get_layer("predictions").get_config()["activation"] == "softmax"
    assert all(np.array_equal(a, b) for a, b in zip(weights, classifier.get_weights()))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_keep_leaves_int8_softmax_to_litert(classifier, digits, tmp_path):
    """Measured, not from a table: XNNPACK does not take int8 SOFTMAX, does take float."""
    result = export_tflite(classifier, tmp_path / "k.tflite", digits.train[0][:100])
    assert result.softmax == "keep" and result.fallback_ops == {"SOFTMAX(int8)": 1}
    assert result.xnnpack_ops == result.total_ops - 1
    float_file = export_tflite(classifier, tmp_path / "f32.tflite", quantize=None)
    assert float_file.ops["SOFTMAX"] == 1 and not float_file.fallback_ops


def test_float_softmax_gives_float_probabilities(classifier, digits, tmp_path):
    x_test = digits.test[0]
    result = export_tflite(classifier, tmp_path / "f.tflite", digits.train[0][:200],
                           softmax="float")
    assert result.ops["DEQUANTIZE"] == 1 and result.ops["SOFTMAX"] == 1
    assert result.xnnpack_ops == result.total_ops
    runner = LiteRTRunner(result.path)
    assert runner.inputs[0]["dtype"] == np.int8 and runner.outputs[0]["dtype"] == np.float32
    probs = runner.run(x_test)
    expected = np.asarray(classifier.predict(x_test, verbose=0))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.mean(probs.argmax(1) == expected.argmax(1)) >= 0.98
    assert result.verification["top1_agreement"] >= 0.98
    assert result.verification["mean_abs_error"] < 0.02  # probabilities against probabilities


@pytest.mark.parametrize("head", ["layer", "activation"])
def test_drop_removes_a_trailing_softmax_layer(head, tmp_path):
    i = keras.Input((6,))
    logits = L.Dense(4, name="logits")(L.Dense(8, activation="relu")(i))
    out = L.Softmax()(logits) if head == "layer" else L.Activation("softmax")(logits)
    model = randomize_weights(keras.Model(i, out), seed=2)
    result = export_tflite(model, tmp_path / "t.tflite", quantize=None, softmax="drop")
    assert "SOFTMAX" not in result.ops and result.verification["max_relative_error"] <= 1e-4
    x = np.random.default_rng(3).normal(0, 1, (5, 6)).astype("float32")
    want = np.asarray(keras.Model(i, logits)(x))
    np.testing.assert_allclose(LiteRTRunner(result.path).run(x), want, rtol=1e-4, atol=1e-5)
    assert len(model.layers) == 4  # the softmax layer is still in the caller's model


def test_no_softmax_to_drop_is_an_error(tmp_path):
    i = keras.Input((6,))
    model = keras.Model(i, L.Dense(3)(i))
    data = np.zeros((4, 6), "float32")
    for mode in ("drop", "float"):
        with pytest.raises(KoptError, match="no output .* ends in a softmax"):
            export_tflite(model, tmp_path / "x.tflite", data, softmax=mode)
    with pytest.raises(KoptError, match="softmax='nope'"):
        export_tflite(model, tmp_path / "x.tflite", data, softmax="nope")


def test_op_table_reads_the_delegate(classifier, digits):
    """A softmax in the middle splits XNNPACK's graph in two partitions: both are found."""
    from kopt.runtime import convert_tflite

    i = keras.Input((16, 16, 1))
    x = L.Softmax()(L.Conv2D(4, 3, padding="same")(i))
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, padding="same")(x))
    model = keras.Model(i, L.Dense(3)(x))
    ops, fallback, taken = op_table(convert_tflite(model, "int8", digits.train[0][:50]))
    assert ops == {"CONV_2D": 2, "SOFTMAX": 1, "MEAN": 1, "FULLY_CONNECTED": 1}
    assert fallback == {"SOFTMAX(int8)": 1} and taken == 4


def _two_in_two_out():
    """Inputs of one shape and outputs of one shape, used asymmetrically: any swap of inputs
    or outputs changes the numbers."""
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    h = L.Dense(8, activation="relu")(L.Concatenate()([a, b]))
    first = L.Dense(3, name="first")(h)
    second = L.Dense(3, name="second")(L.Subtract()([L.Dense(3)(a), L.Dense(3)(b)]))
    return randomize_weights(keras.Model([a, b], [first, second]), seed=5)


def test_multi_input_multi_output_export(tmp_path):
    model = _two_in_two_out()
    rng = np.random.default_rng(0)
    xa, xb = (rng.normal(0, 1, (64, 6)).astype("float32") for _ in range(2))
    result = export_tflite(model, tmp_path / "f.tflite", quantize=None)
    assert result.verification["max_relative_error"] <= 1e-4
    want = [np.asarray(o) for o in model([xa[:8], xb[:8]])]
    got = LiteRTRunner(result.path).run_all([xa[:8], xb[:8]])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)

    result = export_tflite(model, tmp_path / "q.tflite", [xa, xb], layer_errors=True)
    runner = LiteRTRunner(result.path)
    assert [d["dtype"] for d in runner.inputs + runner.outputs] == [np.int8] * 4
    got = runner.run_all([xa[:8], xb[:8]])
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.abs(g - w).max() < 0.1 * np.abs(w).max()
    assert {r["layer"] for r in result.layer_errors.rows} >= {"a", "b", "first", "second"}
    assert {"mean_abs_error", "mean_abs_error_1"} <= set(result.verification)  # every output


def test_cli_softmax_flag(classifier, digits, tmp_path):
    from kopt.cli import main

    classifier.save(tmp_path / "m.keras")
    np.savez(tmp_path / "calib.npz", x=digits.train[0][:64])
    out = tmp_path / "m.tflite"
    assert main(["export", str(tmp_path / "m.keras"), "-o", str(out), "--data",
                 str(tmp_path / "calib.npz"), "--softmax", "drop", "--no-int8-rewrites"]) == 0
    ops, _, _ = op_table(out.read_bytes())
    assert "SOFTMAX" not in ops and "FULLY_CONNECTED" in ops


def test_failed_verification_leaves_no_file(classifier, tmp_path, monkeypatch):
    """The file is written only once conversion and verification have passed."""
    from kopt.errors import VerificationError
    from kopt.runtime import convert

    def fail(*args, **kwargs):
        raise VerificationError("made to fail")

    monkeypatch.setattr(convert, "verify_tflite", fail)
    path = tmp_path / "f.tflite"
    with pytest.raises(VerificationError):
        export_tflite(classifier, path, quantize=None)
    assert list(tmp_path.iterdir()) == []
