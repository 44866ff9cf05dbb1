"""Predicted vs measured whole-model latency: how far the latency model's sum of fused groups is
from running the whole model, on the runtime itself (LiteRT int8 by default).

    python tools/bench_latency_model.py                         # the full set (takes a while)
    python tools/bench_latency_model.py --models vgg --no-pruned  # one small model
    python tools/bench_latency_model.py --runtime litert --threads 2 --json out.json

Models: the seed examples (examples/seed_models.py: vgg, tree, residual, dense, mobile) and
keras.applications MobileNetV2 0.35 at 96x96 (mnv2_96), MobileNetV2 (mnv2_224) and ResNet50
(resnet50_224) at 224x224, weights=None (latency does not depend on trained values), each
unpruned and pruned (kopt's L1 channel pruning through the pass manager, ratio --ratio).
Target (issue 11): median |predicted - measured| / measured <= 10%.

Quote figures only from a quiet machine: the load average is printed and written to the JSON;
group times come from the on-disk table (--cache-dir), so a second run times only the whole
models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

SEED = ("vgg", "tree", "residual", "dense", "mobile")
ZOO = ("mnv2_96", "mnv2_224", "resnet50_224")
SEED_BUILDERS = {"vgg": "vgg_like", "tree": "tree", "residual": "residual", "dense": "dense",
                 "mobile": "mobile"}


def build(name: str):
    import keras

    if name in SEED_BUILDERS:
        import seed_models

        return getattr(seed_models, SEED_BUILDERS[name])()
    if name == "mnv2_96":
        return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)
    if name == "mnv2_224":
        return keras.applications.MobileNetV2(weights=None)
    if name == "resnet50_224":
        return keras.applications.ResNet50(weights=None)
    raise SystemExit(f"unknown model '{name}': use {SEED + ZOO}")


def variants(name: str, ratio: float, pruned: bool):
    """(label, graph) pairs: the model, and its L1-pruned copy."""
    import kopt
    from rewrites.prune_entropy import prune

    g = kopt.from_keras(build(name))
    yield "unpruned", g
    if pruned:
        small, _ = prune(g, criterion="l1", ratio=ratio)
        yield f"l1 {ratio:g}", small


def load() -> float:
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(SEED + ZOO), choices=SEED + ZOO)
    p.add_argument("--runtime", default="litert-int8", choices=("litert-int8", "litert"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ratio", type=float, default=0.5, help="L1 pruning ratio")
    p.add_argument("--no-pruned", dest="pruned", action="store_false")
    p.add_argument("--runs", type=int, default=200, help="whole-model runs (median)")
    p.add_argument("--group-runs", type=int, default=None,
                   help="runs per group (default: ~0.1 s each)")
    p.add_argument("--cache-dir", help="latency table folder (default: kopt's cache)")
    p.add_argument("--json", default="bench_latency_model.json")
    args = p.parse_args(argv)

    import kopt
    from kopt.keras_io import to_keras

    lm = kopt.LatencyModel(args.runtime, threads=args.threads, cache_dir=args.cache_dir,
                           runs=args.group_runs)
    print(f"{lm!r}\ntable: {lm.path}\nload average (1 min) at start: {load():.2f}")
    rows = []
    header = (f"{'model':<14} {'variant':<9} {'params':>10} {'MACs':>13} {'pred ms':>9} "
              f"{'meas ms':>9} {'error':>7} {'timed':>5}")
    print(header)
    for name in args.models:
        for label, g in variants(name, args.ratio, args.pruned):
            before = lm.timed
            t0 = time.perf_counter()
            predicted = lm.predict(g)
            predict_s = time.perf_counter() - t0
            measured = lm.measure(to_keras(g), runs=args.runs)
            row = {"model": name, "variant": label, "params": g.count_params(),
                   "macs": g.count_macs(), "predicted_ms": predicted, "measured_ms": measured,
                   "error": (predicted - measured) / measured, "groups_timed": lm.timed - before,
                   "predict_s": predict_s, "load": load()}
            rows.append(row)
            print(f"{name:<14} {label:<9} {row['params']:>10,} {row['macs']:>13,} "
                  f"{predicted:>9.4f} {measured:>9.4f} {row['error']:>+7.1%} "
                  f"{row['groups_timed']:>5}", flush=True)
    errors = [abs(r["error"]) for r in rows]
    summary = {"median_abs_error": statistics.median(errors), "max_abs_error": max(errors),
               "target": 0.10, "runtime": args.runtime, "threads": args.threads,
               "cpu": lm.table.meta.get("cpu"), "litert": lm.table.meta.get("litert"),
               "overhead_ms": lm.overhead_ms(), "load_end": load()}
    print(f"median |pred - meas| / meas = {summary['median_abs_error']:.1%} (target <= 10%), "
          f"max {summary['max_abs_error']:.1%}; load average at end {summary['load_end']:.2f}")
    with open(args.json, "w") as f:
        json.dump({"summary": summary, "rows": rows}, f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
