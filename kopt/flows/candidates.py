"""The moves a latency search can make from one model, each with its predicted latency.

Channel moves: for each prunable channel group (kopt.ir.channels), the move is the *smallest*
cut to a width worth pruning to whose whole-model predicted latency is lower by the iteration's
budget (NetAdapt, Yang et al. 2018). The widths worth pruning to are the steps of the group's
measured latency curve (LatencyModel.channel_steps: XNNPACK runs whole tiles, so a width inside
a plateau costs what the plateau's widest width costs), or a coarse sweep where the group's
own conv does not show the steps (see step_widths). Channels are chosen by the pruning rule's
criterion (rewrites.prune_entropy.channel_scores). Rule moves: an approximate rule (a block
merged, a Dense factored) applied as a whole, offered when it is predicted to be faster.
Where no move reaches the budget, each group's largest predicted cut is still reported, so the
search can say why a target is out of reach, and several moves (groups' first steps, rule
moves) can be taken together as one (combined_move).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kopt.errors import ChannelSweepError
from kopt.ir import Graph
from kopt.ir.channels import Group, channel_groups, prune_group
from kopt.rewriting import PassManager, Rule
from kopt.runtime.channel_steps import sweep_widths
from kopt.runtime.latency import LatencyModel
from rewrites.prune_entropy import channel_scores

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One move: its name, the graph after it and what is known about it so far."""

    name: str
    graph: Graph
    predicted_ms: float
    error: float | None = None  # calibration error against the model it was made from
    score: float | None = None  # validation score after the short fine-tune
    measured_ms: float | None = None
    beside_ms: float | None = None  # the current model's ms, measured beside this move's
    model: Any = None
    info: dict = field(default_factory=dict)


def prune_to(g: Graph, group: Group, width: int, criterion: str = "l1",
             data: Any = None, order: np.ndarray | None = None) -> Graph:
    """A copy of `g` whose `group` keeps its `width` best channels by `criterion` (or the
    first `width` of `order`, channels best first, when given)."""
    out = g.copy()
    if order is None:
        order = channel_order(out, group, criterion, data)
    prune_group(out, group, np.sort(order[:width]))
    return out


def step_widths(lm: LatencyModel, g: Graph, group: Group) -> list[int]:
    """Widths below the group's current one worth pruning to, widest first.

    The steps of its first source's measured curve where they tell: one sweep of one conv,
    and right where that conv dominates. The plain sweep (each width then priced for the
    whole model, which is dearer: every consumer is timed at each width) where they cannot:
    the source cannot be swept, its curve is flat (a conv too small for a step to show above
    the timer's noise), or a depthwise conv follows the channels, whose tiles the source's
    sweep never sees (an inverted residual's expand conv costs the same at every width while
    its depthwise conv steps down)."""
    widths: list[int] = []
    if not any(g[m].op == "DepthwiseConv2D" for m in group.members if m in g):
        try:
            widths = [w for w in lm.channel_steps(g, group.sources[0]).steps if w < len(group)]
        except ChannelSweepError:
            pass
    if not widths:
        widths = [w for w in sweep_widths(len(group)) if w < len(group)]
    return sorted(widths, reverse=True)


def channel_order(g: Graph, group: Group, criterion: str = "l1", data: Any = None
                  ) -> np.ndarray:
    """The group's channels, best first by `criterion`."""
    return np.argsort(-channel_scores(g, group, criterion, data), kind="stable")


@dataclass
class ChannelMoves:
    """What channel_candidates found: `moves` that give the cut (one per group at most);
    `fallbacks`, each short group's largest cut; `first_cuts`, each group's smallest cut that
    lowers the prediction (what combined_move takes from); `table`, a row per prunable group
    with its largest predicted cut, for the report."""

    moves: list[Candidate]
    fallbacks: list[Candidate]
    first_cuts: list[Candidate]
    table: list[dict]


def channel_candidates(g: Graph, lm: LatencyModel, current_ms: float, cut_ms: float,
                       criterion: str = "l1", data: Any = None, min_channels: int = 4
                       ) -> ChannelMoves:
    """The channel moves of `g` for a cut of cut_ms off current_ms (see ChannelMoves)."""
    found = ChannelMoves([], [], [], [])
    for group in channel_groups(g):
        if not group.prunable or len(group) <= min_channels:
            continue
        best: Candidate | None = None
        reached = False
        widths = [w for w in step_widths(lm, g, group) if w >= min_channels]
        order = channel_order(g, group, criterion, data) if widths else None
        for width in widths:
            graph = prune_to(g, group, width, order=order)
            cand = Candidate(f"prune {group.key} {len(group)}->{width}", graph,
                             lm.predict(graph), info={"group": group.key, "width": width,
                                                      "channels": len(group), "order": order})
            if best is None and cand.predicted_ms < current_ms:
                found.first_cuts.append(cand)
            if best is None or cand.predicted_ms < best.predicted_ms:
                best = cand
            if current_ms - cand.predicted_ms >= cut_ms:
                found.moves.append(cand)
                reached = True
                break
        cut = 0.0 if best is None else current_ms - best.predicted_ms
        found.table.append({"group": group.key, "channels": len(group),
                            "best_width": None if best is None else best.info["width"],
                            "best_cut_ms": cut})
        if not reached and best is not None and cut > 0:
            found.fallbacks.append(best)
    return found


def combined_move(g: Graph, lm: LatencyModel, current_ms: float, cut_ms: float,
                  cuts: list[Candidate], floor_ms: float = 0.0) -> Candidate | None:
    """Moves taken together, in the order given (the least harmful first), until their
    predicted cut reaches cut_ms, passing over one that would take the prediction below
    floor_ms (past the goal) or no longer applies; None when fewer than two are taken. A
    channel cut is made again on the graph the moves before it left (its group found by key,
    passed over if a move before it changed the group); a rule move (info["rule"]) is applied
    again, at its place.

    For models of many small groups and blocks (MobileNetV2's two dozen), where no move alone
    gives an iteration's cut: one group taken down to its narrowest width cut 5% per iteration
    and cost a whole iteration each (23 minutes for 1.37x at 96x96), and one block merged at a
    time, 2-2.5 minutes an iteration, took 19 minutes for 2x; each group's first step and the
    blocks, taken where they cost least, make the step the iteration asked for."""
    out, taken, predicted = g, [], current_ms
    for cut in cuts:
        trial = made_on(out, cut)
        if trial is None:
            continue
        trial_ms = lm.predict(trial)
        if trial_ms < floor_ms or trial_ms >= predicted:
            continue
        out, predicted = trial, trial_ms
        taken.append(cut)
        if current_ms - predicted >= cut_ms:
            break
    if len(taken) < 2:
        return None
    names = [c.name for c in taken]
    return Candidate(", ".join(names), out, predicted, info={"combined": names, "parts": taken})


def made_on(g: Graph, move: Candidate) -> Graph | None:
    """`move` made on `g` (a graph other than the one it was found on), or None where it no
    longer applies."""
    info = move.info
    if "parts" in info:  # a combined move: each part made in turn, where it still applies
        out = g
        for part in info["parts"]:
            out = made_on(out, part) or out
        return None if out is g else out
    if "rule" in info:
        graph, report = PassManager([info["rule"]], verify=False).run(g)
        return graph if report.applied else None
    group = next((gr for gr in channel_groups(g) if gr.key == info.get("group")), None)
    if group is None or len(group) != info["channels"] or info.get("order") is None:
        return None
    return prune_to(g, group, info["width"], order=info["order"])


def rule_candidates(g: Graph, lm: LatencyModel, current_ms: float, cut_ms: float,
                    rules: list[tuple[str, Rule]]) -> tuple[list[Candidate], list[Candidate]]:
    """Each rule applied (unverified: approximate rules change outputs on purpose): (those
    predicted to cut cut_ms, and those predicted faster by less, as fallbacks). A rule that
    changes nothing, or is not predicted faster, is no move."""
    moves, fallbacks = [], []
    for name, rule in rules:
        graph, report = PassManager([rule], verify=False).run(g)
        if not report.applied:
            continue
        predicted = lm.predict(graph)
        if predicted >= current_ms:
            log.info("search: %s is not predicted faster (%.4f -> %.4f ms)", name, current_ms,
                     predicted)
            continue
        (moves if current_ms - predicted >= cut_ms else fallbacks).append(
            Candidate(name, graph, predicted, info={"rule": rule}))
    return moves, fallbacks
