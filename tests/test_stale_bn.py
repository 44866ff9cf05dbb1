"""Stale BatchNormalization statistics: a model trained briefly, whose moving averages lag its
weights, scores far lower in inference mode than in training mode. compress warns before it
compares anything against that broken baseline; kopt.recalibrate_bn fixes the model in place,
from any data form; optimize(recalibrate_bn=True) compresses a recalibrated copy."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import kopt
from kopt.flows.distill import bn_drift

L = keras.layers
FAST = dict(merge_width=(), prune_ratio=0.5, svd_energy=(), epochs=1)


@pytest.fixture(scope="module")
def stale(small_digits):
    """48 Adam steps: the weights move, BN's moving averages (momentum 0.99) stay near 0 / 1."""
    x, y, _, _ = small_digits
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(inp)))
    h = L.MaxPooling2D(2)(h)
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(h)))
    m = keras.Model(inp, L.Dense(10, activation="softmax")(L.Flatten()(h)))
    m.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return m


def _copy(model):
    out = keras.models.clone_model(model)
    out.set_weights(model.get_weights())
    return out


def _acc(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def test_the_model_is_stale_and_the_measure_says_so(small_digits, stale):
    x, y, _, _ = small_digits
    inference = float(np.mean(np.argmax(stale(x[:256], training=False), -1) == y[:256]))
    drift = bn_drift(stale, x[:256], y[:256])
    assert drift["accuracy"] == pytest.approx(inference)
    assert drift["accuracy"] < 0.5 < 0.8 < drift["accuracy_recalibrated"]
    assert drift["relative"] > 0.25 and drift["agreement"] < 0.9
    assert bn_drift(keras.Sequential([keras.Input((3,)), L.Dense(2)]), x[:4, 0, :3, 0]) is None


def test_compress_warns_before_compressing(small_digits, stale):
    x, y, xt, yt = small_digits
    with pytest.warns(kopt.StaleBatchNormWarning, match=r"stale.*accuracy \d+\.\d% in "
                      r"inference mode.*kopt\.recalibrate_bn\(model, data\)"):
        kopt.optimize(stale, data=(x, y), validation=(xt, yt), max_accuracy_drop=1.0, **FAST)


def test_recalibrate_bn_changes_the_model_in_place_from_any_form(small_digits, stale):
    x, y, xt, yt = small_digits
    before = _acc(stale, xt, yt)
    forms = {"numpy": x, "(x, y)": (x, y),
             "tf.data": tf.data.Dataset.from_tensor_slices((x, y)).shuffle(1024, seed=0).batch(64),
             "generator": lambda: ((x[i:i + 64], y[i:i + 64]) for i in range(0, 1024, 64))}
    for name, data in forms.items():
        model = _copy(stale)
        kernels = [np.array(w) for w in model.trainable_weights]
        assert kopt.recalibrate_bn(model, data) is model, name
        assert _acc(model, xt, yt) > max(0.8, before + 0.3), name
        assert all(np.array_equal(a, np.array(b)) for a, b in zip(kernels, model.trainable_weights))
    healthy = model
    drift = bn_drift(healthy, x[:256], y[:256])
    assert drift["relative"] < 0.25 and drift["agreement"] > 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error", kopt.StaleBatchNormWarning)
        kopt.optimize(healthy, data=(x, y), validation=(xt, yt), max_accuracy_drop=1.0, **FAST)


def test_optimize_recalibrates_a_copy_when_asked(small_digits, stale):
    x, y, xt, yt = small_digits
    weights = [w.copy() for w in stale.get_weights()]
    opt = kopt.Optimizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", kopt.StaleBatchNormWarning)
        opt.optimize(stale, data=(x, y), validation=(xt, yt), max_accuracy_drop=0.05,
                     recalibrate_bn=True, **FAST)
    assert opt.steps[0]["val_acc"] > 0.8 > _acc(stale, xt, yt)  # the baseline is sound
    assert all(np.array_equal(a, b) for a, b in zip(weights, stale.get_weights()))
