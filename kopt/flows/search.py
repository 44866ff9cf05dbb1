"""Latency-targeted compression: NetAdapt-style iterations steered by the latency model and
judged by measured latency on the target runtime.

Each iteration asks for a cut of the predicted latency (a fixed share of the original's) and
builds, for each prunable channel group and each approximate rule, the smallest move that gives
it (kopt.flows.candidates; channel counts snapped to the steps of the measured latency curve).
Candidates are ranked cheaply first, by their output error on calibration samples (without
them, by the share of MACs they take: capacity stands in for accuracy); the `top_k` best are
run on the runtime beside the current model, before any training (latency does not depend on
the weights' values), and only those whose *measured* latency is lower than the current
model's by `min_gain` (or by the machine's own noise, measured on the original beside itself,
up to 3%) are fine-tuned briefly and scored on validation; the best-scoring one is kept,
whatever it does to parameters or MACs (when none is, the next shortlist is tried). Where no single
move gives an iteration's cut, the ranked moves are offered together (channel cuts by their
first tile, block merges and other rule moves whole); where every move that does ends well past
the goal, the same cut made on an earlier kept model, or smaller cuts together, are tried
first. When none of the moves that give the cut measures faster, those predicted to cut less
get their turn, then those that end past the goal: the prediction ranks, the runtime decides;
and last, before the search stops, a structural move that an earlier move took away (a conv
that became strided can no longer be removed), made on the model before it, with as many of the
moves kept since made again as land (_detours), the landing checked by measurement (_placed);
near the goal, such a detour is tried before the search stops short of it, if one lands
within the window. For a speed-up, every model is measured
interleaved with the original (kopt.flows.beside_original), so that drift of the machine does
not move the goal. Iterations stop when the measured latency meets the target, or when no move
lowers it. The last model gets a longer distillation; if it then scores more than `max_drop`
below the original, the fastest kept model that is within it is returned instead, and the
result says plainly that the target was not reached and what was.

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
import statistics
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

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
    # where the search's time went, in seconds: "fine-tuning" (the candidates' short
    # distillations and scores), "measuring" (their conversion and side-by-side readings),
    # "final" (the final distillation and quote), "total"
    seconds: dict[str, float] = field(default_factory=dict)

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
                   margin: float = 0.05, overshoot: float = 0.12,
                   shipped: Callable[[Any], Any] | None = None, crawl: int = 3,
                   start: Any = None, readings: int = 3) -> SearchResult:
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
    target is met (at 2% the results sat at 0.97-1.03x of the goal on the Xeon with AMX, seed 0
    at 6fbab24, and two of six read just under it in the benchmark; the window a speed-up must
    land in is 15% wide); overshoot: a move predicted to end more than this share past the goal
    (a whole XNNPACK tile cut when a sliver was left) gives way to the moves that do not, when
    there are any, or to such a cut made on an earlier model (_backtrack); a candidate
    *measured* that far past it is kept only when no other of its shortlist is measured faster
    and short of that; when none of the others measures faster, the moves predicted to cut less
    than the step get their turn (up to `shortlists` shortlists), then the moves left out (past
    the goal is better than short of it). For a speed-up every model is measured side by side
    with the original (the machine drifts by 2-5% in minutes, more than the noise of one
    measurement), and once more before the search calls the goal met; every candidate is
    measured beside the current model too, and kept when it reads faster than that. shipped:
    what a model becomes before it ships (optimize() passes its exact pass, unverified): every
    model but the original is measured as that, so the search stops where the shipped model
    meets the goal; the returned model is not passed through it. crawl: the search stops, the
    target not reached, when this many kept iterations in a row each cut less than a quarter of
    the step asked, as measured (0: never), and no move an earlier one took away (_detours)
    measures faster: the runtime's time is then in what the moves cannot touch (MobileNetV3Small
    at 64x64 before split_hard_swish: per-op costs of its squeeze-excite and hard-swish ops;
    1-2% an iteration, 75 s each), and going on would take half an hour to fail. No search that
    reached its goal in 47 benchmark logs had two such iterations in a row. start: an exact
    rewrite of `model` to start from (the one kopt.flows.for_runtime chose for the runtime); the
    speed-up is still over `model`, and `start` is neither fine-tuned nor distilled unless a
    move is kept on top of it. readings: a candidate, and the current model near the goal, are
    judged by the median of this many interleaved readings (on the Xeon with AMX one reading in
    a few dozen catches the models in different clock states). A move measured no faster is
    tried last while its predicted cut is unchanged (_batches)."""
    lm = latency or LatencyModel(target.runtime, target.threads)
    if (lm.runtime, lm.threads) != (target.runtime, target.threads):
        raise SearchTargetError(f"the latency model times {lm.runtime} with {lm.threads} "
                                f"thread(s), the target is for {target}")
    settings = _Settings(max_drop=max_drop, step=step, top_k=top_k, short_epochs=short_epochs,
                         final_epochs=final_epochs, max_iterations=max_iterations,
                         criterion=criterion, min_gain=min_gain, min_channels=min_channels,
                         rules=rules or [], measure_runs=measure_runs, progress=progress,
                         shortlists=shortlists, margin=margin, overshoot=overshoot,
                         crawl=crawl, readings=readings)
    search = _Search(model, target, score, finetune, calibration, lm, settings, shipped)
    return search.run(start)


@dataclass(frozen=True)
class _Settings:
    """latency_search's knobs, as its docstring gives them."""

    max_drop: float
    step: float
    top_k: int
    short_epochs: int
    final_epochs: int
    max_iterations: int
    criterion: str
    min_gain: float
    min_channels: int
    rules: list[tuple[str, Rule]]
    measure_runs: int
    progress: bool
    shortlists: int
    margin: float
    overshoot: float
    crawl: int
    readings: int


@dataclass
class _Iteration:
    """One iteration's frame, in predicted ms: the cut it asks (`budget`), the `floor` no move
    should end below (the goal less the overshoot allowed) and the `aim`; and what a move's
    harm is measured against (_reference)."""

    number: int
    budget: float
    floor: float
    aim: float
    reference: Any


class _Search:
    """One run of latency_search: where it stands (the kept points, the current model, its
    graph and latest readings, the steps logged) and one method per stage of an iteration, in
    the order _choose tries them: _shortlists of the moves that give the step, _earlier (a move
    past the goal made on an earlier model), _smaller moves, _near_goal readings, the held or
    past-the-goal moves, _detour (a move an earlier one took away)."""

    def __init__(self, model: Any, target: Target, score: Score, finetune: Finetune | None,
                 calibration: Any, lm: LatencyModel, settings: _Settings,
                 shipped: Callable[[Any], Any] | None):
        self.started = time.perf_counter()  # the original's first readings count too
        self.original, self.target, self.score, self.finetune = model, target, score, finetune
        self.calibration, self.lm, self.s = calibration, lm, settings
        self.clock = BesideOriginal(lm, model, settings.measure_runs,
                                    relative=target.speedup is not None, shipped=shipped,
                                    repeats=settings.readings)
        # a reading within the machine's own noise is no gain (a Xeon with AMX read 1% gains
        # on width cuts that buy nothing there, and kept them at a cost in accuracy)
        self.noise = self.clock.noise()
        self.min_gain = max(settings.min_gain, min(self.noise, _MAX_NOISE_GAIN))
        self.current, self.g = model, from_keras(model)
        self.measured, self.predicted = self.clock.original_ms, lm.predict(self.g)
        self.goal = target.goal_ms(self.measured)
        self.aim = self.goal * (1.0 - settings.margin)
        self.base = score(model)
        self.steps = [_row("original", self.g, self.predicted, self.measured, self.base,
                           kept=True)]
        self.points = [_Point(model, self.measured, self.predicted, self.base, "original",
                              exact=True)]
        self.readings = [self.measured]  # the current model's, in the original's frame
        self.reach_table: list[dict] = []
        self.refused: set[tuple[str, float]] = set()  # moves measured no faster (_batches)
        self.pace: list[float] = []  # each kept iteration's measured cut, as a share of its step
        self.stop = ""
        self.cut = settings.step * self.predicted
        self.bar: GoalBar | None = None
        self.spent: Counter[str] = Counter()  # seconds, by what they went on (_spending)

    def run(self, start: Any = None) -> SearchResult:
        s = self.s
        self._say(f"search: target {self.target}: {self.measured:.4f} -> {self.goal:.4f} ms "
                  f"(predicted {self.predicted:.4f}), score {self.base:.4f}; the original "
                  f"reads within {self.noise:.1%} of itself side by side, so a move must "
                  f"measure {self.min_gain:.1%} faster than the model it is made on")
        if start is not None:
            self._start_from(start)
            self.cut = s.step * self.predicted
        # the bar shows the measured ms cut so far out of the cut the goal asks for
        with progress_to(self.points[0].measured_ms - self.goal, s.progress, "search") as bar:
            self.bar = bar
            for it in range(1, s.max_iterations + 1):
                if not self._timed_iteration(it):
                    break
            else:
                self.stop = f"stopped after {s.max_iterations} iterations"
            # the final distillation changes the kept models' weights: convert them afresh
            self.clock.now_at(self.original)
            with self._spending("final"):
                result = _finish(self.points, self.steps, self.target, self.base, s.max_drop,
                                 self.finetune, s.final_epochs, self.score, self.stop,
                                 self.reach_table, self.clock, s.progress, bar)
        result.seconds = {**self.spent, "total": time.perf_counter() - self.started}
        self._say("search: seconds spent: " + ", ".join(
            f"{kind} {sec:.0f}" for kind, sec in result.seconds.items()))
        return result

    def _timed_iteration(self, it: int) -> bool:
        """_iteration, then a log line of where its time went: a search's wall time is mostly
        fine-tuning and measuring, and on a machine with a slow clock state the readings taken
        again (kopt.runtime.clock.FastState) can cost as much as the training."""
        started, before = time.perf_counter(), Counter(self.spent)
        taken, counted = self.clock.fast.seen, self.clock.fast.counted
        go = self._iteration(it)
        spent = self.spent - before
        self._say(f"search: {it}: {time.perf_counter() - started:.0f} s (fine-tuning "
                  f"{spent['fine-tuning']:.0f} s, measuring {spent['measuring']:.0f} s: "
                  f"{self.clock.fast.seen - taken} readings taken for "
                  f"{self.clock.fast.counted - counted} counted)")
        return go

    @contextmanager
    def _spending(self, kind: str) -> Iterator[None]:
        """Adds the seconds of the block to self.spent[kind]."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.spent[kind] += time.perf_counter() - started

    def _start_from(self, start: Any) -> None:
        """The exact rewrite for the runtime, kept as the first point without training."""
        self.current, self.g = start, from_keras(start)
        self.clock.now_at(start)
        self.measured, self.predicted = self.clock(start), self.lm.predict(self.g)
        self.readings = [self.measured]
        self.steps.append(_row(f"0: exact rewrites for {self.lm.runtime}", self.g,
                               self.predicted, self.measured, self.score(start), kept=True))
        self.points.append(_Point(start, self.measured, self.predicted,
                                  self.steps[-1]["val_score"], "exact", exact=True))
        self._say(_line(self.steps[-1]))

    def _iteration(self, it: int) -> bool:
        """One NetAdapt iteration: a move kept (True), or the search stops (False)."""
        if self.measured <= self.aim and self.current is not self.original:
            self.measured = self._read_current()  # once more: one reading's noise must
            self.readings.append(self.measured)   # not decide the target
        if self.measured <= self.aim:
            return False
        self.bar.show(self.points[0].measured_ms - self.measured,
                      _standing(it, self.measured, self.goal, self.points[-1].score))
        scale = self.predicted / self.measured  # measured ms -> predicted ms
        now = _Iteration(it, budget=min(self.cut, self.predicted - _floor(self.lm),
                                        _remaining(self.predicted, self.measured, self.aim)),
                         floor=self.goal * scale / (1 + self.s.overshoot),
                         aim=self.aim * scale,
                         reference=_reference(self.g, self.current, self.calibration))
        if self._crawling():
            # what is left is out of the moves' reach, unless an earlier move took it away
            accepted = self._detour(now, "the last iterations crawled")
            if accepted is None:
                self.stop = (f"the last {self.s.crawl} iterations each cut less than "
                             f"{_CRAWL_PACE:.0%} of the step asked (measured): what is left is "
                             "out of the moves' reach" + _reach_summary(self.reach_table))
                return False
            self.pace.clear()
        else:
            accepted = self._choose(now)
            if accepted is None or self._met_meanwhile(now, accepted):
                return False
        self._keep(accepted, now.budget)
        return True

    def _met_meanwhile(self, now: _Iteration, accepted: Candidate) -> bool:
        """True (and the move is not kept) when the median of the current model's readings,
        those beside this iteration's candidates included, meets the aim: the reading that
        kept it can be one high reading, and a move kept then costs accuracy and lands past
        the window (the tree seed 0 at 3x at 9b3c4e5 read its model at 0.0524-0.0540 ms
        beside five candidates, under the aim of 0.0536, after a keeping reading of 0.0579,
        and went on to 4.33x)."""
        if self.current is self.original or len(self.readings) < 3:
            return False
        standing = self._standing()
        if standing > self.aim:
            return False
        self.measured = standing
        self._say(f"search: {now.number}: the current model reads {standing:.4f} ms, the "
                  f"median of its {len(self.readings)} readings, within the aim: "
                  f"{accepted.name} not kept")
        return True

    def _read_current(self) -> float:
        """The current model's ms, read now (BesideOriginal.__call__)."""
        with self._spending("measuring"):
            return self.clock(self.current)

    def _standing(self) -> float:
        """Where the current model stands: the median of its readings (the one that kept it
        and those beside this iteration's candidates)."""
        return statistics.median(self.readings)

    def _crawling(self) -> bool:
        """The last `crawl` kept iterations each cut less than _CRAWL_PACE of their step."""
        crawl = self.s.crawl
        return bool(crawl) and len(self.pace) >= crawl and max(self.pace[-crawl:]) < _CRAWL_PACE

    def _keep(self, accepted: Candidate, budget: float) -> None:
        """The accepted move's model becomes the current one; its cut is read against the
        current model's ms measured beside it."""
        before = accepted.beside_ms if accepted.beside_ms is not None else self.measured
        self.pace.append((before - accepted.measured_ms)
                         / max(budget * self.measured / self.predicted, 1e-12))
        self.current, self.g = accepted.model, from_keras(accepted.model)
        self.measured, self.predicted = accepted.measured_ms, self.lm.predict(self.g)
        self.readings = [self.measured]
        self.clock.now_at(self.current)
        self.points.append(_Point(self.current, self.measured, self.predicted, accepted.score,
                                  accepted.name, move=accepted))

    def _choose(self, now: _Iteration) -> Candidate | None:
        """The move this iteration keeps, each stage tried only when those before it found
        none that measures faster; None (and self.stop says why) when no stage does."""
        s = self.s
        self.bar.doing("pricing moves")
        offer = _moves(self.g, self.lm, self.predicted, now.budget, now.floor, s.criterion,
                       self.calibration, s.min_channels, s.rules)
        self.reach_table = offer.table
        no_move = "no move is predicted to lower the latency" + _reach_summary(self.reach_table)
        if not offer.moves and not s.rules:
            self.stop = no_move
            return None
        accepted, held = self._shortlists(now, offer)
        if accepted is None and (held is not None or offer.beyond):
            accepted = self._earlier(now, [held[0]] if held is not None else offer.beyond)
        if accepted is None and offer.smaller:
            # the moves predicted to cut less than the step: the runtime decides
            self.bar.doing(f"trying the {len(offer.smaller)} moves that cut less")
            self._say(f"search: {now.number}: no move that gives the step measured faster; "
                      f"trying the {len(offer.smaller)} predicted to cut less")
            _rank(offer.smaller, now.reference, self.calibration, self.predicted)
            accepted = self._first_faster(now, offer.smaller, s.shortlists,
                                          self.predicted)
        if accepted is None and self._near_goal():
            # before stopping there: a move an earlier one took away, if one lands short of
            # the overshoot (VGG seeds 1 and 2 at 2x on the Xeon stopped here at 1.92x)
            accepted = self._detour(now, "near the goal", past_ok=False)
            if accepted is None:
                self.stop = (f"the model measured within {_NEAR_GOAL:.0%} of the goal and "
                             "met it in one of its readings; no move short of it measured "
                             "faster")
                return None
        if accepted is None and held is not None:
            accepted, held[1]["kept"] = held[0], True
            self._say(f"search: {accepted.name} kept: no other candidate landed short of the "
                      "overshoot")
        if accepted is None and offer.beyond:
            # the moves left out for going past the goal: better past it than short of it
            # (the tree example on a Xeon with AMX, asked for 2x: width cuts measured no
            # faster, the block merge left out gave 3.4x)
            self.bar.doing(f"trying the {len(offer.beyond)} moves that go past the goal")
            self._say(f"search: {now.number}: no move short of the goal measured faster; "
                      f"trying the {len(offer.beyond)} that go past it")
            _rank(offer.beyond, now.reference, self.calibration)
            accepted = self._first_faster(now, offer.beyond, 1)
        if accepted is None:
            accepted = self._detour(now, "nothing measured faster")
        if accepted is None:
            self.stop = no_move if not offer.moves else (
                f"no candidate of iteration {now.number} lowered the measured latency by "
                f"{self.min_gain:.1%} ({self.measured:.4f} ms) within {_BEYOND_RECOVERY:g}x "
                "the allowed drop of the original's score")
        return accepted

    def _shortlists(self, now: _Iteration, offer: _Offer
                    ) -> tuple[Candidate | None, tuple[Candidate, dict] | None]:
        """The moves that give the step, ranked, `shortlists` shortlists of top_k in turn
        (the prediction ranks them, but only the runtime decides): (the first that measures
        faster short of the overshoot, the first measured past it with its logged row)."""
        s, moves, short = self.s, offer.moves, offer.short
        self.bar.doing(f"ranking {len(moves)} moves")
        _rank(moves, now.reference, self.calibration, self.predicted if short else None)
        if short:
            self.bar.doing("combining the ranked moves")
            _combine(self.g, self.lm, self.predicted, now.budget, now.floor, moves,
                     offer.found.first_cuts, now.reference, self.calibration)
        tries = self._batches(now, moves, s.shortlists)
        if not short and all(c.predicted_ms < now.floor for c in moves):
            self.bar.doing("looking for a cut that lands within the overshoot allowed")
            landings = _landings(self.points, moves, offer.found.first_cuts, self.g,
                                 now.reference, self.lm, self.predicted, now.budget, now.floor,
                                 now.aim, s.criterion, self.calibration)
            tries = ([landings] if landings else []) + tries
        # a candidate measured past the goal by more than the overshoot allowed is held while
        # the rest of its shortlist (already fine-tuned) is measured: the prediction can be
        # off by more than the overshoot between two steps (VGG seed 1 at 3x: 8% slower than
        # predicted, then 5% faster, 3.57x)
        held = None
        for batch in tries:
            for cand, ok, past in self._tried(now.number, batch,
                                              self.predicted if short else None):
                if past:
                    held = held or (cand, self.steps[-1])
                elif ok:
                    return cand, held
            if held is not None:
                break
        return None, held

    def _earlier(self, now: _Iteration, past: list[Candidate]) -> Candidate | None:
        """Before a move past the goal is taken: the same move made on an earlier kept model
        (_backtrack), fine-tuned and measured; None where there is none, or it does not
        measure faster short of the overshoot."""
        back = _backtrack(self.points, past, self.lm, now.floor, now.aim, self.s.criterion,
                          self.calibration)
        if back is None:
            return None
        self._say(f"search: {now.number}: before a move past the goal, {back.name}")
        for cand, ok, past_goal in self._tried(now.number, [back]):
            if ok and not past_goal:
                return cand
        return None

    def _near_goal(self) -> bool:
        """Within the machine's noise of the goal, a move past it by more than the overshoot
        may be a miss on the other side (tree seed 1 at 3x on the Xeon read 3.08x, then above
        the goal once more, and took a pool's stride to 5.7x): True if one of the current
        model's readings meets the goal, those taken beside this iteration's candidates
        included (VGG seed 0 at 2x read 0.0885 ms against a goal of 0.0892, then 0.0893-0.0922
        beside three candidates, and took a stride to 4.4x), else if one of two more does."""
        if min(self.measured, self._standing()) > self.goal * (1 + _NEAR_GOAL):
            return False  # the median: the reading that kept the model can be a high one
        if min(self.readings) > self.goal:
            self.readings += [self._read_current() for _ in range(2)]
        return min(self.readings) <= self.goal

    def _detour(self, now: _Iteration, why: str, past_ok: bool = True) -> Candidate | None:
        """A structural move that an earlier move took away, made on the model before it
        (_detours), placed by measurement (_placed), the first of them that measures faster
        (without past_ok: and lands short of the goal less the overshoot); None if none
        does."""
        self.bar.doing("looking for a move an earlier one took away")
        detours = _detours(self.points, self.s.rules, self.lm, self.predicted, now.floor,
                           now.aim)
        if not detours:
            return None
        self._say(f"search: {now.number}: {why}; trying {len(detours)} moves that an earlier "
                  "move took away, made before it")
        # a detour makes several moves at once on an earlier model's weights, losing the
        # fine-tunes since: it gets the epochs of the moves it makes, up to a final
        # distillation's (VGG seed 2 at 3x on the Xeon: a detour of six moves scored 8 pt
        # below the original after one epoch and was refused as beyond recovery)
        s = self.s
        detours = [placed for move in detours
                   if (placed := self._placed(now, move)) is not None]
        if not past_ok:
            floor = self.goal / (1 + s.overshoot)
            detours = [move for move in detours
                       if move.measured_ms is not None and move.measured_ms >= floor]
            if not detours:
                return None
        for move in detours:
            move.info["epochs"] = min(max(s.final_epochs, s.short_epochs),
                                      s.short_epochs * move.info["moves"])
        _rank(detours, now.reference, self.calibration, self.predicted)
        return self._first_faster(now, detours, 1, self.predicted)

    def _placed(self, now: _Iteration, move: Candidate) -> Candidate | None:
        """A detour's landing (how many of the later moves it makes again) chosen by its
        measured ms, not by the prediction alone: its first landing, chosen by the prediction
        in the current model's frame, is measured (untrained: latency does not depend on the
        weights' values); when it misses the window between the goal less the overshoot and
        the aim, the landing is chosen again with the prediction rescaled by that measurement
        (measured / predicted of the replay just read), up to _PLACEMENTS readings; the
        readings' own landing wins. Why: the prediction is worst for the moves a detour
        makes (VGG seed 1 at 3x on the Xeon: `remove b0b_conv (from original), then 2 of the 5
        moves after it` was predicted at 1.68x the ms it measured, the model it replaced at
        1.09x, so a detour placed for ~2.4x landed at 3.6x). None when the runtime cannot
        run it."""
        detour: _Detour = move.info["detour"]
        floor, aim = self.goal / (1 + self.s.overshoot), self.aim  # measured ms
        read: list[tuple[_Replay, Candidate]] = []
        replay = move.info["replay"]
        for _ in range(_PLACEMENTS):
            cand = detour.move(replay)
            if not self._read_beside(now.number, cand):
                break
            read.append((replay, cand))
            if floor <= cand.measured_ms <= aim:
                break
            scale = replay.predicted_ms / cand.measured_ms  # measured ms -> predicted ms
            replay = _landing(detour.replays, cand.beside_ms * scale, floor * scale,
                              aim * scale)
            if replay is None or any(replay is r for r, _ in read):
                break
        if not read:
            return None
        if len(read) > 1:
            self._say(f"search: {now.number}: {detour.name}: landings measured at "
                      + ", ".join(f"{c.measured_ms:.4f}" for _, c in read)
                      + f" ms (window {floor:.4f}-{aim:.4f})")
        measured = [_Replay(r.graph, c.measured_ms, r.made) for r, c in read]
        best = _landing(measured, min(c.beside_ms for _, c in read), floor, aim)
        return next((c for m, (_, c) in zip(measured, read) if m is best), read[0][1])

    def _batches(self, now: _Iteration, ranked: list[Candidate], lists: int
                 ) -> list[list[Candidate]]:
        """The first `lists` shortlists of top_k of the `ranked` moves, in rank order, the
        moves measured no faster in an earlier trial, with the same predicted cut (the layers
        around them unchanged), in shortlists of their own after the others: they are
        fine-tuned and measured only when the others are not faster either. Why: on the Xeon
        with AMX, VGG's `prune b0b_conv 32->20` and `prune b0a_conv 32->20` (int8 convs cost
        the same at 20 or 32 channels there) were fine-tuned and measured again in iterations
        2-6 of most runs, ~25 s each time, and never read faster."""
        k = max(1, self.s.top_k)
        fresh = [c for c in ranked if self._refusal(c) not in self.refused]
        refused = [c for c in ranked if self._refusal(c) in self.refused]
        if refused:
            self._say(f"search: {now.number}: measured no faster before, tried last: "
                      + ", ".join(c.name for c in refused))
        return [part[i:i + k] for part in (fresh, refused) for i in range(0, len(part), k)
                ][:lists]

    def _refusal(self, cand: Candidate) -> tuple[str, float]:
        """What a refusal is remembered by: the move's name and its predicted cut."""
        return cand.name, round(self.predicted - cand.predicted_ms, 6)

    def _first_faster(self, now: _Iteration, ranked: list[Candidate], lists: int,
                      short_from: float | None = None) -> Candidate | None:
        """The first of `lists` shortlists of the `ranked` moves (_batches, fine-tuned, best
        first) that measures faster, past the goal or not; None if none does."""
        for batch in self._batches(now, ranked, lists):
            for cand, ok, _ in self._tried(now.number, batch, short_from, past_ok=True):
                if ok:
                    return cand
        return None

    def _tried(self, it: int, moves: list[Candidate], short_from: float | None = None,
               past_ok: bool = False) -> Iterator[tuple[Candidate, bool, bool]]:
        """`moves` measured beside the current model before any training (_measured), those
        measured faster fine-tuned and scored, best first (_tuned), then judged (_judged):
        (candidate, ok, past) for each, in that order. Measured first because a model's
        latency on the runtime does not depend on its weights' values, and most moves the
        search tries are refused by the runtime, not by their score: on the Xeon with AMX,
        VGG seed 1 asked for 2x measured 24 fine-tuned moves (~12 s of fine-tuning each) and
        18 of them read no faster (3c38efd)."""
        faster = [cand for cand in moves if self._measured(it, cand)]
        for cand in self._tuned(faster, len(faster), short_from):
            yield (cand, *self._judged(it, cand, past_ok))

    def _tuned(self, moves: list[Candidate], k: int, short_from: float | None = None
               ) -> list[Candidate]:
        """_shortlist with this search's fine-tune and score."""
        with self._spending("fine-tuning"):
            return _shortlist(moves, k, self.finetune, self.s.short_epochs, self.score,
                              self.bar, short_from, self.points[-1].score)

    def _measured(self, it: int, cand: Candidate) -> bool:
        """Measure a candidate beside the current model (and the original), unless it was
        read so already (a detour, placed by its readings): True when it reads min_gain
        faster; else its row is logged, rejected. Beside the current model,
        not against its reading from an earlier iteration: on the Xeon with AMX one model
        reads 1.45x or 1.75x faster than another from one second to the next, and a lucky low
        reading of the current model refused every next move (tree seed 2 at 2x)."""
        if cand.measured_ms is None and not self._read_beside(it, cand):
            return False
        if cand.measured_ms < cand.beside_ms * (1 - self.min_gain):
            return True
        self.refused.add(self._refusal(cand))
        self._log_row(it, cand, False, f" (current {cand.beside_ms:.4f} ms beside it: "
                                       "no faster, not fine-tuned)")
        return False

    def _read_beside(self, it: int, cand: Candidate) -> bool:
        """Read the candidate beside the current model (against_current; its readings join
        the current model's): False, and its row logged, when the runtime cannot run it."""
        if cand.model is None:
            cand.model = to_keras(cand.graph)
        self.bar.doing(f"measuring {cand.name}")
        try:
            with self._spending("measuring"):
                cand.beside_ms, cand.measured_ms = self.clock.against_current(cand.model)
        except RuntimeError as err:  # LiteRT could not prepare its file
            self._log_row(it, cand, False, f" does not run on {self.target.runtime} ({err}): "
                                            "rejected", measured=math.nan)
            return False
        self.readings.append(cand.beside_ms)
        return True

    def _judged(self, it: int, cand: Candidate, past_ok: bool = False) -> tuple[bool, bool]:
        """A candidate measured faster (_measured), fine-tuned and scored, and its row logged:
        (it did not lose beyond recovery, it is past the goal by more than the overshoot
        allowed; never with past_ok)."""
        lost = self.base - cand.score > _BEYOND_RECOVERY * self.s.max_drop
        past = not lost and not past_ok and cand.measured_ms * (1 + self.s.overshoot) < self.goal
        self._log_row(it, cand, not lost and not past,
                      f" (current {cand.beside_ms:.4f} ms beside it)"
                      + (" (past the goal: held)" if past else "")
                      + (" (lost beyond what distillation recovers)" if lost else ""))
        return not lost, past

    def _log_row(self, it: int, cand: Candidate, kept: bool, note: str,
                 measured: float | None = None) -> None:
        """A step row for a candidate tried, and its log line."""
        self.steps.append(_row(f"{it}: {cand.name}", cand.graph, cand.predicted_ms,
                               cand.measured_ms if measured is None else measured,
                               cand.score, kept, cand.error))
        self._say(_line(self.steps[-1]) + note)

    def _say(self, line: str) -> None:
        _say(line, self.s.progress)


# The most the machine's noise (BesideOriginal.noise) raises min_gain to: past it, real cuts
# of a tenth of the latency (an iteration's step) would start to be refused too.
_MAX_NOISE_GAIN = 0.03
# Within this share above the goal, a model is measured twice more before a move past the goal
# by more than the overshoot is taken: on the Xeon with AMX the same model reads 5-20% apart
# from one second to the next (two states of the machine, tools/bench_clock_states.py).
_NEAR_GOAL = 0.05
_CRAWL_PACE = 0.25  # see `crawl`: below this share of the step asked, an iteration crawls
_PLACEMENTS = 3  # a detour's landings measured at most (_placed)
# A candidate whose short fine-tune leaves it more than this many times max_drop below the
# original is not kept, whatever it cuts: the final distillation recovers a few times the
# drop (VGG at 5x: 96.16% -> 98.13% against 98.13%), not tens of points (a SeparableConv
# net with a depthwise conv removed: 97.73% -> 65.81%, 94.68% after the final distillation,
# so the search fell back to 1.47x).
_BEYOND_RECOVERY = 10.0


def _reach_summary(table: list[dict], top: int = 3) -> str:
    """The moves that could cut the most, for a message saying why a target is out of reach."""
    rows = sorted(table, key=lambda r: -r["best_cut_ms"])[:top]
    if not rows:
        return " (no prunable channel group, no structural move)"
    return " (largest predicted cuts: " + ", ".join(
        (f"{r['group']} {r['channels']}->{r['best_width']}" if r["kind"] == "channels"
         else r["group"]) + f": {r['best_cut_ms']:.4f} ms"
        for r in rows) + "; SearchResult.reach_table has every group and structural move)"


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
    group's largest cut and the rules that cut less); `found`: every channel move found;
    `table`: the reach table, a row per prunable group (its largest predicted cut) and per
    structural move that applies (its predicted cut), each with its `kind`."""

    moves: list[Candidate]
    beyond: list[Candidate]
    smaller: list[Candidate]
    short: bool
    found: ChannelMoves
    table: list[dict]


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
    # the structural moves' cuts beside the groups': where width cuts buy nothing (VGG's
    # 28x28 convs on the Xeon with AMX), a stride or a removed layer is what does
    table = [dict(row, kind="channels") for row in found.table] + [
        {"group": c.name, "kind": "structural", "channels": None, "best_width": None,
         "best_cut_ms": current - c.predicted_ms} for c in rule_moves + rule_fallbacks]
    moves, smaller = found.moves + rule_moves, found.fallbacks + rule_fallbacks
    short = not moves
    if short:
        moves, smaller = smaller, []
    within = [c for c in moves if c.predicted_ms >= floor]
    if not within:
        return _Offer(moves, [], smaller, short, found, table)
    return _Offer(within, [c for c in moves if c.predicted_ms < floor], smaller, short, found,
                  table)


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
    model and followed by the moves kept since (made again where they still apply), as many of
    them as _landing chooses among _replays; those predicted faster than the current model
    (`current` ms), fastest first. info["moves"]: how many moves a detour makes at once.

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
            detour = _Detour(name, rule, index, points[index].name, later,
                             _replays(graph, later, lm))
            chosen = _landing(detour.replays, current, floor, aim)
            if chosen is not None:
                found[name] = detour.move(chosen)
    return sorted(found.values(), key=lambda c: c.predicted_ms)


@dataclass
class _Detour:
    """A move an earlier one took away (`name`, `rule`), made on the kept point `index`
    (named `made_on`), and its `replays` with the moves kept since (`later`)."""

    name: str
    rule: Rule
    index: int
    made_on: str
    later: list[Candidate]
    replays: list[_Replay]

    def move(self, replay: _Replay) -> Candidate:
        """The detour as a move, landing at `replay`; info["detour"] is self."""
        # the moves passed over before the last one made (left out, or no longer applying)
        left_out = [self.later[i].name for i in range(max(replay.made, default=-1))
                    if i not in replay.made]
        return Candidate(
            f"{self.name} (from {self.made_on}), then {len(replay.made)} of the "
            f"{len(self.later)} moves after it" + (f" (not {', '.join(left_out)})"
                                                   if left_out else ""),
            replay.graph, replay.predicted_ms,
            info={"rule": self.rule, "from": self.index, "moves": 1 + len(replay.made),
                  "detour": self, "replay": replay})


@dataclass
class _Replay:
    """A detour's graph after the later moves `made` (their indices) were made again."""

    graph: Any
    predicted_ms: float
    made: tuple[int, ...]


def _replays(start: Any, later: list[Candidate], lm: LatencyModel) -> list[_Replay]:
    """The `later` moves made again on `start`, in their order: every prefix of them, and
    every prefix with one of them left out. Why the one left out: a detour's later moves can
    hold one step far larger than the rest (VGG on the Xeon: b0_pool's stride, made again on
    b0a_conv, moves its only 28x28 conv to 14x14, 1.9x -> 3.7x), and the landing may lie
    between the moves without it and those with it. A move that no longer applies is passed
    over."""
    replays = [_Replay(start, lm.predict(start), ())]
    for skip in [None, *range(len(later))]:
        graph, made = start, ()
        for i, move in enumerate(later):
            after = None if i == skip else made_on(graph, move)
            if after is None:
                continue
            graph, made = after, made + (i,)
            if skip is None or i > skip:  # before the move left out: a prefix already listed
                replays.append(_Replay(graph, lm.predict(graph), made))
    return replays


def _landing(replays: list[_Replay], current: float, floor: float, aim: float
             ) -> _Replay | None:
    """Which replay a detour takes: of those that land between floor and aim (predicted ms),
    the one that makes the fewest moves again (then the least cut); else the one nearest that
    window, short of it (above the floor) or past it; None when none is faster than
    `current`."""
    faster = [r for r in replays if r.predicted_ms < current]
    if not faster:
        return None
    landing = [r for r in faster if floor <= r.predicted_ms <= aim]
    if landing:
        return min(landing, key=lambda r: (len(r.made), -r.predicted_ms))
    above = [r for r in faster if r.predicted_ms >= floor]
    if above:
        return min(above, key=lambda r: r.predicted_ms)
    return max(faster, key=lambda r: r.predicted_ms)


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
    """The top_k best-ranked moves, fine-tuned briefly (`epochs`, or the move's own
    info["epochs"]) and scored, best first: by score; or, when the moves fall short of the
    budget (short_from: the current predicted ms), by score lost per predicted ms cut, then
    the larger cut (by score alone, the smallest cut would win every such iteration and the
    search would crawl)."""
    short = moves[:max(1, top_k)]
    for i, cand in enumerate(short, 1):
        if cand.model is None:
            cand.model = to_keras(cand.graph)
        if finetune is not None and epochs > 0:
            bar.doing(f"fine-tuning {i}/{len(short)} ({cand.name})")
            finetune(cand.model, cand.info.get("epochs", epochs))
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
    if chosen is not original:  # the ratio from measurements interleaved, side by side,
        # in the machine's fast state (BesideOriginal), the median of its readings
        original_ms, chosen.measured_ms = clock.side_by_side(chosen.model)
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
