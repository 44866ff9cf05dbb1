"""Latency-targeted compression, measured: asked for N-times faster than int8 PTQ, what the
search delivers on the seed examples, side by side with int8 PTQ of the original.

    python tools/bench_search.py                                  # vgg, tree; 2x 3x 4x; seed 0
    python tools/bench_search.py --models vgg --speedups 2 --seeds 0 1 2 --json s.json
    python tools/bench_search.py --models vgg --speedups 2 --recipe --plot s.png
    python tools/bench_search.py --models vgg --speedups 2 3 --recipe --tfmot --plot s.png
    python tools/bench_search.py --models residual vgg --width 48 --blocks 3 --speedups 2.5

For each model, seed and speed-up: train on digits (examples/_harness.train), run
kopt.optimize(model, data, validation, target=speed-up), export both int8 files and time them
interleaved in the machine's fast state (examples/_harness.latencies), and report the asked
and measured speed-up, test accuracy of each int8 file, the drop, parameters, MACs and the wall
time of the search.
Every row also times the float .tflite of the original (ms_float, acc_float). --recipe also
runs the fixed recipe (optimize without target), --tfmot tensorflow-model-optimization's
magnitude pruning (examples/_tfmot_baseline.magnitude_prune, then int8 PTQ), each once per
model and seed, for the plot: accuracy against measured latency per model, with every model
the search kept on its way. Issue 11's targets: measured speed-up >= asked and within 15% of
it, drop <= 0.5 pt. --width / --blocks build other variants of the same kinds (models the
search was not tuned on).
Quote figures only from a quiet machine: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

BUILDERS = {"vgg": "vgg_like", "tree": "tree", "residual": "residual", "dense": "dense",
            "mobile": "mobile"}


def run_one(name: str, seed: int, speedup: float, args: argparse.Namespace, cache: dict) -> dict:
    import keras

    import kopt
    import seed_models
    from _harness import latencies, tflite_accuracy, train
    from _tfmot_baseline import magnitude_prune
    from kopt.flows.data import digits_splits
    from kopt.runtime import LiteRTRunner, export_tflite

    splits = digits_splits(28, seed=seed)
    (x, y), (xt, yt) = splits.train, splits.test
    key = (name, seed)
    if key not in cache:
        keras.utils.set_random_seed(seed)
        build = getattr(seed_models, BUILDERS[name])
        cache[key] = train(build(**variant(args)), (x, y), args.epochs, seed)
    original = cache[key]
    opt = kopt.Optimizer()
    t0 = time.perf_counter()
    small = opt.optimize(original, (x, y), splits.validation, target=speedup,
                         epochs=args.retrain_epochs, seed=seed)
    seconds = time.perf_counter() - t0
    points = {"search": small}
    if args.recipe:  # the fixed recipe does not depend on the speed-up asked: once per model
        if ("recipe",) + key not in cache:
            cache[("recipe",) + key] = kopt.optimize(original, (x, y), splits.validation,
                                                     epochs=args.retrain_epochs, seed=seed)
        points["recipe"] = cache[("recipe",) + key]
    if args.tfmot:  # the same: once per model, whatever the speed-up
        if ("tfmot",) + key not in cache:
            cache[("tfmot",) + key] = magnitude_prune(original, (x, y), splits.validation,
                                                      epochs=args.retrain_epochs, seed=seed)
        points["tfmot"] = cache[("tfmot",) + key][0]
    with tempfile.TemporaryDirectory() as tmp:
        files = {"ptq": export_tflite(original, f"{tmp}/ptq.tflite", x[:256]),
                 "float": export_tflite(original, f"{tmp}/float.tflite", quantize=None)}
        files.update({k: export_tflite(m, f"{tmp}/{k}.tflite", x[:256])
                      for k, m in points.items()})
        runners = {k: LiteRTRunner(f.path, threads=1) for k, f in files.items()}
        ms = latencies(runners, n=args.invokes, reference="ptq")
        acc = {k: tflite_accuracy(r, xt, yt) for k, r in runners.items()}
    g0, g1 = kopt.from_keras(original), kopt.from_keras(small)
    row = dict(model=name, variant=variant(args), seed=seed, asked=speedup,
               measured=ms["ptq"] / ms["search"],
               ms_ptq=ms["ptq"], ms_search=ms["search"], acc_ptq=acc["ptq"],
               acc_search=acc["search"], drop_pt=100 * (acc["ptq"] - acc["search"]),
               params=(g0.count_params(), g1.count_params()),
               macs=(g0.count_macs(), g1.count_macs()), reached=opt.search.reached,
               message=opt.search.message, search_s=seconds,
               search_spent=opt.search.seconds, load=os.getloadavg()[0],
               steps=opt.steps)
    row.update(ms_float=ms["float"], acc_float=acc["float"],
               bytes={k: f.bytes for k, f in files.items()})
    if args.recipe:
        row.update(ms_recipe=ms["recipe"], acc_recipe=acc["recipe"],
                   params_recipe=kopt.from_keras(points["recipe"]).count_params())
    if args.tfmot:
        row.update(ms_tfmot=ms["tfmot"], acc_tfmot=acc["tfmot"],
                   tfmot=cache[("tfmot",) + key][1])
    return row


def variant(args: argparse.Namespace) -> dict:
    """The builder's arguments given on the command line (none: the seed example itself)."""
    return {k: v for k, v in (("width", args.width), ("blocks", args.blocks)) if v is not None}


# measured once per model and seed, whatever the speed-up asked: key, marker, colour, label
ONCE = (("float", "*", "grey", "original, float file"),
        ("ptq", "s", "black", "original, int8 PTQ"),
        ("recipe", "^", "tab:green", "fixed recipe"),
        ("tfmot", "D", "tab:purple", "tfmot magnitude pruning"))
SEARCH_COLOURS = ("tab:blue", "tab:orange", "tab:red", "tab:brown", "tab:pink", "tab:cyan",
                  "tab:olive")


def plot(rows: list[dict], path: str) -> None:
    """Test accuracy of each .tflite file against its measured latency, one panel per model
    and seed. The original (float and int8 PTQ), the fixed recipe and tfmot are drawn once
    each, at the median over the rows (every row times them again, side by side with its
    search). Per speed-up asked: the search's result, and every model it kept (its path, and the
    final distillations as crosses) at the validation accuracy and latency the search itself
    measured (its own timing, the Keras model's float accuracy: near the files' figures, not
    the same measurement)."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, list[dict]] = {}
    for r in rows:
        panels.setdefault((r["model"], r["seed"]), []).append(r)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, ((name, seed), group) in zip(axes[0], panels.items()):
        for key, marker, colour, label in ONCE:
            if f"ms_{key}" in group[0]:
                ax.scatter(statistics.median(r[f"ms_{key}"] for r in group),
                           statistics.median(r[f"acc_{key}"] for r in group), marker=marker,
                           color=colour, s=70, label=label, zorder=3)
        for i, r in enumerate(group):
            colour = SEARCH_COLOURS[i % len(SEARCH_COLOURS)]
            kept = [s for s in r.get("steps", [])
                    if s.get("kept") and s.get("measured_ms") is not None
                    and s.get("val_score") is not None]
            # the path of the iterations; the final distillations apart, as they come after it
            # (an earlier model too, when the last one ended out of the allowed drop)
            final = [s for s in kept if s["step"].startswith("final distillation")]
            walk = [s for s in kept if s not in final]
            if walk:
                ax.plot([s["measured_ms"] for s in walk], [s["val_score"] for s in walk],
                        ".:", color=colour, markersize=8,
                        label=f"search {r['asked']:g}x: kept steps (val acc, search timing)")
            if final:
                ax.scatter([s["measured_ms"] for s in final], [s["val_score"] for s in final],
                           marker="x", color=colour,
                           label=f"search {r['asked']:g}x: after final distillation (val acc)")
            ax.scatter(r["ms_search"], r["acc_search"], marker="o", color=colour, s=70,
                       edgecolors="black", label=f"search {r['asked']:g}x: result", zorder=3)
        ax.set_title(f"{name}, seed {seed}")
        ax.set_xlabel("measured latency (ms, LiteRT, batch 1, 1 thread; int8 unless float)")
        ax.set_ylabel("test accuracy of the .tflite file")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vgg", "tree"], choices=sorted(BUILDERS))
    p.add_argument("--speedups", nargs="+", type=float, default=[2.0, 3.0, 4.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--width", type=int, default=None, help="build the models at this width")
    p.add_argument("--blocks", type=int, default=None, help="... with this many blocks")
    p.add_argument("--epochs", type=int, default=4, help="training epochs of the original")
    p.add_argument("--retrain-epochs", type=int, default=5, help="final distillation epochs")
    p.add_argument("--invokes", type=int, default=600)
    p.add_argument("--recipe", action="store_true", help="also the fixed recipe, for the plot")
    p.add_argument("--match-recipe", action="store_true",
                   help="with --recipe: one more search per model and seed, asked for the "
                        "speed-up the fixed recipe measured (accuracy at equal latency)")
    p.add_argument("--tfmot", action="store_true",
                   help="also tfmot magnitude pruning + int8 PTQ, for the plot")
    p.add_argument("--json", default="bench_search.json")
    p.add_argument("--plot", default=None, help="PNG: accuracy against measured int8 latency")
    p.add_argument("--replot", metavar="JSON", help="only redraw --plot from a --json this "
                   "tool wrote")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f), args.plot or "search.png")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")  # the time of each step: where a search spends it
    logging.getLogger("kopt.flows.search").setLevel(logging.INFO)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    rows, cache = [], {}
    for name in args.models:
        for seed in args.seeds:
            asks = list(args.speedups) + (["recipe"] if args.match_recipe and args.recipe
                                          else [])
            for speedup in asks:
                if speedup == "recipe":  # the recipe's measured speed-up, from the last row
                    speedup = round(rows[-1]["ms_ptq"] / rows[-1]["ms_recipe"], 2)
                r = run_one(name, seed, speedup, args, cache)
                rows.append(r)
                ok = r["measured"] >= speedup and r["measured"] <= 1.15 * speedup \
                    and r["drop_pt"] <= 0.5
                print(f"{name:<6} seed {seed} asked {speedup:g}x: measured "
                      f"{r['measured']:.2f}x ({r['ms_ptq']:.4f} -> {r['ms_search']:.4f} ms), "
                      f"acc {r['acc_ptq']:.4f} -> {r['acc_search']:.4f} "
                      f"(drop {r['drop_pt']:+.2f} pt), params {r['params'][0]:,} -> "
                      f"{r['params'][1]:,}, {r['search_s']:.0f} s, "
                      f"{'meets' if ok else 'MISSES'} issue 11's target", flush=True)
                if "ms_recipe" in r:
                    print(f"{'':<6} fixed recipe in the same timing: "
                          f"{r['ms_ptq'] / r['ms_recipe']:.2f}x, acc {r['acc_recipe']:.4f}, "
                          f"params {r['params_recipe']:,}", flush=True)
                with open(args.json, "w") as f:  # after every row: a long run can be cut
                    json.dump(rows, f, indent=1, default=str)
    if args.plot:
        plot(rows, args.plot)
    print(f"wrote {args.json}; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
