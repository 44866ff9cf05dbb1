"""Latency-targeted compression: NetAdapt-style iterations steered by the latency model and
judged by measured latency on the target runtime.

Each iteration asks for a cut of the predicted latency (a fixed share of the original's) and
builds, for each prunable channel group and each approximate rule, the smallest move that gives
it (kopt.flows.candidates; channel counts snapped to the steps of the measured latency curve).
Candidates are ranked cheaply first, by their output error on calibration samples (without
them, by the share of MACs they take: capacity stands in for accuracy); only the `top_k` best
are fine-tuned briefly and scored on validation, and the best-scoring one is run on the
runtime: it is kept only when its *measured* latency is lower than the current model's by
`min_gain` (or by the machine's own noise, measured on the original beside itself, up to 3%),
whatever it does to parameters or MACs (else the next one is tried). Where no single move gives
an iteration's cut, the ranked moves are offered together (channel cuts by their first tile,
block merges and other rule moves whole); where every move that does ends well past the goal,
the same cut made on an earlier kept model, or smaller cuts together, are tried first. When
none of the moves that give the cut measures faster, those predicted to cut less get their
turn, then those that end past the goal: the prediction ranks, the runtime decides; and last,
before the search stops, a structural move that an earlier move took away (a conv that became
strided can no longer be removed), made on the model before it, with the moves kept since made
again (_detours). For a speed-up, every model is measured interleaved with the original
(kopt.flows.beside_original), so that drift of the machine does not move the goal. Iterations
stop when the measured latency meets the target, or when no move lowers it. The last model gets
a longer distillation; if it then scores more than `max_drop` below the original, the fastest
kept model that is within it is returned instead, and the result says plainly that the target
was not reached and what was.

optimize(..., target=) starts the search from the exact rewrites that kopt.flows.for_runtime
measured faster on the target runtime (`start=`: ops XNNPACK does not take or runs on a slow
path, written with ops it runs well; for_runtime.RULES lists them); the speed-up is still over
the model as given.

The evaluation is passed in (score, finetune), so the loop does not depend on the form of the
data: `accuracy_scorer` and `distiller` build them from arrays; kopt.flows.targeted builds them
from the compression flow's data handling for optimize(..., target=...).

Reproducibility: the moves, their ranking and the fine-tunes are seeded, so a run repeats
itself except where a measured latency decides; a candidate whose measured gain is close to
`min_gain` can fall either way on a noisy machine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from kopt.errors import SearchTargetError
from kopt.flows.beside_original import BesideOriginal
from kopt.flows.candidates import (
    Candidate,
    ChannelMoves,
    channel_candidates,
    combined_move,
    made_on,
    prune_to,
    rule_candidates,
)
from kopt.flows.distill import retrain
from kopt.ir.channels import channel_groups
from kopt.keras_io import from_keras, to_keras
from kopt.keras_io.probes import predict_outputs
from kopt.progress import GoalBar, progress_to, say
from kopt.rewriting import Rule, max_relative_error
from kopt.runtime.latency import LatencyModel

log = logging.getLogger(__name__)

Score = Callable[[Any], float]  # a Keras model -> validation score, higher is better
Finetune = Callable[[Any, int], Any]  # (Keras model, epochs) -> trains it in place


@dataclass(frozen=True)
class Target:
    """What to reach: `speedup` over the measured latency of int8 PTQ of the original (in
    `runtime`; over the float file for runtime "litert"), or an absolute latency `ms`."""

    speedup: float | None = None
    ms: float | None = None
    runtime: str = "litert-int8"
    threads: int = 1

    def __post_init__(self) -> None:
        if (self.speedup is None) == (self.ms is None):
            raise SearchTargetError("give exactly one of speedup= or ms= as the target")
        if self.speedup is not None and not self.speedup > 1:
            raise SearchTargetError(f"speedup must be > 1, got {self.speedup}")
        if self.ms is not None and not self.ms > 0:
            raise SearchTargetError(f"ms must be > 0, got {self.ms}")

    def goal_ms(self, original_ms: float) -> float:
        return self.ms if self.ms is not None else original_ms / self.speedup

    def __str__(self) -> str:
        what = f"{self.speedup:g}x" if self.speedup is not None else f"{self.ms:g} ms"
        return f"{what} on {self.runtime} ({self.threads} thread(s))"


@dataclass
class SearchResult:
    """The model returned, every step tried, and whether the target was met."""

    model: Any
    steps: list[dict]
    reached: bool
    message: str
    original_ms: float
    goal_ms: float
    measured_ms: float
    original_score: float
    score: float
    reach_table: list[dict] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.original_ms / self.measured_ms


@dataclass
class _Point:
    model: Any
    measured_ms: float
    predicted_ms: float
    score: float
    name: str
    exact: bool = False  # the original, or an exact rewrite of it: nothing to distil
    move: Candidate | None = None  # the move that made it from the point before


def latency_search(model: Any, target: Target, score: Score, finetune: Finetune | None = None,
                   calibration: Any = None, max_drop: float = 0.005,
                   latency: LatencyModel | None = None, step: float = 0.1, top_k: int = 2,
                   short_epochs: int = 1, final_epochs: int = 5, max_iterations: int = 30,
                   criterion: str = "l1", min_gain: float = 0.01, min_channels: int = 4,
                   rules: list[tuple[str, Rule]] | None = None, measure_runs: int = 200,
                   progress: bool = False, shortlists: int = 3,
                   margin: float = 0.02, overshoot: float = 0.12,
                   shipped: Callable[[Any], Any] | None = None, crawl: int = 3,
                   start: Any = None) -> SearchResult:
    """Search for the most accurate model meeting `target` (see the module docstring).

    score(model) -> validation score (higher is better; max_drop is in its units);
    finetune(model, epochs) trains a candidate in place (distillation from the original, say;
    None: no training, candidates are judged as they are); calibration: input samples for the
    ranking error and for data-driven pruning criteria (None: moves are ranked by the MACs they
    take); latency: the LatencyModel to predict and measure with (default: this machine's; it
    must time target.runtime and threads); step: the predicted cut asked of each iteration, as a
    share of the predicted latency of the model the search starts from; criterion: how channels
    are chosen ("l1", "bn_gamma", or "entropy" with calibration); rules: extra (name,
    approximate rule) moves offered every iteration; shortlists: how many shortlists of top_k
    moves, in rank order, an iteration may fine-tune and measure before it gives up; margin: the
    search aims this share below the goal, so that measurement noise does not decide whether the
    target is met; overshoot: a move predicted to end more than this share past the goal (a
    whole XNNPACK tile cut when a sliver was left) gives way to the moves that do not, when
    there are any, or to such a cut made on an earlier model (_backtrack); a candidate
    *measured* that far past it is kept only when no other of its shortlist is measured faster
    and short of that; when none of the others measures faster, the moves predicted to cut less
    than the step get their turn (up to `shortlists` shortlists), then the moves left out
    (past the goal is better than short of it). For a speed-up every model is measured side by
    side with the original (the machine drifts by 2-5% in minutes, more than the noise of one
    measurement), and once more before the search calls the goal met. shipped: what a model
    becomes before it ships (optimize() passes its exact pass, unverified): every model but the
    original is measured as that, so the search stops where the shipped model meets the goal;
    the returned model is not passed through it. crawl: the search stops, the target not
    reached, when this many kept iterations in a row each cut less than a quarter of the step
    asked, as measured (0: never): the runtime's time is then in what the moves cannot touch
    (MobileNetV3Small at 64x64 before split_hard_swish: per-op costs of its squeeze-excite and
    hard-swish ops; 1-2% an iteration, 75 s each), and going on would take half an hour to fail.
    No search that reached its goal in 47 benchmark logs had two such iterations in a row.
    start: an exact rewrite of `model` to start from (the one kopt.flows.for_runtime chose for
    the runtime); the speed-up is still over `model`, and `start` is neither fine-tuned nor
    distilled unless a move is kept on top of it."""
    lm = latency or LatencyModel(target.runtime, target.threads)
    if (lm.runtime, lm.threads) != (target.runtime, target.threads):
        raise SearchTargetError(f"the latency model times {lm.runtime} with {lm.threads} "
                                f"thread(s), the target is for {target}")
    current, g = model, from_keras(model)
    clock = BesideOriginal(lm, model, measure_runs, relative=target.speedup is not None,
                           shipped=shipped)
    measured = clock.original_ms
    # a reading within the machine's own noise is no gain (a Xeon with AMX read 1% gains on
    # width cuts that buy nothing there, and kept them at a cost in accuracy)
    noise = clock.noise()
    min_gain = max(min_gain, min(noise, _MAX_NOISE_GAIN))
    predicted = lm.predict(g)
    goal = target.goal_ms(measured)
    aim = goal * (1.0 - margin)
    base = score(model)
    steps = [_row("original", g, predicted, measured, base, kept=True)]
    points = [_Point(model, measured, predicted, base, "original", exact=True)]
    reach_table: list[dict] = []
    pace: list[float] = []  # each kept iteration's measured cut, as a share of its budget
    stop = ""
    _say(f"search: target {target}: {measured:.4f} -> {goal:.4f} ms (predicted "
         f"{predicted:.4f}), score {base:.4f}; the original reads within {noise:.1%} of "
         f"itself side by side, so a move must measure {min_gain:.1%} faster", progress)
    if start is not None:
        current, g = start, from_keras(start)
        measured, predicted = clock(start), lm.predict(g)
        steps.append(_row(f"0: exact rewrites for {lm.runtime}", g, predicted, measured,
                          score(start), kept=True))
        points.append(_Point(start, measured, predicted, steps[-1]["val_score"], "exact",
                             exact=True))
        _say(_line(steps[-1]), progress)
    cut = step * predicted
    # the bar shows the measured ms cut so far out of the cut the goal asks for
    with progress_to(points[0].measured_ms - goal, progress, "search") as bar:
        def trial(it: int, cand: Candidate, past_ok: bool = False) -> tuple[bool, bool]:
            """Measure a fine-tuned candidate and log its row: (it lowers the latency by
            min_gain without losing beyond recovery, it does so past the goal by more than
            the overshoot allowed; never with past_ok)."""
            bar.doing(f"measuring {cand.name}")
            try:
                cand.measured_ms = clock(cand.model)
            except RuntimeError as err:  # LiteRT could not prepare its file
                steps.append(_row(f"{it}: {cand.name}", cand.graph, cand.predicted_ms,
                                  math.nan, cand.score, False, cand.error))
                _say(f"search: {it}: {cand.name} does not run on {target.runtime} "
                     f"({err}): rejected", progress)
                return False, False
            lost = base - cand.score > _BEYOND_RECOVERY * max_drop
            ok = cand.measured_ms < measured * (1 - min_gain) and not lost
            past = ok and not past_ok and cand.measured_ms * (1 + overshoot) < goal
            steps.append(_row(f"{it}: {cand.name}", cand.graph, cand.predicted_ms,
                              cand.measured_ms, cand.score, ok and not past, cand.error))
            _say(_line(steps[-1]) + (" (past the goal: held)" if past else "")
                 + (" (lost beyond what distillation recovers)" if lost else ""), progress)
            return ok, past

        def earlier(it: int, past: list[Candidate], floor: float, aim_predicted: float
                    ) -> Candidate | None:
            """Before a move past the goal is taken: the same move made on an earlier kept
            model (_backtrack), fine-tuned and measured; None where there is none, or it does
            not measure faster short of the overshoot."""
            back = _backtrack(points, past, lm, floor, aim_predicted, criterion, calibration)
            if back is None:
                return None
            _say(f"search: {it}: before a move past the goal, {back.name}", progress)
            for cand in _shortlist([back], 1, finetune, short_epochs, score, bar):
                ok, past_goal = trial(it, cand)
                if ok and not past_goal:
                    return cand
            return None

        def first_faster(it: int, ranked: list[Candidate], lists: int,
                         short_from: float | None = None) -> Candidate | None:
            """The first of `lists` shortlists of the `ranked` moves (top_k each, fine-tuned,
            best first) that measures faster, past the goal or not; None if none does."""
            for start in range(0, min(len(ranked), top_k * lists), max(1, top_k)):
                for cand in _shortlist(ranked[start:], top_k, finetune, short_epochs, score,
                                       bar, short_from, points[-1].score):
                    if trial(it, cand, past_ok=True)[0]:
                        return cand
            return None

        for it in range(1, max_iterations + 1):
            if measured <= aim and current is not model:  # once more: one reading's noise
                measured = clock(current)                   # must not decide the target
            if measured <= aim:
                break
            bar.show(points[0].measured_ms - measured,
                     _standing(it, measured, goal, points[-1].score))
            bar.doing("pricing moves")
            budget = min(cut, predicted - _floor(lm), _remaining(predicted, measured, aim))
            floor = predicted * goal / measured / (1 + overshoot)
            aim_predicted = predicted * aim / measured  # the aim, in predicted ms
            offer = _moves(g, lm, predicted, budget, floor, criterion, calibration,
                           min_channels, rules or [])
            moves, beyond, short, found = offer.moves, offer.beyond, offer.short, offer.found
            reach_table = found.table
            no_move = "no move is predicted to lower the latency" + _reach_summary(reach_table)
            if not moves and not rules:
                stop = no_move
                break
            bar.doing(f"ranking {len(moves)} moves")
            reference = _reference(g, current, calibration)
            _rank(moves, reference, calibration, predicted if short else None)
            if short:
                bar.doing("combining the ranked moves")
                _combine(g, lm, predicted, budget, floor, moves, found.first_cuts, reference,
                         calibration)
            # the next-ranked moves get their turn when none of a shortlist measures faster:
            # the prediction ranks them, but only the runtime decides
            tries = [(moves[start:], top_k) for start in
                     range(0, min(len(moves), top_k * shortlists), max(1, top_k))]
            if not short and all(c.predicted_ms < floor for c in moves):
                bar.doing("looking for a cut that lands within the overshoot allowed")
                landings = _landings(points, moves, found.first_cuts, g, reference, lm,
                                     predicted, budget, floor, aim_predicted,
                                     criterion, calibration)
                tries = ([(landings, len(landings))] if landings else []) + tries
            # a candidate measured past the goal by more than the overshoot allowed is held
            # while the rest of its shortlist (already fine-tuned) is measured: the prediction
            # can be off by more than the overshoot between two steps (VGG seed 1 at 3x: 8%
            # slower than predicted, then 5% faster, 3.57x)
            accepted, held = None, None
            for batch, k in tries:
                for cand in _shortlist(batch, k, finetune, short_epochs, score, bar,
                                       predicted if short else None, points[-1].score):
                    ok, past = trial(it, cand)
                    if past:
                        held = held or (cand, steps[-1])
                    elif ok:
                        accepted = cand
                        break
                if accepted is not None or held is not None:
                    break
            if accepted is None and (held is not None or beyond):
                accepted = earlier(it, [held[0]] if held is not None else beyond, floor,
                                   aim_predicted)
            if accepted is None and offer.smaller:
                # the moves predicted to cut less than the step: the runtime decides
                bar.doing(f"trying the {len(offer.smaller)} moves that cut less")
                _say(f"search: {it}: no move that gives the step measured faster; trying the "
                     f"{len(offer.smaller)} predicted to cut less", progress)
                _rank(offer.smaller, reference, calibration, predicted)
                accepted = first_faster(it, offer.smaller, shortlists, predicted)
            # within the machine's noise of the goal, a move past it by more than the overshoot
            # may be a miss on the other side (tree seed 1 at 3x on the Xeon read 3.08x, then
            # above the goal once more, and took a pool's stride to 5.7x): two more readings
            # first, and if either meets the goal, the search stops there
            near = (accepted is None and measured <= goal * (1 + _NEAR_GOAL)
                    and min(clock(current) for _ in range(2)) <= goal)
            if near:
                stop = (f"the model measured within {_NEAR_GOAL:.0%} of the goal and met it in "
                        "one of two more readings; no move short of it measured faster")
                break
            if accepted is None and held is not None:
                accepted, held[1]["kept"] = held[0], True
                _say(f"search: {accepted.name} kept: no other candidate landed short of the "
                     "overshoot", progress)
            if accepted is None and beyond:
                # the moves left out for going past the goal: better past it than short of it
                # (the tree example on a Xeon with AMX, asked for 2x: width cuts measured no
                # faster, the block merge left out gave 3.4x)
                bar.doing(f"trying the {len(beyond)} moves that go past the goal")
                _say(f"search: {it}: no move short of the goal measured faster; trying the "
                     f"{len(beyond)} that go past it", progress)
                _rank(beyond, reference, calibration)
                accepted = first_faster(it, beyond, 1)
            if accepted is None and rules:
                # a structural move an earlier move took away, made on the model before it
                bar.doing("looking for a move an earlier one took away")
                detours = _detours(points, rules, lm, predicted, floor, aim_predicted)
                if detours:
                    _say(f"search: {it}: nothing measured faster; trying {len(detours)} "
                         "moves that an earlier move took away, made before it", progress)
                    _rank(detours, reference, calibration, predicted)
                    accepted = first_faster(it, detours, 1, predicted)
            if accepted is None and not moves:  # nor did a move an earlier one took away
                stop = no_move
                break
            if accepted is None:
                stop = (f"no candidate of iteration {it} lowered the measured latency by "
                        f"{min_gain:.1%} ({measured:.4f} ms) within "
                        f"{_BEYOND_RECOVERY:g}x the allowed drop of the original's score")
                break
            pace.append((measured - accepted.measured_ms)
                        / max(budget * measured / predicted, 1e-12))
            current, g = accepted.model, from_keras(accepted.model)
            measured, predicted = accepted.measured_ms, lm.predict(g)
            points.append(_Point(current, measured, predicted, accepted.score, accepted.name,
                                 move=accepted))
            if crawl and len(pace) >= crawl and max(pace[-crawl:]) < _CRAWL_PACE:
                stop = (f"the last {crawl} iterations each cut less than "
                        f"{_CRAWL_PACE:.0%} of the step asked (measured): what is left is "
                        "out of the moves' reach" + _reach_summary(reach_table))
                break
        else:
            stop = f"stopped after {max_iterations} iterations"
        return _finish(points, steps, target, base, max_drop, finetune, final_epochs, score,
                       stop, reach_table, clock, progress, bar)


# The most the machine's noise (BesideOriginal.noise) raises min_gain to: past it, real cuts
# of a tenth of the latency (an iteration's step) would start to be refused too.
_MAX_NOISE_GAIN = 0.03
# Within this share above the goal, a model is measured twice more before a move past the goal
# by more than the overshoot is taken: on the Xeon with AMX the same model reads 5-20% apart
# from one second to the next (two states of the machine, tools/bench_clock_states.py).
_NEAR_GOAL = 0.05
_CRAWL_PACE = 0.25  # see `crawl`: below this share of the step asked, an iteration crawls
# A candidate whose short fine-tune leaves it more than this many times max_drop below the
# original is not kept, whatever it cuts: the final distillation recovers a few times the
# drop (VGG at 5x: 96.16% -> 98.13% against 98.13%), not tens of points (a SeparableConv
# net with a depthwise conv removed: 97.73% -> 65.81%, 94.68% after the final distillation,
# so the search fell back to 1.47x).
_BEYOND_RECOVERY = 10.0


def _reach_summary(table: list[dict], top: int = 3) -> str:
    """The groups that could cut the most, for a message saying why a target is out of reach."""
    rows = sorted(table, key=lambda r: -r["best_cut_ms"])[:top]
    if not rows:
        return " (no prunable channel group)"
    return " (largest predicted cuts: " + ", ".join(
        f"{r['group']} {r['channels']}->{r['best_width']}: {r['best_cut_ms']:.4f} ms"
        for r in rows) + "; SearchResult.reach_table has every group)"


def _remaining(predicted: float, measured: float, goal: float, margin: float = 0.05) -> float:
    """What is left to cut, in the prediction's units (the goal scaled by predicted/measured),
    plus a margin for measurement noise: the last iteration cuts no more than it must (NetAdapt
    does the same), since a cut past the goal costs accuracy and buys nothing asked for."""
    return predicted * max(0.0, 1.0 - goal / measured) * (1.0 + margin) + 1e-9


@dataclass
class _Offer:
    """What an iteration may try, in turn: `moves`, ranked and shortlisted; `beyond`, those
    left out for ending past the floor; `smaller`, those predicted to cut less than the
    budget, when others give it; `short`: no move gives the budget (`moves` are then each
    group's largest cut and the rules that cut less); `found`: every channel move found."""

    moves: list[Candidate]
    beyond: list[Candidate]
    smaller: list[Candidate]
    short: bool
    found: ChannelMoves


def _moves(g: Any, lm: LatencyModel, current: float, budget: float, floor: float,
           criterion: str, calibration: Any, min_channels: int,
           rules: list[tuple[str, Rule]]) -> _Offer:
    """The moves that cut `budget` off the `current` predicted ms, less those that end below
    `floor` (the goal less the allowed overshoot, in predicted ms) when any does not: a
    target of 2x is not met by 3x, whose extra cut costs accuracy nobody asked to spend. When
    every one of them goes past it (the sliver left is smaller than any group's next tile),
    they are all kept, and the search looks for a landing first (_landings). With no move that
    gives the budget: each group's largest cut and the rules that cut less, those that stop
    short of the floor if any (and _combine adds the groups' first cuts taken together).

    The moves predicted to cut less than the budget are offered too, after the others: the
    prediction can be wrong in both directions (VGG seed 1 on a Xeon with AMX, asked for 3x:
    two width cuts predicted to give the step measured no faster, and the search stopped at
    1.4x with a layer removal and a pool's stride, predicted to cut less, never tried)."""
    found = channel_candidates(g, lm, current, budget, criterion, calibration, min_channels)
    rule_moves, rule_fallbacks = rule_candidates(g, lm, current, budget, rules)
    moves, smaller = found.moves + rule_moves, found.fallbacks + rule_fallbacks
    short = not moves
    if short:
        moves, smaller = smaller, []
    within = [c for c in moves if c.predicted_ms >= floor]
    if not within:
        return _Offer(moves, [], smaller, short, found)
    return _Offer(within, [c for c in moves if c.predicted_ms < floor], smaller, short, found)


def _combine(g: Any, lm: LatencyModel, current: float, budget: float, floor: float,
             ranked: list[Candidate], first_cuts: list[Candidate], reference: Any,
             calibration: Any) -> None:
    """When no move gives the budget: the ranked moves taken together (combined_move), in
    their rank order (error per ms cut), a channel group by its first cut (the least it can
    give), a rule move as it is. The combination goes first when it gives the budget: it is
    the one move that makes the step the iteration asks for (NetAdapt); else it is placed
    among the ranked moves by its own error per ms."""
    first = {c.info["group"]: c for c in first_cuts}
    cuts = [first[c.info["group"]] if "group" in c.info else c for c in ranked
            if "rule" in c.info or c.info.get("group") in first]
    move = _combined(g, lm, current, budget, floor, cuts, reference, calibration)
    if move is None:
        return
    gives_step = current - move.predicted_ms >= budget
    ranked.append(move)
    ranked.sort(key=lambda c: (not (c is move and gives_step), _per_ms(c, current)))


def _combined(g: Any, lm: LatencyModel, current: float, budget: float, floor: float,
              cuts: list[Candidate], reference: Any, calibration: Any) -> Candidate | None:
    """combined_move of `cuts` in their order, none past the floor, with its harm."""
    move = combined_move(g, lm, current, budget, cuts, floor)
    if move is not None:
        move.error = _harm(move, reference, calibration)
    return move


def _landings(points: list[_Point], moves: list[Candidate], first_cuts: list[Candidate],
              g: Any, reference: Any, lm: LatencyModel, current: float, budget: float,
              floor: float, aim: float, criterion: str, calibration: Any) -> list[Candidate]:
    """When every move that gives the iteration's cut ends past the goal by more than the
    overshoot allowed (floor, in predicted ms), the moves that stop short of the floor
    instead, to be tried first, the one that cuts most first: one of those moves made
    on an earlier kept model (_backtrack), and the groups' first cuts taken together, the
    least error per ms first. Either may stop short of the aim too: the search then goes on
    from it, with a smaller sliver left for the next iteration's cuts (a DenseNet-style model
    asked for 2.5x had a tenth left to cut and only a block merge that gave it: 3.32x)."""
    found = []
    back = _backtrack(points, moves, lm, floor, aim, criterion, calibration)
    if back is not None:
        found.append(back)
    if len(first_cuts) > 1:
        ranked = list(first_cuts)
        _rank(ranked, reference, calibration, current)
        move = _combined(g, lm, current, budget, floor, ranked, reference, calibration)
        if move is not None:
            found.append(move)
    return sorted(found, key=lambda c: c.predicted_ms)


def _backtrack(points: list[_Point], moves: list[Candidate], lm: LatencyModel, floor: float,
               aim: float, criterion: str, calibration: Any) -> Candidate | None:
    """When every move that gives the iteration's cut ends past the goal by more than the
    overshoot allowed (floor, in predicted ms): one of those moves made on an earlier kept
    model instead (a channel cut, chosen again there by `criterion`, or a rule move). The
    first, the latest model first (it keeps the most work done), that lands between the floor
    and the aim; else the first that lands between the floor and the current model, from which
    the search goes on (each kept model measures faster than the one before, so it cannot go
    round in circles).

    The residual example asked for 2x: its greedy path halved a block conv and merged a block
    (1.75x), and the only move left, the stem halved, ended at 3x; the stem halved on the
    original gives 1.85x, and the block merge after it 2.12x. The tree example on a Xeon with
    AMX asked for 2x: two pool branches as convs, a stride for the stem's pool and a prune
    (1.6x), then only the first block's merge cut more, to 3.5x."""
    current = points[-1].predicted_ms
    fallback = None
    for index in range(len(points) - 2, -1, -1):
        earlier = from_keras(points[index].model)
        groups = {gr.key: gr for gr in channel_groups(earlier) if gr.prunable}
        for cut in sorted(moves, key=lambda c: -c.predicted_ms):
            made = _made_earlier(earlier, groups, cut, criterion, calibration)
            if made is None:
                continue
            graph, name, info = made
            predicted = lm.predict(graph)
            if not floor <= predicted < current:
                continue
            move = Candidate(f"{name} (from {points[index].name})", graph, predicted,
                             info=dict(info, **{"from": index}))
            if predicted <= aim:
                return move
            fallback = fallback or move
    return fallback


def _detours(points: list[_Point], rules: list[tuple[str, Rule]], lm: LatencyModel,
             current: float, floor: float = 0.0, aim: float = math.inf) -> list[Candidate]:
    """When nothing measures faster: the rule moves that applied to an earlier kept model but
    no longer apply (an earlier move took their place away), each made on the latest such
    model and followed by as many of the moves kept since (made again where they still apply)
    as _landing chooses (the fewest that land between `floor` and `aim`, predicted ms); those
    predicted faster than the current model (`current` ms), fastest first.

    Why: the search is greedy, and one move can take another's place. VGG seed 1 on a Xeon
    with AMX first turned b0_pool into a stride of b0b_conv, which then could no longer be
    removed, and stopped at 1.9x asked for 3x; seed 0, which removed b0b_conv first and then
    strode b0a_conv, reached 3.97x. Made with every later move, that removal took VGG seed 2
    from 1.9x to 5.7x asked for 3x: hence as few of them as land."""
    now = from_keras(points[-1].model)
    taken = " | ".join(p.name for p in points)  # a combined move names each of its parts
    blocked = [Candidate(name, now, 0.0, info={"rule": rule}) for name, rule in rules
               if name not in taken]
    blocked = [move for move in blocked if made_on(now, move) is None]
    found: dict[str, Candidate] = {}
    for index in range(len(points) - 2, -1, -1):
        earlier = from_keras(points[index].model)
        later = [p.move for p in points[index + 1:] if p.move is not None]
        for blocked_move in blocked:
            name, rule = blocked_move.name, blocked_move.info["rule"]
            if name in found:
                continue
            graph = made_on(earlier, blocked_move)
            if graph is None:
                continue
            made = [(graph, lm.predict(graph))]  # after 0, 1, ... of the later moves
            for move in later:
                graph = made_on(graph, move) or graph
                made.append((graph, lm.predict(graph)))
            k = _landing(made, current, floor, aim)
            if k is not None:
                found[name] = Candidate(f"{name} (from {points[index].name}), then {k} of the "
                                        f"{len(later)} moves after it", made[k][0], made[k][1],
                                        info={"rule": rule, "from": index})
    return sorted(found.values(), key=lambda c: c.predicted_ms)


def _landing(made: list[tuple[Any, float]], current: float, floor: float, aim: float
             ) -> int | None:
    """Which of `made` (graph, predicted ms) to take: the first that lands between floor and
    aim (the least cut that reaches it); else the last that stays above the floor and is
    faster than `current`; else the last (past the goal); None when none is faster than
    `current`."""
    faster = [k for k, (_, ms) in enumerate(made) if ms < current]
    if not faster:
        return None
    landing = [k for k in faster if floor <= made[k][1] <= aim]
    above = [k for k in faster if made[k][1] >= floor]
    return landing[0] if landing else (above or faster)[-1]


def _made_earlier(earlier: Any, groups: dict, cut: Candidate, criterion: str,
                  calibration: Any) -> tuple[Any, str, dict] | None:
    """(graph, name, info) of `cut` made on the graph `earlier` (its prunable `groups` by key),
    or None where it does not apply there."""
    if "rule" in cut.info:
        graph = made_on(earlier, cut)
        return None if graph is None else (graph, cut.name, {"rule": cut.info["rule"]})
    group = groups.get(cut.info.get("group"))
    if group is None or len(group) <= cut.info["width"]:
        return None
    graph = prune_to(earlier, group, cut.info["width"], criterion, calibration)
    return graph, f"prune {group.key} {len(group)}->{cut.info['width']}", {
        "group": group.key, "width": cut.info["width"], "channels": len(group)}


def _floor(lm: LatencyModel) -> float:
    """No cut can go below the runtime's fixed cost per call."""
    return lm.overhead_ms()


def _rank(moves: list[Candidate], reference: Any, calibration: Any,
          per_ms_from: float | None = None) -> None:
    """Cheapest estimate first (_harm, against `reference` from _reference). Moves that all
    give the iteration's budget compare by harm alone; when none does (per_ms_from: the
    current predicted ms), each cuts what it can, so they compare by harm per predicted ms
    cut: else the search would crawl through the smallest cuts, the least harmful ones."""
    for cand in moves:
        cand.error = _harm(cand, reference, calibration)
    if per_ms_from is None:
        moves.sort(key=lambda c: (c.error, c.predicted_ms))
    else:
        moves.sort(key=lambda c: _per_ms(c, per_ms_from))


def _reference(g: Any, current: Any, calibration: Any) -> Any:
    """What _harm measures a move of the current model (`current`, its graph `g`) against:
    its outputs on the calibration samples, or without them its MACs."""
    if calibration is None:
        return g.count_macs()
    return _outputs(current, calibration)


def _harm(cand: Candidate, reference: Any, calibration: Any) -> float:
    """How much a move harms the model it was made from, estimated cheaply: the output error
    on the calibration samples against that model's (`reference`, its outputs). Without
    calibration samples, the share of its MACs (`reference`) the move takes away: with no
    data to tell what a channel is worth, the capacity left stands in for accuracy, so the
    search cuts where a ms costs the fewest MACs (uniform pruning at 0.5 cuts everywhere
    alike)."""
    if calibration is None:
        return 1.0 - cand.graph.count_macs() / max(reference, 1)
    if cand.model is None:
        cand.model = to_keras(cand.graph)
    return max_relative_error(reference, _outputs(cand.model, calibration))


def _per_ms(cand: Candidate, current: float) -> tuple:
    """Sort key of a move that cuts less than the budget: harm per predicted ms cut."""
    return (cand.error / max(current - cand.predicted_ms, 1e-9), cand.predicted_ms)


def _outputs(model: Any, calibration: Any, chunk: int = 64) -> list:
    """The model's outputs on the calibration samples, run eagerly in chunks: model.predict
    traces a new function for every candidate model (0.7-1.0 s on MobileNetV2 0.35 at 96x96
    for 256 samples, against 0.3-0.6 s eagerly)."""
    import numpy as np

    xs = calibration if isinstance(calibration, list) else [calibration]
    n = len(xs[0])
    parts = [predict_outputs(model, [x[i:i + chunk] for x in xs]) for i in range(0, n, chunk)]
    return [np.concatenate(outs) for outs in zip(*parts)]


def _shortlist(moves: list[Candidate], top_k: int, finetune: Finetune | None, epochs: int,
               score: Score, bar: GoalBar, short_from: float | None = None,
               current_score: float = 0.0) -> list[Candidate]:
    """The top_k best-ranked moves, fine-tuned briefly and scored, best first: by score; or,
    when the moves fall short of the budget (short_from: the current predicted ms), by score
    lost per predicted ms cut, then the larger cut (by score alone, the smallest cut would
    win every such iteration and the search would crawl)."""
    short = moves[:max(1, top_k)]
    for i, cand in enumerate(short, 1):
        if cand.model is None:
            cand.model = to_keras(cand.graph)
        if finetune is not None and epochs > 0:
            bar.doing(f"fine-tuning {i}/{len(short)} ({cand.name})")
            finetune(cand.model, epochs)
            cand.graph = from_keras(cand.model)
        cand.score = score(cand.model)
    if short_from is None:
        return sorted(short, key=lambda c: -c.score)
    return sorted(short, key=lambda c: (max(0.0, current_score - c.score)
                                        / max(short_from - c.predicted_ms, 1e-9),
                                        c.predicted_ms))


def _finish(points: list[_Point], steps: list[dict], target: Target, base: float,
            max_drop: float, finetune: Finetune | None, epochs: int, score: Score, stop: str,
            reach_table: list[dict], clock: BesideOriginal, progress: bool,
            bar: GoalBar) -> SearchResult:
    """Final distillation of the last kept model; if it then scores more than max_drop below
    the original, the fastest kept model within it (the original at worst). An earlier model
    is distilled again only when its short-fine-tune score plus what the final distillation
    added to the last one could reach the bar, so a failed target costs few distillations."""
    original = points[0]
    goal = target.goal_ms(original.measured_ms)
    chosen, gain = None, None
    for point in reversed(points):
        if not point.exact and finetune is not None and epochs > 0:
            if gain is not None and point.score + gain < base - max_drop:
                continue
            before = point.score
            bar.show(original.measured_ms - point.measured_ms,
                     _standing("final", point.measured_ms, goal, point.score))
            bar.doing(f"distilling {point.name} ({epochs} epochs)")
            finetune(point.model, epochs)
            point.score = score(point.model)
            bar.doing(f"measuring {point.name}")
            point.measured_ms = clock(point.model)
            gain = max(gain or 0.0, point.score - before)
            steps.append(_row(f"final distillation ({point.name})", from_keras(point.model),
                              point.predicted_ms, point.measured_ms, point.score, kept=True))
            _say(_line(steps[-1]), progress)
        if base - point.score <= max_drop:
            chosen = point
            break
    chosen = chosen or original
    original_ms = original.measured_ms
    if chosen is not original:  # the ratio from measurements interleaved, side by side:
        # the better of two readings (on the Xeon with AMX the same two files read 1.45x or
        # 1.75x from one second to the next, and the higher one is the machine left alone)
        original_ms, chosen.measured_ms = max(
            (clock.side_by_side(chosen.model) for _ in range(2)), key=lambda r: r[0] / r[1])
    goal = target.goal_ms(original_ms)
    reached = chosen.measured_ms <= goal
    bar.show(original.measured_ms - chosen.measured_ms,
             _standing("done", chosen.measured_ms, goal, chosen.score))
    what = (f"{original_ms / chosen.measured_ms:.2f}x ({original_ms:.4f} -> "
            f"{chosen.measured_ms:.4f} ms measured), score {base:.4f} -> {chosen.score:.4f}")
    if reached:
        message = f"target reached: {what}"
    else:
        message = (f"target NOT reached (goal {goal:.4f} ms): got {what}"
                   + (f"; {stop}" if stop else "")
                   + ("" if chosen is points[-1] else
                      f"; the faster models found scored more than {max_drop} below the "
                      "original"))
    _say(f"search: {message}", progress)
    return SearchResult(chosen.model, steps, reached, message, original_ms, goal,
                        chosen.measured_ms, base, chosen.score, reach_table)


def _row(name: str, g: Any, predicted: float, measured: float, val: float | None, kept: bool,
         error: float | None = None) -> dict:
    return dict(step=name, predicted_ms=predicted, measured_ms=measured,
                params=g.count_params(), macs=g.count_macs(), val_score=val,
                calibration_error=error, kept=bool(kept))


def _standing(stage: Any, measured: float, goal: float, val: float) -> str:
    """Where the search stands, for the progress bar: iteration, measured ms / goal, score."""
    where = f"iteration {stage}" if isinstance(stage, int) else stage
    return f"{where}: {measured:.4f}/{goal:.4f} ms, score {val:.4f}"


def _line(row: dict) -> str:
    val = "-" if row["val_score"] is None else f"{row['val_score']:.4f}"
    return (f"search: {row['step']:<40} pred {row['predicted_ms']:.4f} ms  meas "
            f"{row['measured_ms']:.4f} ms  params {row['params']:>8}  MACs {row['macs']:>10}  "
            f"val {val}  {'kept' if row['kept'] else 'rejected'}")


def _say(line: str, progress: bool) -> None:
    log.info("%s", line)
    say(line, progress and not log.isEnabledFor(logging.INFO))


# ---- evaluation from arrays --------------------------------------------------------------
def accuracy_scorer(x: Any, y: Any, batch_size: int = 256) -> Score:
    """score(model) = top-1 accuracy on (x, y), y class indices or one-hot."""
    import numpy as np

    labels = np.asarray(y)
    labels = labels.argmax(-1) if labels.ndim > 1 else labels

    def score(m: Any) -> float:
        out = predict_outputs(m, x, batch_size=batch_size)[0]
        return float(np.mean(np.argmax(out, axis=-1) == labels))

    return score


def distiller(teacher: Any, data: Any, seed: int = 0, **options: Any) -> Finetune:
    """finetune(model, epochs): kopt.flows.distill.retrain from `teacher` on `data`."""
    def finetune(m: Any, epochs: int) -> Any:
        return retrain(m, teacher=teacher, data=data, epochs=epochs, seed=seed, **options)

    return finetune
