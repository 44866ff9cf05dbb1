"""Helpers for proving rewrites exact: randomised BN statistics, output comparison, and
`check_rule`, the one way the rule tests run a rule.

Keras initialises BN to mean 0, variance 1, gamma 1, beta 0, which hides folding bugs; every
exactness check here first gives BN layers (and biases) random statistics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kopt.ir import Graph
from kopt.keras_io import from_keras, to_keras
from kopt.keras_io.probes import predict_outputs
from kopt.rewriting.manager import PassManager, Report
from kopt.rewriting.rule import Rule
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


@dataclass
class RuleCheck:
    """What `check_rule` ran: the emitted Keras model, the rewritten graph, the pass manager's
    report, and the max relative output error against the original on the checked inputs."""

    model: Any
    graph: Graph
    report: Report
    error: float

    @property
    def ops(self) -> Counter:
        """How many nodes of each op the rewritten graph has (InputLayer included)."""
        return Counter(n.op for n in self.graph)


def check_rule(model: Any, rules: Rule | Sequence[Rule], *, applied: int | dict | None = None,
               declined: str | Sequence[str] = (), rolled_back: str | Sequence[str] = (),
               tolerance: float = 1e-5, randomize: bool = True, seed: int = 0,
               x: Any = None) -> RuleCheck:
    """Run `rules` on `model` the way kopt does and assert what a rule test needs.

    1. Unless `randomize=False`, give `model` random BN statistics and biases
       (`randomize_weights(model, seed)`, in place, so the caller's model is the one compared).
    2. Lift it, run the rules in a PassManager (verified against `model` itself, with
       `tolerance`, when every rule is exact; unverified otherwise), lint and emit the result.
       The default tolerance, 1e-5, suits the small models rule tests build; the manager's own
       default, 1e-4, leaves room for deep real models.
    3. `applied`: the number of applications in all, or {rule name: count} equal to
       `report.counts()`; None skips the check. `declined`: substring(s) that must each appear
       in some decline reason. `rolled_back`: the names of the rules the manager must have
       rolled back, in order; by default none may be (a rule rolled back silently would
       otherwise pass as "applied nothing, outputs equal").
    4. When every rule is exact: the emitted model computes the same function as `model`
       within `tolerance` (max relative error) on `x`, by default seeded random inputs
       (`model_inputs`, a different seed from the manager's own probes). For approximate rules
       the error on `x` is only measured.

    So a passing check proves that the rules (a) applied as often as expected and were not
    rolled back, (b) declined the near misses for the stated reasons, (c) left a graph that
    lints and emits, and (d) if exact, did not change what the model computes. Where they
    applied, and what the result looks like, is for the caller to assert on the `RuleCheck`.
    """
    rules = [rules] if isinstance(rules, Rule) else list(rules)
    exact = all(r.exact for r in rules)
    if randomize:
        randomize_weights(model, seed=seed)
    manager = PassManager(rules, verify=exact, tolerance=tolerance)
    g, report = manager.run(from_keras(model), reference=model)
    g.lint()
    out = to_keras(g)

    names = [name for name, _ in report.rolled_back]
    expected = [rolled_back] if isinstance(rolled_back, str) else list(rolled_back)
    assert names == expected, f"rolled back {report.rolled_back}, expected {expected}"
    if isinstance(applied, dict):
        want = {k: v for k, v in applied.items() if v}
        assert report.counts() == want, \
            f"applied {report.counts()}, expected {want}; declined: {_reasons(report)}"
    elif applied is not None:
        assert len(report.applied) == applied, \
            f"applied {report.counts()}, expected {applied} in all; declined: {_reasons(report)}"
    reasons = _reasons(report)
    for needle in [declined] if isinstance(declined, str) else declined:
        assert any(needle in r for r in reasons), f"no decline mentions {needle!r}: {reasons}"

    x = model_inputs(model) if x is None else x
    error = max_relative_error(outputs(model, x), outputs(out, x))
    if exact:
        assert error <= tolerance, \
            f"outputs differ: max relative error {error:.3e} > {tolerance:.0e}"
    return RuleCheck(out, g, report, error)


def _reasons(report: Report) -> list[str]:
    return [d.reason for d in report.declined]


def chain(shape: tuple, *layers: Any) -> Any:
    """A functional Keras model applying `layers` in order to an input of `shape`: the usual
    near-miss model of a rule test (conv, then BN, then ...)."""
    import keras

    x = keras.Input(shape)
    y = x
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y)
