"""Shared pieces of the seed examples: train on digits, compress, measure, print the seed table.

The seed's table compares the float Keras original with the compressed int8 .tflite model:
speed (LiteRT, batch 1, one thread, XNNPACK), accuracy on the digits test split, size and
parameters. Latencies of the three runners are taken side by side in one process, interleaved
in rounds, so a noisy machine slows them alike instead of biasing whichever ran last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from typing import Any

import keras
import numpy as np

from kopt.compress import compress
from kopt.distill import recalibrate_bn
from kopt.data import digits_splits
from kopt.export import LiteRTRunner, export_tflite
from kopt.frontend import from_keras

JSON_KEYS = ("params_before", "params_after", "acc_before", "acc_after", "bytes_float_before",
             "bytes_keras_before", "bytes_after", "ms_float_before", "ms_int8_before",
             "ms_int8_after")


def parse_args(description: str, epochs: int = 4) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs of the original")
    p.add_argument("--retrain-epochs", type=int, default=5, help="distillation epochs per step")
    p.add_argument("--invokes", type=int, default=600, help="timed LiteRT invokes per model")
    p.add_argument("--json", metavar="PATH", help="write the measured numbers here")
    p.add_argument("--width", type=int, default=None, help="model width (default: the seed's)")
    p.add_argument("--blocks", type=int, default=None, help="blocks (default: the seed's)")
    return p.parse_args()


def model_options(args: argparse.Namespace) -> dict:
    """Builder keyword arguments for the model variant asked for on the command line."""
    return {k: v for k, v in (("width", args.width), ("blocks", args.blocks)) if v is not None}


def train(model: Any, data: tuple, epochs: int, seed: int = 0, batch_size: int = 64) -> Any:
    """Fit `model` (in place, returned) with Adam on (x, y) integer labels, seeds fixed; BN
    moving statistics are re-estimated at the end (see kopt.distill.recalibrate_bn)."""
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(*data, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    return recalibrate_bn(model, data[0], seed=seed)


def keras_bytes(model: Any, directory: str) -> int:
    """Size of the .keras file without optimizer state: an uncompiled copy is saved (in Keras 3
    clone_model and model_from_json keep the compile state: Adam moments triple the file)."""
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    path = os.path.join(directory, "original.keras")
    clone.save(path)
    return os.path.getsize(path)


def latencies(runners: dict[str, LiteRTRunner], n: int = 600, rounds: int = 6,
              warmup: int = 50) -> dict[str, float]:
    """Median ms of >= n batch-1 invokes per runner, interleaved in `rounds` rounds."""
    for r in runners.values():
        r.latency(n=1, warmup=warmup)  # sets a batch-1 input and warms the kernels up
    times: dict[str, list[float]] = {k: [] for k in runners}
    per_round = -(-n // rounds)
    for _ in range(rounds):
        for name, r in runners.items():
            invoke = r.interpreter.invoke
            for _ in range(per_round):
                t0 = time.perf_counter()
                invoke()
                times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def tflite_accuracy(runner: LiteRTRunner, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(runner.run(x), axis=-1) == y))


def keras_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def run_example(build: Any, args: argparse.Namespace, **compress_options: Any) -> dict:
    """Train build() on digits, compress it, export and measure; print the tables; --json."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("kopt").setLevel(logging.INFO)
    for name in ("kopt.rewrite",):  # keep the per-rule chatter out of the example's output
        logging.getLogger(name).setLevel(logging.WARNING)
    splits = digits_splits(28, seed=args.seed)
    (x, y), (xt, yt), (xh, yh) = splits.train, splits.test, splits.hard_test
    keras.utils.set_random_seed(args.seed)
    original = train(build(**model_options(args)), (x, y), args.epochs, args.seed)
    small, steps = compress(original, data=(x, y), validation=splits.validation,
                            epochs=args.retrain_epochs, probes={"hard": (xh, yh)},
                            seed=args.seed, **compress_options)
    with tempfile.TemporaryDirectory() as tmp:
        cal = x[:256]
        f32 = export_tflite(original, f"{tmp}/float.tflite", quantize=None)
        i8_before = export_tflite(original, f"{tmp}/before_int8.tflite", cal)
        i8_after = export_tflite(small, f"{tmp}/after_int8.tflite", cal)
        runners = {k: LiteRTRunner(r.path, threads=1)
                   for k, r in (("float", f32), ("int8_before", i8_before),
                                ("int8_after", i8_after))}
        ms = latencies(runners, n=args.invokes)
        result = dict(params_before=from_keras(original).count_params(),
                      params_after=from_keras(small).count_params(),
                      acc_before=keras_accuracy(original, xt, yt),
                      acc_after=tflite_accuracy(runners["int8_after"], xt, yt),
                      bytes_float_before=f32.bytes, bytes_keras_before=keras_bytes(original, tmp),
                      bytes_after=i8_after.bytes, ms_float_before=ms["float"],
                      ms_int8_before=ms["int8_before"], ms_int8_after=ms["int8_after"])
        hard_int8 = tflite_accuracy(runners["int8_after"], xh, yh)
    print_steps(steps, hard_int8)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: result[k] for k in JSON_KEYS}, f, indent=2)
    return result


def print_steps(steps: list[dict], hard_int8: float) -> None:
    print(f"\n{'step':<16}{'params':>10}{'MACs':>12}{'val acc':>9}{'hard acc':>10}  kept")
    for s in steps:
        print(f"{s['step']:<16}{s['params']:>10}{s['macs']:>12}{s['val_acc']:>9.4f}"
              f"{s.get('acc_hard', float('nan')):>10.4f}  {'yes' if s['kept'] else 'no'}")
    print(f"{'int8 tflite':<16}{'':>10}{'':>12}{'':>9}{hard_int8:>10.4f}")


def print_table(r: dict) -> None:
    rows = [
        ("speed, ms (float -> int8)", r["ms_float_before"], r["ms_int8_after"]),
        ("speed, ms (int8 -> int8)", r["ms_int8_before"], r["ms_int8_after"]),
        ("accuracy, %", 100 * r["acc_before"], 100 * r["acc_after"]),
        ("size, bytes (.tflite f32)", r["bytes_float_before"], r["bytes_after"]),
        ("size, bytes (.keras)", r["bytes_keras_before"], r["bytes_after"]),
        ("params", r["params_before"], r["params_after"]),
    ]
    print(f"\n{'':<28}{'before':>12}{'after':>12}{'ratio':>9}")
    for name, before, after in rows:
        ratio = before / after if after else float("inf")
        if name.startswith("accuracy"):
            print(f"{name:<28}{before:>12.2f}{after:>12.2f}{after - before:>+8.2f}pt")
        else:
            print(f"{name:<28}{before:>12.4g}{after:>12.4g}{ratio:>8.2f}x")
