"""Where a conv or dense group's latency steps down as its output channels shrink.

XNNPACK (and the NEON / AVX kernels under it) runs whole tiles of output channels, so latency
is a step function of the width, and the steps differ between CPUs: on one Xeon a 28x28 int8
conv cost the same at every width from 8 to 32. Pruning to a width inside a plateau buys no
time and costs accuracy; the useful widths are the widest one on each plateau, where one
channel more would cost a step more. This module narrows a standalone group to a width, picks
the widths of a coarse sweep and reads the steps off the measured curve; the latency model
times the sweep (and caches it like any group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kopt.errors import ChannelSweepError
from kopt.ir import Graph
from kopt.ir.channels import SOURCES, slice_weights

_ABS_TOLERANCE_MS = 1e-3  # differences under 1 us are timer noise, not a step


def check_head(sub: Graph) -> str:
    """The name of the standalone group's head, if its output width is free to choose."""
    head = next(n for n in sub.topological() if n.op != "InputLayer")
    if head.op not in SOURCES or head.config.get("groups", 1) != 1 \
            or head.config.get("data_format", "channels_last") != "channels_last":
        raise ChannelSweepError(f"'{head.name}' ({head.op}) has no free output width: sweep a "
                                "Conv (groups=1, channels_last) or Dense layer")
    return head.name


def narrowed(sub: Graph, width: int) -> Graph:
    """A copy of the standalone group `sub` whose head keeps its first `width` output
    channels; the BN / ReLU after it follow. Weight values do not matter for latency."""
    head = check_head(sub)
    channels = int(sub[head].output_shape[-1])
    if not 1 <= width <= channels:
        raise ChannelSweepError(f"width {width} outside 1..{channels} for '{head}'")
    new = sub.copy()
    mask = np.arange(channels) < width
    for node in new.topological():
        if node.op == "InputLayer":
            continue
        slice_weights(node, None, mask)
        node.output_shapes[0] = tuple(node.output_shapes[0][:-1]) + (int(width),)
    return new


def sweep_widths(channels: int, points: int = 12) -> list[int]:
    """A coarse sweep of at most about `points` widths, and `channels` itself: the multiples of
    a power-of-two step. A power of two rather than channels / points, so that the sweeps of a
    group before and after pruning share their widths, and the table times them once."""
    step = 1 << max(0, math.ceil(math.log2(max(1.0, channels / max(1, points)))))
    return sorted(set(range(step, channels + 1, step)) | {channels})


def find_steps(widths: list[int], ms: list[float], tolerance: float = 0.05) -> list[int]:
    """The widest width of each latency plateau, ascending (the full width always included).

    The curve is first made monotone (each width costs at most what any wider one costs: a
    narrower conv measured slower is noise), then a width is the top of its plateau when the
    next wider one costs more by `tolerance` (relative) and 1 us."""
    order = np.argsort(widths)
    w = [int(widths[i]) for i in order]
    t = np.minimum.accumulate(np.asarray(ms, float)[order][::-1])[::-1]
    steps = [w[i] for i in range(len(w) - 1)
             if t[i + 1] > t[i] * (1 + tolerance) + _ABS_TOLERANCE_MS]
    return steps + [w[-1]]


@dataclass
class ChannelSteps:
    """A measured channel sweep of one group and the steps read off it."""

    node: str
    widths: list[int]
    ms: list[float]
    steps: list[int]

    def snap(self, width: int) -> int:
        """The widest width that costs what `width` costs: the top of its plateau. Pruning to
        `width` and keeping this many channels instead runs as fast and keeps more capacity."""
        return next((s for s in self.steps if s >= width), self.steps[-1])

    def cost(self, width: int) -> float:
        """The measured time (ms) at the plateau `width` lies on."""
        return float(self.ms[self.widths.index(self.snap(width))])

    def table(self) -> str:
        lines = [f"channel sweep of '{self.node}' (ms, per-call overhead subtracted)",
                 f"{'width':>6} {'ms':>9}  step"]
        lines += [f"{w:>6} {t:>9.4f}  {'<-' if w in self.steps else ''}"
                  for w, t in zip(self.widths, self.ms)]
        return "\n".join(lines)
