"""Merge a whole inception-style block into one conv fitted by ridge regression (approximate).

A block is the region between a fork tensor F and the join J (Concatenate or Add) that F
dominates: every path into J passes through F, and nothing inside is read from outside. With
stride 1 and "same" padding everywhere it is a translation-equivariant function of F whose
receptive field is K x K, so one K x K conv from F's patches to J's output is its best linear
stand-in: fitted on calibration data by ridge regression (closed form, float64), followed by a
ReLU when J's outputs are never negative. The non-linear branches are only approximated, so the
model must be retrained afterwards (kopt.retrain).

One conv of the block's full output width usually costs *more* than the block (inception blocks
are cheap because their branches are narrow): so the merged conv keeps only the `width`
fraction of J's channels with the most information (histogram entropy over calibration data,
as prune_entropy scores them), and the readers of J lose the other input channels through the
channel dependency groups. The merge is declined unless the whole model's MACs go down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import keras
import networkx as nx
import numpy as np

from kopt.keras_io.batches import as_batches, take
from kopt.keras_io.probes import tensor_values
from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.ir.channels import channel_groups, prune_group
from kopt.rewriting import Match, Rule, register
from rewrites._conv import pair
from rewrites._activations import channel_entropy

log = logging.getLogger(__name__)

JOINS = {"Concatenate", "Add"}
SPATIAL = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D"}
POINTWISE = {"BatchNormalization", "ReLU", "LeakyReLU", "ELU", "Activation", "Dropout",
             "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "Identity", "Concatenate",
             "Add", "Multiply", "Average", "Maximum", "Minimum", "Subtract"}


def block_region(g: Graph, join: Node, dominators: dict[str, str]) -> tuple[tuple, list[Node]]:
    """((F, port), the region's nodes in graph order, J last) for the join's dominating fork."""
    fork = dominators.get(join.name)
    if fork is None or fork == _ROOT:
        return (None, 0), []
    inside = nx.descendants(g.nx, fork) & (nx.ancestors(g.nx, join.name) | {join.name})
    order = [n for n in g.topological() if n.name in inside]
    ports = {p for n in order for s, p, _ in g.in_edges(n.name) if s == fork}
    return (fork, min(ports) if len(ports) == 1 else None), order


_ROOT = "__kopt_root__"


def dominator_tree(g: Graph) -> dict[str, str]:
    """Immediate dominator of every node, seen from a virtual root feeding all model inputs."""
    d = nx.DiGraph(g.nx)
    d.add_edges_from((_ROOT, name) for name in g.inputs)
    return nx.immediate_dominators(d, _ROOT)


def receptive_field(g: Graph, region: list[Node], fork: str) -> int:
    """Widest K x K window of F that one output pixel of the region depends on."""
    reach = {fork: 0}
    for node in region:
        extent = max(reach.get(s, 0) for s, _, _ in g.in_edges(node.name))
        if node.op in SPATIAL:
            size = pair(node.config.get("kernel_size") or node.config.get("pool_size"))
            rate = pair(node.config.get("dilation_rate", 1))
            size = size if isinstance(size, tuple) else (size, size)
            rate = rate if isinstance(rate, tuple) else (rate, rate)
            extent += max((k - 1) * r for k, r in zip(size, rate))
        reach[node.name] = extent
    return 1 + 2 * (reach[region[-1].name] // 2)


def _problem(g: Graph, node: Node, region: set[str], fork: str, hw: tuple) -> str | None:
    if node.op not in SPATIAL | POINTWISE:
        return f"'{node.name}' ({node.op}) is not a stride-1 spatial or pointwise op"
    if node.op == "Activation" and node.activation == "softmax":
        return f"'{node.name}' is a softmax"
    cfg = node.config
    if node.op in SPATIAL:
        strides = pair(cfg.get("strides") or 1)
        size = pair(cfg.get("kernel_size") or cfg.get("pool_size"))
        if strides not in (1, (1, 1)):
            return f"'{node.name}' is strided"
        if cfg.get("padding") != "same" and size not in (1, (1, 1)):
            return f"'{node.name}' uses 'valid' padding"
    if not channels_last(node):
        return f"'{node.name}' is channels_first"
    if tuple(node.output_shape[1:3]) != hw:
        return f"'{node.name}' changes the spatial size"
    outside = [s for s, _, _ in g.in_edges(node.name) if s not in region and s != fork]
    if outside:
        return f"'{node.name}' also reads '{outside[0]}' from outside the block"
    return None


@register(exact=False)
class MergeInception(Rule):
    """Replace each dominated Concatenate/Add block by one conv of `width` x its channels.

    data: calibration images; width: fraction of the join's channels kept (rounded up to a
    multiple of `round_to`); kernel_size: the largest merged kernel (the block's receptive field
    is used when smaller); ridge: L2 strength relative to the mean input energy; only: a join
    name, to merge one block at a time.
    """

    def __init__(self, data: Any = None, width: float = 0.5, kernel_size: int = 3,
                 ridge: float = 1e-3, round_to: int = 8, only: str | None = None,
                 samples: int = 256, max_rows: int = 30_000, seed: int = 0):
        if not 0.0 < width <= 1.0:
            raise ValueError(f"width must be in (0, 1], got {width}")
        self.data = None if data is None else take(as_batches(data), samples)
        self.width, self.kernel_size, self.ridge = width, kernel_size, ridge
        self.round_to, self.only, self.max_rows, self.seed = max(1, round_to), only, max_rows, seed

    def matches(self, g: Graph) -> Iterator[Match]:
        dominators = dominator_tree(g)
        for join in g.nodes_of(*JOINS):
            if self.only is not None and join.name != self.only:
                continue
            (fork, port), region = block_region(g, join, dominators)
            yield Match(join=join, region=region, fork=fork, port=port)

    def reject(self, g: Graph, m: Match) -> str | None:
        if self.data is None:
            return "merging a block needs calibration data"
        if m.fork is None or len(m.region) < 2:
            return "no single tensor feeds every branch of this join"
        if m.port is None:
            return f"the block reads several outputs of '{m.fork}'"
        src_shape = g[m.fork].output_shapes[m.port]
        if len(src_shape) != 4 or m.join.op == "Concatenate" and \
                m.join.config.get("axis") not in (-1, 3):
            return "not an image block joined on the channel axis"
        names = {n.name for n in m.region}
        for node in m.region:
            problem = _problem(g, node, names, m.fork, tuple(src_shape[1:3]))
            if problem:
                return problem
            if node is not m.join and (g.is_output(node.name) or any(
                    d not in names for d, _, _ in g.out_edges(node.name))):
                return f"'{node.name}' inside the block is also read outside it"
        if not any(n.op in SPATIAL for n in m.region):
            return "the block has no conv or pool to merge"
        trial = g.copy()
        _, keep = self._build(trial, m, None)
        before, after = g.count_macs(), trial.count_macs()
        if after >= before:
            return (f"one {self._kernel(g, m)}x{self._kernel(g, m)} conv keeping {keep} of "
                    f"{m.join.output_shape[-1]} channels would cost {after:,} MACs against "
                    f"{before:,}: lower width")
        return None

    def apply(self, g: Graph, m: Match) -> None:
        x, y = self._activations(g, m)
        k = self._kernel(g, m)
        rows = patches(x, k, self.max_rows, self.seed)
        kernel, bias = ridge_fit(rows, y, self.ridge, k)
        relu = bool(y.min() >= 0.0)
        error = fit_error(rows, y, kernel, bias, relu)
        scores = channel_entropy(y.reshape(-1, y.shape[-1]))
        name, keep = self._build(g, m, (kernel, bias, relu, scores))
        g[name].meta["fit_error"] = error
        log.info("merge_inception: %d layers of block '%s' -> one %dx%d conv keeping %d of %d "
                 "channels; fit error %.3f (relative, calibration data, before narrowing)",
                 len(m.region), m.join.name, k, k, keep, y.shape[-1], error)

    # ---- pieces ---------------------------------------------------------------------------
    def _kernel(self, g: Graph, m: Match) -> int:
        return min(receptive_field(g, m.region, m.fork), self.kernel_size | 1)

    def _keep(self, channels: int) -> int:
        return min(channels, max(self.round_to,
                                 math.ceil(channels * self.width / self.round_to) * self.round_to))

    def _build(self, g: Graph, m: Match, fitted: tuple | None) -> tuple[str, int]:
        """Replace the block by the merged conv and narrow it: (its name, channels kept).
        fitted=None builds zeros of the right shapes (to count MACs before fitting)."""
        k, cin = self._kernel(g, m), g[m.fork].output_shapes[m.port][-1]
        cout = m.join.output_shape[-1]
        if fitted is None:
            fitted = (np.zeros((k, k, cin, cout)), np.zeros(cout), True, np.arange(cout)[::-1])
        kernel, bias, relu, scores = fitted
        name = g.unique_name(f"{m.join.name}_merged")
        layer = keras.layers.Conv2D(cout, k, padding="same", activation="relu" if relu else None,
                                    name=name)
        conv = Node(name=name, op="Conv2D", config=layer.get_config(),
                    weights={"kernel": np.asarray(kernel, np.float32),
                             "bias": np.asarray(bias, np.float32)},
                    output_shapes=[tuple(m.join.output_shape)],
                    output_dtypes=list(m.join.output_dtypes[:1]) or ["float32"])
        g.replace([n.name for n in m.region], conv, [(m.fork, m.port)], output_of=m.join.name)
        keep = self._keep(cout)
        group = next((gr for gr in channel_groups(g) if name in gr.sources), None)
        if keep >= cout or group is None or not group.prunable:
            return name, cout
        index = [next(i for s, i in chan if s == name) for chan in group.channels]
        order = np.argsort(-np.asarray(scores)[index], kind="stable")
        prune_group(g, group, np.sort(order[:keep]))
        return name, keep

    def _activations(self, g: Graph, m: Match) -> tuple[np.ndarray, np.ndarray]:
        x, y = tensor_values(g, [(m.fork, m.port), (m.join.name, 0)], self.data)
        return x, y


def patches(x: np.ndarray, k: int, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, index): k x k "same"-padded patches of x (N, H, W, C) flattened in the order of a
    Keras kernel (kh, kw, C), at most max_rows of them at random pixels, and those pixels."""
    n, h, w, c = x.shape
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(n * h * w, min(max_rows, n * h * w), replace=False))
    pad = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    b, i, j = np.unravel_index(index, (n, h, w))
    rows = np.stack([pad[b, i + di, j + dj] for di in range(k) for dj in range(k)], axis=1)
    return rows.reshape(len(index), k * k * c), index


def fit_error(rows_index: tuple[np.ndarray, np.ndarray], y: np.ndarray, kernel: np.ndarray,
              bias: np.ndarray, relu: bool) -> float:
    """|merged conv output - block output| / |block output| at the sampled pixels."""
    rows, index = rows_index
    t = y.reshape(-1, y.shape[-1])[index]
    pred = rows @ kernel.reshape(len(rows[0]), -1) + bias
    pred = np.maximum(pred, 0.0) if relu else pred
    return float(np.linalg.norm(pred - t) / max(np.linalg.norm(t), 1e-12))


def ridge_fit(rows_index: tuple[np.ndarray, np.ndarray], y: np.ndarray, ridge: float,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (k, k, C, O) and bias (O,) minimising |rows W + b - y|^2 + ridge*e*|W|^2, where e
    is the mean input energy per feature (so `ridge` does not depend on the data's scale)."""
    rows, index = rows_index
    x = rows.astype(np.float64)
    t = y.reshape(-1, y.shape[-1])[index].astype(np.float64)
    mx, mt = x.mean(axis=0), t.mean(axis=0)
    xc = x - mx
    gram = xc.T @ xc
    lam = ridge * max(float(np.trace(gram)) / len(gram), 1e-12)
    w = np.linalg.solve(gram + lam * np.eye(len(gram)), xc.T @ (t - mt))
    return w.reshape(k, k, -1, t.shape[1]), mt - mx @ w
