"""prepare_for_int8 and export_tflite(int8_rewrites=...): the rewrites that make the int8 file
agree with the float model are chosen by measurement, the caller's model is never changed, and
on a small trained DenseNet-style model the loss of plain PTQ is closed."""

import keras
import numpy as np
import pytest

from kopt.flows.data import digits_splits
from kopt.flows.distill import recalibrate_bn
from kopt.runtime import LiteRTRunner, convert_tflite, export_tflite
from kopt.runtime.convert import representative_samples
from kopt.runtime.int8_prep import better, prepare_for_int8
from kopt.testing import randomize_weights

L = keras.layers


def _prepare(model, x, **options):
    samples = representative_samples(model, x)
    return prepare_for_int8(model, samples, lambda m: convert_tflite(m, "int8", x), **options)


def _unbalanced_concat(shape=(10, 10, 3)):
    """A concatenation whose inputs span ranges 100x apart, read by a BN with matching
    statistics (as training leaves them), then ReLU, GAP and a 6-way Dense."""
    x = keras.Input(shape)
    a = L.Conv2D(6, 3, padding="same", name="narrow")(x)
    b = L.Conv2D(6, 3, padding="same", name="wide")(x)
    h = L.BatchNormalization(name="bn")(L.Concatenate()([a, b]))
    m = keras.Model(x, L.Dense(6)(L.GlobalAveragePooling2D()(L.ReLU()(h))))
    randomize_weights(m, seed=0, all_weights=True)
    narrow = m.get_layer("narrow")
    narrow.set_weights([w * 0.01 for w in narrow.get_weights()])
    data = np.random.default_rng(0).normal(0, 1, (100,) + shape).astype("float32")
    v = np.asarray(keras.Model(m.inputs, m.get_layer("bn").input)(data)).reshape(-1, 12)
    gamma, beta, _, _ = m.get_layer("bn").get_weights()
    m.get_layer("bn").set_weights([gamma, beta, v.mean(0), v.var(0)])
    return m, data


def test_chooses_concat_equalisation_and_leaves_the_model_alone():
    m, x = _unbalanced_concat()
    before = [w.copy() for w in m.get_weights()]
    out, chosen, figures = _prepare(m, x)
    assert "equalize_concat_ranges" in chosen and chosen == figures["chosen"]
    assert out is not m
    for w, w0 in zip(m.get_weights(), before):  # the caller's model is not mutated
        np.testing.assert_array_equal(w, w0)
    cands = figures["candidates"]
    assert cands["equalize_concat_ranges"]["error"] < 0.5 * cands["plain"]["error"]
    assert cands["equalize_cross_layer"] == {"applied": 0}  # nothing to equalise: no conversion
    assert figures["best"]["error"] < figures["plain"]["error"] and figures["seconds"] > 0
    np.testing.assert_allclose(np.asarray(out(x)), np.asarray(m(x)), rtol=1e-4, atol=1e-5)


def test_plain_ptq_that_already_agrees_is_kept_without_a_search():
    x = keras.Input((6, 6, 2))
    m = keras.Model(x, L.Dense(3)(L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(x))))
    randomize_weights(m, seed=1, all_weights=True)
    data = np.random.default_rng(1).uniform(0, 1, (40, 6, 6, 2)).astype("float32")
    out, chosen, figures = _prepare(m, data, enough=1.0)
    assert out is m and chosen == [] and "already agrees" in figures["skipped"]
    assert list(figures["candidates"]) == ["plain"]


def test_skips_multi_input_models():
    a, b = keras.Input((4,)), keras.Input((4,))
    m = keras.Model([a, b], L.Dense(2)(L.Concatenate()([a, b])))
    out, chosen, figures = prepare_for_int8(m, [[np.ones((1, 4))] * 2], lambda _: b"")
    assert out is m and chosen == [] and "single-input" in figures["skipped"]


def test_better():
    plain = {"agreement": 0.90, "error": 0.010}
    assert better({"agreement": 0.92, "error": 0.02}, plain)       # agreement up by the margin
    assert not better({"agreement": 0.905, "error": 0.009}, plain)  # neither enough
    assert better({"agreement": 0.90, "error": 0.007}, plain)       # same agreement, less error
    assert not better({"agreement": 0.88, "error": 0.001}, plain)   # agreement lost
    assert not better({}, plain)                                     # failed to convert
    assert better({"error": 0.005}, {"error": 0.01})                 # no class scores


def test_export_records_the_choice_and_false_gives_plain_ptq(tmp_path):
    m, x = _unbalanced_concat()
    chosen = export_tflite(m, tmp_path / "r.tflite", representative_data=x)
    plain = export_tflite(m, tmp_path / "p.tflite", representative_data=x, int8_rewrites=False)
    assert "equalize_concat_ranges" in chosen.int8_rewrites["chosen"]
    assert plain.int8_rewrites == {}
    assert chosen.verification["mean_abs_error"] < 0.5 * plain.verification["mean_abs_error"]
    floats = export_tflite(m, tmp_path / "f.tflite", quantize=None)
    assert floats.int8_rewrites == {}


# ---- a trained model where plain PTQ hurts -----------------------------------------------
def _small_densenet(size=16, layers=3, growth=8):
    x = keras.Input((size, size, 1))
    h = L.Conv2D(2 * growth, 3, strides=2, padding="same", use_bias=False)(x)
    for _ in range(layers):
        y = L.Conv2D(4 * growth, 1, use_bias=False)(L.ReLU()(L.BatchNormalization()(h)))
        y = L.Conv2D(growth, 3, padding="same", use_bias=False)(
            L.ReLU()(L.BatchNormalization()(y)))
        h = L.Concatenate()([h, y])
    h = L.GlobalAveragePooling2D()(L.ReLU()(L.BatchNormalization()(h)))
    return keras.Model(x, L.Dense(10, activation="softmax")(h))


@pytest.mark.slow
def test_trained_densenet_int8_loss_is_closed(tmp_path):
    """BN-ReLU-conv layers reading a growing Concatenate, trained two epochs on 16x16 digits:
    plain PTQ loses over 5 points of top-1 agreement with the float model (measured: 77%);
    the default export equalises the concatenation's ranges and agrees on >= 98% (99.6%)."""
    splits = digits_splits(size=16)
    keras.utils.set_random_seed(0)
    m = _small_densenet()
    m.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    m.fit(*splits.train, epochs=2, batch_size=64, verbose=0)
    recalibrate_bn(m, splits.train[0], seed=0)
    x, y = splits.test
    cal = splits.train[0][:200]
    expected = np.asarray(m.predict(x, verbose=0)).argmax(1)

    def scores(result):
        got = LiteRTRunner(result.path).run(x).argmax(1)
        return float(np.mean(got == y)), float(np.mean(got == expected))

    plain = export_tflite(m, tmp_path / "plain.tflite", cal, int8_rewrites=False)
    default = export_tflite(m, tmp_path / "default.tflite", cal)
    float_acc = float(np.mean(expected == y))
    (plain_acc, plain_agree), (acc, agree) = scores(plain), scores(default)
    assert plain_agree < 0.95, (plain_acc, plain_agree)
    assert "equalize_concat_ranges" in default.int8_rewrites["chosen"]
    assert agree >= 0.98 and acc >= float_acc - 0.015, (float_acc, acc, agree)
