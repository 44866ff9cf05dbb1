"""PoolToConv: valid avg-pool -> depthwise conv, and avg-pool + 1x1 conv -> one k x k conv."""

import keras
import pytest

from kopt.testing import check_rule
from rewrites.pool_to_conv import PoolToConv

L = keras.layers


def _pool_branch(filters, pool=3, strides=1, padding="valid", conv_strides=1):
    """The inception pool branch: avg-pool, then a 1x1 conv (with bias and relu)."""
    x = keras.Input((9, 9, 8))
    y = L.AveragePooling2D(pool, strides=strides, padding=padding)(x)
    y = L.Conv2D(filters, 1, strides=conv_strides, activation="relu")(y)
    return keras.Model(x, y)


def test_fold_when_macs_do_not_grow():
    r = check_rule(_pool_branch(1), PoolToConv(),  # 9*8*1 <= 9*8 + 8*1 MACs
                   applied={"pool_to_conv": 1})
    assert r.ops == {"InputLayer": 1, "Conv2D": 1}
    conv = r.graph.nodes_of("Conv2D")[0]
    assert tuple(conv.config["kernel_size"]) == (3, 3) and conv.output_shape == (None, 7, 7, 1)


def test_fold_declined_by_cost_model_then_allowed_by_budget():
    model = _pool_branch(4)
    r = check_rule(model, PoolToConv(), applied=0)
    assert r.ops["AveragePooling2D"] == 1
    assert any("MACs" in d.reason and "max_mac_growth=1.0" in d.reason
               for d in r.report.declined)
    r = check_rule(model, PoolToConv(max_mac_growth=3.0),  # 288 vs 104 per pixel
                   applied={"pool_to_conv": 1})
    assert "AveragePooling2D" not in r.ops


def test_non_square_strided_pool_folds():
    r = check_rule(_pool_branch(6, pool=(2, 3), strides=(2, 1)), PoolToConv(max_mac_growth=10),
                   applied={"pool_to_conv": 1})
    conv = r.graph.nodes_of("Conv2D")[0]
    assert tuple(conv.config["strides"]) == (2, 1) and conv.output_shape == (None, 4, 7, 6)


def test_standalone_pool_becomes_depthwise_only_when_asked():
    x = keras.Input((8, 8, 5))
    p = L.AveragePooling2D(2)(x)
    model = keras.Model(x, [L.ReLU()(p), L.Conv2D(3, 1)(p)])  # pool read twice: no fold
    r = check_rule(model, PoolToConv(), applied=0, declined="standalone=True")
    assert r.ops["AveragePooling2D"] == 1
    r = check_rule(model, PoolToConv(standalone=True), applied={"pool_to_conv": 1})
    assert r.ops["DepthwiseConv2D"] == 1 and "AveragePooling2D" not in r.ops


@pytest.mark.parametrize("kwargs, reason", [
    (dict(padding="same"), "padding='same'"),
    (dict(conv_strides=2), "has strides (2, 2)"),
])
def test_near_misses_are_declined(kwargs, reason):
    r = check_rule(_pool_branch(1, **kwargs), PoolToConv(standalone=True), declined=reason)
    assert r.ops["AveragePooling2D"] == (1 if "padding" in kwargs else 0)
