"""Exact rewrites whose worth depends on the runtime: kept only where it measures them faster.

Some exact rewrites swap one op for others that compute the same function, and whether that is
faster depends on which ops the runtime's kernels take. split_hard_swish (rewrites/) is the
case in point: on this project's machine with LiteRT 2.3, MobileNetV3Small at 64x64 ran 2.5x
faster in full int8 with its hard-swishes split (XNNPACK does not take an int8 HARD_SWISH) and
1.5x slower in float (XNNPACK takes a float HARD_SWISH; the split adds a conv). relu_as_depthwise
is the other: XNNPACK does not take an int8 RELU that no op before it absorbs (Xception's and
NASNet's pre-activation ReLUs after an Add read twice), and TFLite's kernel for it took 0.18 ms
on 32x32x32 values, nine times the convs and ADDs around it; as a 1x1 depthwise conv with the
ReLU fused it is delegated. split_depthwise_kernel is a third: XNNPACK runs a depthwise kernel
of up to 25 taps in one pass and a larger one on a much slower path (a 7x7 depthwise conv at
14x14x32 took 0.105 ms in int8, three 7x3 parts and their sum 0.018 ms), in float and int8 alike.
expand_layer_norm writes a LayerNormalization out in ops XNNPACK takes in int8 (the converter's
own lowering leaves SQUARED_DIFFERENCE and an ADD to TFLite's kernels: 0.060 -> 0.018 ms at
14x14x32); in float it is a little slower.

So each place is priced first by the latency model (the rewrite at that place alone, predicted
for the whole model), and only the places predicted faster are rewritten: a hard-swish after a
1x1 conv on a 1x1 feature map (MobileNetV3's last conv, 576 -> 1024 channels) saves little and
its copy costs 590k MACs and as many parameters. Then the whole model, rewritten at those
places, is measured side by side with the model as given, and kept only when it is faster; the
latency search starts from it. The rules are exact and verified by the pass manager (rolled
back with a warning if outputs move), so no accuracy is spent here.
"""

from __future__ import annotations

import logging
from typing import Any

from kopt.ir import Graph
from kopt.keras_io import from_keras, to_keras
from kopt.rewriting import PassManager, Rule
from kopt.runtime.latency import LatencyModel
from rewrites.expand_layer_norm import ExpandLayerNorm
from rewrites.relu_as_depthwise import ReluAsDepthwise
from rewrites.split_depthwise_kernel import SplitDepthwiseKernel
from rewrites.split_hard_swish import SplitHardSwish

log = logging.getLogger(__name__)

RULES: tuple[tuple[type[Rule], str], ...] = ((SplitHardSwish, "lin"), (ReluAsDepthwise, "relu"),
                                             (SplitDepthwiseKernel, "conv"),
                                             (ExpandLayerNorm, "norm"))
"""The runtime-dependent exact rules, each with the role in its matches that names a place (what
its `only=` takes), tried in this order, each on the result of the last."""


def for_runtime(model: Any, lm: LatencyModel, min_gain: float = 0.01, runs: int = 200
                ) -> tuple[Any, list[str]]:
    """(model, names of the rules kept): `model` with each rule in RULES applied at the places
    where the latency model predicts it faster, kept when that makes the model measure at least
    `min_gain` faster on `lm`'s runtime (side by side with the model before the rule); `model`
    itself when no rule is kept. The caller's model is not changed."""
    current, kept = model, []
    for rule_class, role in RULES:
        g = from_keras(current)
        places = rule_class().places(g, role)
        chosen = _faster_places(g, lm, rule_class, places)
        if not chosen:
            continue
        rule = rule_class(only=chosen)
        rewritten, report = PassManager([rule], verify=True).run(g, reference=current)
        if not report.applied:
            continue
        candidate = to_keras(rewritten)
        try:
            before, after = lm.measure_side_by_side([current, candidate], runs=runs)
        except RuntimeError as err:  # LiteRT could not prepare the rewritten file
            log.warning("for %s: %s not kept: the runtime cannot run the rewritten model (%s)",
                        lm.runtime, rule.name, err)
            continue
        faster = after < before * (1.0 - min_gain)
        log.info("for %s: %s at %d of %d places measures %.4f -> %.4f ms: %s", lm.runtime,
                 rule.name, len(report.applied), len(places), before, after,
                 "kept" if faster else "not kept")
        if faster:
            current = candidate
            kept.append(rule.name)
    return current, kept


def _faster_places(g: Graph, lm: LatencyModel, rule_class: type[Rule], places: list[str]
                   ) -> list[str]:
    """The places whose rewrite alone is predicted to make `g` faster."""
    if not places:
        return []
    before = lm.predict(g)
    chosen = []
    for place in places:
        alone, report = PassManager([rule_class(only=[place])], verify=False).run(g)
        if report.applied and lm.predict(alone) < before:
            chosen.append(place)
    return chosen
