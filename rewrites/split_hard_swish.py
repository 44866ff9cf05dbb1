"""Hard-swish after a conv or Dense layer -> the layer twice and a product (exact).

hard_swish(x) = x * relu6(x + 3) / 6. Where x = W * in + b is a conv, depthwise conv or Dense
layer (with the BN after it folded in: s * (W * in + b) + t),

    hard_swish(x) = (W/6 * in + b/6) * relu6(W * in + b + 3)

the layer with its output scaled by 1/6, times a copy of it with 3 added to its bias and ReLU6
as its activation. Every runtime fuses ReLU6 into the conv, so the hard-swish becomes one more
conv and a Multiply.

Why: LiteRT 2.3's XNNPACK delegate does not take an int8 HARD_SWISH (the converter turns every
form of x * relu6(x + 3) / 6 into that op, so writing it differently in Keras does not help), and
TFLite's own int8 kernel for it is slow: 0.054 ms at 32x32x16 on this project's machine, where
the two 1x1 convs around it take 0.004 ms together. In a full-int8 MobileNetV3Small at 64x64
the hard-swishes take 77% of the time. Split, the same block is 3-6x faster in int8
(`tests/rewrites/test_split_hard_swish.py` states the op lists; the benchmark is
`tools/bench_unseen.py --models mobilenetv3`). In float, HARD_SWISH is delegated and the split
form is slower (the extra conv), so the rule is registered default=False and the latency search
keeps it only where the runtime it targets measures the model faster
(kopt.flows.for_runtime). The int8 product is quantised differently from the int8 hard-swish,
so the int8 files of the two forms differ a little; the float model does not change.

Declined: a hard-swish whose input is not a conv / Dense output (an Add, a pooling: the 1/6
would need a layer of its own), a layer whose output is also read elsewhere, a shared layer.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, PlacedRule, register
from rewrites._conv import derive, reads_only
from rewrites._linear import FOLDS_INTO, bn_affine, bn_axis_is_last, out_channels, \
    scale_output_channels

HARD_SWISH = {"hard_swish", "hard_silu"}


@register(exact=True, default=False)
class SplitHardSwish(PlacedRule):
    """layer (+ BN) + hard-swish -> layer/6 * relu6(layer + 3), the second a copy of the layer.

    only: the names of the layers (conv / Dense) to split after, or None for every one (a
    flow that prices each place on its own passes those it keeps)."""

    def matches(self, g: Graph) -> Iterator[Match]:
        for m in self._all_matches(g):
            if self.chosen(m.lin.name if m.lin is not None else None):
                yield m

    def _all_matches(self, g: Graph) -> Iterator[Match]:
        for node in g:
            if node.op in FOLDS_INTO and node.activation in HARD_SWISH:
                yield Match(lin=node, bn=None, act=None)
            elif node.op == "Activation" and node.activation in HARD_SWISH:
                bn = g.single_producer(node.name)
                lin = g.single_producer(bn.name) if bn is not None else None
                if bn is not None and bn.op != "BatchNormalization":
                    lin, bn = bn, None
                yield Match(lin=lin, bn=bn, act=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        lin, bn, act = m.lin, m.bn, m.act
        if lin is None or lin.op not in FOLDS_INTO:
            return "the hard-swish does not follow a conv or Dense layer"
        if not channels_last(lin):
            return f"'{lin.name}' is channels_first"
        if g.is_shared(lin):
            return f"'{lin.name}' is a shared layer"
        if act is None:
            return None
        if lin.activation != "linear":
            return f"'{lin.name}' has its own activation ({lin.activation})"
        if bn is not None and (not bn_axis_is_last(g, bn) or not reads_only(g, bn, act)
                               or (bn.call is not None and bn.call[1].get("training"))):
            return f"the BN '{bn.name}' is not a plain inference BN read only by the hard-swish"
        if not reads_only(g, lin, bn or act):
            return f"the output of '{lin.name}' is read besides the hard-swish"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        lin, bn, act = m.lin, m.bn, m.act
        n = out_channels(lin)
        scale, shift = bn_affine(bn) if bn is not None else (np.ones(n), np.zeros(n))
        gate = derive(g, lin, f"{lin.name}_gate", dict(lin.weights), lin.output_shape,
                      activation="relu6")
        scale_output_channels(gate, scale, shift + 3.0)
        g.add(gate)
        g.set_inputs(gate.name, [(s, p) for s, p, _ in g.in_edges(lin.name)])
        scale_output_channels(lin, scale / 6.0, shift / 6.0)
        lin.config["activation"] = "linear"
        last = act or lin
        name = g.unique_name(f"{lin.name}_hard_swish") if act is None else act.name
        product = Node(name=name, op="Multiply", config=keras.layers.Multiply(name=name)
                       .get_config(), output_shapes=[lin.output_shape],
                       output_dtypes=list(last.output_dtypes))
        for node in (act, bn):
            if node is not None:
                g.bypass(node.name)
        if act is None:
            g.insert_after(lin.name, product)
        else:
            g.add(product)
            g.rewire(lin.name, product.name)
            g.connect(lin.name, product.name, 0, 0)
        g.connect(gate.name, product.name, 0, 1)
