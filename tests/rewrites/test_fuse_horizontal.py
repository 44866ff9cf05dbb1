"""FuseHorizontal: parallel convs / Dense layers into one Concatenate become one wider layer."""

import keras
import pytest

from kopt.testing import check_rule
from rewrites.fuse_horizontal import FuseHorizontal
from rewrites.pool_to_conv import PoolToConv

L = keras.layers


def _inception():
    x = keras.Input((12, 12, 8))
    a = L.Conv2D(4, 1, activation="relu")(x)
    b = L.Conv2D(6, 1, activation="relu")(x)
    c = L.Conv2D(5, 3, padding="same", activation="relu")(x)
    d = L.Conv2D(3, 3, padding="same", activation="relu")(x)
    r = L.Conv2D(2, 1, activation="relu")(x)  # reduce layers: same geometry as a, b, but
    e = L.Conv2D(4, 5, padding="same")(r)     # each feeds another conv (would need a split)
    r2 = L.Conv2D(2, 1, activation="relu")(x)
    f = L.Conv2D(4, 3, padding="same")(r2)
    p = L.AveragePooling2D(3, strides=1, padding="same")(x)
    p = L.Conv2D(4, 1, activation="relu")(p)
    y = L.Concatenate()([a, b, c, d, e, f, p])
    return keras.Model(x, L.Conv2D(3, 1)(y))


def test_inception_block_fuses_runs_and_declines_the_rest():
    r = check_rule(_inception(), [FuseHorizontal(), PoolToConv()],
                   applied={"fuse_horizontal": 2},
                   declined="padding='same'")  # inception's same-padded avg-pool
    g = r.graph
    assert r.ops["Conv2D"] == 10 - 2 and r.ops["Concatenate"] == 1
    cat = g.nodes_of("Concatenate")[0]
    assert [g[s].config["filters"] for s, _, _ in g.in_edges(cat.name)] == [10, 8, 4, 4, 4]
    assert any(d.reason.startswith("outputs not consumed by one Concatenate in order")
               for d in r.report.declined)


def test_dense_heads_fuse_and_concatenate_disappears():
    x = keras.Input((10,))
    h = L.Dense(8, activation="relu")(x)
    y = L.Concatenate()([L.Dense(3)(h), L.Dense(5)(h), L.Dense(2)(h)])
    r = check_rule(keras.Model(x, y), FuseHorizontal(), applied={"fuse_horizontal": 1})
    assert r.ops == {"InputLayer": 1, "Dense": 2}
    assert r.graph[r.graph.outputs[0][0]].config["units"] == 10


def test_mixed_run_fuses_agreeing_part_and_declines_different_activation():
    x = keras.Input((8, 8, 4))
    convs = [L.Conv2D(3, 1, activation=a)(x) for a in ("relu", "relu", "linear")]
    r = check_rule(keras.Model(x, L.Concatenate()(convs)), FuseHorizontal(),
                   applied={"fuse_horizontal": 1}, declined="different activation")
    assert r.ops["Conv2D"] == 2


@pytest.mark.parametrize("case", ["read_elsewhere", "out_of_order", "dilation", "no_bias"])
def test_near_misses_are_declined(case):
    x = keras.Input((8, 8, 4))
    a = L.Conv2D(3, 3, padding="same")(x)
    b = L.Conv2D(3, 3, padding="same", dilation_rate=2 if case == "dilation" else 1,
                 use_bias=case != "no_bias")(x)
    mid = [L.ReLU()(x)] if case == "out_of_order" else []
    outs = [L.Concatenate()([a] + mid + [b])]
    if case == "read_elsewhere":
        outs.append(L.ReLU()(b))
    expected = {"read_elsewhere": "also read elsewhere",
                "out_of_order": "not consumed by one Concatenate in order",
                "dilation": "different dilation_rate",
                "no_bias": "different use_bias"}[case]
    r = check_rule(keras.Model(x, outs), FuseHorizontal(), applied=0, declined=expected)
    assert r.ops["Conv2D"] == 2
