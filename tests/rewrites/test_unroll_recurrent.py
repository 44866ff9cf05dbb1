"""UnrollRecurrent: recurrent layers over a fixed number of steps are unrolled, the function
unchanged; full-int8 export unrolls them first instead of crashing the process in TFLite's
calibrator, and refuses with a reason where the steps are not fixed."""

import numpy as np
import pytest

import keras

from kopt.errors import ExportError
from kopt.keras_io import from_keras
from kopt.rewriting import PassManager
from kopt.testing import check_rule
from rewrites.unroll_recurrent import UnrollRecurrent, rolled

L = keras.layers


def test_every_kind_of_recurrent_layer_is_unrolled_exactly():
    x = keras.Input((7, 5))
    h = L.SimpleRNN(6, return_sequences=True)(x)
    h = L.Bidirectional(L.LSTM(4, return_sequences=True))(h)
    h = L.GRU(5, go_backwards=True)(h)
    m = keras.Model(x, L.Dense(3)(h))
    r = check_rule(m, UnrollRecurrent(), applied=3, seed=1)
    assert not any(rolled(n) for n in r.graph)
    layers = {layer.name: layer for layer in r.model._flatten_layers(include_self=False)}
    assert all(getattr(layer, "unroll", True) for layer in layers.values())
    assert layers["forward_lstm"].unroll and layers["backward_lstm"].unroll


def test_conv_lstm_is_unrolled_exactly():
    x = keras.Input((3, 6, 6, 2))
    m = keras.Model(x, L.ConvLSTM2D(4, 3, padding="same")(x))
    check_rule(m, UnrollRecurrent(), applied=1, seed=2)


def test_unknown_sequence_length_is_declined():
    x = keras.Input((None, 5))
    m = keras.Model(x, L.GRU(4)(x))
    g, report = PassManager([UnrollRecurrent()], verify=False).run(from_keras(m))
    assert "sequence length is not fixed" in report.declined[0].reason
    assert rolled(g[m.layers[1].name])


@pytest.mark.parametrize("layer", ["GRU", "LSTM"])
def test_int8_export_of_a_recurrent_model_runs(layer, tmp_path):
    """Without the unrolling, TFLite 2.21's calibrator ends the process with a segmentation
    fault here (tensorflow#62281). export_tflite verifies the file against the Keras model."""
    from kopt.runtime import export_tflite

    keras.utils.set_random_seed(0)
    x = keras.Input((12, 6))
    m = keras.Model(x, L.Dense(4, activation="softmax")(getattr(L, layer)(8)(x)))
    data = np.random.default_rng(0).normal(size=(64, 12, 6)).astype("float32")
    res = export_tflite(m, tmp_path / "rnn.tflite", data)
    assert res.quantize == "int8" and "WHILE" not in res.ops
    assert res.verification["top1_agreement"] >= 0.9
    assert all(getattr(layer, "unroll", True) is False for layer in m.layers[1:2])  # untouched


def test_int8_conversion_refuses_a_loop_it_cannot_unroll():
    """convert_tflite is what the timing report and the latency tables call."""
    from kopt.runtime.convert import convert_tflite

    x = keras.Input((None, 6))
    m = keras.Model(x, L.Dense(4)(L.LSTM(8, name="speech_lstm")(x)))
    data = np.zeros((4, 10, 6), "float32")
    with pytest.raises(ExportError, match="'speech_lstm'.*not fixed.*quantize=None"):
        convert_tflite(m, "int8", data)
    assert convert_tflite(m, None)  # the loop converts in float


def test_export_says_a_tflite_file_needs_fixed_sizes(tmp_path):
    from kopt.runtime import export_tflite

    x = keras.Input((None, 6))
    m = keras.Model(x, L.Dense(4)(L.LSTM(8)(x)))
    for quantize in ("int8", None):
        with pytest.raises(ExportError, match=r"shape \(None, None, 6\).*fixed Input shape"):
            export_tflite(m, tmp_path / "rnn.tflite", np.zeros((4, 10, 6), "float32"),
                          quantize=quantize)
    assert not (tmp_path / "rnn.tflite").exists()
