"""Fold inference BatchNormalization into the linear op next to it.

At inference BN is a per-channel affine map, BN(x) = s * x + t with
s = gamma / sqrt(var + eps) and t = beta - mean * s. After a linear op y = x (*) W + b:

    BN(x (*) W + b) = x (*) (W * s) + (b * s + t)          (s over W's output channels)

Before a linear op (its only reader), when every output window sees only real inputs (Dense, or
a conv with "valid" padding and one group):

    (s * x + t) (*) W + b = x (*) (W * s) + (b + sum_kernel W * t)    (s over input channels)

With "same" padding the padded zeros are not shifted by t, so the border would change; that
case is declined (an approximate rule may take it). See rewrites/_linear.py for the layouts.
"""

from __future__ import annotations

from collections.abc import Iterator

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, Rule, register
from rewrites._linear import (
    FOLDS_INTO,
    INPUT_FOLDS,
    TRANSPOSE,
    bn_affine,
    bn_axis_is_last,
    scale_input_channels,
    scale_output_channels,
)


@register(exact=True, after=("remove_identity",))
class FoldBatchNorm(Rule):
    """BN after (or, where exact, before) a conv / dense disappears into its weights."""

    def matches(self, g: Graph) -> Iterator[Match]:
        for bn in g.nodes_of("BatchNormalization"):
            lin = g.single_producer(bn.name)
            after = lin is not None and lin.op in FOLDS_INTO
            if after:
                yield Match(lin=lin, bn=bn, before=False)
            reader = g.only_consumer(bn.name)
            if reader is not None and reader.op in FOLDS_INTO:
                yield Match(lin=reader, bn=bn, before=True)
            elif not after:
                yield Match(lin=lin, bn=bn, before=False)

    def reject(self, g: Graph, m: Match) -> str | None:
        lin, bn = m.lin, m.bn
        if lin is None or lin.op not in FOLDS_INTO:
            return "BN is not next to a conv or dense layer"
        if bn.call is not None and bn.call[1].get("training"):
            return "BN is called with training=True"
        if not bn_axis_is_last(g, bn) or not channels_last(lin):
            return "BN axis is not the channel (last) axis of the linear op"
        return _reject_before(g, lin) if m.before else _reject_after(g, lin, bn)

    def apply(self, g: Graph, m: Match) -> None:
        scale, shift = bn_affine(m.bn)
        if m.before:
            scale_input_channels(m.lin, scale, shift)
        else:
            scale_output_channels(m.lin, scale, shift)
        g.bypass(m.bn.name)


def _reject_after(g: Graph, lin: Node, bn: Node) -> str | None:
    if lin.activation != "linear":
        return f"activation '{lin.activation}' between {lin.op} and BN"
    if g.only_consumer(lin.name) is not bn:
        return f"{lin.op} output is also read elsewhere"
    return None


def _reject_before(g: Graph, lin: Node) -> str | None:
    if lin.op not in INPUT_FOLDS:
        if lin.op in TRANSPOSE:
            return "BN before a transposed conv: border outputs see fewer taps of the shift"
        return f"BN before {lin.op} cannot be folded into its input"
    if lin.op != "Dense" and lin.config.get("padding", "valid") != "valid":
        return (f"BN before a '{lin.config['padding']}'-padded conv: the padded zeros would not "
                "be shifted")
    if lin.config.get("groups", 1) != 1:
        return "BN before a grouped conv"
    return None
