"""keras.applications.MobileNetV2 at a real resolution, end to end: train, kopt.optimize, int8.

MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None, classes=10) is trained on the
digits splits upsampled to 96x96 (kopt.flows.data.digits_splits(size=96), the grey channel
repeated to RGB) from a tf.data pipeline, compressed with kopt.optimize(model, data=...,
validation=...) from the same tf.data pipelines (--numpy: the arrays), exported to int8
.tflite, and measured: LiteRT (XNNPACK, batch 1, one thread) latency of int8 PTQ of the
original against kopt's int8 file side by side, test accuracy of the float models and the
int8 files, params, bytes, and the wall time of each phase.

    python tools/mobilenetv2_digits.py --seed 0 --json mnv2.json
    python tools/mobilenetv2_digits.py --epochs 12 --retrain-epochs 2     # longer, better
    python tools/mobilenetv2_digits.py --speedup 2                        # the latency search
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

log = logging.getLogger("mobilenetv2_digits")

SIZE = 96
ALPHA = 0.35


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5, help="training epochs of the original")
    p.add_argument("--retrain-epochs", type=int, default=1, help="distillation epochs per step")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--merge-width", type=float, nargs="*", default=None,
                   help="merged-block widths to try, most aggressive first (default: kopt's; "
                        "none given: no merging)")
    p.add_argument("--speedup", type=float, default=None,
                   help="ask the latency search for this speed-up over int8 PTQ (default: the "
                        "fixed recipe)")
    p.add_argument("--invokes", type=int, default=300, help="timed LiteRT invokes per model")
    p.add_argument("--numpy", action="store_true",
                   help="give kopt.optimize the arrays instead of the tf.data pipelines")
    p.add_argument("--json", metavar="PATH", help="write the measured numbers here")
    return p.parse_args()


def rgb(x: np.ndarray) -> np.ndarray:
    """(n, 96, 96, 1) grey digits as (n, 96, 96, 3) RGB."""
    return np.repeat(x, 3, axis=-1)


def pipeline(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None) -> Any:
    """(x, y) as a batched tf.data.Dataset, reshuffled each pass when seed is not None."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if seed is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def build(seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV2(alpha=ALPHA, input_shape=(SIZE, SIZE, 3),
                                          weights=None, classes=10)


def train(model: Any, train_ds: Any, x: np.ndarray, epochs: int, seed: int) -> Any:
    """Adam on the tf.data pipeline; BatchNorm statistics re-estimated at the end (Keras'
    MobileNetV2 uses momentum 0.999, too slow to follow a few hundred steps of training).

    recalibrate_bn's defaults (60 batches at momentum 0.9) leave 0.9**60 = 0.2% of the stale
    statistics; on MobileNetV2 some channels' true variance is far below that remnant of the
    initial 1.0, and the outputs still moved by 128% (relative RMS) afterwards. 200 batches
    at 0.95 leave 0.004% and agree with a plain average of the batch statistics."""
    import keras

    from kopt.flows.distill import recalibrate_bn

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train_ds, epochs=epochs, verbose=2)
    return recalibrate_bn(model, x, batches=200, momentum=0.95, seed=seed)


def optimize(model: Any, datasets: tuple[Any, Any], arrays: tuple[tuple, tuple],
             use_numpy: bool, **options: Any) -> tuple[Any, list[dict], str]:
    """kopt.optimize fed the tf.data pipelines (or, with --numpy, the same data as arrays).
    Returns the model, its steps and which data form was used."""
    import kopt

    opt = kopt.Optimizer()
    if use_numpy:
        small = opt.optimize(model, data=arrays[0], validation=arrays[1], **options)
        return small, opt.steps, "numpy"
    small = opt.optimize(model, data=datasets[0], validation=datasets[1], **options)
    return small, opt.steps, "tf.data"


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")  # the time of each step: where a search spends it
    for name in ("kopt", "rewrites", "mobilenetv2_digits"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("kopt.rewriting.manager").setLevel(logging.WARNING)
    clock = [("start", time.perf_counter())]

    def phase(name: str) -> None:
        clock.append((name, time.perf_counter()))
        log.info("phase %s: %.1f s", name, clock[-1][1] - clock[-2][1])

    from _harness import int8_agreement, keras_accuracy, latencies, tflite_accuracy

    from kopt.flows.data import digits_splits
    from kopt.keras_io import from_keras
    from kopt.runtime import LiteRTRunner, export_tflite

    splits = digits_splits(SIZE, seed=args.seed)
    (x, y), (xv, yv) = (rgb(splits.train[0]), splits.train[1]), (rgb(splits.validation[0]),
                                                                  splits.validation[1])
    (xt, yt), (xh, yh) = (rgb(splits.test[0]), splits.test[1]), (rgb(splits.hard_test[0]),
                                                                 splits.hard_test[1])
    train_ds = pipeline(x, y, args.batch_size, args.seed)
    val_ds = pipeline(xv, yv, args.batch_size, None)
    log.info("digits at %dx%dx3: %d train, %d validation, %d test", SIZE, SIZE, len(x), len(xv),
             len(xt))
    phase("data")

    original = train(build(args.seed), train_ds, x, args.epochs, args.seed)
    phase("train")

    options = dict(epochs=args.retrain_epochs, seed=args.seed, progress=False)
    if args.merge_width is not None:
        options["merge_width"] = tuple(args.merge_width)
    if args.speedup is not None:
        options["target"] = args.speedup
    small, steps, data_form = optimize(original, (train_ds, val_ds), ((x, y), (xv, yv)),
                                       args.numpy, **options)
    phase("optimize")

    with tempfile.TemporaryDirectory() as tmp:
        cal = x[:256]
        exports = {"float": export_tflite(original, f"{tmp}/float.tflite", quantize=None),
                   "int8_before": export_tflite(original, f"{tmp}/before_int8.tflite", cal),
                   "int8_after": export_tflite(small, f"{tmp}/after_int8.tflite", cal)}
        phase("export")
        runners = {k: LiteRTRunner(r.path, threads=1) for k, r in exports.items()}
        ms = latencies(runners, n=args.invokes, reference="int8_before")
        sources = {"float": original, "int8_before": original, "int8_after": small}
        rows = {k: dict(bytes=r.bytes, ms=ms[k], acc=tflite_accuracy(runners[k], xt, yt),
                        acc_hard=tflite_accuracy(runners[k], xh, yh),
                        agreement=int8_agreement(runners[k], sources[k], xt))
                for k, r in exports.items()}
    params = {"before": from_keras(original).count_params(),
              "after": from_keras(small).count_params()}
    macs = {"before": from_keras(original).count_macs(),
            "after": from_keras(small).count_macs()}
    keras_acc = {"before": keras_accuracy(original, xt, yt),
                 "after": keras_accuracy(small, xt, yt)}
    phase("measure")

    seconds = {name: round(t - clock[i][1], 1) for i, (name, t) in enumerate(clock[1:])}
    seconds["total"] = round(clock[-1][1] - clock[0][1], 1)
    if args.json:
        result = dict(
            model=f"MobileNetV2(alpha={ALPHA}, {SIZE}x{SIZE}x3)", data_form=data_form,
            params_before=params["before"], params_after=params["after"],
            macs_before=macs["before"], macs_after=macs["after"],
            acc_before=keras_acc["before"], acc_keras_after=keras_acc["after"],
            acc_int8_before=rows["int8_before"]["acc"], acc_after=rows["int8_after"]["acc"],
            acc_hard_int8_before=rows["int8_before"]["acc_hard"],
            acc_hard_after=rows["int8_after"]["acc_hard"],
            int8_agreement_before=rows["int8_before"]["agreement"],
            int8_agreement_after=rows["int8_after"]["agreement"],
            bytes_float_before=rows["float"]["bytes"], bytes_int8_before=rows[
                "int8_before"]["bytes"], bytes_after=rows["int8_after"]["bytes"],
            ms_float_before=ms["float"], ms_int8_before=ms["int8_before"],
            ms_int8_after=ms["int8_after"], seconds=seconds, steps=steps, args=vars(args))
        with open(args.json, "w") as f:  # written first: the numbers outlive a print bug
            json.dump(result, f, indent=2, default=str)
    print_steps(steps)
    print_table(params, macs, keras_acc, rows)
    print(f"\nkopt.optimize data: {data_form}; phases, s: "
          + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    return 0


def print_steps(steps: list[dict]) -> None:
    """The steps of either flow: the fixed recipe's rows say val_acc, the search's val_score
    (with its predicted and measured ms)."""
    print(f"\n{'step':<44}{'params':>10}{'MACs':>12}{'val acc':>9}{'meas ms':>9}  kept")
    for s in steps:
        val = s.get("val_acc", s.get("val_score"))
        print(f"{s['step'][:43]:<44}{s['params']:>10}{s['macs']:>12}{_f(val, '>9.4f'):>9}"
              f"{_f(s.get('measured_ms'), '>9.4f'):>9}  {'yes' if s['kept'] else 'no'}")


def print_table(params: dict, macs: dict, keras_acc: dict, rows: dict) -> None:
    """One line per model: Keras float original and kopt's model, and their .tflite files."""
    print(f"\n{'MobileNetV2 0.35, 96x96':<28}{'params':>9}{'MACs':>11}{'bytes':>10}{'ms':>9}"
          f"{'test acc':>10}{'hard acc':>10}{'agree':>8}")
    lines = [("original, Keras float", params["before"], macs["before"], None, None,
              keras_acc["before"], None, None),
             ("original, .tflite float32", params["before"], macs["before"], "float"),
             ("original, int8 PTQ", params["before"], macs["before"], "int8_before"),
             ("kopt, Keras float", params["after"], macs["after"], None, None,
              keras_acc["after"], None, None),
             ("kopt + PTQ, int8", params["after"], macs["after"], "int8_after")]
    for label, p, m, key, *rest in lines:
        if key is not None:
            r = rows[key]
            b, ms, acc, hard, agree = r["bytes"], r["ms"], r["acc"], r["acc_hard"], r[
                "agreement"]
        else:
            b, acc, hard, agree = rest[0], rest[1], rest[2], rest[3]
            ms = None
        print(f"{label:<28}{p:>9}{m:>11}{_f(b, '>10'):>10}{_f(ms, '>9.4f'):>9}"
              f"{_f(100 * acc, '>10.2f'):>10}{_f(hard, '>10.2f', 100):>10}"
              f"{_f(agree, '>8.2f', 100):>8}")
    before, after = rows["int8_before"], rows["int8_after"]
    print(f"int8 PTQ / kopt int8: {params['before'] / params['after']:.2f}x params, "
          f"{before['bytes'] / after['bytes']:.2f}x bytes, {before['ms'] / after['ms']:.2f}x "
          f"ms; float32 .tflite / kopt int8: {rows['float']['ms'] / after['ms']:.2f}x ms")
    print("(ms: LiteRT XNNPACK, batch 1, 1 thread, medians interleaved in one process; agree: "
          "top-1 agreement of a file with the Keras model it came from, test split)")


def _f(value: Any, spec: str, scale: float | None = None) -> str:
    return "-" if value is None else format(value if scale is None else value * scale, spec)


if __name__ == "__main__":
    raise SystemExit(main())
