"""What each runtime-dependent exact rewrite (kopt.flows.for_runtime's rules) does to the time
of the block it rewrites, in full int8 and in float, on this machine's LiteRT.

Each case is a small block with one op the rule targets, between two layers that run anyway;
the rule rewrites it (verified exact by the pass manager), and the two .tflite files are timed
interleaved (kopt LatencyModel.measure_side_by_side, `--runs` invokes each in 5 rounds), the
whole comparison repeated `--repeats` times: the table gives the median of the repeats' medians
and their range. Quote it from a quiet machine (the load average is recorded).

    python tools/bench_runtime_rewrites.py                     # every case, int8 and float
    python tools/bench_runtime_rewrites.py --cases dw7 ln_tokens --json runtime_rewrites.json

With `--applications ConvNeXtTiny ...` it also runs kopt.flows.for_runtime on those
keras.applications models (weights=None, `--size` square RGB input, 10 classes): which rules it
keeps and the whole model's time before and after, measured side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _block(shape: tuple, middle: Callable[[Any], Any], first: Callable[[int], Any]) -> Any:
    import keras

    x = inp = keras.Input(batch_shape=(1,) + shape)
    channels = shape[-1]
    y = middle(first(channels)(x))
    return keras.Model(inp, keras.layers.Dense(channels)(y))


def cases() -> dict[str, tuple[Callable[[], Any], Any]]:
    """name -> (model builder, rule)."""
    import keras

    from rewrites.expand_layer_norm import ExpandLayerNorm
    from rewrites.relu_as_depthwise import ReluAsDepthwise
    from rewrites.split_depthwise_kernel import SplitDepthwiseKernel
    from rewrites.split_hard_swish import SplitHardSwish

    L = keras.layers
    conv = lambda c: L.Conv2D(c, 1)  # noqa: E731
    dense = lambda c: L.Dense(c)  # noqa: E731
    norm = lambda x: L.LayerNormalization(epsilon=1e-6)(x)  # noqa: E731

    def relu_after_shared_add(x):  # the Add's sum is read twice: no op before absorbs the ReLU
        s = L.Add()([x, L.Conv2D(x.shape[-1], 1)(x)])
        return L.Add()([L.ReLU()(s), s])

    return {
        "hard_swish": (lambda: _block((32, 32, 16), lambda x: L.Activation("hard_swish")(x),
                                      conv), SplitHardSwish()),
        "relu": (lambda: _block((32, 32, 32), relu_after_shared_add, conv), ReluAsDepthwise()),
        "dw7": (lambda: _block((14, 14, 32), lambda x: L.DepthwiseConv2D(7, padding="same")(x),
                               conv), SplitDepthwiseKernel()),
        "dw7_28": (lambda: _block((28, 28, 32),
                                  lambda x: L.DepthwiseConv2D(7, padding="same")(x), conv),
                   SplitDepthwiseKernel()),
        "ln_map": (lambda: _block((14, 14, 32), norm, dense),
                   ExpandLayerNorm()),
        "ln_tokens": (lambda: _block((49, 32), norm, dense),
                      ExpandLayerNorm()),
        "ln_wide": (lambda: _block((7, 7, 128), norm, dense), ExpandLayerNorm()),
    }


def run_case(name: str, runtime: str, runs: int, repeats: int) -> dict:
    import numpy as np

    from kopt.keras_io import from_keras, to_keras
    from kopt.rewriting import PassManager
    from kopt.runtime.latency import LatencyModel
    from kopt.runtime.time_bundle import cpu_model

    build, rule = cases()[name]
    before = build()
    g, report = PassManager([rule], verify=True).run(from_keras(before), reference=before)
    if not report.applied:
        raise SystemExit(f"{name}: {rule.name} did not apply ({report.declined})")
    after = to_keras(g)
    lm = LatencyModel(runtime, 1)
    pairs = np.array([lm.measure_side_by_side([before, after], runs=runs)
                      for _ in range(repeats)])
    ms = np.median(pairs, axis=0)
    return dict(case=name, rule=rule.name, runtime=runtime, ms_before=float(ms[0]),
                ms_after=float(ms[1]), speedup=float(ms[0] / ms[1]),
                range_before=[float(pairs[:, 0].min()), float(pairs[:, 0].max())],
                range_after=[float(pairs[:, 1].min()), float(pairs[:, 1].max())],
                load=os.getloadavg()[0], cpu=cpu_model())


def run_application(name: str, size: int, runtime: str, runs: int) -> dict:
    import keras

    from kopt.flows.for_runtime import for_runtime
    from kopt.runtime.latency import LatencyModel
    from kopt.runtime.time_bundle import cpu_model

    model = getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None,
                                              classes=10)
    lm = LatencyModel(runtime, 1)
    rewritten, kept = for_runtime(model, lm)
    before, after = lm.measure_side_by_side([model, rewritten], runs=runs)
    return dict(application=name, size=size, runtime=runtime, kept=kept, ms_before=before,
                ms_after=after, speedup=before / after, load=os.getloadavg()[0], cpu=cpu_model())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=None, help="default: every case")
    p.add_argument("--runtimes", nargs="+", default=["litert-int8", "litert"])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--applications", nargs="*", default=[],
                   help="keras.applications models to run for_runtime on (no cases then, "
                        "unless --cases is given)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--json", default="bench_runtime_rewrites.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("kopt.flows.for_runtime").setLevel(logging.INFO)
    names = args.cases or ([] if args.applications else list(cases()))
    from kopt.runtime.time_bundle import cpu_model

    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}; CPU: {cpu_model()}")
    print(f"{'case':<11} {'rule':<23} {'runtime':<12} {'before ms':>17} {'after ms':>17} "
          f"{'x':>6}")
    rows = []
    for runtime in args.runtimes:
        for name in names:
            r = run_case(name, runtime, args.runs, args.repeats)
            rows.append(r)
            print(f"{name:<11} {r['rule']:<23} {runtime:<12} "
                  f"{r['ms_before']:.4f} ({r['range_before'][0]:.4f}-{r['range_before'][1]:.4f})"
                  f"  {r['ms_after']:.4f} ({r['range_after'][0]:.4f}-{r['range_after'][1]:.4f})"
                  f" {r['speedup']:6.2f}", flush=True)
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    for runtime in args.runtimes:
        for name in args.applications:
            r = run_application(name, args.size, runtime, args.runs)
            rows.append(r)
            print(f"{name} {args.size}x{args.size} {runtime}: for_runtime kept {r['kept']}: "
                  f"{r['ms_before']:.4f} -> {r['ms_after']:.4f} ms ({r['speedup']:.2f}x)",
                  flush=True)
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
