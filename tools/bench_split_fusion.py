"""Does fusing parallel convs into one wide conv plus channel slices pay on this runtime?

    python tools/bench_split_fusion.py --json split.json

The seed's tree example (examples/seed_models.py: two inception blocks whose 1x1 "reduce"
convs read the block input side by side) after kopt's default exact pass, against the same
plus rewrites/fuse_horizontal_split.py. Both files are timed interleaved in one process (LiteRT
XNNPACK, batch 1, one thread), in int8 (full-int8 PTQ) and float, --rounds rounds of --runs
invokes each; printed: the median and the spread of the round medians, the latency model's
prediction for both, and the ops of the int8 file. Weights are random (latency does not depend
on trained values); the rewrite is exact, checked here to 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


def interleaved(runners: dict, runs: int, rounds: int) -> dict[str, list[float]]:
    """Median ms of each round of `runs` invokes, per runner, rounds interleaved."""
    from _harness import interleaved_ms

    times = interleaved_ms(runners, runs * rounds, rounds, warmup=100)
    return {k: [float(np.median(r)) for r in v] for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="bench_split_fusion.json")
    args = p.parse_args(argv)

    import keras

    import kopt
    from kopt.rewriting import PassManager
    from kopt.runtime import LiteRTRunner, export_tflite
    from kopt.testing import assert_same_function, randomize_weights
    from rewrites import exact_rules
    from rewrites.fuse_horizontal_split import FuseHorizontalSplit
    from seed_models import tree

    keras.utils.set_random_seed(args.seed)
    model = randomize_weights(tree(), seed=args.seed)
    g = kopt.from_keras(model)
    plain, _ = PassManager(exact_rules()).run(g)
    split, report = PassManager([FuseHorizontalSplit()]).run(plain)
    models = {"exact pass": kopt.to_keras(plain), "+ split fusion": kopt.to_keras(split)}
    x = np.random.default_rng(args.seed).normal(0, 1, (64,) + model.input_shape[1:])
    assert_same_function(models["exact pass"], models["+ split fusion"], rtol=1e-4,
                         x=x.astype("float32"))
    print(f"split fusion applied {report.counts()}; load average "
          f"{os.getloadavg()[0]:.2f}")
    result = {"applied": report.counts(), "runtimes": {}}
    for runtime, quantize in (("litert-int8", "int8"), ("litert", None)):
        lm = kopt.LatencyModel(runtime)
        with tempfile.TemporaryDirectory() as tmp:
            files = {k: export_tflite(m, f"{tmp}/{i}.tflite", x[:16].astype("float32"),
                                      quantize=quantize) for i, (k, m) in enumerate(models.items())}
            rounds = interleaved({k: LiteRTRunner(f.path, threads=1) for k, f in files.items()},
                                 args.runs, args.rounds)
        rows = {}
        for k, m in models.items():
            rows[k] = {"ms": float(np.median(rounds[k])), "rounds": rounds[k],
                       "predicted_ms": lm.predict(m), "ops": files[k].ops}
        base = rows["exact pass"]["ms"]
        print(f"\n{runtime}: ops of the split file {rows['+ split fusion']['ops']}")
        print(f"{runtime}: {'median ms':>10} {'vs exact':>9} {'predicted':>10}  round medians")
        for k, r in rows.items():
            print(f"  {k:<16} {r['ms']:>10.4f} {r['ms'] / base:>8.3f}x {r['predicted_ms']:>10.4f}"
                  "  " + " ".join(f"{v:.4f}" for v in r["rounds"]))
        result["runtimes"][runtime] = rows
    result["load_end"] = os.getloadavg()[0]
    print(f"\nload average at end {result['load_end']:.2f}")
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
