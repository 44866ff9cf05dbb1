"""The tfmot magnitude-pruning baseline of the examples: prune, strip, int8 export, LiteRT run."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))

from _tfmot_baseline import gzip_bytes, magnitude_prune  # noqa: E402

from kopt.flows.data import load_digits  # noqa: E402
from kopt.runtime import LiteRTRunner, export_tflite  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    import keras

    x, y, xt, yt = load_digits(size=16)
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((16, 16, 1))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
    h = L.Flatten()(L.MaxPooling2D(2)(h))
    model = keras.Model(inp, L.Dense(10, activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model, (x, y), (xt, yt)


def test_prune_strip_export(trained, tmp_path):
    model, (x, y), (xt, yt) = trained
    before = [w.copy() for w in model.get_weights()]
    pruned, info = magnitude_prune(model, (x, y), (xt, yt), sparsities=(0.5,), epochs=1)

    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert type(pruned).__module__.startswith("tf_keras")
    names = [type(layer).__name__ for layer in pruned.layers]
    assert "PruneLowMagnitude" not in names and "Conv2D" in names and "Dense" in names
    assert info["sparsity"] == 0.5 and info["met"] is True
    assert 0.45 < info["measured_sparsity"] < 0.55
    conv, dense = pruned.layers[names.index("Conv2D")], pruned.layers[names.index("Dense")]
    for layer in (conv, dense):  # each kernel is pruned, not just the big Dense one
        assert 0.4 < np.mean(layer.kernel.numpy() == 0) < 0.6
    assert info["tried"] == [(0.5, info["val_acc"])]
    assert info["val_acc"] >= info["baseline_val_acc"] - 0.005
    assert os.environ.get("TF_USE_LEGACY_KERAS") is None

    scores = pruned.predict(xt, verbose=0)
    assert scores.shape == (len(xt), 10)
    assert np.mean(scores.argmax(-1) == yt) == pytest.approx(info["val_acc"])

    path = tmp_path / "pruned.tflite"
    result = export_tflite(pruned, path, x[:200])
    assert result.quantize == "int8" and result.verification["top1_agreement"] > 0.9
    runner = LiteRTRunner(path, threads=1)
    acc = np.mean(runner.run(xt).argmax(-1) == yt)
    assert acc > 0.7  # chance is 0.1
    assert acc >= info["val_acc"] - 0.05
    assert 0 < gzip_bytes(path) < os.path.getsize(path)


def test_falls_back_to_least_aggressive_when_none_qualifies(trained):
    model, data, validation = trained
    pruned, info = magnitude_prune(model, data, validation, max_accuracy_drop=-1.0,
                                   sparsities=(0.7, 0.3), epochs=1)
    assert info["met"] is False and info["sparsity"] == 0.3
    assert [s for s, _ in info["tried"]] == [0.7, 0.3]
    assert 0.25 < info["measured_sparsity"] < 0.35
    assert info["val_acc"] == info["tried"][-1][1]
