"""RemoveIdentity: inference no-ops vanish, the function stays; real work and training stay."""

import keras

from kopt.testing import check_rule
from rewrites.remove_identity import RemoveIdentity

L = keras.layers


def test_every_inference_noop_is_removed():
    x = keras.Input((6, 6, 4))
    y = L.Conv2D(4, 3, padding="same")(x)
    for layer in [L.Dropout(0.3), L.SpatialDropout2D(0.2), L.GaussianNoise(0.5),
                  L.GaussianDropout(0.2), L.AlphaDropout(0.1), L.ActivityRegularization(0.1),
                  L.Activation("linear"), L.Reshape((6, 6, 4)), L.Identity()]:
        y = layer(y)
    z = L.Reshape((36, 4))(y)
    z = L.SpatialDropout1D(0.5)(z)
    m = keras.Model(x, L.Dense(3)(L.Flatten()(z)))
    r = check_rule(m, RemoveIdentity(), applied={"remove_identity": 10}, seed=5)
    assert [n.op for n in r.graph] == ["InputLayer", "Conv2D", "Reshape", "Flatten", "Dense"]
    assert r.report.after["layers"] == r.report.before["layers"] - 10


def test_near_misses_are_kept_with_reasons():
    x = keras.Input((6, 6, 4))
    y = L.Conv2D(4, 3, padding="same")(x)
    y = L.Reshape((4, 36))(L.Reshape((6, 6, 4))(L.Reshape((36, 4))(y)))  # none is identity
    y = L.Activation("relu")(y)  # not a no-op: not even matched
    y = L.Dropout(0.0)(y, training=True)
    m = keras.Model(x, y)
    r = check_rule(m, RemoveIdentity(), applied=0, seed=5)
    assert len(r.graph.nodes_of("Reshape")) == 3 and r.graph.nodes_of("Dropout")
    reasons = {d.reason for d in r.report.declined}
    assert reasons == {"Reshape changes the shape", "Dropout is called with training=True"}


def test_input_is_never_made_an_output():
    x = keras.Input((5,))
    m = keras.Model(x, [L.Dense(2)(x), L.Dropout(0.5)(x)])
    r = check_rule(m, RemoveIdentity(), applied=0, seed=5)
    assert "model input a model output" in r.report.declined[0].reason
