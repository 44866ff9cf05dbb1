"""A depthwise conv with more than 25 taps -> the sum of depthwise convs of at most 25 (exact).

A k_h x k_w depthwise conv (stride 1, "same" padding, both sizes odd) is split along its width
into r = (k_w - 1) / 2 convs of size k_h x 3, the d-th dilated by d along the width: its taps
read columns -d, 0 and +d of the original kernel's centre (column 0 only in the first part; the
others hold zeros there). With "same" padding every part is centred as the original kernel is,
so the parts' sum, with the bias in the first part and the activation after the sum, is the
original conv. Where k_h x 3 is still more than 25 taps and k_w x 3 is not, the split is along
the height instead. A 7x7 kernel becomes three 7x3 kernels and two Adds; on a map no wider
than d, part d reads only padding and is left out (a 2x2 map: one 7x3 kernel). A Conv2D with
one channel per group (groups == filters == input channels) is a depthwise conv too, and Keras'
ConvNeXt writes its 7x7 ones so; the converter makes a CONV_2D of it that is just as slow (0.416
ms against 0.414 for the DepthwiseConv2D at 16x16x96, int8), and it is split into depthwise
parts the same way.

Why: XNNPACK's depthwise kernels run a kernel of up to 25 taps in one pass; past that it takes a
much slower path. Measured on this project's machine (AMD EPYC, LiteRT 2.3, 1 thread, 14x14x32,
int8, alone): 5x5 0.0051 ms, 4x6 0.0050, 5x6 0.065, 6x6 0.078 (a scratch sweep). Between two 1x1
convs (`python tools/bench_runtime_rewrites.py --cases dw7 dw7_28`, medians of three interleaved
comparisons): 7x7 at 14x14x32 0.1049 -> 0.0179 ms in int8, 0.0844 -> 0.0201 ms in float; at
28x28x32 0.4134 -> 0.0673 (int8), 0.3396 -> 0.0762 (float). ConvNeXt's 7x7 depthwise convs
(keras.applications.ConvNeXt*) are the common case. Whether a given CPU's XNNPACK build has the
slow path is the runtime's business, so the rule is registered default=False and
kopt.flows.for_runtime applies it only where the latency model predicts the model faster,
keeping it only when the runtime measures it faster.
In int8 each part's output is quantised on its own before the sum, so the int8 file differs a
little from the unsplit one; the float model does not change.

Declined: strides other than 1, "valid" or "causal" padding, dilated kernels, even kernel
sizes, kernels of at most 25 taps, kernels whose every split part would still have more than 25
taps (9x9 and up), channels_first, shared layers.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np

from kopt.ir import Graph, Node
from kopt.ir.ops import channels_last
from kopt.rewriting import Match, PlacedRule, register
from rewrites._conv import new_node, pair2

MAX_TAPS = 25
"""The most taps XNNPACK's depthwise conv runs in one pass (measured: see the docstring)."""


def split_axis(kernel_size: tuple[int, int]) -> int | None:
    """The kernel axis (0: height, 1: width) to split along so that every part has at most
    MAX_TAPS taps: the width when k_h x 3 fits, else the height; None when neither does."""
    kh, kw = kernel_size
    if kh * 3 <= MAX_TAPS:
        return 1
    if kw * 3 <= MAX_TAPS:
        return 0
    return None


@register(exact=True, default=False)
class SplitDepthwiseKernel(PlacedRule):
    """DepthwiseConv2D(k_h x k_w > 25 taps), or a Conv2D with groups == channels (Keras'
    ConvNeXt writes its depthwise convs so) -> the sum of (k_h x 3) depthwise parts dilated
    1..r.

    only: the names of the depthwise convs to split, or None for every one."""

    def matches(self, g: Graph) -> Iterator[Match]:
        for node in g.nodes_of("DepthwiseConv2D", "Conv2D"):
            if node.op == "Conv2D" and node.config.get("groups", 1) == 1:
                continue  # a plain conv: its taps are not per channel
            if self.chosen(node.name):
                yield Match(conv=node)

    def reject(self, g: Graph, m: Match) -> str | None:
        cfg = m.conv.config
        size = pair2(cfg["kernel_size"])
        if size[0] * size[1] <= MAX_TAPS:
            return f"its {size[0]}x{size[1]} kernel has at most {MAX_TAPS} taps"
        if size[0] % 2 == 0 or size[1] % 2 == 0:
            return f"its {size[0]}x{size[1]} kernel has an even size (no centre tap)"
        if pair2(cfg.get("strides", 1)) != (1, 1) or cfg.get("padding") != "same" \
                or pair2(cfg.get("dilation_rate", 1)) != (1, 1):
            return "only a stride-1, undilated, 'same' padded conv splits exactly"
        if split_axis(size) is None:
            return f"every split part of a {size[0]}x{size[1]} kernel has more than {MAX_TAPS} taps"
        if not channels_last(m.conv):
            return "channels_first"
        if m.conv.op == "Conv2D" and not (
                cfg["groups"] == cfg["filters"] == g.input_shapes(m.conv.name)[0][-1]):
            return "a grouped conv with more than one channel per group"
        if g.is_shared(m.conv):
            return "a shared layer"
        return None

    def apply(self, g: Graph, m: Match) -> None:
        conv = m.conv
        axis = split_axis(pair2(conv.config["kernel_size"]))
        inputs = [(s, p) for s, p, _ in g.in_edges(conv.name)]
        size = g.input_shapes(conv.name)[0][1 + axis]  # the map's extent along the split axis
        kernel = np.asarray(conv.weights["kernel"])
        if conv.op == "Conv2D":  # groups == channels: (k_h, k_w, 1, C) as depthwise (.., C, 1)
            kernel = kernel.transpose(0, 1, 3, 2)
        kernels = _part_kernels(kernel, axis)
        # part d > 1 reads only columns (rows) at +-d: on a map no wider than d, every one of
        # them is padding and the part is exactly zero. Dropped: an int8 tensor that is zero
        # everywhere has no scale, and XNNPACK refused to prepare the Add reading it (a 7x7
        # depthwise conv on ConvNeXtTiny's 2x2 stage at 64x64 input)
        kernels = [k for d, k in enumerate(kernels, 1) if d == 1 or size is None or d < size]
        alone = len(kernels) == 1
        parts = []
        for d, kernel in enumerate(kernels, 1):
            weights = {"kernel": kernel}
            if d == 1 and conv.config.get("use_bias", True):
                weights["bias"] = conv.weights["bias"]
            part = _depthwise(g, conv, f"{conv.name}_part{d}", weights,
                              activation=conv.config["activation"] if alone else "linear",
                              dilation_rate=(1, d) if axis == 1 else (d, 1))
            g.add(part)
            g.set_inputs(part.name, inputs)
            parts.append(part)
        last = parts[0]
        if not alone:
            last = _layer(g, conv, keras.layers.Add, f"{conv.name}_sum")
            g.set_inputs(last.name, [(p.name, 0) for p in parts])
            if conv.activation != "linear":
                total, last = last, _layer(g, conv, keras.layers.Activation, f"{conv.name}_act",
                                           activation=conv.config["activation"])
                g.set_inputs(last.name, [(total.name, 0)])
        g.rewire(conv.name, last.name)
        g.remove(conv.name)


def _part_kernels(kernel: np.ndarray, axis: int) -> list[np.ndarray]:
    """The parts of a (k_h, k_w, channels, multiplier) kernel split along `axis`: part d holds
    the slices at -d, 0 (for d = 1 only) and +d from the centre, as a size-3 kernel."""
    k = kernel.shape[axis]
    centre = k // 2
    parts = []
    for d in range(1, centre + 1):
        taps = np.take(kernel, [centre - d, centre, centre + d], axis=axis).copy()
        if d > 1:
            index = [slice(None)] * kernel.ndim
            index[axis] = 1
            taps[tuple(index)] = 0.0
        parts.append(taps.astype(np.float32))
    return parts


def _depthwise(g: Graph, conv: Node, base: str, weights: dict, **config: object) -> Node:
    """A DepthwiseConv2D part of `conv` (a DepthwiseConv2D, or a Conv2D with one channel per
    group, which the converter writes as a slow CONV_2D all the same), "same" padded, stride 1,
    its size from its kernel."""
    kernel = weights["kernel"]
    return new_node(g, base, lambda name: keras.layers.DepthwiseConv2D(
        kernel.shape[:2], padding="same", depth_multiplier=kernel.shape[3],
        use_bias="bias" in weights, name=name, dtype=conv.config.get("dtype"), **config),
        conv.output_shape, conv.output_dtypes, weights)


def _layer(g: Graph, like: Node, cls: type, base: str, **config: object) -> Node:
    """A new weightless node (an Add or an Activation) with `like`'s output shape and type."""
    return g.add(new_node(g, base, lambda name: cls(name=name, **config), like.output_shape,
                          like.output_dtypes))
