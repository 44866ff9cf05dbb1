"""Rule, Match and the pass manager: apply rules to a fixed point, lint, verify, roll back.

Verification is done once at the end: the graph is emitted and compared with the reference
model on seeded probe inputs. On failure the snapshots taken after each rule are bisected to
find the first rule that broke equivalence; that rule is rolled back (with a warning) and the
rules after it are run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kopt.errors import GraphLintError, KoptError
from kopt.ir import Graph, Node
from kopt.ops import node_macs

log = logging.getLogger("kopt")


class Match:
    """One place a rule could apply: named roles bound to nodes (or lists of nodes)."""

    def __init__(self, **roles: Any):
        self.__dict__.update(roles)

    def nodes(self) -> list[Node]:
        found: list[Node] = []
        for value in self.__dict__.values():
            items = value if isinstance(value, (list, tuple)) else [value]
            found += [v for v in items if isinstance(v, Node)]
        return found

    def names(self) -> list[str]:
        return list(dict.fromkeys(n.name for n in self.nodes()))

    def __repr__(self) -> str:
        return f"Match({', '.join(self.names())})"


class Rule:
    """A rewrite. Subclasses define matches(), reject() and apply(); they keep no state."""

    exact: bool = True
    name: str = ""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__module__.rsplit(".", 1)[-1]

    def matches(self, g: Graph) -> Iterable[Match]:
        raise NotImplementedError

    def reject(self, g: Graph, m: Match) -> str | None:
        return None

    def apply(self, g: Graph, m: Match) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


@dataclass
class Application:
    rule: str
    nodes: list[str]
    result: list[str]
    params: tuple[int, int]
    macs: tuple[int, int]


@dataclass
class Decline:
    rule: str
    nodes: list[str]
    reason: str


@dataclass
class Report:
    """What the pass manager did: applications, declines with reasons, rollbacks, totals."""

    applied: list[Application] = field(default_factory=list)
    declined: list[Decline] = field(default_factory=list)
    rolled_back: list[tuple[str, str]] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    max_error: float | None = None
    seconds: float = 0.0

    def why(self, node: str) -> list[Decline]:
        """Why a node was left alone: every decline that names it."""
        return [d for d in self.declined if node in d.nodes]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.applied:
            out[a.rule] = out.get(a.rule, 0) + 1
        return out

    def to_dict(self) -> dict:
        return dict(before=self.before, after=self.after, max_error=self.max_error,
                    seconds=self.seconds, applied=[a.__dict__ for a in self.applied],
                    declined=[d.__dict__ for d in self.declined],
                    rolled_back=[dict(rule=r, reason=why) for r, why in self.rolled_back])

    def __str__(self) -> str:
        lines = [f"{'rule':<22}applied   params before -> after        MACs before -> after"]
        for rule in dict.fromkeys(a.rule for a in self.applied):
            apps = [a for a in self.applied if a.rule == rule]
            p0, p1 = sum(a.params[0] for a in apps), sum(a.params[1] for a in apps)
            m0, m1 = sum(a.macs[0] for a in apps), sum(a.macs[1] for a in apps)
            lines.append(f"{rule:<22}{len(apps):>7}   {p0:>12,} -> {p1:<12,}  "
                         f"{m0:>14,} -> {m1:,}")
        reasons: dict[tuple[str, str], int] = {}
        for d in self.declined:
            reasons[(d.rule, d.reason)] = reasons.get((d.rule, d.reason), 0) + 1
        if reasons:
            lines.append("declined:")
            lines += [f"  {r}: {why} (x{n})" for (r, why), n in reasons.items()]
        for rule, why in self.rolled_back:
            lines.append(f"ROLLED BACK {rule}: {why}")
        if self.before:
            b, a = self.before, self.after
            lines.append(f"layers {b['layers']} -> {a['layers']}, params {b['params']:,} -> "
                         f"{a['params']:,}, MACs {b['macs']:,} -> {a['macs']:,}")
        if self.max_error is not None:
            lines.append(f"verified: max relative output error {self.max_error:.2e}")
        return "\n".join(lines)


def totals(g: Graph) -> dict:
    return dict(layers=len(g) - len(g.inputs), params=g.count_params(), macs=g.count_macs())


class PassManager:
    """Runs rules in order, each to a fixed point; lints after each; verifies at the end."""

    def __init__(self, rules: list[Rule], verify: bool = True, tolerance: float = 1e-4,
                 probe_inputs: list[np.ndarray] | None = None, max_applications: int = 10_000,
                 rounds: int = 3):
        self.rules = list(rules)
        self.verify = verify
        self.tolerance = tolerance
        self.probe_inputs = probe_inputs
        self.max_applications = max_applications
        self.rounds = rounds

    def run(self, g: Graph, reference: Any = None) -> tuple[Graph, Report]:
        """Rewrite a copy of `g`. `reference` (a Keras model) is what verification compares
        against; by default the graph as given, emitted."""
        start = time.perf_counter()
        report = Report(before=totals(g))
        original = g
        rules = list(self.rules)
        g, snapshots = self._run_rules(g.copy(), rules, report)
        if self.verify and snapshots:
            if reference is None:
                from kopt.emitter import to_keras

                reference = to_keras(original)
            probes = self.probe_inputs or probe_inputs(original)
            expected = predict_outputs(reference, probes)
            while True:
                err = _error(g, probes, expected)
                if err <= self.tolerance or not snapshots:
                    report.max_error = err
                    break
                bad = _first_failing(snapshots, probes, expected, self.tolerance)
                rule = snapshots[bad][0]
                why = f"outputs changed by {err:.2e} relative (tolerance {self.tolerance:.0e})"
                log.warning("rule '%s' broke equivalence (%s); rolled back", rule.name, why)
                report.rolled_back.append((rule.name, why))
                report.applied = report.applied[:snapshots[bad - 1][2]] if bad > 0 else []
                g = snapshots[bad - 1][1].copy() if bad > 0 else original.copy()
                rules = [r for r in rules if r is not rule]
                g, snapshots = self._run_rules(g, rules, report, keep=snapshots[:bad])
        report.after = totals(g)
        report.seconds = time.perf_counter() - start
        return g, report

    def _run_rules(self, g: Graph, rules: list[Rule], report: Report,
                   keep: list | None = None) -> tuple[Graph, list]:
        snapshots = list(keep or [])
        for _ in range(self.rounds):
            changed = False
            for rule in rules:
                before = g.copy()
                try:
                    n = self._apply_rule(g, rule, report)
                    g.lint()
                except GraphLintError as err:
                    log.warning("rule '%s' produced a broken graph (%s); rolled back",
                                rule.name, err)
                    report.rolled_back.append((rule.name, str(err)))
                    report.applied = [a for a in report.applied if a.rule != rule.name]
                    g, n = before, 0
                if n:
                    changed = True
                    snapshots.append((rule, g.copy(), len(report.applied)))
            if not changed:
                break
        return g, snapshots

    def _apply_rule(self, g: Graph, rule: Rule, report: Report) -> int:
        """Apply `rule` to a fixed point: sweeps of non-overlapping matches until none apply."""
        applied = 0
        seen_declines = {(d.rule, tuple(d.nodes), d.reason) for d in report.declined}
        while True:
            touched: set[str] = set()
            swept = 0
            for m in list(rule.matches(g)):
                names = m.names()
                if any(n in touched or n not in g for n in names):
                    continue
                reason = rule.reject(g, m)
                if reason:
                    key = (rule.name, tuple(names), reason)
                    if key not in seen_declines:
                        seen_declines.add(key)
                        report.declined.append(Decline(rule.name, names, reason))
                        log.debug("%s declined at %s: %s", rule.name, names, reason)
                    continue
                report.applied.append(_apply_one(g, rule, m, names))
                touched.update(names)
                touched.update(report.applied[-1].result)
                swept += 1
            applied += swept
            if applied > self.max_applications:
                raise KoptError(f"rule '{rule.name}' applied {applied} times without reaching "
                                "a fixed point; it is probably undoing itself")
            if not swept:
                return applied


def _apply_one(g: Graph, rule: Rule, m: Match, names: list[str]) -> Application:
    mark = g.next_order()
    params0 = sum(g[n].weight_count() for n in names)
    macs0 = sum(node_macs(g, g[n]) for n in names)
    rule.apply(g, m)
    result = [n for n in names if n in g] + g.added_since(mark)
    result = list(dict.fromkeys(result))
    params1 = sum(g[n].weight_count() for n in result)
    macs1 = sum(node_macs(g, g[n]) for n in result)
    log.info("%s: %s -> %s (params %d -> %d, MACs %d -> %d)", rule.name, names, result,
             params0, params1, macs0, macs1)
    return Application(rule.name, names, result, (params0, params1), (macs0, macs1))


def probe_inputs(g: Graph, batch: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs for every model input (ints for integer inputs)."""
    rng = np.random.default_rng(seed)
    probes = []
    for name in g.inputs:
        node = g[name]
        shape = tuple(batch if i == 0 else (d or 16) for i, d in enumerate(node.output_shape))
        dtype = node.output_dtypes[0] if node.output_dtypes else "float32"
        if "int" in dtype:
            probes.append(rng.integers(0, 8, shape).astype(dtype))
        else:
            probes.append(rng.normal(0, 1, shape).astype(dtype))
    return probes


def predict_outputs(model: Any, x: Any) -> list[np.ndarray]:
    """Inference outputs of `model` on `x` (an array or a list of arrays), always a list."""
    if isinstance(x, list) and len(x) == 1:
        x = x[0]
    out = model(x, training=False)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o) for o in outs]


def _error(g: Graph, probes: list[np.ndarray], expected: list[np.ndarray]) -> float:
    from kopt.emitter import to_keras

    got = predict_outputs(to_keras(g), probes)
    return max_relative_error(expected, got)


def max_relative_error(expected: Iterable[np.ndarray], got: Iterable[np.ndarray]) -> float:
    """Largest |a - b| over each output, relative to that output's largest magnitude."""
    worst = 0.0
    for a, b in zip(expected, got):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(a))), 1e-12)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def _first_failing(snapshots: list, probes: list, expected: list, tol: float) -> int:
    """Binary search for the first snapshot whose outputs differ (the failure persists)."""
    lo, hi = 0, len(snapshots) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _error(snapshots[mid][1], probes, expected) > tol:
            hi = mid
        else:
            lo = mid + 1
    return lo

