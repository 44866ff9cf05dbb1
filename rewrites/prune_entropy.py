"""Channel pruning by activation entropy (approximate; retrain afterwards).

A channel whose activation hardly varies over real data carries little information: a constant
channel (entropy 0) is a bias the next layer could absorb, and a dead ReLU channel is zero. So
each channel's activation (after the BN/activation that follow its conv) is histogrammed over
calibration data (32 bins over its own range) and scored by Shannon entropy
H = -sum p_i log p_i; the lowest-entropy channels of a group go first (Luo & Wu 2017). The "l1"
(kernel L1 norm, Li et al. 2017) and "bn_gamma" (|gamma| of the BN after the conv, Liu et al.
2017) criteria need no data. Channels are removed one dependency group at a time
(kopt.pruning_groups), and kept counts are rounded up to a multiple of `round_to` because
XNNPACK / NEON kernels run full 8- or 16-channel tiles anyway.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from kopt.keras_io.batches import as_batches, take
from kopt.keras_io.emitter import to_keras
from kopt.keras_io.probes import predict_outputs, tensor_values
from kopt.ir import Graph, Node
from kopt.ir.channels import Group, channel_groups, prune_group
from kopt.rewriting import Match, PassManager, Rule, max_relative_error, register
from rewrites._activations import channel_entropy

log = logging.getLogger(__name__)

CRITERIA = ("entropy", "l1", "bn_gamma")
FOLLOWERS = {"BatchNormalization", "ReLU", "LeakyReLU", "ELU", "Activation"}
PRUNED = "pruned"  # marks sources already pruned, so the rule reaches a fixed point


@register(exact=False, after=("merge_inception",))
class PruneEntropy(Rule):
    """Remove `ratio` of the channels of every prunable group (a float, or a dict from a group's
    first source name to its own ratio, as sensitivity() returns)."""

    def __init__(self, data: Any = None, ratio: float | dict[str, float] = 0.5,
                 criterion: str = "entropy", round_to: int = 8, min_channels: int = 8,
                 samples: int = 256, bins: int = 32):
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got '{criterion}'")
        self.data = None if data is None else take(as_batches(data), samples)
        self.ratio, self.criterion = ratio, criterion
        self.round_to, self.min_channels, self.bins = max(1, round_to), max(1, min_channels), bins

    def matches(self, g: Graph):
        for group in channel_groups(g):
            yield Match(sources=[g[s] for s in group.sources], group=group)

    def reject(self, g: Graph, m: Match) -> str | None:
        group: Group = m.group
        if any(s.meta.get(PRUNED, False) for s in m.sources):
            return "group already pruned"
        if not group.prunable:
            return f"group cannot be pruned: {group.reason}"
        ratio = self.ratio_for(group)
        if ratio is None:
            return "no pruning ratio given for this group"
        keep = self.keep_count(len(group), ratio)
        if keep >= len(group):
            return (f"keeping {keep} of {len(group)} channels (ratio {ratio}, round_to "
                    f"{self.round_to}, min_channels {self.min_channels}) removes nothing")
        if self.criterion == "entropy" and self.data is None:
            return "the entropy criterion needs calibration data"
        return None

    def ratio_for(self, group: Group) -> float | None:
        if isinstance(self.ratio, dict):
            return self.ratio.get(group.key)
        return float(self.ratio)

    def keep_count(self, channels: int, ratio: float) -> int:
        """Channels kept: rounded up to round_to, at least min_channels, never zero."""
        keep = math.ceil(channels * (1.0 - ratio) / self.round_to) * self.round_to
        return int(min(channels, max(keep, self.min_channels, 1)))

    def apply(self, g: Graph, m: Match) -> None:
        group: Group = m.group
        scores = channel_scores(g, group, self.criterion, self.data, self.bins)
        keep = self.keep_count(len(group), self.ratio_for(group))
        order = np.argsort(-scores, kind="stable")
        prune_group(g, group, np.sort(order[:keep]))
        for name in group.sources:
            g[name].meta[PRUNED] = True
        log.info("prune_entropy: group %s %d -> %d channels (%s)", group.sources, len(group),
                 keep, self.criterion)


def channel_scores(g: Graph, group: Group, criterion: str = "entropy", data: Any = None,
                   bins: int = 32) -> np.ndarray:
    """One score per channel of the group (higher = more worth keeping)."""
    per_source: dict[str, np.ndarray] = {}
    if criterion == "entropy":
        per_source = _entropies(g, group.sources, data, bins)
    for name in group.sources:
        node = g[name]
        if criterion == "bn_gamma":
            bn = g.only_consumer(name)
            if bn is not None and bn.op == "BatchNormalization" and "gamma" in bn.weights:
                per_source[name] = np.abs(bn.weights["gamma"])
        if name not in per_source:  # l1, or bn_gamma where no BN follows
            kernel = node.weights["kernel"]
            per_source[name] = np.abs(kernel).reshape(-1, kernel.shape[-1]).mean(axis=0)
    return np.array([sum(per_source[s][i] for s, i in chan) for chan in group.channels])


def _activated(g: Graph, node: Node) -> Node:
    """The last node of the BN / activation chain right after `node`: what the data sees."""
    while (nxt := g.only_consumer(node.name)) is not None and nxt.op in FOLLOWERS \
            and nxt.activation != "softmax" and not g.is_shared(nxt):
        node = nxt
    return node


def _entropies(g: Graph, sources: list[str], data: np.ndarray, bins: int) -> dict:
    outs = tensor_values(g, [(_activated(g, g[s]).name, 0) for s in sources], data)
    return {s: channel_entropy(o, bins) for s, o in zip(sources, outs, strict=True)}


def prune(g: Graph, data: Any = None, **options: Any) -> tuple[Graph, dict]:
    """Prune a copy of `g` with PruneEntropy(data, **options); returns it and measure()."""
    rule = PruneEntropy(data, **options)
    out, report = PassManager([rule], verify=False).run(g)
    stats = measure(g, out, rule.data)
    stats["declined"] = [(d.nodes[0], d.reason) for d in report.declined]
    log.info("prune_entropy: params %d -> %d, MACs %d -> %d, calibration error %s",
             *stats["params"], *stats["macs"], stats["error"])
    return out, stats


def measure(before: Graph, after: Graph, data: np.ndarray | None = None) -> dict:
    """Params and MACs before -> after, and the max relative output error on `data`."""
    error = None
    if data is not None:
        error = max_relative_error(predict_outputs(to_keras(before), data, batch_size=128),
                                   predict_outputs(to_keras(after), data, batch_size=128))
    return dict(params=(before.count_params(), after.count_params()),
                macs=(before.count_macs(), after.count_macs()), error=error)


def accuracy(g: Graph, x: np.ndarray, y: np.ndarray) -> float:
    scores = predict_outputs(to_keras(g), x, batch_size=128)[0]
    return float(np.mean(np.argmax(scores, axis=-1) == np.asarray(y)))


def sensitivity(g: Graph, data: Any, labels: np.ndarray,
                ratios: tuple[float, ...] = (0.25, 0.5, 0.75), tolerance: float = 0.01,
                criterion: str = "entropy", **options: Any) -> dict:
    """Prune one group at a time at each ratio and measure the accuracy drop on held-out
    (data, labels). Returns baseline accuracy, drops[group][ratio], and ratios: for each group
    the largest ratio whose drop is within `tolerance` (pass it as PruneEntropy's ratio)."""
    x = take(as_batches(data), len(labels))
    base = accuracy(g, x, labels)
    drops: dict[str, dict[float, float]] = {}
    for group in channel_groups(g):
        if not group.prunable:
            continue
        for r in ratios:
            rule = PruneEntropy(x, {group.key: r}, criterion, **options)
            pruned, report = PassManager([rule], verify=False).run(g)
            if report.applied:
                drops.setdefault(group.key, {})[r] = base - accuracy(pruned, x, labels)
    chosen = {k: max((r for r, d in v.items() if d <= tolerance), default=None)
              for k, v in drops.items()}
    return dict(baseline=base, drops=drops,
                ratios={k: r for k, r in chosen.items() if r is not None})
