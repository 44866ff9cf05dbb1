"""Benchmark the exact rewrites: Keras latency before/after, optimizer time, LiteRT float.

Before and after are timed side by side in one process, alternating, and reported as medians;
ratios are before/after. Keras latency uses a compiled tf.function call.

    python tools/bench_optimize.py                      # default model set
    python tools/bench_optimize.py --models ResNet50 vgg_like --runs 30 --litert
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

import keras
import numpy as np
import tensorflow as tf

import kopt
from kopt.testing import randomize_weights

DEFAULT = ["ResNet50", "MobileNetV2", "InceptionV3", "DenseNet121", "vgg_like"]


def build(name: str) -> keras.Model:
    if name in ("vgg_like", "tree"):
        import seed_models

        return getattr(seed_models, name)()
    return getattr(keras.applications, name)(weights=None)


def side_by_side(models: list, x: np.ndarray, runs: int) -> list[float]:
    """Median ms of a compiled call for each model, runs interleaved to share the noise."""
    fns = [tf.function(lambda t, m=m: m(t, training=False)) for m in models]
    xt = tf.constant(x)
    for f in fns:
        for _ in range(3):
            f(xt)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f(xt)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def litert_row(before: keras.Model, after: keras.Model, runs: int) -> str:
    from kopt.runtime import LiteRTRunner, export_tflite

    out = []
    for tag, m in (("before", before), ("after", after)):
        path = f"/tmp/kopt_bench_{m.name}_{tag}.tflite"
        res = export_tflite(m, path, quantize=None, verify=False)
        runner = LiteRTRunner(path, threads=1)
        out.append((res.total_ops, runner.latency(n=runs)))
    (ops0, ms0), (ops1, ms1) = out
    return f"litert float: ops {ops0} -> {ops1}, {ms0:.2f} -> {ms1:.2f} ms ({ms0 / ms1:.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=DEFAULT)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--litert", action="store_true", help="also LiteRT float latency/op count")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'model':<14}{'layers':>14}{'params':>24}{'optimize s':>11}  "
          + "  ".join(f"{'b' + str(b) + ' ms before->after':>26}" for b in args.batches))
    for name in args.models:
        model = randomize_weights(build(name))
        opt = kopt.Optimizer()
        t0 = time.perf_counter()
        new = opt.optimize(model)
        secs = time.perf_counter() - t0
        cells = []
        for b in args.batches:
            x = rng.normal(size=(b,) + tuple(model.input_shape[1:])).astype("float32")
            ms0, ms1 = side_by_side([model, new], x, max(5, args.runs // max(1, b // 8)))
            cells.append(f"{ms0:8.2f} -> {ms1:6.2f} ({ms0 / ms1:4.2f}x)")
        print(f"{name:<14}{len(model.layers):>6} -> {len(new.layers):<5}"
              f"{model.count_params():>12,} -> {new.count_params():<10,}{secs:>9.1f}  "
              + "  ".join(f"{c:>26}" for c in cells), flush=True)
        if args.litert:
            print(f"{'':<14}{litert_row(model, new, 200)}", flush=True)
        print(f"{'':<14}rules: {opt.report.counts()}  max rel. error {opt.report.max_error:.1e}",
              flush=True)


if __name__ == "__main__":
    main()
