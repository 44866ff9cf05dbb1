"""EqualizeCrossLayer: chains of linear layers joined by ReLU-like ops get matched per-channel
weight ranges, outputs unchanged; every near miss stays, with its reason; int8 error drops."""

import keras
import numpy as np
import pytest

import rewrites
from kopt.keras_io import from_keras, to_keras
from kopt.rewriting import PassManager, registered
from kopt.runtime import LiteRTRunner, convert_tflite
from kopt.testing import chain, check_rule, randomize_weights
from rewrites.equalize_cross_layer import EqualizeCrossLayer, input_ranges, output_ranges

L = keras.layers


def _model(shape, *layers):
    return randomize_weights(chain(shape, *layers), seed=5, all_weights=True)


CHAINS = {
    "conv_relu_conv": ((9, 9, 3), lambda: [L.Conv2D(6, 3, activation="relu"), L.Conv2D(4, 3)]),
    "conv_ReLU_conv": ((9, 9, 3), lambda: [L.Conv2D(6, 3), L.ReLU(), L.Conv2D(4, 1)]),
    "separable_block": ((9, 9, 3), lambda: [
        L.Conv2D(6, 1), L.ReLU(), L.DepthwiseConv2D(3, padding="same"), L.ReLU(),
        L.Conv2D(8, 1)]),
    "depth_multiplier": ((9, 9, 3), lambda: [
        L.Conv2D(4, 3, padding="same"), L.DepthwiseConv2D(3, depth_multiplier=2),
        L.LeakyReLU(0.1), L.Conv2D(5, 1)]),
    "dense_dense": ((7,), lambda: [L.Dense(6, activation="relu"), L.Dense(5), L.Dense(3)]),
    "through_pooling": ((9, 9, 3), lambda: [
        L.Conv2D(6, 3, activation="relu"), L.MaxPooling2D(), L.Conv2D(4, 1, padding="same"),
        L.GlobalAveragePooling2D(), L.Dense(3)]),
    "conv1d": ((10, 3), lambda: [L.Conv1D(6, 3, activation="leaky_relu"), L.Conv1D(4, 3)]),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_chain_is_equalised_exactly(name):
    shape, layers = CHAINS[name]
    r = check_rule(_model(shape, *layers()), EqualizeCrossLayer(), applied=1, seed=2)
    lin = [n for n in r.graph if n.op in ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")]
    for a, b in zip(lin, lin[1:]):  # every pair ends with matching ranges
        np.testing.assert_allclose(output_ranges(a), input_ranges(b), rtol=5e-3)


def test_scales_are_the_square_root_of_the_range_ratio():
    m = _model((9, 9, 3), L.Conv2D(4, 3, activation="relu"), L.Conv2D(2, 1))
    g = from_keras(m)
    a, b = g.nodes_of("Conv2D")
    r1, r2 = output_ranges(a), input_ranges(b)
    out, _ = PassManager([EqualizeCrossLayer()]).run(g, reference=m)
    a2, b2 = out.nodes_of("Conv2D")
    np.testing.assert_allclose(output_ranges(a2), np.sqrt(r1 * r2), rtol=1e-5)
    np.testing.assert_allclose(input_ranges(b2), np.sqrt(r1 * r2), rtol=1e-5)


def test_fixed_point_and_not_in_the_default_set():
    m = _model((9, 9, 3), L.Conv2D(4, 3, activation="relu"), L.Conv2D(2, 1))
    g, _ = PassManager([EqualizeCrossLayer()]).run(from_keras(m), reference=m)
    again, report = PassManager([EqualizeCrossLayer()]).run(g)
    assert not report.applied and "already equalised" in report.declined[0].reason
    assert EqualizeCrossLayer in registered(exact=True)
    assert EqualizeCrossLayer not in rewrites.EXACT


# ---- near misses ------------------------------------------------------------------------
def _declined(model, needle):
    return check_rule(model, EqualizeCrossLayer(), applied=0, declined=needle, seed=2)


@pytest.mark.parametrize("relu6", [lambda: L.ReLU(max_value=6.0), lambda: L.Activation("relu6")],
                         ids=["ReLU(max_value=6)", "Activation(relu6)"])
def test_declines_relu6(relu6):
    _declined(_model((9, 9, 3), L.Conv2D(4, 3), relu6(), L.Conv2D(2, 1)), "clip")


def test_declines_relu6_activation_on_the_first_layer():
    _declined(_model((9, 9, 3), L.Conv2D(4, 3, activation="relu6"), L.Conv2D(2, 1)),
              "activation 'relu6' clips at 6")


@pytest.mark.parametrize("act", ["sigmoid", "silu", "tanh"])
def test_declines_activation_that_does_not_commute(act):
    _declined(_model((9, 9, 3), L.Conv2D(4, 3, activation=act), L.Conv2D(2, 1)),
              f"activation '{act}' does not commute")


def test_declines_batchnorm_between():
    _declined(_model((9, 9, 3), L.Conv2D(4, 3), L.BatchNormalization(), L.Conv2D(2, 1)),
              "fold it first")


def test_declines_output_read_elsewhere():
    x = keras.Input((9, 9, 3))
    h = L.Conv2D(4, 3, activation="relu")(x)
    m = keras.Model(x, [L.Conv2D(2, 1)(h), L.GlobalAveragePooling2D()(h)])
    _declined(m, "also read elsewhere")


def test_declines_output_that_is_a_model_output():
    x = keras.Input((9, 9, 3))
    h = L.Conv2D(4, 3, activation="relu")(x)
    _declined(keras.Model(x, [h, L.Conv2D(2, 1)(h)]), "model output")


def test_declines_grouped_second_conv():
    _declined(_model((9, 9, 4), L.Conv2D(4, 3, activation="relu"), L.Conv2D(4, 1, groups=2)),
              "grouped conv")


def test_declines_channels_first():
    # 3 channels and a last axis of 3 throughout: kopt.ir.lint reads a conv's input channels
    # from the last axis, so other channels_first shapes do not lift today
    m = _model((3, 7, 3), L.Conv2D(3, (3, 1), data_format="channels_first", activation="relu"),
               L.Conv2D(3, 1, data_format="channels_first"))
    _declined(m, "channels_first")


def test_declines_shared_layer():
    x = keras.Input((9, 9, 3))
    shared = L.Conv2D(3, 1)
    h = shared(L.Conv2D(3, 1, activation="relu")(shared(x)))
    r = _declined(randomize_weights(keras.Model(x, h), seed=1, all_weights=True),
                  "shared layer")
    assert all("shared layer" in d.reason for d in r.report.declined)


# ---- the int8 effect --------------------------------------------------------------------
def _unbalanced_model():
    """conv -> ReLU -> depthwise -> ReLU -> conv whose depthwise channels span 1000x in range
    (scaled per channel, compensated in the next conv: the float function is unchanged)."""
    m = _model((16, 16, 3), L.Conv2D(8, 1, activation="relu"),
               L.DepthwiseConv2D(3, padding="same", activation="relu"), L.Conv2D(8, 1),
               L.GlobalAveragePooling2D(), L.Dense(10))
    dw, pw = m.layers[2], m.layers[3]
    s = np.geomspace(0.03, 30.0, 8).astype("float32")
    k, b = dw.get_weights()
    dw.set_weights([k * s[:, None], b * s])
    k, b = pw.get_weights()
    pw.set_weights([k / s[:, None], b])
    return m


def _int8_error(model, x, reference):
    got = LiteRTRunner(convert_tflite(model, "int8", x)).run(x)
    return float(np.abs(got - reference).mean() / np.abs(reference).max())


def test_int8_error_drops():
    m = _unbalanced_model()
    x = np.random.default_rng(0).uniform(0, 1, (64, 16, 16, 3)).astype("float32")
    g, report = PassManager([EqualizeCrossLayer()]).run(from_keras(m), reference=m)
    assert report.counts() == {"equalize_cross_layer": 1}
    reference = np.asarray(m(x))
    plain, equalised = _int8_error(m, x, reference), _int8_error(to_keras(g), x, reference)
    assert equalised < 0.5 * plain, (plain, equalised)
