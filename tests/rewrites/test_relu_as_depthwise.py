"""ReluAsDepthwise: a ReLU no op before it absorbs becomes a 1x1 identity depthwise conv with the
ReLU fused, exactly; the int8 file then has no standalone RELU (which XNNPACK does not take in
int8), and a BN before it folds into the new conv."""

import keras
import pytest

import rewrites
from kopt.testing import check_rule
from rewrites.relu_as_depthwise import ReluAsDepthwise

L = keras.layers


def _preact(rank=2):
    """Xception-like: an Add whose sum is read twice, a ReLU after it; a Concatenate, BN, ReLU6."""
    conv = {1: L.Conv1D, 2: L.Conv2D}[rank]
    x = inp = keras.Input((8,) * rank + (3,))
    a, b = conv(8, 1, name="a")(x), conv(8, 1, name="b")(x)
    s = L.Add(name="sum")([a, b])
    r = L.ReLU(name="relu")(s)
    y = L.Add(name="sum2")([conv(8, 1, name="c")(r), s])
    y = L.Concatenate(name="cat")([y, a])
    y = L.ReLU(6.0, name="relu6")(L.BatchNormalization(name="bn")(y))
    pool = L.GlobalAveragePooling2D() if rank == 2 else L.GlobalAveragePooling1D()
    return keras.Model(inp, L.Dense(4, name="fc")(pool(y)))


@pytest.mark.parametrize("rank", [1, 2])
def test_rewrite_is_exact(rank):
    g = check_rule(_preact(rank), ReluAsDepthwise(), applied=2).graph
    dw = {n.name: n for n in g.nodes_of(f"DepthwiseConv{rank}D")}
    assert set(dw) == {"relu_as_depthwise", "relu6_as_depthwise"}
    assert dw["relu_as_depthwise"].activation == "relu"
    assert dw["relu6_as_depthwise"].activation == "relu6"
    assert not g.nodes_of("ReLU")


def test_declined():
    x = inp = keras.Input((6, 6, 4))
    y = L.ReLU(negative_slope=0.1, name="leaky")(x)
    y = L.ReLU(name="fused")(L.BatchNormalization()(L.Conv2D(4, 1)(y)))
    flat = L.ReLU(name="flat")(L.Flatten()(y))
    check_rule(keras.Model(inp, flat), ReluAsDepthwise(), applied=0,
               declined=["is not a plain ReLU", "takes it as its fused activation",
                         "does not act on a channels-last"])


def test_the_bn_before_folds_into_the_new_conv():
    g = check_rule(_preact(), [ReluAsDepthwise()] + rewrites.exact_rules()).graph
    assert not g.nodes_of("BatchNormalization") and not g.nodes_of("ReLU")


def test_int8_file_has_no_standalone_relu(int8_before_after):
    keras.utils.set_random_seed(0)
    a, b = int8_before_after(_preact(), ReluAsDepthwise(), samples=32)
    assert "RELU(int8)" in a.fallback_ops, a.fallback_ops
    assert not any(op.startswith("RELU") for op in b.fallback_ops), b.fallback_ops
