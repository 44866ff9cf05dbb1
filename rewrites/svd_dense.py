"""Low-rank factorisation of Dense and 1x1 Conv2D kernels (approximate).

W (m x n) = U S V^T ~ (U_r S_r)(V_r^T): act(x W + b) ~ act((x A) B + b) with A = U_r S_r (m x r,
no bias, linear) and B = V_r^T (r x n, the original bias and activation). Truncating to r
singular values is the best rank-r approximation in the Frobenius norm (Eckart-Young); the
relative error of W is sqrt(1 - kept energy). It pays only when r (m + n) < m n.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from kopt.ir import Graph, Node
from kopt.rewriting import Match, Rule, register

log = logging.getLogger(__name__)


@register(exact=False, after=("fuse_vertical", "prune_entropy"))
class SvdDense(Rule):
    """Factor each Dense / 1x1 Conv2D whose kernel keeps `energy` of its spectrum in rank r
    (or, with `ratio`, the rank that keeps that fraction of its parameters)."""

    def __init__(self, energy: float = 0.9, ratio: float | None = None, min_size: int = 64):
        self.energy, self.ratio, self.min_size = energy, ratio, min_size

    def matches(self, g: Graph):
        for node in g.nodes_of("Dense", "Conv2D"):
            yield Match(node=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        node = m.node
        kernel = node.weights.get("kernel")
        if kernel is None:
            return "no kernel weights"
        if node.op == "Conv2D" and (tuple(kernel.shape[:2]) != (1, 1)
                                    or node.config.get("groups", 1) != 1):
            return "only 1x1 convolutions without groups factor into two 1x1 convolutions"
        if _is_factor(g, node) or any(_is_factor(g, p) for p in g.producers(node.name)):
            return "already a low-rank factor (a linear, bias-free layer feeding one of its kind)"
        m_, n = kernel.shape[-2:]
        if m_ * n < self.min_size:
            return f"kernel has only {m_ * n} weights (min_size {self.min_size})"
        r = self.rank(kernel)
        if r * (m_ + n) >= m_ * n:
            return (f"rank {r} keeps the spectrum but r*(m+n) = {r * (m_ + n)} >= m*n = "
                    f"{m_ * n}: factoring would not save parameters")
        return None

    def rank(self, kernel: np.ndarray) -> int:
        """The rank r for this kernel: by kept spectral energy, or by the parameter ratio."""
        m, n = kernel.shape[-2:]
        if self.ratio is not None:
            return max(1, int(self.ratio * m * n / (m + n)))
        s = np.linalg.svd(kernel.reshape(m, n), compute_uv=False)
        energy = np.cumsum(s ** 2) / max(float(np.sum(s ** 2)), 1e-30)
        return int(min(np.searchsorted(energy, self.energy - 1e-9) + 1, len(s)))

    def apply(self, g: Graph, m: Match) -> None:
        node = m.node
        kernel = node.weights["kernel"]
        lead, (rows, cols) = kernel.shape[:-2], kernel.shape[-2:]
        r = self.rank(kernel)
        u, s, vt = np.linalg.svd(kernel.reshape(rows, cols).astype(np.float64),
                                 full_matrices=False)
        a = (u[:, :r] * s[:r]).astype(kernel.dtype).reshape(lead + (rows, r))
        b = vt[:r].astype(kernel.dtype).reshape((1,) * len(lead) + (r, cols))
        width = "units" if node.op == "Dense" else "filters"
        first = _node(g, node, f"{node.name}_svd", {width: r, "use_bias": False,
                                                   "activation": "linear"}, {"kernel": a})
        first.output_shapes = [tuple(node.output_shape[:-1]) + (r,)]
        inputs = [(src, p) for src, p, _ in g.in_edges(node.name)]
        g.replace([node.name], first, inputs, output_of=node.name)
        second_cfg = {"strides": (1, 1), "padding": "valid"} if node.op == "Conv2D" else {}
        g.insert_after(first.name, _node(g, node, node.name, second_cfg,
                                         dict(node.weights, kernel=b)))
        log.debug("svd_dense: %s (%dx%d) -> rank %d", node.name, rows, cols, r)


def _is_factor(g: Graph, node: Node) -> bool:
    reader = g.only_consumer(node.name)
    return (node.op in ("Dense", "Conv2D") and node.activation == "linear"
            and not node.config.get("use_bias", True) and reader is not None
            and reader.op == node.op)


def _node(g: Graph, like: Node, name: str, changes: dict, weights: dict) -> Node:
    config = copy.deepcopy(like.config)
    config.update(changes, name=name)
    return Node(name=name if name not in g else g.unique_name(name), op=like.op, config=config,
                weights={k: np.asarray(v) for k, v in weights.items()},
                output_shapes=list(like.output_shapes), output_dtypes=list(like.output_dtypes))
