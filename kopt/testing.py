"""Helpers for proving rewrites exact: randomised BN statistics and output comparison.

Keras initialises BN to mean 0, variance 1, gamma 1, beta 0, which hides folding bugs; every
exactness check here first gives BN layers (and biases) random statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kopt.keras_io.probes import predict_outputs
from kopt.rewriting.verify import max_relative_error


def randomize_weights(model: Any, seed: int = 0, all_weights: bool = False) -> Any:
    """Give BN statistics, gammas, betas and biases random values (in place); with
    all_weights=True also re-draw kernels (scaled like Glorot), for zero-initialised models."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "layers"):  # nested model
            randomize_weights(layer, seed=int(rng.integers(1 << 30)), all_weights=all_weights)
            continue
        values = layer.get_weights()
        if not values:
            continue
        new = []
        for var, w in zip(layer.weights, values):
            name = var.name.split("/")[-1]
            if "variance" in name:
                w = rng.uniform(0.5, 2.0, w.shape)
            elif "mean" in name or "beta" in name or "bias" in name:
                w = rng.normal(0.0, 0.3, w.shape)
            elif "gamma" in name:
                w = rng.uniform(0.5, 1.5, w.shape)
            elif all_weights and w.ndim >= 2:
                fan = np.prod(w.shape[:-1])
                w = rng.normal(0.0, 1.0 / np.sqrt(fan), w.shape)
            new.append(np.asarray(w, dtype=values[len(new)].dtype))
        layer.set_weights(new)
    return model


def model_inputs(model: Any, batch: int = 2, seed: int = 1) -> Any:
    rng = np.random.default_rng(seed)
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    xs = [rng.normal(0, 1, (batch,) + tuple(s[1:])).astype("float32") for s in shapes]
    return xs[0] if len(xs) == 1 else xs


outputs = predict_outputs


def assert_same_function(a: Any, b: Any, rtol: float = 1e-5, x: Any = None) -> float:
    """Assert two models agree on seeded random inputs; returns the max relative error."""
    x = model_inputs(a) if x is None else x
    err = max_relative_error(outputs(a, x), outputs(b, x))
    assert err <= rtol, f"outputs differ: max relative error {err:.3e} > {rtol:.0e}"
    return err
