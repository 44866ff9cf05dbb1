"""ConvPoolToStride: conv (+BN/ReLU) + p x p pool -> the conv with stride p, which computes the
stride-1 chain sampled at offset d of each pool window (the module docstring's algebra), and
declines the near misses."""

import keras
import numpy as np
import pytest

from kopt.rewriting import registered
from kopt.testing import chain, check_rule, model_inputs, outputs
from rewrites.conv_pool_to_stride import ConvPoolToStride, sample_offset

L = keras.layers


def _conv_pool(size=8, pool=L.MaxPooling2D, pool_size=2, strides=None, conv=L.Conv2D,
               **conv_kwargs):
    conv_kwargs = {"padding": "same", "kernel_size": 3, **conv_kwargs}
    if conv is not L.DepthwiseConv2D:
        conv_kwargs["filters"] = 6
    return chain((size, size, 3), conv(name="c", **conv_kwargs), L.BatchNormalization(name="bn"),
                 L.ReLU(name="r"), pool(pool_size, strides=strides, name="p"))


@pytest.mark.parametrize("pool", [L.MaxPooling2D, L.AveragePooling2D])
@pytest.mark.parametrize("size, kernel, padding, pool_size", [
    (8, 3, "same", 2), (8, 1, "same", 2), (8, 4, "same", 2), (10, 3, "valid", 2),
    (9, 3, "same", 3)])
def test_strided_conv_samples_each_pool_window(pool, size, kernel, padding, pool_size):
    model = _conv_pool(size, pool, pool_size, kernel_size=kernel, padding=padding)
    r = check_rule(model, ConvPoolToStride(), applied={"conv_pool_to_stride": 1})
    assert r.ops == {"InputLayer": 1, "Conv2D": 1, "BatchNormalization": 1, "ReLU": 1}
    conv = r.graph["c"]
    assert tuple(conv.config["strides"]) == (pool_size, pool_size)
    assert r.graph["r"].output_shape == model.output_shape
    x = model_inputs(model, batch=2)
    before_pool = outputs(keras.Model(model.input, model.get_layer("r").output), x)[0]
    d = sample_offset(kernel, pool_size, padding)
    assert 0 <= d < pool_size
    got, pooled = outputs(r.model, x)[0], outputs(model, x)[0]
    n = pooled.shape[1]
    want = before_pool[:, d::pool_size, d::pool_size][:, :n, :n]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if pool is L.MaxPooling2D:  # one pixel of the window is at most its max
        assert np.all(got <= pooled + 1e-6) and not np.allclose(got, pooled)


@pytest.mark.parametrize("conv", [L.DepthwiseConv2D, L.SeparableConv2D])
def test_other_convs_take_the_stride(conv):
    r = check_rule(_conv_pool(conv=conv), ConvPoolToStride(), applied={"conv_pool_to_stride": 1})
    assert "MaxPooling2D" not in r.ops and tuple(r.graph["c"].config["strides"]) == (2, 2)


def test_only_rewrites_the_named_pool():
    x = inp = keras.Input((8, 8, 3))
    for i in (1, 2):
        x = L.MaxPooling2D(name=f"p{i}")(L.Conv2D(4, 3, padding="same", name=f"c{i}")(x))
    model = keras.Model(inp, x)
    r = check_rule(model, ConvPoolToStride(only="p2"), applied={"conv_pool_to_stride": 1})
    assert "p1" in r.graph and "p2" not in r.graph


@pytest.mark.parametrize("build, reason", [
    (lambda: _conv_pool(pool_size=3, strides=2), "are not tiles"),
    (lambda: _conv_pool(strides=1), "are not tiles"),
    (lambda: _conv_pool(size=16, strides=2), None),  # control: tiles given explicitly apply
    (lambda: _conv_pool(dilation_rate=2), "dilated"),
    (lambda: _conv_pool(size=9), "would give (5, 5), the pool gives (4, 4)"),
    (lambda: chain((8, 8, 6), L.Conv2D(6, 3, strides=2, padding="same"), L.MaxPooling2D(2)),
     "already has strides (2, 2)"),
    (lambda: chain((8, 8, 6), L.Dense(6), L.MaxPooling2D(2)), "follows Dense"),
])
def test_near_misses_are_declined(build, reason):
    if reason is None:
        check_rule(build(), ConvPoolToStride(), applied=1)
    else:
        check_rule(build(), ConvPoolToStride(), applied=0, declined=reason)


def test_declines_a_chain_read_elsewhere():
    x = keras.Input((8, 8, 3))
    bn = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same")(x))
    model = keras.Model(x, [L.MaxPooling2D()(L.ReLU()(bn)), L.GlobalAveragePooling2D()(bn)])
    check_rule(model, ConvPoolToStride(), applied=0, declined="'bn' is also read elsewhere")


def test_registered_approximate_and_off_by_default():
    assert ConvPoolToStride in registered(exact=False)
    assert ConvPoolToStride not in registered(default_only=True)
