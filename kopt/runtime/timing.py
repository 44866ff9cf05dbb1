"""Per-layer timing in Keras (TensorFlow) or LiteRT/XNNPACK (float or int8).

Python LiteRT has no per-op profiler, so each IR node is timed as its own one-layer model with
the real input shape(s), and the whole model is timed too: the gap between the sum of the parts
and the whole shows what fusion (conv+BN+ReLU become one XNNPACK op) and cache effects are
worth. Each runtime's fixed cost per call (measured on a trivial model) is subtracted from every
part. Identical layers (same op, config and input shapes) are built and converted once.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from kopt.ir import Graph, Node
from kopt.ir.ops import KINDS, category, kind
from kopt.keras_io import from_keras, to_keras
from kopt.progress import bar
from kopt.runtime.clock import median_ms
from kopt.runtime.groups import fused_group, group_key, sub_graph
from kopt.runtime.litert import op_table
from kopt.runtime.timer import RUNTIMES, Timer, overhead_ms  # noqa: F401 - RUNTIMES for the CLI

log = logging.getLogger(__name__)


# ---- the report --------------------------------------------------------------------------
@dataclass
class TimingReport:
    """Per-layer and whole-model times (ms, medians) in one runtime."""

    runtime: str
    total_ms: float
    layers: list[dict] = field(default_factory=list)
    batch_size: int = 1
    threads: int = 1
    overhead_ms: float = 0.0
    model: str = "model"
    fallback_ops: dict[str, int] = field(default_factory=dict)  # "OP(dtype)": count

    @property
    def sum_ms(self) -> float:
        return float(sum(r["ms"] for r in self.layers))

    @property
    def gap(self) -> float:
        """(sum of parts - whole) / whole: > 0 when the parts cost more than the whole."""
        return (self.sum_ms - self.total_ms) / self.total_ms if self.total_ms else float("nan")

    def totals(self, by: str = "category") -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.layers:
            out[r[by]] = out.get(r[by], 0.0) + r["ms"]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def table(self, top: int | None = None) -> str:
        rows = sorted(self.layers, key=lambda r: -r["ms"])[:top] if top else self.layers
        width = max([len(r["name"]) for r in rows] + [4])
        opw = max([len(r["op"]) for r in rows] + [2])
        lines = [f"{self.model} in {self.runtime} (batch {self.batch_size}, {self.threads} "
                 f"thread(s)); times are medians in ms",
                 f"{'name':<{width}}  {'op':<{opw}}  {'category':<10} {'kind':<10} "
                 f"{'ms':>10} {'share':>6}"]
        lines += [f"{r['name']:<{width}}  {r['op']:<{opw}}  {r['category']:<10} {r['kind']:<10} "
                  f"{r['ms']:>10.4f} {r['share']:>6.1%}" for r in rows]
        lines.append("by category: " + ", ".join(f"{k} {v:.4g} ms" for k, v in
                                                 self.totals("category").items()))
        lines.append("by kind: " + ", ".join(f"{k} {v:.4g}" for k, v in
                                             self.totals("kind").items()))
        lines.append(f"sum of parts {self.sum_ms:.4g} ms, whole model {self.total_ms:.4g} ms "
                     f"(gap {self.gap:+.1%}; per-call overhead {self.overhead_ms:.4g} ms "
                     f"subtracted from each part)")
        if self.fallback_ops:
            lines.append("ops XNNPACK does not take in the whole model's file (TFLite's own "
                         "kernels run them): " + ", ".join(
                             f"{op} x{n}" for op, n in sorted(self.fallback_ops.items())))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"model": self.model, "runtime": self.runtime, "batch_size": self.batch_size,
                "threads": self.threads, "total_ms": self.total_ms, "sum_ms": self.sum_ms,
                "gap": self.gap, "overhead_ms": self.overhead_ms,
                "by_category": self.totals("category"), "by_kind": self.totals("kind"),
                "fallback_ops": self.fallback_ops, "layers": self.layers}

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    def to_csv(self, path: str | os.PathLike) -> None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["name", "op", "category", "kind", "ms", "share"])
            w.writeheader()
            w.writerows({k: r[k] for k in w.fieldnames} for r in self.layers)

    def plot(self, path: str | os.PathLike, top: int = 15) -> None:
        """PNG: stacked bars by category and kind next to the whole model; the top-N layers."""
        plt = _pyplot()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
        _stacked(ax1, [self], [""])
        ax1.set_title(f"{self.model}: {self.runtime}, batch {self.batch_size}")
        rows = sorted(self.layers, key=lambda r: -r["ms"])[:top][::-1]
        colors = _kind_colors()
        ax2.barh([r["name"] for r in rows], [r["ms"] for r in rows],
                 color=[colors.get(r["kind"], "grey") for r in rows])
        ax2.set_xlabel("time (ms, median)")
        ax2.set_title(f"{len(rows)} slowest layers")
        ax2.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _kind_colors() -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {k: cmap(i % 10) for i, k in enumerate(list(KINDS) + ["other"])}


def _stacked(ax: Any, reports: list[TimingReport], labels: list[str]) -> None:
    """For each report three bars: by category, by kind (stacked), and the whole model."""
    colors = _kind_colors()
    cat_colors = {"tensor": "dimgray", "non-tensor": "lightgray"}
    ticks, names, seen = [], [], set()
    for i, (rep, label) in enumerate(zip(reports, labels)):
        base = i * 4
        for x, by, palette in ((base, "category", cat_colors), (base + 1, "kind", colors)):
            bottom = 0.0
            for key, ms in rep.totals(by).items():
                tag = f"{by}: {key}"
                ax.bar(x, ms, bottom=bottom, color=palette.get(key, "grey"),
                       label=None if tag in seen else tag)
                seen.add(tag)
                bottom += ms
        ax.bar(base + 2, rep.total_ms, color="black", label=None if "w" in seen else
               "whole model (measured)")
        seen.add("w")
        ticks += [base, base + 1, base + 2]
        names += [f"{label}\ncategory", f"{label}\nkind", f"{label}\nwhole"]
    ax.set_xticks(ticks, names, fontsize=8)
    ax.set_ylabel("time (ms, median)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def timing_report(model: Any, runtime: str = "keras", batch_size: int = 1, threads: int = 1,
                  runs: int | None = None, representative_data: Any = None,
                  progress: bool = False) -> TimingReport:
    """Time every node of `model` (and the whole model) in `runtime`: "keras", "litert"
    (float32, XNNPACK) or "litert-int8" (full-int8 PTQ, XNNPACK). runs=None fits the number of
    runs to ~0.1 s per part. `threads` sets LiteRT's thread count; Keras runs on TensorFlow's
    own thread pools. representative_data only calibrates the whole int8 model (random data
    otherwise: timings do not depend on the quantisation ranges)."""
    g = from_keras(model)
    timer = Timer(runtime, threads)
    shapes = [(batch_size,) + tuple(g[n].output_shape[1:]) for n in g.inputs]
    fixed = _fixed_batch(model, g, batch_size)
    fallback: dict[str, int] = {}
    if runtime == "keras":
        whole = timer.callable(fixed, shapes, representative_data)
    else:  # the file is read twice: run, and asked which ops XNNPACK left to TFLite
        flat = timer.flatbuffer(fixed, shapes, representative_data)
        whole, fallback = timer.file_callable(flat, shapes), op_table(flat)[1]
    total = median_ms(whole, runs)
    overhead = overhead_ms(timer, runs)
    measure = _Measurer(g, timer, batch_size, runs, overhead)
    nodes = [n for n in g.topological() if n.op != "InputLayer"]
    times = {n.name: measure([n]) for n in bar(nodes, progress, desc=f"timing ({runtime})")}
    for node in nodes:  # fused followers get the group's time beyond what the head costs alone
        group = fused_group(g, node)
        if len(group) > 1:
            _attribute(times, group, measure(group))
    layers = [{"name": n.name, "op": n.op, "category": category(n.op), "kind": kind(n.op),
               "ms": times[n.name]} for n in nodes]
    parts = sum(r["ms"] for r in layers) or 1.0
    for r in layers:
        r["share"] = r["ms"] / parts
    return TimingReport(runtime=runtime, total_ms=total, layers=layers, batch_size=batch_size,
                        threads=threads, overhead_ms=overhead, model=g.name,
                        fallback_ops=fallback)


class _Measurer:
    """Times node lists as sub-models; identical ones (same groups.group_key) are built once."""

    def __init__(self, g: Graph, timer: Timer, batch: int, runs: int | None, overhead: float):
        self.g, self.timer, self.batch, self.runs, self.overhead = g, timer, batch, runs, overhead
        self.cache: dict[str, Callable[[], Any] | None] = {}

    def __call__(self, nodes: list[Node]) -> float:
        sub, shapes = sub_graph(self.g, nodes, self.batch)
        key = group_key(sub)
        if key not in self.cache:
            try:
                self.cache[key] = self.timer.callable(to_keras(sub), shapes)
            except Exception as err:  # noqa: BLE001 - one untimeable layer must not sink all
                log.warning("'%s' (%s) could not be timed in %s: %s", nodes[0].name,
                            nodes[0].op, self.timer.runtime, err)
                self.cache[key] = None
        fn = self.cache[key]
        return 0.0 if fn is None else max(0.0, median_ms(fn, self.runs) - self.overhead)


def _attribute(times: dict[str, float], group: list[Node], group_ms: float) -> None:
    """Head keeps its own time (at most the group's); followers share the rest in proportion
    to their stand-alone times."""
    head, rest = group[0].name, [n.name for n in group[1:]]
    times[head] = min(times[head], group_ms)
    extra = max(0.0, group_ms - times[head])
    alone = sum(times[n] for n in rest)
    for n in rest:
        times[n] = extra * (times[n] / alone if alone > 0 else 1 / len(rest))


def _fixed_batch(model: Any, g: Graph, batch: int) -> Any:
    """The model itself for Keras; LiteRT conversion fixes batch 1, so re-emit at `batch`."""
    if batch == 1:
        return model
    g = g.copy()
    for n in g.inputs:
        g[n].output_shapes = [(batch,) + tuple(g[n].output_shape[1:])]
    return to_keras(g, backend=g[g.inputs[0]].source)


# ---- comparing -----------------------------------------------------------------------------
@dataclass
class Comparison:
    """Two reports of the same runtime side by side, layers aligned by node name."""

    before: TimingReport
    after: TimingReport

    @property
    def rows(self) -> list[dict]:
        a = {r["name"]: r for r in self.before.layers}
        b = {r["name"]: r for r in self.after.layers}
        names = list(a) + [n for n in b if n not in a]
        return [{"name": n, "op": (a.get(n) or b[n])["op"],
                 "before_ms": a[n]["ms"] if n in a else None,
                 "after_ms": b[n]["ms"] if n in b else None} for n in names]

    def totals(self, by: str = "category") -> dict[str, tuple[float, float]]:
        x, y = self.before.totals(by), self.after.totals(by)
        return {k: (x.get(k, 0.0), y.get(k, 0.0)) for k in dict.fromkeys(list(x) + list(y))}

    def table(self) -> str:
        lines = [f"{'':<14} {'before':>10} {'after':>10} {'ratio':>7}"]
        for by in ("category", "kind"):
            for k, (x, y) in self.totals(by).items():
                lines.append(f"{k:<14} {x:>10.3f} {y:>10.3f} {_ratio(x, y):>7}")
            lines.append("")
        for label, x, y in (("sum of parts", self.before.sum_ms, self.after.sum_ms),
                            ("whole model", self.before.total_ms, self.after.total_ms)):
            lines.append(f"{label:<14} {x:>10.3f} {y:>10.3f} {_ratio(x, y):>7}")
        return f"times in ms ({self.before.runtime} vs {self.after.runtime})\n" + \
            "\n".join(lines)

    def to_json(self, path: str | os.PathLike) -> None:
        data = {"before": self.before.to_dict(), "after": self.after.to_dict(),
                "by_category": self.totals("category"), "by_kind": self.totals("kind"),
                "layers": self.rows}
        with open(path, "w") as f:
            json.dump(data, f, indent=1)

    def plot(self, path: str | os.PathLike) -> None:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(9, 5.5))
        _stacked(ax, [self.before, self.after], ["before", "after"])
        ax.set_title(f"{self.before.model} -> {self.after.model} ({self.after.runtime})")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


_RESOLUTION_MS = 1e-3  # per-part times below 1 us are overhead-subtraction noise, not speed


def _ratio(x: float, y: float) -> str:
    """before / after, or "-" when the after time is too small to divide by meaningfully."""
    return f"{x / y:.2f}x" if y >= _RESOLUTION_MS else "-"


def compare_reports(before: TimingReport, after: TimingReport) -> Comparison:
    """Align two reports (e.g. before and after kopt.optimize) by node name and category."""
    return Comparison(before, after)


