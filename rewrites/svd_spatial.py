"""Spatial SVD of k x k Conv2D kernels into a (kh, 1) and a (1, kw) conv (approximate).

Tai et al. 2016 / Jaderberg et al. 2014 "scheme 2": with M[(i, c), (j, n)] = W[i, j, c, n]
(kh*C x kw*N) and M ~ U_r S_r V_r^T, conv(x, W) ~ conv(conv(x, V), H) with V = U_r sqrt(S_r)
as (kh, 1, C, r) (row stride, no bias, linear) and H = sqrt(S_r) V_r^T as (1, kw, r, N) (column
stride, bias, activation). "same"/"valid" padding is per axis and V has no bias, so rank
min(kh*C, kw*N) is exact. Pays when r (kh C + kw N) < kh kw C N and the MACs drop too.
"""

from __future__ import annotations

import logging

import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._conv import derive, kernel_bias, pair

log = logging.getLogger(__name__)


@register(exact=False, after=("prune_entropy",))
class SvdSpatial(Rule):
    """Factor each k x k Conv2D (kh, kw > 1) whose unfolded kernel keeps `energy` of its
    spectrum in rank r (or, with `ratio`, the rank that keeps that fraction of its weights) into
    a (kh, 1) conv with r filters followed by a (1, kw) conv."""

    def __init__(self, energy: float = 0.9, ratio: float | None = None, min_size: int = 64):
        self.energy, self.ratio, self.min_size = energy, ratio, min_size

    def matches(self, g: Graph):
        for node in g.nodes_of("Conv2D"):
            yield Match(node=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        node, cfg = m.node, m.node.config
        kernel = node.weights.get("kernel")
        if kernel is None or kernel.ndim != 4:
            return "no 4-d kernel weights"
        kh, kw, c, n = kernel.shape
        if kh == 1 or kw == 1:
            return (f"kernel is {kh}x{kw}: only kernels with kh, kw > 1 factor into (kh, 1) and "
                    "(1, kw) convolutions (1x1: see svd_dense)")
        if not channels_last(node):
            return "channels_first convolutions are not supported"
        if cfg.get("groups", 1) != 1:
            return f"grouped convolution (groups {cfg['groups']}) is not factored"
        dilation = pair(cfg.get("dilation_rate", (1, 1)))
        if dilation not in ((1, 1), 1):
            return f"dilated convolution (dilation_rate {dilation}) is not factored"
        if str(cfg.get("padding", "valid")).lower() not in ("same", "valid"):
            return f"padding '{cfg.get('padding')}' is not 'same' or 'valid'"
        if kernel.size < self.min_size:
            return f"kernel has only {kernel.size} weights (min_size {self.min_size})"
        r = self.rank(kernel)
        if r * (kh * c + kw * n) >= kh * kw * c * n:
            return (f"rank {r} keeps the spectrum but r*(kh*C+kw*N) = {r * (kh * c + kw * n)} "
                    f">= kh*kw*C*N = {kh * kw * c * n}: factoring would not save parameters")
        macs = _macs(g, node, r)
        if macs is not None and macs[1] >= macs[0]:
            return (f"rank {r} saves parameters but not MACs ({macs[0]:,} -> {macs[1]:,}): the "
                    "(kh, 1) conv runs at every input column")
        return None

    def rank(self, kernel: np.ndarray) -> int:
        """The rank r for this kernel: by kept spectral energy of the unfolded kernel, or by the
        parameter ratio r*(kh*C + kw*N) ~ ratio * kh*kw*C*N."""
        kh, kw, c, n = kernel.shape
        if self.ratio is not None:
            return max(1, int(self.ratio * kh * kw * c * n / (kh * c + kw * n)))
        s = np.linalg.svd(unfold(kernel), compute_uv=False)
        energy = np.cumsum(s ** 2) / max(float(np.sum(s ** 2)), 1e-30)
        return int(min(np.searchsorted(energy, self.energy - 1e-9) + 1, len(s)))

    def apply(self, g: Graph, m: Match) -> None:
        node = m.node
        kernel, _ = kernel_bias(node)
        kh, kw, c, n = kernel.shape
        r = self.rank(kernel)
        vertical, horizontal = factor(kernel, r)
        sh, sw = _strides(node)
        width = g.input_shapes(node.name)[0][2]
        out = node.output_shape
        first = derive(g, node, f"{node.name}_v", {"kernel": vertical},
                       (out[0], out[1], width, r), filters=r, kernel_size=(kh, 1),
                       strides=(sh, 1), use_bias=False, activation="linear",
                       activity_regularizer=None, bias_regularizer=None, bias_constraint=None)
        weights = {"kernel": horizontal}
        if "bias" in node.weights:
            weights["bias"] = node.weights["bias"]
        second = derive(g, node, f"{node.name}_h", weights, out, kernel_size=(1, kw),
                        strides=(1, sw))
        inputs = [(src, p) for src, p, _ in g.in_edges(node.name)]
        g.replace([node.name], first, inputs, output_of=node.name)
        g.insert_after(first.name, second)
        log.debug("svd_spatial: %s (%dx%d, %d -> %d) -> rank %d", node.name, kh, kw, c, n, r)


def unfold(kernel: np.ndarray) -> np.ndarray:
    """(kh, kw, C, N) -> M of shape (kh*C, kw*N) with M[i*C + c, j*N + n] = W[i, j, c, n]."""
    kh, kw, c, n = kernel.shape
    return np.transpose(kernel, (0, 2, 1, 3)).reshape(kh * c, kw * n)


def factor(kernel: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The rank-r factors of `kernel`: (kh, 1, C, r) and (1, kw, r, N), in float64; their
    composition is the best rank-r approximation of unfold(kernel) in the Frobenius norm."""
    kh, kw, c, n = kernel.shape
    u, s, vt = np.linalg.svd(unfold(np.asarray(kernel, np.float64)), full_matrices=False)
    root = np.sqrt(s[:r])
    vertical = (u[:, :r] * root).reshape(kh, 1, c, r)  # row i*C + c -> [i, 0, c, :]
    horizontal = (root[:, None] * vt[:r]).reshape(r, kw, n)  # column j*N + n -> [:, j, n]
    return vertical, np.transpose(horizontal, (1, 0, 2))[None]


def _strides(node: Node) -> tuple[int, int]:
    s = pair(node.config.get("strides", (1, 1)))
    return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))


def _macs(g: Graph, node: Node, r: int) -> tuple[int, int] | None:
    """MACs of the conv and of its factorisation at batch 1, or None if a size is unknown."""
    kh, kw, c, n = node.weights["kernel"].shape
    shapes = g.input_shapes(node.name)
    if len(shapes) != 1 or len(shapes[0]) != 4 or len(node.output_shape) != 4:
        return None
    width, (rows, cols) = shapes[0][2], node.output_shape[1:3]
    if None in (width, rows, cols):
        return None
    before = rows * cols * kh * kw * c * n
    return before, rows * width * kh * c * r + rows * cols * kw * r * n
