#!/usr/bin/env python3
"""Time a kopt latency bundle on the device this runs on (a Raspberry Pi, a phone's Python).

    python time_bundle.py BUNDLE_DIR_OR_ZIP [-o times.json] [--threads N] [--runs N]

The host writes the bundle (kopt's LatencyModel.write_bundle): one .tflite file per fused group
of the models it will search, a trivial model for the per-call overhead, optionally the whole
models, and manifest.json. This script runs each file in LiteRT (XNNPACK, as kopt's timer does)
and writes the median ms of each, keyed as the manifest says, with this device's CPU model,
LiteRT version and thread count; LatencyModel.from_device_json reads it on the host.

It imports only ai_edge_litert, numpy and the standard library, because the device has no
TensorFlow and no kopt. So this file is where kopt keeps the pieces both sides must share: the
median timer (kopt.runtime.clock imports it from here) and the CPU name and LiteRT version that
key the latency tables (kopt.runtime.latency_table imports them), and the host and the device
measure with the same code.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

DEVICE_FORMAT = "kopt-latency-device/1"
MANIFEST = "manifest.json"
BUDGET_S = 0.1  # time spent measuring one file when --runs is not given, as kopt's clock


def cpu_model() -> str:
    """/proc/cpuinfo's 'model name', else 'Model' or 'Hardware' (Raspberry Pi), else platform."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        info = ""
    for field_name in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{field_name}\s*:\s*(.+)$", info, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown"


def litert_version() -> str:
    try:
        from importlib import metadata

        return metadata.version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - a vendored build without metadata
        return "unknown"


def median_ms(fn, runs: int | None = None, warmup: int = 5) -> float:
    """Median wall time of fn() in ms after warm-up; runs=None fits ~0.1 s of runs (10..300)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    if runs is None:
        each = (time.perf_counter() - t0) / max(warmup, 1)
        runs = int(min(300, max(10, BUDGET_S / max(each, 1e-6))))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def time_file(path: Path, threads: int, runs: int | None) -> float:
    """Median ms of one invoke of a .tflite file, inputs filled with seeded random values."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interpreter.get_input_details():
        dtype = np.dtype(d["dtype"])
        if dtype.kind == "f":
            x = rng.normal(0, 1, d["shape"]).astype(dtype)
        else:
            info = np.iinfo(dtype)
            x = rng.integers(info.min, info.max, d["shape"], endpoint=True).astype(dtype)
        interpreter.set_tensor(d["index"], x)
    return median_ms(interpreter.invoke, runs)


def time_bundle(bundle: Path, threads: int | None = None, runs: int | None = None,
                log=print) -> dict:
    """The device JSON for a bundle folder: meta, overhead_ms, entries by key, models."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    threads = int(threads or manifest.get("threads", 1))
    out = {"format": DEVICE_FORMAT,
           "meta": {"runtime": manifest["runtime"], "threads": threads, "cpu": cpu_model(),
                    "litert": litert_version(), "machine": platform.machine(),
                    "python": platform.python_version()},
           "overhead_ms": time_file(bundle / manifest["overhead"], threads, runs),
           "entries": {}, "models": {}}
    groups = manifest.get("groups", [])
    for i, item in enumerate(groups):
        ms = time_file(bundle / item["file"], threads, runs)
        out["entries"][item["key"]] = {"ms": ms, "desc": item.get("desc", {})}
        log(f"[{i + 1}/{len(groups)}] {item.get('desc', {}).get('ops', item['file'])}: "
            f"{ms:.4f} ms")
    for item in manifest.get("models", []):
        out["models"][item["name"]] = time_file(bundle / item["file"], threads, runs)
        log(f"model {item['name']}: {out['models'][item['name']]:.4f} ms")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle folder or .zip written by LatencyModel.write_bundle")
    p.add_argument("-o", "--output", help="JSON to write (default: times.json next to it)")
    p.add_argument("--threads", type=int, help="LiteRT threads (default: the bundle's)")
    p.add_argument("--runs", type=int, help="runs per file (default: ~0.1 s of runs)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    src = Path(args.bundle)
    output = Path(args.output) if args.output else (
        src.with_name(src.stem + "_times.json") if src.suffix == ".zip" else src / "times.json")
    with tempfile.TemporaryDirectory() as tmp:
        folder = src
        if src.suffix == ".zip":
            with zipfile.ZipFile(src) as z:
                z.extractall(tmp)
            folder = Path(tmp)
        result = time_bundle(folder, args.threads, args.runs)
    output.write_text(json.dumps(result, indent=1))
    print(f"wrote {output} ({len(result['entries'])} groups, {result['meta']['cpu']}, "
          f"{result['meta']['threads']} thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
