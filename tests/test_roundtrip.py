"""The lossless round trip: to_keras(from_keras(m)) computes m's function with m's parameters."""

import keras
import numpy as np
import pytest

import kopt
from kopt.testing import assert_same_function, randomize_weights


def _roundtrip(model, backend="keras"):
    g = kopt.from_keras(model)
    out = kopt.to_keras(g, backend=backend)
    assert out.count_params() == model.count_params() == g.count_params()
    return g, out


def _small_cnn():
    x = keras.Input((16, 16, 3))
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    z = keras.layers.DepthwiseConv2D(3, padding="same")(y)
    y = keras.layers.Add()([y, z])
    y = keras.layers.Concatenate()([y, y])
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, keras.layers.Dense(4)(y))


def test_functional_roundtrip_is_exact():
    m = randomize_weights(_small_cnn())
    g, out = _roundtrip(m)
    assert_same_function(m, out, rtol=1e-6)
    assert [n.op for n in g.nodes_of("Add")] == ["Add"]
    add = g.nodes_of("Concatenate")[0]
    assert [p for _, _, p in g.in_edges(add.name)] == [0, 1]
    assert len({s for s, _, _ in g.in_edges(add.name)}) == 1  # Concatenate([y, y]) kept


def test_sequential_and_nested_are_flattened():
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(5)], name="inner")
    x = keras.Input((8,))
    y = keras.layers.Dense(8)(x)
    m = keras.Model(x, keras.layers.Dense(3)(inner(y)))
    g, out = _roundtrip(m)
    assert "inner" not in [n.name for n in g]
    assert len(g.nodes_of("Dense")) == 4
    assert_same_function(m, out, rtol=1e-6)


def test_shared_layer_keeps_sharing():
    a, b = keras.Input((4,)), keras.Input((4,))
    shared = keras.layers.Dense(3)
    m = keras.Model([a, b], [shared(a), shared(b)])
    g, out = _roundtrip(m)
    dense = g.nodes_of("Dense")
    assert len(dense) == 2 and dense[0].shared_key == dense[1].shared_key
    assert out.count_params() == 15
    assert_same_function(m, out, rtol=1e-6)


def test_multi_io_and_lambda_kept_opaque():
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    y = keras.layers.Lambda(lambda t: t * 2.0)(a)
    z = keras.ops.add(y, b)
    m = keras.Model([a, b], [keras.layers.Dense(2)(z), y])
    g, out = _roundtrip(m)
    assert {n.op for n in g} >= {"Lambda", "ops.Add"}
    assert_same_function(m, out, rtol=1e-6)


def test_tf_keras_model_roundtrips_both_ways():
    import tf_keras

    x = tf_keras.Input((12, 12, 3))
    y = tf_keras.layers.Conv2D(4, 3)(x)
    y = tf_keras.layers.BatchNormalization()(y)
    y = tf_keras.layers.DepthwiseConv2D(3)(y)
    y = tf_keras.layers.Flatten()(y)
    m = randomize_weights(tf_keras.Model(x, tf_keras.layers.Dense(3)(y)))
    g = kopt.from_keras(m)
    assert g.nodes_of("DepthwiseConv2D")[0].weights.keys() >= {"kernel"}
    xin = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype("float32")
    for backend in ("keras", "tf_keras"):
        out = kopt.to_keras(g, backend=backend)
        assert_same_function(m, out, rtol=1e-5, x=xin)


def test_keras3_model_emits_as_tf_keras():
    m = randomize_weights(_small_cnn())
    out = kopt.to_keras(kopt.from_keras(m), backend="tf_keras")
    import tf_keras

    assert isinstance(out, tf_keras.Model)
    assert_same_function(m, out, rtol=1e-5)


def test_subclassed_model_gives_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(kopt.KoptError, match="subclassed.*functional API"):
        kopt.from_keras(net)
    data = (np.zeros((64, 3), "float32"), np.zeros((64, 2), "float32"))
    for target in (None, 2):  # the data flows check the model before reading data for it
        with pytest.raises(kopt.KoptError, match="subclassed.*functional API"):
            kopt.optimize(net, data=data, target=target)


def test_files_are_loaded_safely_and_bad_paths_fail_clearly(tmp_path):
    m = randomize_weights(_small_cnn())
    for ext in (".keras", ".h5"):
        path = tmp_path / f"m{ext}"
        m.save(path)
        _, out = _roundtrip(kopt.load_model(path))
        assert_same_function(m, out, rtol=1e-5)
    with pytest.raises(kopt.KoptError, match="no such model file"):
        kopt.from_keras(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(kopt.KoptError, match="cannot load"):
        kopt.from_keras(bad)
    lam = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda t: t + 1)])
    lam.save(tmp_path / "lam.keras")
    with pytest.raises(kopt.KoptError, match="cannot load"):
        kopt.load_model(tmp_path / "lam.keras")  # safe_mode refuses stored code


@pytest.mark.parametrize("name,expected", [("ResNet50", 3.9e9), ("MobileNetV2", 300e6),
                                           ("VGG16", 15.5e9), ("InceptionV3", 5.7e9)])
def test_macs_match_published(name, expected):
    m = getattr(keras.applications, name)(weights=None)
    g = kopt.from_keras(m)
    assert abs(g.count_macs() - expected) / expected < 0.05
    assert g.count_params() == m.count_params()


def test_public_names_are_not_shadowed_by_submodules():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(kopt.__path__)}
    assert not modules & set(kopt.__all__), "importing such a submodule replaces the function"
