"""FuseVertical: activation into op, linear pair into one op, explicit padding into "same"."""

import keras
import numpy as np
import pytest

from kopt.testing import chain, check_rule
from rewrites.fuse_vertical import FuseVertical

L = keras.layers


def _ops(g):
    return [n.op for n in g][1:]


@pytest.mark.parametrize("act,name", [
    (lambda: L.ReLU(), "relu"), (lambda: L.ReLU(max_value=6), "relu6"),
    (lambda: L.Activation("sigmoid"), "sigmoid"), (lambda: L.Activation("tanh"), "tanh"),
    (lambda: L.Activation("swish"), "silu"), (lambda: L.Activation("gelu"), "gelu")])
def test_activation_merges_into_conv(act, name):
    g = check_rule(chain((7, 7, 3), L.Conv2D(4, 3), act()), FuseVertical(), applied=1,
                   seed=7).graph
    assert _ops(g) == ["Conv2D"] and g.nodes_of("Conv2D")[0].activation == name


@pytest.mark.parametrize("op,shape", [
    (lambda: L.Dense(5), (6,)), (lambda: L.DepthwiseConv2D(3), (7, 7, 3)),
    (lambda: L.SeparableConv2D(4, 3), (7, 7, 3)), (lambda: L.Conv2DTranspose(4, 3), (5, 5, 3)),
    (lambda: L.Conv1D(4, 3), (9, 3))])
def test_relu_merges_into_every_linear_op(op, shape):
    g = check_rule(chain(shape, op(), L.ReLU()), FuseVertical(), applied=1, seed=7).graph
    assert len(_ops(g)) == 1 and next(iter(g.nodes_of(_ops(g)[0]))).activation == "relu"


@pytest.mark.parametrize("layers,why", [
    (lambda: [L.Conv2D(4, 3), L.ReLU(negative_slope=0.1)], "no activation-name equivalent"),
    (lambda: [L.Conv2D(4, 3), L.ReLU(max_value=4.0)], "no activation-name equivalent"),
    (lambda: [L.Conv2D(4, 3), L.ReLU(threshold=0.5)], "no activation-name equivalent"),
    (lambda: [L.Conv2D(4, 3, activation="relu"), L.ReLU(max_value=6)], "already applies"),
    (lambda: [L.BatchNormalization(), L.ReLU()], "has no activation to take it")])
def test_activation_near_misses_are_declined(layers, why):
    r = check_rule(chain((7, 7, 3), *layers()), FuseVertical(), applied=0, declined=why,
                   seed=7)
    assert r.graph.nodes_of("ReLU")


def test_activation_declined_when_conv_output_is_read_elsewhere():
    x = keras.Input((7, 7, 3))
    y = L.Conv2D(3, 3, padding="same")(x)
    m = keras.Model(x, L.Add()([L.ReLU()(y), y]))
    r = check_rule(m, FuseVertical(), applied=0, declined="also read elsewhere")
    assert r.graph.nodes_of("ReLU")


@pytest.mark.parametrize("shape,layers", [
    ((6, 6, 3), lambda: [L.Conv2D(8, 3, strides=2), L.Conv2D(4, 1, activation="relu")]),
    ((9, 3), lambda: [L.Conv1D(8, 1, use_bias=False), L.Conv1D(2, 1, use_bias=False)]),
    ((8,), lambda: [L.Dense(16), L.Dense(4, use_bias=False)])])
def test_linear_pair_collapses(shape, layers):
    r = check_rule(chain(shape, *layers()), FuseVertical(), applied=1, seed=7)
    assert len(_ops(r.graph)) == 1
    app = r.report.applied[0]
    assert app.params[1] < app.params[0] and app.macs[1] <= app.macs[0]


def test_linear_chain_collapses_to_one_dense():
    m = chain((8,), L.Dense(8), L.Dense(6), L.Dense(3, activation="tanh"))
    g = check_rule(m, FuseVertical(), applied=2, seed=7).graph
    (dense,) = g.nodes_of("Dense")
    assert dense.config["units"] == 3 and dense.activation == "tanh"


@pytest.mark.parametrize("shape,layers,why", [
    ((32,), lambda: [L.Dense(4), L.Dense(32)], "grow parameters"),
    ((6, 6, 3), lambda: [L.Conv2D(8, 3), L.Conv2D(4, 1, strides=2)], "strided"),
    ((6, 6, 3), lambda: [L.Conv2D(8, 3, activation="relu"), L.Conv2D(4, 1)], "activation"),
    ((6, 6, 4), lambda: [L.Conv2D(8, 3, groups=2), L.Conv2D(4, 1)], "grouped")])
def test_linear_pair_near_misses_are_declined(shape, layers, why):
    r = check_rule(chain(shape, *layers()), FuseVertical(), applied=0, declined=why, seed=7)
    assert len(_ops(r.graph)) == 2


@pytest.mark.parametrize("shape,layers", [
    ((7, 7, 3), lambda: [L.ZeroPadding2D(1), L.Conv2D(4, 3)]),
    ((7, 7, 3), lambda: [L.ZeroPadding2D(2), L.Conv2D(4, 3, dilation_rate=2)]),
    ((7, 7, 3), lambda: [L.ZeroPadding2D(((0, 1), (0, 1))), L.Conv2D(4, 2)]),
    ((7, 7, 3), lambda: [L.ZeroPadding2D(1), L.DepthwiseConv2D(3)]),
    ((9, 3), lambda: [L.ZeroPadding1D(2), L.Conv1D(4, 5)])])
def test_zero_padding_becomes_same_conv(shape, layers):
    g = check_rule(chain(shape, *layers()), FuseVertical(), applied=1, seed=7).graph
    (conv,) = [n for n in g][1:]
    assert conv.config["padding"] == "same" and conv.output_shape[1] == shape[0]


@pytest.mark.parametrize("size,pad", [(8, ((0, 1), (0, 1))), (7, 1)])
def test_zero_padding_before_a_strided_conv(size, pad):
    """keras.applications' correct_pad before a stride-2 depthwise conv: on an even size it
    pads (0, 1), which is what "same" pads there; on an odd size, (1, 1)."""
    layers = [L.ZeroPadding2D(pad), L.DepthwiseConv2D(3, strides=2)]
    g = check_rule(chain((size, size, 3), *layers), FuseVertical(), applied=1, seed=7).graph
    (conv,) = [n for n in g][1:]
    assert conv.config["padding"] == "same" and conv.output_shape[1] == (size + 1) // 2


@pytest.mark.parametrize("layers,why", [
    (lambda: [L.ZeroPadding2D(1), L.Conv2D(4, 5)], "is not what 'same' adds"),
    (lambda: [L.ZeroPadding2D(((1, 0), (1, 0))), L.Conv2D(4, 2)], "is not what 'same' adds"),
    (lambda: [L.ZeroPadding2D(1), L.Conv2D(4, 3, strides=2)], "is not what 'same' adds"),
    (lambda: [L.ZeroPadding2D(1), L.Conv2D(4, 3, padding="same")], "already pads")])
def test_padding_near_misses_are_declined(layers, why):
    r = check_rule(chain((8, 8, 3), *layers()), FuseVertical(), applied=0, declined=why,
                   seed=7)
    assert r.graph.nodes_of("ZeroPadding2D")


def test_padding_before_a_strided_conv_needs_the_input_size():
    model = chain((None, None, 3), L.ZeroPadding2D(((0, 1), (0, 1))), L.Conv2D(4, 3, strides=2))
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    r = check_rule(model, FuseVertical(), applied=0, declined="unknown size", seed=7, x=x)
    assert r.graph.nodes_of("ZeroPadding2D")


def test_padding_read_by_several_convs():
    """split_hard_swish leaves a padding read by a depthwise conv and its copy: both take it."""
    x = inp = keras.Input((8, 8, 3))
    p = L.ZeroPadding2D(((1, 2), (1, 2)))(x)
    y = L.Multiply()([L.DepthwiseConv2D(5, strides=2)(p), L.DepthwiseConv2D(5, strides=2)(p)])
    g = check_rule(keras.Model(inp, y), FuseVertical(), applied=1, seed=7).graph
    assert not g.nodes_of("ZeroPadding2D")
    assert {n.config["padding"] for n in g.nodes_of("DepthwiseConv2D")} == {"same"}
