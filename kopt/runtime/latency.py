"""A latency model of the target runtime: whole-model latency predicted from measured parts.

    lm = LatencyModel("litert-int8", threads=1)     # this machine; tables cached on disk
    lm.predict(model)                               # ms: overhead + sum of the fused groups
    lm.measure(model)                               # ms: the whole model, run
    print(lm.per_layer(model).table())              # where the time goes

A runtime runs a model as a sequence of fused ops (conv+BN+ReLU is one XNNPACK op), and for the
small batch-1 models kopt targets, their times add up: so the prediction is the runtime's
fixed cost per call plus, for each fused group (kopt.runtime.groups), the time of that group
run alone with its real input shapes, less that fixed cost. Group times are measured on the
runtime itself, never estimated from MACs (latency is a step function of the channel count,
with steps that depend on the CPU), and kept in a table on disk keyed by runtime, runtime
version, CPU model and threads (kopt.runtime.latency_table), so a search that asks for a
thousand candidate models times each distinct group once. Where the host is not the target,
`write_bundle` + kopt/runtime/time_bundle.py on the device + `from_device_json` give the table
there.

What the sum misses: cache effects between ops (a tensor the previous op left in cache), the
int8 requantisation a Concatenate of differently-scaled inputs adds in the whole model, and ops
the converter removes or merges across group boundaries (a Reshape folded away, a pad merged
into a conv). tools/bench_latency_model.py measures how far off the sum is.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from kopt.errors import LatencyTableError, RuntimeChoiceError
from kopt.ir import Graph, Node
from kopt.ir.ops import category, kind
from kopt.keras_io import from_keras, to_keras
from kopt.progress import bar
from kopt.runtime.bundle import write_bundle
from kopt.runtime.channel_steps import (
    ChannelSteps,
    check_head,
    find_steps,
    narrowed,
    sweep_widths,
)
from kopt.runtime.clock import interleaved_ms, median_ms
from kopt.runtime.groups import fused_group, fused_groups, group_desc, group_key, sub_graph
from kopt.runtime.latency_table import LatencyTable
from kopt.runtime.timer import Timer, trivial_model
from kopt.runtime.timing import TimingReport

log = logging.getLogger(__name__)

LATENCY_RUNTIMES = ("litert-int8", "litert")


_MAX_SIDE_BY_SIDE_RUNS = 20000  # 2-microsecond models: 0.04 s each


class WholeModel:
    """A whole model converted for the runtime and loaded: each call runs it once."""

    def __init__(self, call: Any):
        self._call = call

    def __call__(self) -> Any:
        return self._call()


def _graph(model_or_graph: Any) -> Graph:
    return model_or_graph if isinstance(model_or_graph, Graph) else from_keras(model_or_graph)


class LatencyModel:
    """Predicts and measures batch-1 latency (ms) in one LiteRT runtime ("litert-int8": full
    int8 PTQ, or "litert": float32; XNNPACK) with `threads` threads.

    cache_dir: where the table file lives (default $KOPT_CACHE_DIR/latency or
    ~/.cache/kopt/latency). runs: timing runs per part (None: ~0.1 s of runs each).
    `timed` counts the groups this object has measured (not found in the table)."""

    def __init__(self, runtime: str = "litert-int8", threads: int = 1,
                 cache_dir: str | os.PathLike | None = None, runs: int | None = None,
                 table: LatencyTable | None = None):
        if runtime not in LATENCY_RUNTIMES:
            raise RuntimeChoiceError(f"latency model runtime '{runtime}': use one of "
                                     f"{LATENCY_RUNTIMES}")
        self.timer = Timer(runtime, threads)
        self.runtime, self.threads, self.runs = runtime, self.timer.threads, runs
        self.table = table if table is not None else LatencyTable.open(runtime, self.threads,
                                                                       cache_dir)
        self.timed = 0

    @classmethod
    def from_device_json(cls, path: str | os.PathLike, runs: int | None = None
                         ) -> LatencyModel:
        """The latency model of a device, from the JSON kopt/runtime/time_bundle.py wrote there. It
        predicts from that table only: a group the device did not time raises
        LatencyTableError, and `measure` (which would run here, not there) is refused."""
        table = LatencyTable.from_device_json(path)
        return cls(table.meta.get("runtime", "litert-int8"), int(table.meta.get("threads", 1)),
                   runs=runs, table=table)

    @property
    def path(self) -> Path | None:
        """The table file (None for a device table)."""
        return self.table.path

    def __repr__(self) -> str:
        return (f"LatencyModel({self.runtime!r}, threads={self.threads}, cpu="
                f"{self.table.meta.get('cpu')!r}, {len(self.table)} entries, "
                f"{self.table.source})")

    # ---- the table ---------------------------------------------------------------------
    def overhead_ms(self) -> float:
        """The runtime's fixed cost of one call (a trivial model), measured once per table."""
        if self.table.overhead_ms is None:
            self._need_host("the per-call overhead")
            model, shapes = trivial_model()
            self.table.set_overhead(self._time(model, shapes))
        return float(self.table.overhead_ms)

    def sub_ms(self, sub: Graph, shapes: list[tuple]) -> float:
        """Time (ms, overhead subtracted) of a standalone group (groups.sub_graph): from the
        table, or measured now and added to it."""
        key = group_key(sub)
        ms = self.table.get(key)
        if ms is not None:
            return ms
        self._need_host(f"group {group_desc(sub)['ops']} at {shapes}")
        overhead = self.overhead_ms()
        try:
            ms, error = max(0.0, self._time(to_keras(sub), shapes) - overhead), None
        except Exception as err:  # noqa: BLE001 - one untimeable group must not sink all
            log.warning("%s could not be timed in %s (counted as 0 ms): %s", sub.name,
                        self.runtime, err)
            ms, error = 0.0, str(err)[:200]
        self.timed += 1
        self.table.put(key, ms, group_desc(sub), error)
        return ms

    def group_ms(self, g: Graph, nodes: list[Node]) -> float:
        """Time (ms, overhead subtracted) of the fused group `nodes` of `g` (looked up without
        copying its weights; they are copied only when it has to be timed)."""
        ms = self.table.get(group_key(sub_graph(g, nodes, weights=False)[0]))
        return ms if ms is not None else self.sub_ms(*sub_graph(g, nodes))

    def _time(self, model: Any, shapes: list[tuple]) -> float:
        """One measurement on this machine: the median ms of the model's call."""
        return median_ms(self.timer.callable(model, shapes), self.runs)

    def _need_host(self, what: str) -> None:
        if self.table.source != "host":
            raise LatencyTableError(
                f"the device table ({self.table.meta.get('cpu')}) has no time for {what}: "
                "write a bundle for this model (LatencyModel.write_bundle) and time it on the "
                "device with kopt/runtime/time_bundle.py")

    # ---- predictions and measurements --------------------------------------------------
    def predict(self, model_or_graph: Any, progress: bool = False) -> float:
        """Predicted whole-model latency (ms): per-call overhead + each fused group's time."""
        g = _graph(model_or_graph)
        groups = fused_groups(g)
        parts = [self.group_ms(g, nodes) for nodes in bar(groups, progress and len(groups) > 1,
                                                           desc=f"latency ({self.runtime})")]
        return self.overhead_ms() + float(sum(parts))

    def per_layer(self, model_or_graph: Any) -> TimingReport:
        """The prediction, part by part: one row per fused group (named by its head, its ops
        joined by '+'), as a TimingReport whose total is the predicted latency."""
        g = _graph(model_or_graph)
        rows = [{"name": nodes[0].name, "op": "+".join(n.op for n in nodes),
                 "category": category(nodes[0].op), "kind": kind(nodes[0].op),
                 "ms": self.group_ms(g, nodes)} for nodes in fused_groups(g)]
        parts = sum(r["ms"] for r in rows) or 1.0
        for r in rows:
            r["share"] = r["ms"] / parts
        overhead = self.overhead_ms()
        return TimingReport(runtime=self.runtime, total_ms=overhead + sum(r["ms"] for r in rows),
                            layers=rows, threads=self.threads, overhead_ms=overhead,
                            model=f"{g.name} (predicted)")

    def measure(self, model_or_graph: Any, runs: int | None = None) -> float:
        """Measured whole-model latency (ms, median of batch-1 calls) on this machine; a
        runner from `runner` is measured without converting the model again."""
        return median_ms(self._ready(model_or_graph), self.runs if runs is None else runs)

    def measure_side_by_side(self, models: list[Any], runs: int | None = None,
                             rounds: int = 5, min_seconds: float = 0.1) -> list[float]:
        """Measured latency (ms) of each model (or runner from `runner`), their runs
        interleaved in rounds (the median of each model's runs; `runs` per model, 200 if
        neither this nor the model's `runs` says). The machine drifts by a few percent in
        minutes, so a ratio of two measurements is only as good as the time between them: this
        is the one to take a speed-up from.

        Each model runs for at least `min_seconds` in all, in at least `rounds` rounds and up
        to 20 (one per 50 runs): on this project's 2-core machine a burst of slowness lasts
        some milliseconds, and 200 runs of a 0.018-ms GRU take 3.6 ms, so one burst could cover
        most of one model's runs and none of the other's. A search read an unchanged GRU
        model's original at 0.0237 ms beside its result at 0.0183 (1.29x) three times in three
        seeds, where 600 interleaved runs each gave 0.0183 and 0.0182."""
        calls = [self._ready(m) for m in models]
        first = [median_ms(call, runs=3) for call in calls]  # warm-up, and a first reading
        runs = runs or self.runs or 200
        runs = min(max(runs, math.ceil(min_seconds * 1e3 / max(min(first), 1e-4))),
                   _MAX_SIDE_BY_SIDE_RUNS)
        rounds = max(rounds, min(runs // 50, 20))
        per_round = max(1, -(-runs // rounds))
        return [float(np.median(np.concatenate(spent)))
                for spent in interleaved_ms(calls, per_round, rounds)]

    def runner(self, model_or_graph: Any) -> WholeModel:
        """The whole model converted and loaded, ready to run once per call: what measure and
        measure_side_by_side take in place of a model they would otherwise convert again (a
        search measures every candidate beside the same original)."""
        self._need_host("a whole model (measure runs it here, not on the device)")
        g = _graph(model_or_graph)
        model = model_or_graph if not isinstance(model_or_graph, Graph) else to_keras(g)
        shapes = [(1,) + tuple(g[n].output_shape[1:]) for n in g.inputs]
        return WholeModel(self.timer.callable(model, shapes))

    def _ready(self, model_or_runner: Any) -> WholeModel:
        if isinstance(model_or_runner, WholeModel):
            return model_or_runner
        return self.runner(model_or_runner)

    # ---- channel steps -----------------------------------------------------------------
    def channel_steps(self, model_or_graph: Any, node: str, widths: list[int] | None = None,
                      tolerance: float = 0.05) -> ChannelSteps:
        """Latency of the fused group headed by conv/dense `node` at each output width of a
        coarse sweep (or `widths`), with the widths where it steps down (see
        kopt.runtime.channel_steps). Each width is a group like any other: timed once, cached."""
        g = _graph(model_or_graph)
        if node not in g:
            raise LatencyTableError(f"no node '{node}' in {g.name}")
        sub, shapes = sub_graph(g, fused_group(g, g[node]))
        channels = int(sub[check_head(sub)].output_shape[-1])
        widths = sorted(set(widths)) if widths else sweep_widths(channels)
        ms = [self.sub_ms(narrowed(sub, w), shapes) for w in widths]
        return ChannelSteps(node, widths, ms, find_steps(widths, ms, tolerance))

    # ---- device tables -----------------------------------------------------------------
    def write_bundle(self, models: Any, path: str | os.PathLike,
                     include_models: bool = True) -> Path:
        """Write the .tflite file of every distinct fused group of `models` (one model or a
        list), the trivial model for the per-call overhead and, with include_models, each
        whole model (so the device can check the prediction), with a manifest, into folder
        `path` (or a .zip). On the device: `python time_bundle.py BUNDLE -o times.json`; back
        here: LatencyModel.from_device_json("times.json")."""
        models = models if isinstance(models, (list, tuple)) else [models]
        trivial, trivial_shapes = trivial_model()
        groups: dict[str, tuple[bytes, dict]] = {}
        wholes: dict[str, bytes] = {}
        for i, m in enumerate(models):
            g = _graph(m)
            for nodes in fused_groups(g):
                sub, shapes = sub_graph(g, nodes)
                key = group_key(sub)
                if key not in groups:
                    groups[key] = (self.timer.flatbuffer(to_keras(sub), shapes), group_desc(sub))
            if include_models:
                keras_model = to_keras(g) if isinstance(m, Graph) else m
                shapes = [(1,) + tuple(g[n].output_shape[1:]) for n in g.inputs]
                wholes[f"{i}:{g.name}"] = self.timer.flatbuffer(keras_model, shapes)
        meta = {"runtime": self.runtime, "threads": self.threads}
        return write_bundle(path, meta, self.timer.flatbuffer(trivial, trivial_shapes), groups,
                            wholes)


def predict_latency(model_or_graph: Any, runtime: str = "litert-int8", threads: int = 1,
            cache_dir: str | os.PathLike | None = None) -> float:
    """Predicted batch-1 latency (ms) of a model in `runtime` on this machine (see
    LatencyModel; tables are cached on disk, so a second call times nothing)."""
    return LatencyModel(runtime, threads, cache_dir).predict(model_or_graph)
