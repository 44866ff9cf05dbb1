"""EqualizeConcatRanges: the narrow channels of a Concatenate are widened at their producers and
narrowed back in its readers, outputs unchanged; near misses stay, with their reasons; the int8
error of a concatenation of very different ranges drops."""

import keras
import numpy as np
import pytest

import rewrites
from kopt.keras_io import from_keras, to_keras
from kopt.keras_io.probes import tensor_values
from kopt.rewriting import PassManager, registered
from kopt.runtime import LiteRTRunner, convert_tflite
from kopt.testing import check_rule, randomize_weights
from rewrites.equalize_concat_ranges import EqualizeConcatRanges
from rewrites.fold_batchnorm import FoldBatchNorm

L = keras.layers
SHAPE = (10, 10, 3)


def _data(n=32, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).normal(0, 1, (n,) + shape).astype("float32")


def _dense_block(layers=2, growth=4, head=None):
    """DenseNet-style: stem conv, then `layers` times BN-ReLU-conv1x1-ReLU-conv3x3 appended to
    a growing concatenation, then `head` (default BN-ReLU-GAP-Dense) on the last one."""
    x = keras.Input(SHAPE)
    h = L.Conv2D(2 * growth, 3, padding="same", use_bias=False)(x)
    for _ in range(layers):
        y = L.Conv2D(2 * growth, 1, activation="relu")(L.ReLU()(L.BatchNormalization()(h)))
        y = L.Conv2D(growth, 3, padding="same")(y)
        h = L.Concatenate()([h, y])
    out = head(h) if head else L.Dense(5)(L.GlobalAveragePooling2D()(
        L.ReLU()(L.BatchNormalization()(h))))
    return keras.Model(x, out)


def _scaled(model, factors):
    """Multiply the output channels of the named conv layers by a factor (the float function
    changes; it is the ranges a test wants)."""
    for name, f in factors.items():
        layer = model.get_layer(name)
        layer.set_weights([w * f for w in layer.get_weights()])
    return model


def _convs(model):
    return [layer.name for layer in model.layers if isinstance(layer, L.Conv2D)]


def test_dense_block_is_equalised_exactly():
    m = _dense_block()
    randomize_weights(m, seed=3)
    _scaled(m, {_convs(m)[2]: 0.01, _convs(m)[4]: 5.0})  # ranges far apart
    x = _data()
    r = check_rule(m, EqualizeConcatRanges(x, max_scale=1e4), applied=1, randomize=False)
    concat = r.graph.nodes_of("Concatenate")[-1].name
    ranges = np.ptp(tensor_values(r.graph, [(concat, 0)], x)[0].reshape(-1, 16), axis=0)
    before = np.ptp(tensor_values(from_keras(m), [(concat, 0)], x)[0].reshape(-1, 16), axis=0)
    assert before.max() / before.min() > 100
    assert ranges.max() / ranges.min() < 1.5  # every channel now spans about the widest range


def test_scale_is_capped():
    m = randomize_weights(_dense_block(), seed=3)
    _scaled(m, {_convs(m)[2]: 1e-3})
    x = _data()
    r = check_rule(m, EqualizeConcatRanges(x, max_scale=4.0), applied=1, randomize=False)
    before = {n.name: n for n in from_keras(m).nodes_of("Conv2D")}
    for node in r.graph.nodes_of("Conv2D"):
        ratio = np.abs(node.weights["kernel"]).max() / np.abs(
            before[node.name].weights["kernel"]).max()
        assert ratio <= 4.0 + 1e-5


READERS = {
    "batchnorm": lambda h: L.BatchNormalization()(h),
    "conv": lambda h: L.Conv2D(3, 3, padding="same")(h),
    "relu_conv": lambda h: L.Conv2D(3, 1)(L.ReLU()(h)),
    "depthwise": lambda h: L.DepthwiseConv2D(3)(h),
    "pool_dense": lambda h: L.Dense(3)(L.GlobalAveragePooling2D()(h)),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_readers_take_the_scales_back(reader):
    check_rule(_dense_block(head=READERS[reader]), EqualizeConcatRanges(_data()), applied=1)


SOURCES = {
    "conv_relu": lambda x: L.Conv2D(4, 3, padding="same", activation="relu")(x),
    "through_maxpool": lambda x: L.MaxPooling2D(3, 1, padding="same")(L.Conv2D(4, 1)(x)),
    "upsampling_kept": lambda x: L.UpSampling2D()(L.MaxPooling2D()(L.Conv2D(4, 1)(x))),
    "batchnorm": lambda x: L.BatchNormalization()(L.Conv2D(4, 1)(x)),
    "dense_relu_layer": lambda x: L.ReLU()(L.Dense(4)(x)),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_sources(source):
    x = keras.Input(SHAPE)
    parts = [SOURCES[source](x), L.Conv2D(3, 1)(x)]
    h = L.Concatenate()(parts)
    m = keras.Model(x, L.Conv2D(2, 1)(L.BatchNormalization()(h)))
    n = 1 if source == "upsampling_kept" else 2  # UpSampling2D passes no scale: kept as is
    r = check_rule(m, EqualizeConcatRanges(_data()), applied=1)
    assert len(r.report.applied[0].nodes) == n + 1  # the producers scaled and the BN


def test_input_read_outside_the_concatenation_is_kept_or_taken_back():
    """The block input of a DenseNet layer feeds the concatenation and the next BN: the BN
    takes the scale back. A producer read by an Add instead keeps its scale."""
    x = keras.Input(SHAPE)
    a = L.Conv2D(4, 1, name="a")(x)
    b = L.Conv2D(3, 1, name="b")(x)
    h = L.Concatenate()([a, b])
    out = L.Add()([b, L.Conv2D(3, 1, name="reads_a")(a)])
    m = keras.Model(x, [L.BatchNormalization(name="bn")(h), out])
    r = check_rule(m, EqualizeConcatRanges(_data()), applied=1)
    assert sorted(r.report.applied[0].nodes) == ["a", "bn", "reads_a"]


def test_densenet_layers_after_fold_batchnorm():
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3 layers: the BN after each 1x1 conv folds into it, the
    BN reading the concatenation stays and takes the scales back."""
    x = keras.Input(SHAPE)
    h = L.Conv2D(8, 3, padding="same", use_bias=False)(x)
    for _ in range(2):
        y = L.Conv2D(8, 1, use_bias=False)(L.ReLU()(L.BatchNormalization()(h)))
        y = L.Conv2D(4, 3, padding="same", use_bias=False)(L.ReLU()(L.BatchNormalization()(y)))
        h = L.Concatenate()([h, y])
    m = keras.Model(x, L.GlobalAveragePooling2D()(L.BatchNormalization()(h)))
    r = check_rule(m, [FoldBatchNorm(), EqualizeConcatRanges(_data())],
                   applied={"fold_batchnorm": 2, "equalize_concat_ranges": 1})
    assert r.ops["BatchNormalization"] == 3


def test_fixed_point_and_not_in_the_default_set():
    m, x = randomize_weights(_dense_block(), seed=1), _data()
    g, _ = PassManager([EqualizeConcatRanges(x)]).run(from_keras(m), reference=m)
    _, report = PassManager([EqualizeConcatRanges(x)]).run(g)
    assert not report.applied and report.declined[0].reason == "already equalised"
    assert EqualizeConcatRanges in registered(exact=True)
    assert EqualizeConcatRanges not in rewrites.EXACT


# ---- one tensor read by a BN the converter cannot fold -------------------------------------
def _relu_bn_chain():
    """conv -> ReLU -> BN -> depthwise ("same") -> ReLU -> BN -> conv: neither BN folds into a
    conv exactly (one reads a ReLU, the converter folds neither)."""
    x = keras.Input(SHAPE)
    h = L.BatchNormalization()(L.ReLU()(L.Conv2D(6, 1)(x)))
    h = L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", activation="relu")(h))
    return keras.Model(x, L.Dense(4)(L.GlobalAveragePooling2D()(L.Conv2D(5, 1)(h))))


def test_bn_after_activation_gets_its_input_equalised():
    r = check_rule(_relu_bn_chain(), EqualizeConcatRanges(_data()), applied=2)
    assert sorted(n for a in r.report.applied for n in a.nodes if "batch" in n) == sorted(
        n.name for n in r.graph.nodes_of("BatchNormalization"))


def test_bn_after_a_linear_conv_is_left_to_the_converter():
    x = keras.Input(SHAPE)
    m = keras.Model(x, L.Conv2D(3, 1)(L.ReLU()(L.BatchNormalization()(L.Conv2D(6, 1)(x)))))
    r = check_rule(m, EqualizeConcatRanges(_data()), applied=0)
    assert not r.report.declined  # not a place for the rule at all


def test_declines_bn_on_the_model_input():
    x = keras.Input(SHAPE)
    m = keras.Model(x, L.Conv2D(3, 1)(L.BatchNormalization()(x)))
    _declined(m, "the BN's input cannot be rescaled: 'input_layer")


# ---- near misses ------------------------------------------------------------------------
def _declined(model, needle, data=None):
    rule = EqualizeConcatRanges(_data() if data is None else data)
    return check_rule(model, rule, applied=0, declined=needle)


def test_declines_without_data():
    check_rule(_dense_block(), EqualizeConcatRanges(), applied=0,
               declined="range equalisation needs calibration data")


@pytest.mark.parametrize("head, needle", [
    (lambda h: L.Flatten()(h), "cannot take the scales back: Flatten"),
    (lambda h: L.Add()([h, h]), "cannot take the scales back: Add"),
    (lambda h: L.Conv2D(4, 1, groups=4)(h), "grouped conv"),
    (lambda h: L.BatchNormalization(scale=False)(h), "has no gamma"),
    (lambda h: L.Conv2D(3, 1)(L.ReLU(max_value=6.0)(h)), "clips at max_value=6.0"),
    (lambda h: L.Conv2D(3, 1)(L.Activation("sigmoid")(h)), "'sigmoid' does not commute"),
], ids=["flatten", "add", "grouped", "bn_no_gamma", "relu6", "sigmoid"])
def test_declines_reader_that_cannot_take_the_scales_back(head, needle):
    _declined(_dense_block(layers=1, head=head), needle)


def test_declines_concatenation_that_is_a_model_output():
    _declined(_dense_block(layers=1, head=lambda h: h), "is a model output")


def test_declines_when_no_input_can_be_rescaled():
    a, b = keras.Input(SHAPE), keras.Input(SHAPE)
    m = keras.Model([a, b], L.BatchNormalization()(L.Concatenate()([a, b])))
    rule = EqualizeConcatRanges([_data(), _data(seed=1)])
    check_rule(m, rule, applied=0, declined="no input of the concatenation can be rescaled")


def test_declines_concatenation_off_the_channel_axis():
    x = keras.Input(SHAPE)
    h = L.Concatenate(axis=1)([L.Conv2D(3, 1)(x), L.Conv2D(3, 1)(x)])
    _declined(keras.Model(x, L.BatchNormalization()(h)), "does not join the channel (last) axis")


def test_declines_relu6_source_but_scales_the_others():
    x = keras.Input(SHAPE)
    h = L.Concatenate()([L.Conv2D(3, 1, activation="relu6")(x), L.Conv2D(3, 1)(x)])
    r = check_rule(keras.Model(x, L.BatchNormalization()(h)), EqualizeConcatRanges(_data()),
                   applied=1)
    assert len(r.report.applied[0].nodes) == 2  # one producer, the BN


def test_declines_shared_reader():
    x = keras.Input(SHAPE)
    shared = L.Conv2D(6, 1)
    h = L.Concatenate()([L.Conv2D(3, 1)(x), L.Conv2D(3, 1)(x)])
    m = keras.Model(x, shared(L.ReLU()(shared(h))))
    _declined(m, "shared layer")


# ---- the int8 effect --------------------------------------------------------------------
def _calibrated(model, x):
    """BN moving statistics set to the data's, as training leaves them."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            v = np.asarray(keras.Model(model.inputs, layer.input)(x))
            v = v.reshape(-1, v.shape[-1])
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, v.mean(0), v.var(0)])
    return model


def _int8_error(model, x, reference):
    got = LiteRTRunner(convert_tflite(model, "int8", x)).run(x)
    return float(np.abs(got - reference).mean() / np.abs(reference).max())


def test_int8_error_drops_for_a_bn_after_relu():
    """The per-channel scale of a conv before ReLU -> BN drifts in training (the float model
    does not see it): 1000x apart here, BN statistics following it."""
    x = _data(64)
    m = randomize_weights(_relu_bn_chain(), seed=2, all_weights=True)
    conv = m.layers[1]
    s = np.geomspace(0.03, 30.0, 6).astype("float32")
    conv.set_weights([w * s for w in conv.get_weights()])
    _calibrated(m, x)
    g, report = PassManager([EqualizeConcatRanges(x)]).run(from_keras(m), reference=m)
    assert report.counts() == {"equalize_concat_ranges": 2}
    reference = np.asarray(m(x))
    plain, equalised = _int8_error(m, x, reference), _int8_error(to_keras(g), x, reference)
    assert equalised < 0.5 * plain, (plain, equalised)


def test_int8_error_drops():
    x = _data(64)
    m = randomize_weights(_dense_block(), seed=2, all_weights=True)
    _calibrated(_scaled(m, {_convs(m)[2]: 0.01, _convs(m)[4]: 0.03}), x)
    g, report = PassManager([EqualizeConcatRanges(x)]).run(from_keras(m), reference=m)
    assert report.counts() == {"equalize_concat_ranges": 1}
    reference = np.asarray(m(x))
    plain, equalised = _int8_error(m, x, reference), _int8_error(to_keras(g), x, reference)
    assert equalised < 0.5 * plain, (plain, equalised)
