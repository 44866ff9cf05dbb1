"""SvdDense: rank by kept energy, declines when factoring does not pay, small error."""

import keras
import numpy as np

from kopt.testing import check_rule, model_inputs, randomize_weights
from rewrites.svd_dense import SvdDense


def _low_rank_model(rank=4, m=64, n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = keras.Input((m,))
    h = keras.layers.Dense(n, activation="relu", name="fc")(x)
    y = keras.layers.Dense(3, name="head")(h)
    model = randomize_weights(keras.Model(x, y), all_weights=True)  # seeded head kernel too
    w = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n)) / np.sqrt(m * rank)
    w += rng.normal(scale=1e-3, size=(m, n))  # a little noise: full rank, low effective rank
    model.get_layer("fc").set_weights([w.astype("float32"), model.get_layer("fc").get_weights()[1]])
    return model


def test_rank_follows_energy():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    v, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    s = np.array([10, 5, 1, 0.1] + [0.0] * 6)
    w = (u[:, :10] * s) @ v.T  # singular values known: energies 100, 25, 1, 0.01
    total = np.sum(s ** 2)
    assert SvdDense(energy=100 / total - 1e-6).rank(w) == 1
    assert SvdDense(energy=0.995).rank(w) == 3
    assert SvdDense(energy=1.0).rank(w) == 4
    assert SvdDense(ratio=0.5).rank(w) == int(0.5 * 200 / 30)


def test_factor_low_rank_dense_is_accurate_and_smaller():
    model = _low_rank_model()
    r = check_rule(model, SvdDense(energy=0.999), applied={"svd_dense": 1}, randomize=False,
                   x=model_inputs(model, batch=8), declined="already a low-rank factor")
    g = r.graph
    dense = g.nodes_of("Dense")
    assert [n.config["units"] for n in dense] == [4, 48, 3]
    assert dense[0].config["use_bias"] is False and dense[0].activation == "linear"
    assert dense[1].activation == "relu" and dense[1].name == "fc"
    assert g.count_params() < model.count_params()
    assert r.error < 1e-2


def test_declines_full_rank_and_tiny():
    rng = np.random.default_rng(1)
    x = keras.Input((32,))
    y = keras.layers.Dense(32, name="full")(x)
    y = keras.layers.Dense(1, name="tiny")(y)
    model = keras.Model(x, y)
    model.get_layer("full").set_weights([np.linalg.qr(rng.normal(size=(32, 32)))[0]
                                         .astype("float32"), np.zeros(32, "float32")])
    report = check_rule(model, SvdDense(energy=0.9), applied=0, randomize=False).report
    reasons = {d.nodes[0]: d.reason for d in report.declined}
    assert "would not save parameters" in reasons["full"]  # orthogonal: flat spectrum
    assert "min_size" in reasons["tiny"]


def test_pointwise_conv_factored():
    x = keras.Input((6, 6, 32))
    y = keras.layers.Conv2D(32, 1, strides=2, activation="relu", name="pw")(x)
    model = randomize_weights(keras.Model(x, y))
    r = check_rule(model, SvdDense(ratio=0.25), applied={"svd_dense": 1}, randomize=False)
    convs = r.graph.nodes_of("Conv2D")
    assert [c.config["filters"] for c in convs] == [4, 32]
    assert r.model(model_inputs(model)).shape == (2, 3, 3, 32)
    big = keras.Model(x, keras.layers.Conv2D(8, 3, name="k3")(x))
    report = check_rule(big, SvdDense(), randomize=False).report
    assert "1x1" in report.why("k3")[0].reason
