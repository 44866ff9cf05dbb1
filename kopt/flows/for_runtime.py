"""Exact rewrites whose worth depends on the runtime: kept only where it measures them faster.

Some exact rewrites swap one op for others that compute the same function, and whether that is
faster depends on which ops the runtime's kernels take. split_hard_swish (rewrites/) is the
case in point: on this project's machine with LiteRT 2.3, MobileNetV3Small at 64x64 ran 2.5x
faster in full int8 with its hard-swishes split (XNNPACK does not take an int8 HARD_SWISH) and
1.5x slower in float (XNNPACK takes a float HARD_SWISH; the split adds a conv). So the latency
search starts from the rewritten model only where the runtime it targets measures the model
faster, side by side with the model as given. The rules are exact and verified by the pass
manager (rolled back with a warning if outputs move), so no accuracy is spent and none is
re-checked here; the search still scores its starting point on validation like any other.
"""

from __future__ import annotations

import logging
from typing import Any

from kopt.keras_io import from_keras, to_keras
from kopt.rewriting import PassManager, Rule
from kopt.runtime.latency import LatencyModel
from rewrites.split_hard_swish import SplitHardSwish

log = logging.getLogger(__name__)

RULES: tuple[type[Rule], ...] = (SplitHardSwish,)
"""The runtime-dependent exact rules, tried in this order, each on the result of the last."""


def for_runtime(model: Any, lm: LatencyModel, min_gain: float = 0.01, runs: int = 200
                ) -> tuple[Any, list[str]]:
    """(model, names of the rules kept): `model` with each rule in RULES that applies to it
    and makes it measure at least `min_gain` faster on `lm`'s runtime (side by side with the
    model before the rule); `model` itself when none does. The caller's model is not changed."""
    current, kept = model, []
    for rule_class in RULES:
        rule = rule_class()
        g, report = PassManager([rule], verify=True).run(from_keras(current), reference=current)
        if not report.applied:
            continue
        candidate = to_keras(g)
        before, after = lm.measure_side_by_side([current, candidate], runs=runs)
        faster = after < before * (1.0 - min_gain)
        log.info("for %s: %s (%d places) measures %.4f -> %.4f ms: %s", lm.runtime, rule.name,
                 len(report.applied), before, after, "kept" if faster else "not kept")
        if faster:
            current = candidate
            kept.append(rule.name)
    return current, kept
