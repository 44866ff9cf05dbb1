"""PoolBranchToConv: "same" stride-1 average pool + 1x1 conv -> one k x k conv with the 1x1
kernel / k^2 at every tap. Exact away from the border; at the border the pre-activation output
is b + (n / k^2)(z - b), n the count of valid cells in the window (the module docstring)."""

import keras
import numpy as np
import pytest

from kopt.rewriting import registered
from kopt.testing import check_rule, model_inputs, outputs
from rewrites.pool_branch_to_conv import PoolBranchToConv, valid_counts

L = keras.layers
SIZE = 8


def _branch(pool_size=3, strides=1, padding="same", activation=None, conv_strides=1,
            data_format="channels_last"):
    """The inception pool branch: an average pool, then a 1x1 conv with a bias. data_format is
    the pool's only (TensorFlow's CPU conv kernels want channels last)."""
    shape = (5, SIZE, SIZE) if data_format == "channels_first" else (SIZE, SIZE, 5)
    x = keras.Input(shape)
    y = L.AveragePooling2D(pool_size, strides=strides, padding=padding,
                           data_format=data_format, name="ap")(x)
    y = L.Conv2D(4, 1, strides=conv_strides, activation=activation, name="pw")(y)
    return keras.Model(x, y)


def _rewrite(model):
    r = check_rule(model, PoolBranchToConv(), applied={"pool_branch_to_conv": 1})
    x = model_inputs(model, batch=3)
    return r, outputs(model, x)[0], outputs(r.model, x)[0]


@pytest.mark.parametrize("k", [3, 5])
def test_exact_inside_and_as_derived_at_the_border(k):
    model = _branch(pool_size=k)
    r, old, new = _rewrite(model)
    assert r.ops == {"InputLayer": 1, "Conv2D": 1}
    conv = r.graph.nodes_of("Conv2D")[0]
    assert tuple(conv.config["kernel_size"]) == (k, k) and conv.config["padding"] == "same"
    ring = (k - 1) // 2
    inside = (slice(None), slice(ring, -ring), slice(ring, -ring))
    np.testing.assert_allclose(new[inside], old[inside], rtol=1e-5, atol=1e-5)
    bias = model.get_layer("pw").get_weights()[1]
    n = valid_counts(SIZE, SIZE, (k, k))[None, :, :, None]
    np.testing.assert_allclose(new, bias + n / k ** 2 * (old - bias), rtol=1e-5, atol=1e-5)
    corner = np.abs(new[:, 0, 0] - old[:, 0, 0]).max()
    assert corner > 1e-3  # the border does differ: n = ((k + 1) / 2)^2 of k^2 at a corner


def test_valid_counts():
    n = valid_counts(4, 5, (3, 3))
    assert n[0, 0] == 4 and n[0, 2] == 6 and n[1, 1] == 9 and n[3, 4] == 4


def test_activation_stays_and_the_inside_is_exact():
    model = _branch(activation="relu")
    r, old, new = _rewrite(model)
    assert r.graph.nodes_of("Conv2D")[0].activation == "relu"
    np.testing.assert_allclose(new[:, 1:-1, 1:-1], old[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-5)


def test_only_rewrites_the_named_pool():
    x = keras.Input((SIZE, SIZE, 5))
    ys = [L.Conv2D(2, 1, name=f"pw{i}")(L.AveragePooling2D(3, 1, "same", name=f"ap{i}")(x))
          for i in (1, 2)]
    r = check_rule(keras.Model(x, L.Concatenate()(ys)), PoolBranchToConv(only="ap2"),
                   applied={"pool_branch_to_conv": 1})
    assert "ap1" in r.graph and "ap2" not in r.graph


@pytest.mark.parametrize("kwargs, reason", [
    (dict(strides=2), "pool strides (2, 2)"),
    (dict(padding="valid"), "padding='valid'"),
    (dict(pool_size=2), "pool_size (2, 2) is even"),
    (dict(conv_strides=2), "1x1 conv 'pw' has strides (2, 2)"),
    (dict(data_format="channels_first"), "channels_first"),
])
def test_near_misses_are_declined(kwargs, reason):
    r = check_rule(_branch(**kwargs), PoolBranchToConv(), applied=0, declined=reason)
    assert r.ops["AveragePooling2D"] == 1


def test_declines_a_pool_read_twice():
    x = keras.Input((SIZE, SIZE, 5))
    p = L.AveragePooling2D(3, strides=1, padding="same", name="ap")(x)
    model = keras.Model(x, [L.Conv2D(4, 1)(p), L.ReLU()(p)])
    check_rule(model, PoolBranchToConv(), applied=0, declined="read by 2 layers")


def test_declines_a_pool_before_a_3x3_conv():
    x = keras.Input((SIZE, SIZE, 5))
    p = L.AveragePooling2D(3, strides=1, padding="same")(x)
    model = keras.Model(x, L.Conv2D(4, 3, name="c3")(p))
    check_rule(model, PoolBranchToConv(), applied=0, declined="not a 1x1 Conv2D")


def test_registered_approximate_and_off_by_default():
    assert PoolBranchToConv in registered(exact=False)
    assert PoolBranchToConv not in registered(default_only=True)
