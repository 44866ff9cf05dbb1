"""SplitDepthwiseKernel: a depthwise conv of more than 25 taps becomes the sum of parts of at
most 25 (k x 3, dilated 1..r), exactly; the int8 file has those parts and no kernel past 25
taps; the near misses are declined with their reasons."""

import keras
import numpy as np
import pytest

from kopt.testing import check_rule
from rewrites.split_depthwise_kernel import SplitDepthwiseKernel

L = keras.layers


def _model(*layers, shape=(12, 12, 6)):
    x = inp = keras.Input(shape)
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


@pytest.mark.parametrize("size, parts, kernel", [(7, 3, (7, 3)), ((5, 7), 3, (5, 3)),
                                                 ((9, 7), 4, (3, 7)), ((7, 9), 4, (7, 3))])
def test_split_is_exact(size, parts, kernel):
    m = _model(L.Conv2D(6, 1), L.DepthwiseConv2D(size, padding="same", name="dw"),
               L.Conv2D(4, 1))
    g = check_rule(m, SplitDepthwiseKernel(), applied=1).graph
    dws = g.nodes_of("DepthwiseConv2D")
    assert len(dws) == parts and {tuple(n.config["kernel_size"]) for n in dws} == {kernel}
    assert sum("bias" in n.weights for n in dws) == 1
    assert len(g.in_edges(g.nodes_of("Add")[0].name)) == parts


def test_activation_and_depth_multiplier_follow_the_sum():
    m = _model(L.DepthwiseConv2D(7, padding="same", depth_multiplier=2, activation="relu",
                                 use_bias=False, name="dw"), L.Conv2D(4, 1))
    g = check_rule(m, SplitDepthwiseKernel(), applied=1).graph
    (act,) = g.nodes_of("Activation")
    assert act.activation == "relu" and g.producers(act.name)[0].op == "Add"
    assert all(n.activation == "linear" and "bias" not in n.weights
               for n in g.nodes_of("DepthwiseConv2D"))


def test_near_misses_are_declined():
    m = _model(L.DepthwiseConv2D(5, padding="same"),
               L.DepthwiseConv2D(7, strides=2, padding="same"),
               L.DepthwiseConv2D(7, padding="valid"),
               L.DepthwiseConv2D((6, 6), padding="same"),
               L.DepthwiseConv2D(9, padding="same"), shape=(40, 40, 3))
    check_rule(m, SplitDepthwiseKernel(), applied=0,
               declined=["has at most 25 taps", "stride-1, undilated, 'same'",
                         "even size", "9x9 kernel has more than 25"])


def test_int8_file_has_no_kernel_past_25_taps(int8_before_after):
    m = _model(L.Conv2D(8, 1), L.DepthwiseConv2D(7, padding="same"), L.ReLU(), L.Conv2D(4, 1),
               shape=(14, 14, 3))
    before, after = int8_before_after(m, SplitDepthwiseKernel(), 16)
    assert before.ops["DEPTHWISE_CONV_2D"] == 1
    assert after.ops["DEPTHWISE_CONV_2D"] == 3 and after.ops["ADD"] == 2
    assert not after.fallback_ops


@pytest.mark.parametrize("size, parts", [(2, 1), (3, 2), (1, 1)])
def test_parts_that_read_only_padding_are_left_out(size, parts):
    """On a map no wider than d, part d is zero everywhere: in int8 such a tensor has no scale
    and XNNPACK refused to prepare the Add reading it (ConvNeXtTiny at 64x64, its 2x2 stage)."""
    m = _model(L.Conv2D(8, 1), L.DepthwiseConv2D(7, padding="same", activation="relu"),
               L.Conv2D(4, 1), shape=(size, size, 3))
    g = check_rule(m, SplitDepthwiseKernel(), applied=1).graph
    assert len(g.nodes_of("DepthwiseConv2D")) == parts
    assert len(g.nodes_of("Add")) == (parts > 1)
    if parts == 1:
        assert g.nodes_of("DepthwiseConv2D")[0].activation == "relu"


def test_int8_file_of_a_small_map_runs(tmp_path):
    from kopt.runtime import export_tflite

    m = _model(L.Conv2D(8, 1), L.DepthwiseConv2D(7, padding="same"), L.Conv2D(4, 1),
               shape=(2, 2, 3))
    after = check_rule(m, SplitDepthwiseKernel(), applied=1).model
    x = np.random.default_rng(0).normal(size=(16, 2, 2, 3)).astype("float32")
    assert export_tflite(after, tmp_path / "small.tflite", x).ops["DEPTHWISE_CONV_2D"] == 1


def test_a_conv_with_one_channel_per_group_is_split_like_a_depthwise_conv():
    """keras.applications.ConvNeXt writes its 7x7 depthwise convs as Conv2D(groups=C)."""
    m = _model(L.Conv2D(8, 1), L.Conv2D(8, 7, padding="same", groups=8, name="grouped"),
               L.Conv2D(8, 7, padding="same", groups=4, name="two_per_group"), L.Conv2D(4, 1))
    g = check_rule(m, SplitDepthwiseKernel(), applied=1,
                   declined="more than one channel per group").graph
    assert len(g.nodes_of("DepthwiseConv2D")) == 3 and "grouped" not in g
