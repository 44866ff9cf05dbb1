"""ExpandLayerNorm: a LayerNormalization over the channels becomes mean, centre, variance,
rsqrt and the gamma/beta depthwise conv, exactly; the int8 file then leaves only the RSQRT to
TFLite's own kernels; a model with the rewrite saves and loads in safe mode; near misses are
declined with their reasons."""

import keras
import numpy as np
import pytest

import kopt
from kopt.testing import check_rule
from rewrites.expand_layer_norm import ExpandLayerNorm

L = keras.layers


def _tokens(norm, shape=(9, 12)):
    x = inp = keras.Input(shape)
    h = L.Dense(shape[-1])(x)
    return keras.Model(inp, L.Dense(5)(norm(h)))


@pytest.mark.parametrize("shape", [(9, 12), (6, 6, 12)])
@pytest.mark.parametrize("options", [{}, dict(center=False), dict(scale=False),
                                     dict(center=False, scale=False), dict(epsilon=0.1)])
def test_expansion_is_exact(shape, options):
    m = _tokens(L.LayerNormalization(name="ln", **options), shape)
    g = check_rule(m, ExpandLayerNorm(), applied=1).graph
    assert not g.nodes_of("LayerNormalization") and g.nodes_of("ops.Rsqrt")
    affine = g.nodes_of(f"DepthwiseConv{len(shape) - 1}D")
    assert len(affine) == (0 if options.get("center") is False and
                           options.get("scale") is False else 1)


def test_near_misses_are_declined():
    x = inp = keras.Input((6, 6, 4))
    h = L.LayerNormalization(axis=1)(x)
    h = L.LayerNormalization(axis=[1, 2, 3])(h)
    h = L.LayerNormalization(rms_scaling=True)(h)
    h = L.LayerNormalization(epsilon=0.0)(h)
    flat = L.LayerNormalization()(L.Flatten()(h))
    m = keras.Model(inp, flat)
    check_rule(m, ExpandLayerNorm(), applied=0,
               declined=["not the channels alone", "rms_scaling", "epsilon is 0",
                         "(batch, steps, C)"])


def test_saved_model_loads_in_safe_mode(tmp_path):
    m = _tokens(L.LayerNormalization())
    out = check_rule(m, ExpandLayerNorm(), applied=1).model
    out.save(tmp_path / "expanded.keras")
    back = kopt.load_model(tmp_path / "expanded.keras")
    x = np.random.default_rng(0).normal(size=(4, 9, 12)).astype("float32")
    np.testing.assert_allclose(back.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-5)


def test_int8_file_leaves_only_the_rsqrt_to_tflite(int8_before_after):
    m = _tokens(L.LayerNormalization(epsilon=1e-6), (6, 6, 16))
    before, after = int8_before_after(m, ExpandLayerNorm(), 32)
    assert "SQUARED_DIFFERENCE(int8)" in before.fallback_ops
    assert after.fallback_ops == {"RSQRT(int8)": 1}


def test_retraining_leaves_the_statistics_alone():
    """The search distils every model it keeps: a ConvNeXt-style model went to chance after
    five epochs when the variance's Dense weights were trainable (a negative variance, a NaN
    rsqrt). They are frozen; gamma and beta still train."""
    from kopt.flows.distill import retrain

    m = _tokens(L.LayerNormalization(name="ln"))
    out = check_rule(m, ExpandLayerNorm(), applied=1).model
    frozen = {layer.name: [w.copy() for w in layer.get_weights()] for layer in out.layers
              if layer.name in ("ln_mean", "ln_var")}
    affine = out.get_layer("ln_affine").get_weights()[0].copy()
    x = np.random.default_rng(0).normal(size=(64, 9, 12)).astype("float32")
    retrain(out, teacher=m, data=x, epochs=3, learning_rate=0.05)
    for name, weights in frozen.items():
        for before, after in zip(weights, out.get_layer(name).get_weights()):
            np.testing.assert_array_equal(before, after)
    assert not np.array_equal(affine, out.get_layer("ln_affine").get_weights()[0])
    assert np.isfinite(out.predict(x, verbose=0)).all()
