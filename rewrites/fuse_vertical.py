"""Fuse a chain of two ops into one where the pair computes a function one op can express.

- activation: f(x (*) W + b) is what a conv / dense with activation=f computes, so a standalone
  ReLU / Activation(f) after a linear op becomes that op's `activation`.
- linear pair: (x (*) W1 + b1) W2 + b2 = x (*) (W1 W2) + (b1 W2 + b2) when the second op is a
  1x1 stride-1 conv (or a Dense) acting on channels only; the pair becomes one op with the
  first op's geometry, unless that adds parameters (a bottleneck is cheaper as two ops).
- padding: ZeroPadding(p) then a "valid" conv equals the "same" conv whenever p is exactly
  what "same" pads: in total max((ceil(n / s) - 1) s + k_eff - n, 0) along an axis of n pixels
  with stride s and k_eff = d (k - 1) + 1, half of it (rounded down) before and the rest after.
  With stride 1 that is k_eff - 1 whatever n is; with a stride it depends on n, so a strided
  conv is taken only where the IR knows the input size. keras.applications pads before each
  stride-2 depthwise conv of MobileNetV2/V3 exactly so (imagenet_utils.correct_pad on an even
  size), and a standalone int8 PAD cost 7% of MobileNetV3Small's time here.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._conv import activation_name
from rewrites._linear import CONV, DEPTHWISE, FOLDS_INTO, SEPARABLE

PAIR_OPS = {"Conv1D", "Conv2D", "Dense"}
PADDED = CONV | DEPTHWISE | SEPARABLE
PADDINGS = {"ZeroPadding1D": 1, "ZeroPadding2D": 2, "ZeroPadding3D": 3}


@register(exact=True, after=("merge_branches", "pool_to_conv"))
class FuseVertical(Rule):
    """Activation into op, linear op into linear op, explicit padding into "same"."""

    def matches(self, g: Graph) -> Iterator[Match]:
        for node in g.nodes_of("ReLU", "Activation"):
            if node.op == "ReLU" or node.activation != "linear":
                yield Match(first=g.single_producer(node.name), second=node, kind="activation")
        for node in g.nodes_of(*PAIR_OPS):
            first = g.single_producer(node.name)
            if first is not None and first.op in PAIR_OPS and _pointwise(node):
                yield Match(first=first, second=node, kind="linear")
        for node in g.nodes_of(*PADDINGS):  # every reader a conv (split_hard_swish's copy)
            readers = [g[dst] for dst, _, _ in g.out_edges(node.name)]
            if readers and not g.is_output(node.name) and all(r.op in PADDED for r in readers):
                yield Match(first=node, second=readers[0], readers=readers, kind="padding")

    def reject(self, g: Graph, m: Match) -> str | None:
        if m.first is None:
            return f"{m.second.op} does not read a single op"
        if m.kind == "padding":
            return next(filter(None, (_reject_padding(g, m.first, r) for r in m.readers)), None)
        if g.only_consumer(m.first.name) is not m.second:
            return f"{m.first.op} output is also read elsewhere"
        return {"activation": _reject_activation, "linear": _reject_pair}[m.kind](
            g, m.first, m.second)

    def apply(self, g: Graph, m: Match) -> None:
        if m.kind == "activation":
            m.first.config["activation"] = activation_name(m.second)
            g.bypass(m.second.name)
        elif m.kind == "padding":
            for reader in m.readers:
                reader.config["padding"] = "same"
            g.bypass(m.first.name)
        else:
            _collapse(g, m.first, m.second)


def _reject_activation(g: Graph, lin: Node, act: Node) -> str | None:
    if lin.op not in FOLDS_INTO:
        return f"{act.op} after {lin.op}, which has no activation to take it"
    if lin.activation != "linear":
        return f"{lin.op} already applies activation '{lin.activation}'"
    if activation_name(act) is None:
        what = act.activation if act.op == "Activation" else "with these max_value/slope/threshold"
        return f"{act.op} {what} has no activation-name equivalent"
    return None


def _pointwise(node: Node) -> bool:
    return node.op == "Dense" or set(node.config["kernel_size"]) == {1}


def _reject_pair(g: Graph, first: Node, second: Node) -> str | None:
    if first.activation != "linear":
        return f"activation '{first.activation}' between the two linear ops"
    if (first.op == "Dense") != (second.op == "Dense") or not channels_last(first) \
            or not channels_last(second):
        return "the pair mixes conv and dense (or channels_first) layouts"
    if second.op != "Dense" and set(second.config.get("strides", (1,))) != {1}:
        return "second conv is strided: it would subsample the first one's output"
    if first.config.get("groups", 1) != 1 or second.config.get("groups", 1) != 1:
        return "grouped conv: the collapsed kernel would be dense across groups"
    k1, k2 = first.weights["kernel"], second.weights["kernel"]
    b1, b2 = first.weights.get("bias", ()), second.weights.get("bias", ())
    before = k1.size + k2.size + len(b1) + len(b2)
    after = k1.size // k1.shape[-1] * k2.shape[-1] + (k2.shape[-1] if len(b1) + len(b2) else 0)
    if after > before:
        return f"collapsing would grow parameters {before} -> {after} (a cheaper bottleneck)"
    return None


def _collapse(g: Graph, first: Node, second: Node) -> None:
    """First takes the composed weights and the second's width, activation and readers."""
    w1 = np.asarray(first.weights["kernel"], np.float64)
    w2 = np.asarray(second.weights["kernel"], np.float64)
    w2 = w2.reshape(w2.shape[-2:])
    bias = np.asarray(first.weights.get("bias", np.zeros(w1.shape[-1])), np.float64) @ w2
    if "bias" in second.weights:
        bias = bias + second.weights["bias"]
    dtype = first.weights["kernel"].dtype
    use_bias = "bias" in first.weights or "bias" in second.weights
    first.weights = {"kernel": (w1 @ w2).astype(dtype)}
    if use_bias:
        first.weights["bias"] = bias.astype(dtype)
    width = "units" if first.op == "Dense" else "filters"
    first.config.update({width: second.config[width], "use_bias": use_bias,
                         "activation": second.config.get("activation", "linear")})
    first.output_shapes = list(second.output_shapes)
    g.rewire(second.name, first.name)
    g.remove(second.name)


def _same_padding(conv: Node, sizes: list[int | None]) -> list[tuple[int, int]] | None:
    """What "same" pads before and after along each spatial axis of `sizes` pixels (None
    where a strided axis has no known size)."""
    kernel = conv.config["kernel_size"]
    strides = conv.config.get("strides", (1,) * len(kernel))
    dilation = conv.config.get("dilation_rate", 1)
    dilation = (dilation,) * len(kernel) if isinstance(dilation, int) else dilation
    out = []
    for k, s, d, n in zip(kernel, strides, dilation, sizes):
        if s != 1 and n is None:
            return None
        total = d * (k - 1) if s == 1 else max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
        out.append((total // 2, total - total // 2))
    return out


def _padding_of(pad: Node) -> list[tuple[int, int]]:
    rank = PADDINGS[pad.op]
    p = pad.config["padding"]
    p = [p] * rank if isinstance(p, int) else list(p)
    if rank == 1 and len(p) == 2 and all(isinstance(v, int) for v in p):
        p = [tuple(p)]
    return [(v, v) if isinstance(v, int) else tuple(v) for v in p]


def _reject_padding(g: Graph, pad: Node, conv: Node) -> str | None:
    if conv.config.get("padding") != "valid":
        return f"conv after {pad.op} already pads ('{conv.config.get('padding')}')"
    if not channels_last(pad) or not channels_last(conv):
        return "channels_first layout"
    have, need = _padding_of(pad), _same_padding(conv, list(g.input_shapes(pad.name)[0][1:-1]))
    if need is None:
        return "strided conv on an input of unknown size: what 'same' pads depends on it"
    if have != need:
        return f"padding {have} is not what 'same' adds ({need})"
    return None
