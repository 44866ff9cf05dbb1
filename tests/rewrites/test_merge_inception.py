"""MergeInception: a dominated block becomes one ridge-fitted conv. A linear block is fitted
exactly; a real inception block keeps its accuracy on held-out digits after retraining; blocks
that are strided, leak an inner tensor, or would cost more MACs are declined with the reason."""

import keras
import numpy as np
import pytest

import kopt
from kopt.flows.distill import recalibrate_bn
from kopt.flows.data import load_digits
from kopt.keras_io import from_keras
from kopt.testing import check_rule, randomize_weights
from rewrites.merge_inception import MergeInception, dominator_tree, receptive_field

L = keras.layers


def _linear_block(strides: int = 1, leak: bool = False) -> keras.Model:
    """Three linear branches (1x1 | 3x3->1x1 | 3x3->1x1) joined by Concatenate."""
    x = keras.Input((10, 10, 8))
    a = L.Conv2D(8, 1, name="a")(x)
    b = L.Conv2D(16, 3, padding="same", strides=strides, name="b1")(x)
    b = L.Conv2D(8, 1, name="b2")(b)
    c = L.Conv2D(16, 3, padding="same", name="c1")(x)
    c = L.Conv2D(8, 1, name="c2")(c)
    if strides > 1:
        a = L.MaxPooling2D(strides, name="pool_a")(a)
        c = L.MaxPooling2D(strides, name="pool_c")(c)
    cat = L.Concatenate(name="cat")([a, b, c])
    outputs = [cat, L.GlobalAveragePooling2D(name="gap")(c)] if leak else cat
    return randomize_weights(keras.Model(x, outputs))


def test_linear_block_is_fitted_exactly(rng):
    model = _linear_block()
    x = rng.normal(size=(64, 10, 10, 8)).astype("float32")
    r = check_rule(model, MergeInception(x, width=1.0, ridge=1e-9),
                   applied={"merge_inception": 1}, randomize=False, x=x[:8])
    g = r.graph
    merged = [n for n in g if n.op == "Conv2D"]
    assert len(merged) == 1 and merged[0].weights["kernel"].shape == (3, 3, 8, 24)
    assert merged[0].config["activation"] in ("linear", None)  # outputs go negative: no ReLU
    assert merged[0].meta["fit_error"] < 1e-3
    assert g.count_macs() < from_keras(model).count_macs()
    assert r.error < 1e-3


def test_declines_with_reasons(rng):
    x = rng.normal(size=(16, 10, 10, 8)).astype("float32")
    def declines(model, rule):
        return check_rule(model, rule, applied=0, randomize=False).report.declined[0].reason

    assert "'b1' is strided" in declines(_linear_block(strides=2), MergeInception(x, width=1.0))
    assert "also read outside" in declines(_linear_block(leak=True), MergeInception(x, width=1.0))
    assert "needs calibration data" in declines(_linear_block(), MergeInception(None))
    cheap = keras.Input((10, 10, 8))  # two 1x1 branches: one 3x3 conv costs more
    cat = L.Concatenate()([L.Conv2D(8, 1)(cheap), L.Conv2D(8, 1)(L.ReLU()(cheap))])
    reason = declines(keras.Model(cheap, cat), MergeInception(x))
    assert "MACs against" in reason and "lower width" in reason


def test_residual_block_region_and_receptive_field():
    x = keras.Input((8, 8, 4))
    stem = L.Conv2D(8, 3, padding="same", name="stem")(x)
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="r1")(stem)
    h = L.Conv2D(8, 3, padding="same", name="r2")(h)
    out = L.GlobalAveragePooling2D()(L.ReLU()(L.Add(name="add")([stem, h])))
    g = from_keras(keras.Model(x, out))
    assert dominator_tree(g)["add"] == "stem"
    match = next(MergeInception(np.zeros((1, 8, 8, 4))).matches(g))
    assert [n.name for n in match.region] == ["r1", "r2", "add"] and match.fork == "stem"
    assert receptive_field(g, match.region, match.fork) == 5


def _tree(width: int = 16) -> keras.Model:
    """Stem + one inception block (1x1 | 1x1-3x3 | 1x1-3x3-3x3 | avgpool-1x1) + classifier."""
    def cbr(h, filters, k):
        h = L.Conv2D(filters, k, padding="same", use_bias=False)(h)
        return L.ReLU()(L.BatchNormalization()(h))

    x = keras.Input((16, 16, 1))
    s = L.MaxPooling2D(2)(cbr(x, width, 3))
    b3 = cbr(cbr(cbr(s, width // 2, 1), width, 3), width, 3)
    pool = cbr(L.AveragePooling2D(3, strides=1, padding="same")(s), width, 1)
    cat = L.Concatenate(name="mixed")([cbr(s, width, 1), cbr(cbr(s, width, 1), width, 3), b3,
                                       pool])
    h = L.Conv2D(2 * width, 3, padding="same", activation="relu", name="reader")(cat)
    h = L.Dense(32, activation="relu")(L.Flatten()(L.MaxPooling2D(2)(h)))
    return keras.Model(x, L.Dense(10, activation="softmax")(h))


@pytest.fixture(scope="module")
def digits_tree():
    keras.utils.set_random_seed(0)
    x, y, xt, yt = load_digits(16, seed=0)
    model = _tree()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return recalibrate_bn(model, x), (x, y), (xt, yt)


def test_inception_block_merged_narrower_keeps_accuracy(digits_tree):
    """Held-out digits accuracy before vs after merge (width 0.5) + short distillation."""
    model, (x, y), (xt, yt) = digits_tree
    r = check_rule(model, MergeInception(x, width=0.5, round_to=8),
                   applied={"merge_inception": 1}, randomize=False)
    g = r.graph
    assert "mixed" not in g and g.count_macs() < from_keras(model).count_macs()
    merged = next(n for n in g if n.name.startswith("mixed_merged"))
    assert merged.weights["kernel"].shape == (3, 3, 16, 32)  # 64 channels -> 32
    assert merged.config["activation"] == "relu"
    assert 0.0 < merged.meta["fit_error"] < 0.6  # non-linear branches: only approximated
    assert g["reader"].weights["kernel"].shape[2] == 32  # the reader lost the dropped inputs
    small = r.model
    kopt.retrain(small, teacher=model, data=(x, y), epochs=3)
    before = np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt)
    after = np.mean(np.argmax(small.predict(xt, verbose=0), -1) == yt)
    assert before > 0.9 and after >= before - 0.02, (before, after)
