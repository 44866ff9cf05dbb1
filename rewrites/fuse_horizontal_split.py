"""Fuse parallel convs (or Dense layers) that read one tensor but feed different layers: one
wider conv, then a channel slice per branch (exact; opt-in, a latency-search move).

Why: an inception block's 1x1 "reduce" convs read the block input side by side, each feeding
its own 3x3 branch, so `fuse_horizontal` (which needs their outputs to meet in one Concatenate)
leaves them as n narrow convs. One conv n times as wide is one op that reads the input once
(and may fill XNNPACK's channel tiles better), but each branch then needs a slice op, a copy
of its channels.
Which wins depends on the runtime, so the rule is registered default=False and offered by the
latency search (kopt/flows/targeted.py), which keeps it only where the measured latency drops.

The algebra is fuse_horizontal's. Output channels of a conv are independent and the op is
linear in its kernel, so branch i's channels of the wide conv are branch i's conv:

    (x (*) concat[W_1..W_n] + concat[b_1..b_n])[..., o_i : o_i + c_i] = x (*) W_i + b_i

(o_i the channels of the branches before i, c_i branch i's), and an element-wise activation
commutes with the slice. So do per-pixel layers (rewrites._conv.PER_PIXEL: BN over the channel
axis, activations): where every branch goes on with the same such layer and config, those
layers are fused too (BN statistics concatenated the same way) and the slices come after them.
An unfolded conv-BN-ReLU branch (the search runs on the model as given) thus becomes one wide
conv-BN-ReLU that fold_batchnorm and fuse_vertical still fold; a slice before the BN would
keep the BN from ever folding.

The slice is `h[..., o_i : o_i + c_i]` (kopt.ir.ops.GET_ITEM: Keras 3's GetItem operation,
tf_keras' SlicingOpLambda). It saves without code, so the model loads with safe_mode=True, and
converts to a TFLite STRIDED_SLICE. Keras has no Split layer, and a Lambda would be unsafe to
load and opaque to every later rule.

Conditions: at least two Conv2D (or two Dense) layers reading the same output and agreeing on
every config key but their width and initialisers (geometry, activation, bias use), channels
last, not grouped. Their outputs may be read by anything, model outputs included. Declined,
with the reason: layers reading one tensor no two of which agree (the first differing key is
named), channels_first, grouped convs, a softmax activation (it mixes channels). Limit: channel
pruning (kopt.ir.channels) does not see through a slice, so once a search keeps this move the
fused convs' channels are no longer cut.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np

from kopt.ir import Graph, Node, Port
from kopt.ir.ops import GET_ITEM
from kopt.rewriting import Match, Rule, register
from rewrites._conv import derive, per_pixel_chain
from rewrites.fuse_horizontal import (
    MIXING,
    OPS,
    difference,
    fused_layer,
    source,
    unfusable,
)


@register(exact=True, default=False, after=("fuse_horizontal",))
class FuseHorizontalSplit(Rule):
    """Parallel convs / Dense layers (and the per-pixel layers every branch shares) => one
    wider layer, then a channel slice per branch.

    only: the name of the layer whose output the parallel layers read (a search move rewrites
    one place at a time)."""

    def __init__(self, only: str | None = None):
        self.only = only

    def matches(self, g: Graph) -> Iterator[Match]:
        readers: dict[tuple, list[Node]] = defaultdict(list)
        for node in g.nodes_of(*OPS):
            src = source(g, node)
            if src is not None and self.only in (None, src[0]):
                readers[(node.op, src)].append(node)
        for (_, (src, _)), nodes in readers.items():
            classes = [c for c in _agreeing(nodes) if len(c) >= 2]
            for convs in classes:
                followers = [n for layers in common_chain(g, convs) for n in layers]
                yield Match(convs=convs, followers=followers, source=src)
            if not classes and len(nodes) >= 2:  # to be declined, naming the difference
                yield Match(convs=nodes, followers=[], source=src)

    def reject(self, g: Graph, m: Match) -> str | None:
        return unfusable(m.convs)

    def apply(self, g: Graph, m: Match) -> None:
        common = common_chain(g, m.convs)
        last = fused_layer(g, m.convs)
        for layers in common:
            last = _fused_follower(g, layers, last)
        start = 0
        for i, conv in enumerate(m.convs):
            end = common[-1][i] if common else conv
            width = conv.output_shape[-1]
            piece = g.add(channel_slice(g, end, start, start + width))
            g.connect(last.name, piece.name)
            g.rewire(end.name, piece.name)
            start += width
        for layers in reversed(common):
            for node in layers:
                g.remove(node.name)
        for conv in m.convs:
            g.remove(conv.name)


def _agreeing(nodes: list[Node]) -> list[list[Node]]:
    """`nodes` in classes that agree on every config key that matters (`difference` is None
    between any two members: equal configs less the ignored keys), in first-seen order."""
    classes: list[list[Node]] = []
    for node in nodes:
        home = next((c for c in classes if difference(c[0], node) is None), None)
        if home is None:
            classes.append([node])
        else:
            home.append(node)
    return classes


def common_chain(g: Graph, convs: list[Node]) -> list[list[Node]]:
    """Per position after the convs, the per-pixel layer each branch goes on with, for as long
    as every branch goes on with the same op, config and call arguments (and no layer is
    shared or a softmax): the layers that can be fused with the convs, so that the slices come
    after them."""
    chains = [per_pixel_chain(g, conv) for conv in convs]
    common: list[list[Node]] = []
    for layers in zip(*chains):
        if any(n.op != layers[0].op or difference(layers[0], n) or n.call != layers[0].call
               or g.is_shared(n) or n.activation in MIXING for n in layers):
            break
        common.append(list(layers))
    return common


def _fused_follower(g: Graph, layers: list[Node], last: Node) -> Node:
    """The per-pixel layers at one position of every branch as one layer over the fused
    channels (per-channel weights, BN's, concatenated in branch order), called as they were
    (e.g. BN's mask=None), reading `last`."""
    first = layers[0]
    weights = {k: np.concatenate([n.weights[k] for n in layers]) for k in first.weights}
    node = g.add(derive(g, first, f"{first.name}_fused", weights, last.output_shape))
    node.call = first.call
    g.connect(last.name, node.name)
    return node


def channel_slice(g: Graph, like: Node, start: int, stop: int) -> Node:
    """A new node computing `h[..., start:stop]` of its one input, with the output shape and
    dtype of `like` (the branch output it stands in for)."""
    return Node(name=g.unique_name(f"{like.name}_slice"), op=GET_ITEM, config={},
                output_shapes=[like.output_shape],
                output_dtypes=list(like.output_dtypes[:1]) or ["float32"],
                call=((Port(0), (Ellipsis, slice(start, stop))), {}), source=like.source)
