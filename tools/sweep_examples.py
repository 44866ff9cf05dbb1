"""Run the digits examples over seeds and model variants; print each run's ratios against the
targets of issue 5 (one run at a time, so the timings of one do not disturb another).

    python tools/sweep_examples.py --seeds 1 2 --out sweep/            # seed models
    python tools/sweep_examples.py --seeds 3 --width 48 --blocks 3     # a wider, deeper variant
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
# min params ratio, min float bytes / int8 bytes, min float ms / int8 ms, min int8 / int8 ms
TARGETS = {"vgg": (5, 16, 8, 2.5), "tree": (4, 12, 6, 2.5), "residual": (4, 12, 6, 2.5)}
# every example model; dense and mobile have no ratio targets here (their speed targets belong
# to the latency search), only the accuracy drop is checked
MODELS = ("vgg", "tree", "residual", "dense", "mobile")
MAX_DROP = 0.005


def ratios(r: dict) -> tuple[float, float, float, float, float]:
    return (r["params_before"] / r["params_after"], r["bytes_float_before"] / r["bytes_after"],
            r["ms_float_before"] / r["ms_int8_after"], r["ms_int8_before"] / r["ms_int8_after"],
            r["acc_before"] - r["acc_after"])


def verdict(model: str, values: tuple) -> str:
    *mins, drop = values
    missed = [name for name, v, t in zip(("params", "bytes", "float/int8", "int8/int8"), mins,
                                         TARGETS.get(model, (0, 0, 0, 0))) if v < t]
    if drop > MAX_DROP + 1e-9:
        missed.append("accuracy")
    met = "all targets met" if model in TARGETS else "accuracy met (no ratio targets)"
    return met if not missed else "MISSED " + ", ".join(missed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg", "tree", "residual"],
                   choices=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--width", type=int)
    p.add_argument("--blocks", type=int)
    p.add_argument("--tfmot", action="store_true", help="also run the tfmot comparison row")
    p.add_argument("--out", default="sweep", help="folder for the JSON files")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for model in args.models:
        for seed in args.seeds:
            tag = f"{model}_s{seed}" + (f"_w{args.width}" if args.width else "") + \
                  (f"_b{args.blocks}" if args.blocks else "")
            cmd = [sys.executable, os.path.join(EXAMPLES, f"{model}_digits.py"), "--seed",
                   str(seed), "--json", os.path.join(args.out, f"{tag}.json"), "--details",
                   os.path.join(args.out, f"{tag}_details.json")]
            cmd += ["--width", str(args.width)] if args.width else []
            cmd += ["--blocks", str(args.blocks)] if args.blocks else []
            cmd += [] if args.tfmot else ["--no-tfmot"]
            start = time.perf_counter()
            with open(os.path.join(args.out, f"{tag}.log"), "w") as log:
                code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            if code:
                rows.append((tag, None, f"FAILED (exit {code}, see {tag}.log)", 0.0))
                continue
            with open(os.path.join(args.out, f"{tag}.json")) as f:
                values = ratios(json.load(f))
            rows.append((tag, values, verdict(model, values), time.perf_counter() - start))
            print_rows(rows[-1:], header=len(rows) == 1)
    print()
    print_rows(rows, header=True)
    return 0 if all(r[1] is not None for r in rows) else 1


def print_rows(rows: list, header: bool) -> None:
    if header:
        print(f"{'run':<22}{'params':>8}{'bytes':>8}{'f32/i8':>8}{'i8/i8':>8}{'drop pt':>9}"
              f"{'s':>6}  verdict")
    for tag, v, what, seconds in rows:
        if v is None:
            print(f"{tag:<22}{what}")
        else:
            print(f"{tag:<22}{v[0]:>7.2f}x{v[1]:>7.1f}x{v[2]:>7.2f}x{v[3]:>7.2f}x"
                  f"{100 * v[4]:>+9.2f}{seconds:>6.0f}  {what}")


if __name__ == "__main__":
    raise SystemExit(main())
