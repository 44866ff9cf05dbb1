"""Range equalisation across a Concatenate: widen its narrow input channels at their producers,
narrow them back in the per-channel ops that read the concatenation (exact in float).

TFLite's int8 converter quantises an activation tensor per tensor, and a Concatenate with all
its inputs at one scale (the CONCATENATION kernel copies bytes). When the concatenated channels
have very different ranges, as the features of a DenseNet block do (each layer's conv output
next to the block input), the narrow channels get a handful of the 256 levels. Scale each
narrow channel c up by s_c >= 1 where it is made and back down where it is read:

    producer (conv / dense / BN, then ops a positive scale passes through: ReLU, pooling)
        W[..., c] *= s_c, b[c] *= s_c            (BN: gamma[c] *= s_c, beta[c] *= s_c)
    reader of the concatenation
        BatchNormalization: gamma[c] /= s_c, moving_mean[c] *= s_c
            ((s x - s mean) / sqrt(var + eps) * gamma / s + beta = BN(x))
        conv / depthwise / dense (one group): W[..., c, :] /= s_c    (zeros padded stay zero)

With r_c the channel's range over calibration data (max(x_c, 0) - min(x_c, 0): the asymmetric
int8 range includes zero) and R the largest r_c of the concatenation, s_c = min(R / r_c,
max_scale): every channel then spans the whole int8 range, and the widest channels (and the
quantisation scale) do not move. max_scale (256: a channel narrower than that had under one
level of the 256) bounds what a conv reader's input weights shrink by; a BN reader only gains
(its multiplier gamma / sqrt(var + eps), one per-tensor int8 constant in TFLite, becomes more
even as well). A Concatenate read by another (DenseNet's growing
concatenation: concat_k = concat(concat_{k-1}, new_k)) shares its channels and its scale, so
the chain is one family: its channels are equalised once, and every reader of every member
takes the scales back. A reader of the concatenation may also be reached through ReLU /
pooling (concat -> ReLU -> conv). An input of the concatenation read elsewhere too (the block
input of a DenseNet layer, read by its BN) is scaled if those readers take the scale back.

The same holds for one tensor with no Concatenate: a BN the converter cannot fold, because it
reads an activation rather than a conv (conv -> ReLU -> BN -> conv: TFLite leaves it as int8
MUL and ADD on a per-tensor-quantised input), gets its input's channels equalised the same way
(the conv's output channels scaled up through the ReLU, the BN's gamma down). Such a BN after
ReLU makes the float model blind to the per-channel scale of the conv before it, so training
lets those ranges drift apart.

An input that cannot be scaled (the model input, an Add, a ReLU6, an output read elsewhere)
keeps s = 1; the family is declined when no input can be scaled, or when some reader cannot
take the scales back (an Add, a Flatten, a model output, a grouped conv, BN without gamma or
called with training=True), each with its reason. Needs calibration data for the ranges; a
family (or tensor) already equalised has its Concatenates and producers marked in node.meta
(fixed point).

exact=True, default=False: the int8 exporter (kopt.runtime.int8_prep) applies it when it
improves int8 agreement on calibration data; optimize() leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last, last_axis
from kopt.keras_io.batches import as_batches, take
from kopt.keras_io.probes import tensor_values
from kopt.rewriting import Match, Rule, register
from rewrites._linear import (
    FOLDS_INTO,
    SCALE_THROUGH,
    bn_axis_is_last,
    input_scale_reason,
    scale_input_channels,
    scale_output_channels,
    scale_passes,
)

EQUALISED = "concat_ranges_equalised"


@register(exact=True, after=("fold_batchnorm",), default=False)
class EqualizeConcatRanges(Rule):
    """Equalise the channel ranges of each Concatenate family read by per-channel ops, and of
    each tensor read by a BN that the converter cannot fold."""

    def __init__(self, data: Any = None, max_scale: float = 256.0, samples: int = 128):
        self.data = None if data is None else take(as_batches(data), samples)
        self.max_scale = max_scale

    def matches(self, g: Graph) -> Iterator[Match]:
        seen: set[str] = set()
        for node in g.nodes_of("Concatenate"):
            if node.name in seen:
                continue
            family = _family(g, node)
            members = {n.name for n in family}
            seen |= members
            sources = [_source(g, members, src, port) for src, port in _inputs(g, family)]
            outside = [_reader(g, m, d) for m, d in _outside_edges(g, family)]
            yield _match(sources, outside, [n.name for n in family])
        for bn in g.nodes_of("BatchNormalization"):  # a tensor the converter cannot fold
            src = g.single_producer(bn.name)
            if src is not None and _unfolded(g, src):
                yield _match([_source(g, set(), src.name, g.in_edges(bn.name)[0][1])], [], [])

    def reject(self, g: Graph, m: Match) -> str | None:
        if any(g[n].meta.get(EQUALISED) for n in m.family) or \
                any(p.meta.get(EQUALISED) for p in m.producers):
            return "already equalised"
        for n in m.family:
            if not last_axis(g[n].config, len(g[n].output_shape)):
                return f"Concatenate '{n}' does not join the channel (last) axis"
        shared = [s.src for s in m.sources if g.is_shared(g[s.src])]
        if shared:
            return (f"'{shared[0]}' is a call of a shared layer: its tensor cannot be told apart "
                    "in the emitted model to measure its ranges")
        if not any(s.producer is not None for s in m.sources):
            what = "no input of the concatenation can" if m.family else "the BN's input cannot"
            return f"{what} be rescaled: " + "; ".join(s.reason for s in m.sources)
        for r in m.outside:
            if r.reason:
                return r.reason
        if self.data is None:
            return "range equalisation needs calibration data"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        values = tensor_values(g, [(s.src, s.port) for s in m.sources], self.data)
        ranges = [_channel_ranges(v) for v in values]
        widest = max(float(r.max()) for r in ranges)
        scales: dict[tuple[str, int], np.ndarray] = {}
        for s, r in zip(m.sources, ranges):
            scale = np.ones_like(r)
            if s.producer is not None and widest > 0:
                live = r > 1e-6 * widest
                scale[live] = np.minimum(widest / r[live], self.max_scale)
                scale_producer(s.producer, scale)
                for reader in s.readers:  # the tensor's readers outside the concatenation
                    unscale_reader(reader.node, scale)
            scales[(s.src, s.port)] = scale
        for r in m.outside:
            unscale_reader(r.node, _channel_scales(g, r.tensor, scales))
        for node in [g[n] for n in m.family] + m.producers:
            node.meta[EQUALISED] = True


def _match(sources: list[_Source], outside: list[_Reader], family: list[str]) -> Match:
    readers = outside + [r for s in sources if s.producer for r in s.readers]
    return Match(producers=[s.producer for s in sources if s.producer is not None],
                 readers=[r.node for r in readers if r.node is not None],
                 family=family, sources=sources, outside=outside)


def _unfolded(g: Graph, src: Node) -> bool:
    """Is `src` -> BN a place for a one-tensor match: not a conv / dense the converter folds
    the BN into, and not a concatenation (its family's match covers it)?"""
    if src.op in FOLDS_INTO and src.activation == "linear":
        return False
    node = src
    while node is not None and node.op in SCALE_THROUGH:
        node = g.single_producer(node.name)
    return node is None or node.op != "Concatenate"


def scale_producer(node: Node, scale: np.ndarray) -> None:
    """Multiply the producer's output channels by `scale` (> 0)."""
    if node.op == "BatchNormalization":
        w = node.weights
        w["gamma"] = (np.asarray(w["gamma"], np.float64) * scale).astype(w["gamma"].dtype)
        if "beta" in w:
            w["beta"] = (np.asarray(w["beta"], np.float64) * scale).astype(w["beta"].dtype)
    else:
        scale_output_channels(node, scale, np.zeros_like(scale))


def unscale_reader(node: Node, scale: np.ndarray) -> None:
    """Make the reader compute the same function of an input whose channels are `scale` times
    what they were."""
    if node.op == "BatchNormalization":
        w = node.weights
        w["gamma"] = (np.asarray(w["gamma"], np.float64) / scale).astype(w["gamma"].dtype)
        mean = np.asarray(w["moving_mean"], np.float64) * scale
        w["moving_mean"] = mean.astype(w["moving_mean"].dtype)
    else:
        scale_input_channels(node, 1.0 / scale, np.zeros_like(scale))


class _Source:
    """One input tensor (src, port) of the family. `producer` is the node whose output channels
    take the scale and `readers` the tensor's readers outside the family, which take it back;
    producer is None (with `reason`) if the tensor keeps its scale."""

    def __init__(self, src: str, port: int, producer: Node | None = None,
                 readers: list[_Reader] = (), reason: str = ""):
        self.src, self.port, self.producer, self.reason = src, port, producer, reason
        self.readers = list(readers)


class _Reader:
    """An op reading `tensor` (a family member or a source), directly or through ReLU /
    pooling, that must take the scales back: `node`, or `reason` why it cannot."""

    def __init__(self, node: Node | None, tensor: str, reason: str | None = None):
        self.node, self.tensor, self.reason = node, tensor, reason


def _family(g: Graph, start: Node) -> list[Node]:
    """The Concatenates joined to `start` by direct concat -> concat edges, in topological
    order."""
    found, todo = {start.name}, [start.name]
    while todo:
        name = todo.pop()
        near = [p.name for p in g.producers(name)] + [d for d, _, _ in g.out_edges(name)]
        for other in near:
            if other not in found and g[other].op == "Concatenate":
                found.add(other)
                todo.append(other)
    return [n for n in g.topological() if n.name in found]


def _inputs(g: Graph, family: list[Node]) -> list[tuple[str, int]]:
    """The tensors the family concatenates that are not themselves family members."""
    names = {n.name for n in family}
    found: list[tuple[str, int]] = []
    for node in family:
        for src, port, _ in g.in_edges(node.name):
            if src not in names and (src, port) not in found:
                found.append((src, port))
    return found


def _outside_edges(g: Graph, family: list[Node]) -> list[tuple[str, str]]:
    """(member, reader) for every reader of a member that is not a member; (member, "") for a
    member that is a model output."""
    names = {n.name for n in family}
    edges = [(n.name, d) for n in family for d, _, _ in g.out_edges(n.name) if d not in names]
    return edges + [(n.name, "") for n in family if g.is_output(n.name)]


def _source(g: Graph, members: set[str], src: str, port: int) -> _Source:
    """Walk back from an input tensor through ops a positive scale passes to its producer."""
    if len(g[src].output_shapes) != 1:
        return _Source(src, port, reason=f"'{src}' has several outputs")
    if g.is_output(src):
        return _Source(src, port, reason=f"'{src}' is a model output")
    readers = [_reader(g, src, d) for d, _, _ in g.out_edges(src) if d not in members]
    for r in readers:
        if r.reason:
            return _Source(src, port, reason=r.reason)
    node = g[src]
    while node.op not in FOLDS_INTO and node.op != "BatchNormalization":
        if node.op not in SCALE_THROUGH:
            return _Source(src, port, reason=f"'{node.name}' ({node.op}) cannot take a scale")
        reason = scale_passes(node)
        if reason:
            return _Source(src, port, reason=f"'{node.name}': {reason}")
        before = g.single_producer(node.name)
        if before is None or g.only_consumer(before.name) is not node:
            return _Source(src, port, reason=f"'{node.name}' reads a tensor that is also read "
                                             "elsewhere (or several tensors)")
        node = before
    reason = _producer_reason(g, node)
    return _Source(src, port, reason=reason) if reason else _Source(src, port, node, readers)


def _producer_reason(g: Graph, node: Node) -> str | None:
    if node.op == "BatchNormalization":
        if not bn_axis_is_last(g, node):
            return f"BN '{node.name}' does not normalise the last axis"
        if node.call is not None and node.call[1].get("training"):
            return f"BN '{node.name}' is called with training=True"
        return None if "gamma" in node.weights else f"BN '{node.name}' has no gamma"
    if not channels_last(node):
        return f"'{node.name}' is channels_first"
    reason = scale_passes(node)
    return f"'{node.name}': {reason}" if reason else None


def _reader(g: Graph, tensor: str, name: str) -> _Reader:
    """Walk forward from `name`, a reader of `tensor`, through ops a positive scale passes, to
    the op that must take the scales back."""
    if not name:
        return _Reader(None, tensor, f"'{tensor}' is a model output")
    node = g[name]
    while node.op in SCALE_THROUGH:
        reason = scale_passes(node)
        if reason:
            return _Reader(None, tensor, f"'{node.name}' reads '{tensor}': {reason}")
        nxt = g.only_consumer(node.name)
        if nxt is None:
            return _Reader(None, tensor, f"'{node.name}' after '{tensor}' is read by several "
                                         "ops (or is a model output)")
        node = nxt
    if node.op == "BatchNormalization":
        reason = _producer_reason(g, node)  # the same conditions: last axis, gamma, inference
        return _Reader(None, tensor, reason) if reason else _Reader(node, tensor)
    reason = input_scale_reason(node)
    if reason:
        return _Reader(None, tensor, f"'{node.name}' reads '{tensor}' and cannot take the "
                                     f"scales back: {reason}")
    return _Reader(node, tensor)


def _channel_scales(g: Graph, concat: str, scales: dict[tuple[str, int], np.ndarray]
                    ) -> np.ndarray:
    """The scale of each channel of a family member, in its channel order."""
    parts = []
    for src, port, _ in g.in_edges(concat):
        if (src, port) in scales:
            parts.append(scales[(src, port)])
        else:  # a member: its own channels, recursively
            parts.append(_channel_scales(g, src, scales))
    return np.concatenate(parts)


def _channel_ranges(x: np.ndarray) -> np.ndarray:
    """Per channel: max(x, 0) - min(x, 0) over every sample and position."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return np.maximum(flat.max(axis=0), 0.0) - np.minimum(flat.min(axis=0), 0.0)
