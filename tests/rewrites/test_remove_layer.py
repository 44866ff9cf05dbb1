"""RemoveLayer (depth pruning): a conv / Dense with its BN / activations whose output has its
input's shape becomes the identity, and a residual branch of just that leaves the skip alone.
The result is compared with the model built without the layer, on the same weights."""

import keras
import pytest

from kopt.rewriting import registered
from kopt.testing import assert_same_function, chain, check_rule
from rewrites.remove_layer import RemoveLayer

L = keras.layers


def _copy_weights(src, dst, names):
    for name in names:
        dst.get_layer(name).set_weights(src.get_layer(name).get_weights())


def _plain(with_c1=True):
    x = inp = keras.Input((8, 8, 6))
    if with_c1:
        x = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(
            L.Conv2D(6, 3, padding="same", name="c1")(x)))
    x = L.Conv2D(6, 3, padding="same", name="c2")(x)
    return keras.Model(inp, L.Dense(4, name="fc")(L.GlobalAveragePooling2D(name="gap")(x)))


def test_layer_in_a_chain_becomes_the_identity():
    model = _plain()
    r = check_rule(model, RemoveLayer(only="c1"), applied={"remove_layer": 1})
    assert r.ops == {"InputLayer": 1, "Conv2D": 1, "GlobalAveragePooling2D": 1, "Dense": 1}
    without = _plain(with_c1=False)
    _copy_weights(model, without, ["c2", "fc"])
    assert_same_function(r.model, without)


def _residual(branch_convs):
    """x -> conv_in -> [conv -> BN (-> ReLU -> conv -> BN)] + skip -> ReLU -> GAP -> Dense."""
    x = inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="conv_in")(x)
    y = x
    for i in range(branch_convs):
        if i:
            y = L.ReLU(name=f"br{i}")(y)
        y = L.BatchNormalization(name=f"bb{i}")(L.Conv2D(6, 3, padding="same", name=f"b{i}")(y))
    z = L.Add(name="add")([x, y]) if branch_convs else x
    z = L.GlobalAveragePooling2D(name="gap")(L.ReLU(name="out_relu")(z))
    return keras.Model(inp, L.Dense(4, name="fc")(z))


def test_one_conv_branch_is_dropped_with_its_add():
    model = _residual(1)
    r = check_rule(model, RemoveLayer(only="b0"), applied={"remove_layer": 1})
    assert "Add" not in r.ops and "BatchNormalization" not in r.ops  # x, not x + x
    skip_only = _residual(0)
    _copy_weights(model, skip_only, ["conv_in", "fc"])
    assert_same_function(r.model, skip_only)


def test_one_conv_of_a_longer_branch_becomes_the_identity():
    r = check_rule(_residual(2), RemoveLayer(only="b1"), applied={"remove_layer": 1})
    assert r.ops["Add"] == 1 and r.ops["Conv2D"] == 2
    assert [n.name for n in r.graph.producers("add")] == ["conv_in", "br1"]


def test_one_match_per_removable_layer():
    # conv_in (3 -> 6 channels) and fc (6 -> 4) change the shape; b0 and b1 do not
    r = check_rule(_residual(2), RemoveLayer(), applied={"remove_layer": 2},
                   declined=["'conv_in' maps (None, 8, 8, 3) to (None, 8, 8, 6)",
                             "'fc' maps (None, 6) to (None, 4)"])
    assert r.ops["Conv2D"] == 1 and "Add" not in r.ops  # the branch went, and its Add


@pytest.mark.parametrize("layer, reason", [
    (lambda: L.Conv2D(8, 3, padding="same"), "to (None, 8, 8, 8)"),
    (lambda: L.Conv2D(6, 3, strides=2, padding="same"), "to (None, 4, 4, 6)"),
    (lambda: L.Conv2D(6, 3), "to (None, 6, 6, 6)"),
])
def test_shape_changes_are_declined(layer, reason):
    model = chain((8, 8, 6), L.ReLU(), layer(), L.ReLU())
    check_rule(model, RemoveLayer(), applied=0, declined=reason)


def test_a_model_that_would_be_empty_is_declined():
    model = chain((8, 8, 6), L.Conv2D(6, 1), L.BatchNormalization())
    check_rule(model, RemoveLayer(), applied=0, declined="a model output would be a model input")


def test_registered_approximate_and_off_by_default():
    assert RemoveLayer in registered(exact=False)
    assert RemoveLayer not in registered(default_only=True)
