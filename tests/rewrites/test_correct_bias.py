"""CorrectBias: each conv / dense bias loses the mean shift int8 weight rounding adds, layer by
layer; the rounding is TFLite's; near misses stay, with their reasons; the int8 file's mean
output error drops."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from kopt.errors import KoptError
from kopt.keras_io import from_keras, to_keras
from kopt.rewriting import PassManager, registered
from kopt.runtime import LiteRTRunner, convert_tflite
from kopt.testing import check_rule, randomize_weights
from rewrites.correct_bias import CorrectBias, quantize_kernel
from rewrites.fold_batchnorm import FoldBatchNorm

L = keras.layers
LINEAR = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")


def _model(shape=(10, 10, 3)):
    x = keras.Input(shape)
    h = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    h = L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)(h)
    h = L.Conv2D(6, 1, activation="relu")(L.ReLU()(h))
    h = L.Dense(4)(L.GlobalAveragePooling2D()(h))
    return randomize_weights(keras.Model(x, h), seed=4, all_weights=True)


def _data(shape=(10, 10, 3), n=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n,) + shape).astype("float32")


def _with_int8_kernels(model):
    """The model with every kernel rounded as the int8 converter rounds it (float otherwise)."""
    g = from_keras(model)
    for node in g:
        if node.op in LINEAR:
            kernel = node.weights["kernel"]
            node.weights["kernel"] = quantize_kernel(
                kernel, node.op == "DepthwiseConv2D").astype(kernel.dtype)
    return to_keras(g)


def _mean_shift(model, x, reference):
    """The largest per-channel shift of the mean output (over samples and positions)."""
    diff = np.asarray(model(x)) - reference
    return float(np.abs(diff.reshape(-1, diff.shape[-1]).mean(axis=0)).max())


def test_mean_shift_of_rounded_kernels_is_taken_out():
    m, x = _model(), _data()
    r = check_rule(m, CorrectBias(x), applied={"correct_bias": 1})
    reference = np.asarray(m(x))
    before = _mean_shift(_with_int8_kernels(m), x, reference)
    after = _mean_shift(_with_int8_kernels(r.model), x, reference)
    assert after < 0.01 * before, (before, after)
    dw = r.graph.nodes_of("DepthwiseConv2D")[0]
    assert dw.config["use_bias"] and dw.weights["bias"].shape == (16,)  # a bias to correct


def test_each_layer_sees_the_corrected_layers_before_it():
    """Layer by layer, in the rounded model with the earlier layers corrected: through a
    chain of linear layers the int8-rounded model's mean output is then exactly the float
    model's (the second conv corrects its own shift, the first one's is gone already)."""
    x = keras.Input((8, 8, 3))
    m = keras.Model(x, L.Conv2D(4, 3)(L.Conv2D(5, 3)(x)))  # linear: shifts add up exactly
    randomize_weights(m, seed=2, all_weights=True)
    data = _data((8, 8, 3), n=16)
    g, _ = PassManager([CorrectBias(data)], verify=False).run(from_keras(m))
    reference = np.asarray(m(data))
    assert _mean_shift(_with_int8_kernels(to_keras(g)), data, reference) < 1e-5


def test_rounding_is_tflites():
    m, x = _model(), _data()
    flat = convert_tflite(m, "int8", x)
    interp = Interpreter(model_content=flat, experimental_op_resolver_type=
                         OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    stored = {}
    for t in interp.get_tensor_details():
        scales = t["quantization_parameters"]["scales"]
        if t["dtype"] == np.int8 and len(scales) > 1:
            stored[tuple(t["shape"])] = interp.get_tensor(t["index"]) * scales.reshape(
                [-1 if i == t["quantization_parameters"]["quantized_dimension"] else 1
                 for i in range(len(t["shape"]))])
    layers = {type(layer).__name__: layer for layer in reversed(m.layers)}  # first of each
    conv = layers["Conv2D"].get_weights()[0]  # the 3x3 one
    np.testing.assert_allclose(stored[(8, 3, 3, 3)], quantize_kernel(conv).transpose(3, 0, 1, 2),
                               rtol=0, atol=1e-6)
    dw = layers["DepthwiseConv2D"].get_weights()[0]  # (3, 3, 8, 2) -> TFLite (1, 3, 3, 16)
    np.testing.assert_allclose(stored[(1, 3, 3, 16)],
                               quantize_kernel(dw, depthwise=True).reshape(1, 3, 3, 16),
                               rtol=0, atol=1e-6)
    dense = layers["Dense"].get_weights()[0]
    np.testing.assert_allclose(stored[(4, 6)], quantize_kernel(dense).T, rtol=0, atol=1e-6)


def test_int8_file_mean_error_drops():
    m, x = _model(), _data(n=128)
    g, report = PassManager([CorrectBias(x)], verify=False).run(from_keras(m))
    reference = np.asarray(m(x))
    plain = LiteRTRunner(convert_tflite(m, "int8", x)).run(x)
    corrected = LiteRTRunner(convert_tflite(to_keras(g), "int8", x)).run(x)
    shift = lambda got: float(np.abs((got - reference).mean(axis=0)).max())
    assert shift(corrected) < 0.2 * shift(plain), (shift(plain), shift(corrected))


def test_is_approximate_and_refused_by_a_verifying_manager():
    assert CorrectBias in registered(exact=False)
    with pytest.raises(KoptError, match="cannot verify approximate rules"):
        PassManager([CorrectBias(_data())])


def test_fixed_point():
    m, x = _model(), _data()
    g, _ = PassManager([CorrectBias(x)], verify=False).run(from_keras(m))
    again, report = PassManager([CorrectBias(x)], verify=False).run(g)
    assert not report.applied
    assert {d.reason for d in report.declined} == {"already corrected"}


# ---- near misses ------------------------------------------------------------------------
def test_declines_without_data():
    check_rule(_model(), CorrectBias(), applied=0,
               declined="bias correction needs calibration data")


def test_declines_conv_followed_by_batchnorm_until_folded():
    x = keras.Input((10, 10, 3))
    h = L.BatchNormalization()(L.Conv2D(6, 3)(x))
    m = randomize_weights(keras.Model(x, L.Conv2D(4, 1)(L.ReLU()(h))), seed=1)
    data = _data()
    r = check_rule(m, CorrectBias(data), applied=1, declined="run fold_batchnorm first")
    assert r.report.applied[0].nodes == [r.graph.nodes_of("Conv2D")[1].name]  # the other one
    folded = check_rule(m, [FoldBatchNorm(), CorrectBias(data)], applied={
        "fold_batchnorm": 1, "correct_bias": 1})
    assert not any("fold_batchnorm first" in d.reason for d in folded.report.declined)


def test_declines_channels_first():
    x = keras.Input((3, 7, 3))
    h = L.Conv2D(3, (3, 1), data_format="channels_first")(x)
    m = keras.Model(x, L.Conv2D(3, 1)(h))
    check_rule(m, CorrectBias(_data((3, 7, 3))), applied=1, declined="channels_first")


def test_declines_shared_layer():
    x = keras.Input((8, 8, 3))
    shared = L.Conv2D(3, 1)
    m = keras.Model(x, L.Conv2D(2, 1)(L.ReLU()(shared(L.ReLU()(shared(x))))))
    r = check_rule(randomize_weights(m, seed=1, all_weights=True), CorrectBias(_data((8, 8, 3))),
                   applied=1, declined="is a shared layer")
    assert r.report.applied[0].nodes == [r.graph.nodes_of("Conv2D")[-1].name]


def test_a_layer_named_like_a_keras_op():
    """The rule taps each layer's input through an extra model; a user's layer called "sum"
    once clashed with the name Keras gives keras.ops.sum there, and the int8 export failed."""
    x = inp = keras.Input((6, 6, 3))
    a, b = L.Conv2D(4, 1, name="a")(x), L.Conv2D(4, 1, name="b")(x)
    h = L.Conv2D(4, 1, name="c")(L.Add(name="sum")([a, b]))
    m = randomize_weights(keras.Model(inp, L.Dense(2)(L.Flatten()(h))), seed=1, all_weights=True)
    check_rule(m, CorrectBias(_data((6, 6, 3))), applied={"correct_bias": 1})


def test_a_keras_op_between_the_layers():
    """A keras.ops operation (here `a + b`) is emitted as the same object into every model
    lifted from the original, so its `.output` is the original's tensor; the rule's tap once
    spanned both graphs and Keras refused it (ConvNeXt's int8 export failed so)."""
    x = inp = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 1, name="c")(keras.ops.add(L.Conv2D(4, 1)(x), L.Conv2D(4, 1)(x)))
    m = randomize_weights(keras.Model(inp, L.Dense(2)(L.Flatten()(h))), seed=1, all_weights=True)
    check_rule(m, CorrectBias(_data((6, 6, 3))), applied={"correct_bias": 1})
