"""Uniform pruning against the latency search at equal measured latency, on keras.applications
models at 224x224: which keeps more of the model (MACs, params) for the same int8 speed-up?

    python tools/bench_uniform_vs_search.py                          # MobileNetV2 and ResNet50
    python tools/bench_uniform_vs_search.py --models mobilenetv2 --json out.json

Per model (weights=None, seeded; latency does not depend on trained values):
1. uniform: kopt's L1 channel pruning at --ratio (0.5) in every prunable group;
2. the speed-up that gives, measured side by side with int8 PTQ of the original;
3. search: kopt.flows.search.latency_search asked for that same speed-up.

With random weights there is no accuracy to keep, so the search runs without fine-tuning
(finetune=None), with no accuracy bar (max_drop=1) and without calibration samples: its moves
are priced by the latency model, ranked by the share of MACs they take per ms they cut (the
search's rule when it has no data: capacity stands in for accuracy; output error on random
images of a random network says little), and kept only when measured faster. What this
measures is where each method spends its cuts; the accuracy side is measured on the digits
examples (tools/bench_search.py). The random images still calibrate the int8 files.

Printed and written to --json: params, MACs and measured int8 latency (median of interleaved
runs, with the spread over rounds) of the original, uniform and searched models, and the
predicted per-block latency (LatencyModel.per_layer, summed per block) of each: where the time
goes before and after. Quote figures only from a quiet machine; the first run on a machine
builds the latency table for these models (tens of minutes; cached on disk after that).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

BUILDERS = {"mobilenetv2": "MobileNetV2", "resnet50": "ResNet50"}


def build(name: str, seed: int, size: int):
    import keras

    keras.utils.set_random_seed(seed)
    return getattr(keras.applications, BUILDERS[name])(weights=None,
                                                        input_shape=(size, size, 3))


def block_of(layer: str) -> str:
    """The block a keras.applications layer belongs to, by its name: "block_3_expand" ->
    "block_3", "conv2_block1_1_conv" -> "conv2_block1"; anything else is its own block."""
    match = re.match(r"(block_\d+|conv\d_block\d+)", layer)
    return match.group(1) if match else layer


def per_block(lm, model) -> dict[str, float]:
    """Predicted ms per block (fused groups summed by block_of their head)."""
    out: dict[str, float] = defaultdict(float)
    for row in lm.per_layer(model).layers:
        out[block_of(row["name"])] += row["ms"]
    return dict(out)


def timed(runners: dict, n: int, rounds: int) -> tuple[dict, dict]:
    """Median ms per runner over n interleaved invokes, and the median of each round."""
    from _harness import interleaved_ms

    times = interleaved_ms(runners, n, rounds, warmup=20)
    return ({k: float(np.median(np.concatenate(v))) for k, v in times.items()},
            {k: [float(np.median(r)) for r in v] for k, v in times.items()})


def compare(name: str, args: argparse.Namespace, lm) -> dict:
    import kopt
    from kopt.flows.search import Target, latency_search
    from kopt.keras_io.probes import predict_outputs
    from kopt.runtime import LiteRTRunner, export_tflite
    from rewrites.prune_entropy import prune

    t0 = time.perf_counter()
    original = build(name, args.seed, args.size)
    g = kopt.from_keras(original)
    uniform = kopt.to_keras(prune(g, criterion="l1", ratio=args.ratio)[0])
    rng = np.random.default_rng(args.seed)
    shape = (args.calibration, args.size, args.size, 3)
    calibration = rng.normal(0, 1, shape).astype(np.float32)
    reference = np.argmax(predict_outputs(original, calibration)[0], axis=-1)

    def agreement(model) -> float:  # top-1 agreement with the original (random weights)
        return float(np.mean(np.argmax(predict_outputs(model, calibration)[0], -1) == reference))

    with tempfile.TemporaryDirectory() as tmp:
        files = {"int8_ptq": export_tflite(original, f"{tmp}/o.tflite", calibration[:8]),
                 "uniform": export_tflite(uniform, f"{tmp}/u.tflite", calibration[:8])}
        runners = {k: LiteRTRunner(f.path, threads=1) for k, f in files.items()}
        ms, _ = timed(runners, args.invokes, args.rounds)
    speedup = ms["int8_ptq"] / ms["uniform"]
    print(f"{name}: uniform L1 {args.ratio:g}: {ms['int8_ptq']:.2f} -> {ms['uniform']:.2f} ms "
          f"= {speedup:.2f}x; searching for {speedup:.2f}x", flush=True)

    t_search = time.perf_counter()
    result = latency_search(original, Target(speedup=speedup), score=agreement, finetune=None,
                            calibration=None, max_drop=1.0, latency=lm,
                            step=args.step, criterion="l1", measure_runs=args.measure_runs)
    search_s = time.perf_counter() - t_search
    models = {"int8_ptq": original, "uniform": uniform, "search": result.model}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {k: LiteRTRunner(export_tflite(m, f"{tmp}/{k}.tflite", calibration[:8]).path,
                                   threads=1) for k, m in models.items()}
        ms, spread = timed(runners, args.invokes, args.rounds)
    row = {"model": name, "size": args.size, "ratio": args.ratio, "seed": args.seed,
           "asked_speedup": speedup,
           "search_s": search_s, "total_s": time.perf_counter() - t0,
           "search_message": result.message,
           "search_moves": [s["step"] for s in result.steps if s["kept"]]}
    for k, m in models.items():
        graph = kopt.from_keras(m)
        row[k] = {"params": graph.count_params(), "macs": graph.count_macs(), "ms": ms[k],
                  "ms_rounds": spread[k], "speedup": ms["int8_ptq"] / ms[k],
                  "predicted_ms": lm.predict(graph), "blocks_ms": per_block(lm, m)}
    return row


def report(row: dict) -> None:
    base = row["int8_ptq"]
    print(f"\n{row['model']} at {row['size']}: asked {row['asked_speedup']:.2f}x (uniform L1 "
          f"{row['ratio']:g}); "
          f"search {row['search_s']:.0f} s: {row['search_message']}")
    print(f"{'':<10} {'params':>11} {'MACs':>15} {'MACs kept':>9} {'int8 ms':>8} "
          f"{'speed-up':>8}  rounds (ms)")
    for k in ("int8_ptq", "uniform", "search"):
        r = row[k]
        print(f"{k:<10} {r['params']:>11,} {r['macs']:>15,} {r['macs'] / base['macs']:>9.1%} "
              f"{r['ms']:>8.2f} {r['speedup']:>7.2f}x  "
              + " ".join(f"{v:.2f}" for v in r["ms_rounds"]))
    blocks = sorted(base["blocks_ms"], key=lambda b: -base["blocks_ms"][b])[:12]
    print(f"\npredicted ms per block (12 dearest in the original): {'original':>9} "
          f"{'uniform':>9} {'search':>9}")
    for b in blocks:
        print(f"  {b:<48} " + " ".join(f"{row[k]['blocks_ms'].get(b, 0.0):>9.3f}"
                                       for k in ("int8_ptq", "uniform", "search")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--ratio", type=float, default=0.5, help="uniform L1 pruning ratio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration", type=int, default=16, help="random calibration images")
    p.add_argument("--step", type=float, default=0.1, help="search step (share of latency)")
    p.add_argument("--invokes", type=int, default=120, help="timed invokes per model")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--measure-runs", type=int, default=40, help="runs per search measurement")
    p.add_argument("--json", default="bench_uniform_vs_search.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")  # the time of each step: where a search spends it
    logging.getLogger("kopt.flows.search").setLevel(logging.INFO)

    import kopt

    lm = kopt.LatencyModel("litert-int8", threads=1)
    print(f"{lm!r}; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name in args.models:
        rows.append(compare(name, args, lm))
        report(rows[-1])
        with open(args.json, "w") as f:
            json.dump({"cpu": lm.table.meta.get("cpu"), "args": vars(args), "rows": rows}, f,
                      indent=1)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
