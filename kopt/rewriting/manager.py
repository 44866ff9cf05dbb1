"""The pass manager: apply rules to a fixed point, lint, verify, roll back, report.

Each rule runs to a fixed point in turn, for up to `rounds` rounds while anything changes. The
graph is linted after every rule; a rule that breaks an invariant is undone at once (only that
call's applications leave the report). Verification is done once at the end (emitting Keras
models is the slow part): the graph is emitted and compared with the reference model on
seeded probe inputs. On failure the snapshots taken after each rule are bisected to find the
first rule that broke equivalence; that rule is rolled back (with a warning) and the rules
after it are run again. Matches that bind a shared layer are declined here, for every rule.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kopt.errors import GraphLintError, KoptError
from kopt.ir import Graph
from kopt.ir.cost import node_macs
from kopt.keras_io.emitter import to_keras
from kopt.keras_io.probes import predict_outputs, probe_inputs
from kopt.rewriting.rule import Match, Rule
from kopt.rewriting.verify import first_failing, graph_error

log = logging.getLogger(__name__)


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
        approximate = [r.name for r in self.rules if not r.exact]
        if verify and approximate:
            raise KoptError(
                f"cannot verify approximate rules {approximate}: they change outputs on "
                "purpose. Run them with verify=False and measure the result on held-out data "
                "(kopt.optimize(model, data=...) does both)")
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
                reference = to_keras(original)
            probes = self.probe_inputs or probe_inputs(original)
            expected = predict_outputs(reference, probes)
            while True:
                err = graph_error(g, probes, expected)
                if err <= self.tolerance or not snapshots:
                    report.max_error = err
                    break
                bad = first_failing([s[1] for s in snapshots], probes, expected,
                                    self.tolerance)
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
        """Rounds of `rules` until nothing changes; a rule that fails lint is removed from
        `rules` (the caller's list) so no later round or rerun retries it."""
        snapshots = list(keep or [])
        for _ in range(self.rounds):
            changed = False
            for rule in list(rules):
                before, n_before = g.copy(), len(report.applied)
                try:
                    n = self._apply_rule(g, rule, report)
                    g.lint()
                except GraphLintError as err:
                    log.warning("rule '%s' produced a broken graph (%s); rolled back",
                                rule.name, err)
                    report.rolled_back.append((rule.name, str(err)))
                    del report.applied[n_before:]  # this call's applications only
                    rules.remove(rule)  # not retried: it would break the graph again
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
                reason = _shared_reason(g, rule, m) or rule.reject(g, m)
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


def _shared_reason(g: Graph, rule: Rule, m: Match) -> str | None:
    if rule.changes_shared:
        return None
    shared = [n.name for n in m.nodes() if g.is_shared(n)]
    if shared:
        return (f"'{shared[0]}' is a shared layer (called more than once): changing it would "
                "change its other calls")
    return None


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


