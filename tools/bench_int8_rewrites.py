"""Where plain full-int8 PTQ hurts, and what kopt's int8 rewrites (kopt.runtime.int8_prep) buy.

For each model and seed: train on digits (kopt.flows.data.digits_splits(size=28)), then measure
on the test split the float model, plain PTQ (export_tflite(..., int8_rewrites=False)), each
rewrite on its own (BN folded by kopt first), and the default export (export_tflite, which
chooses among them on the calibration samples). Accuracy is top-1 on the labels; agreement is
top-1 agreement with the float model. Calibration: the first 200 training images.

- densenet: two dense blocks of four BN-ReLU-conv1x1-BN-ReLU-conv3x3 layers (growth 12)
  reading a growing Concatenate, a BN-ReLU-conv1x1-avgpool transition, BN-ReLU-GAP-Dense;
  the stem is strided (14x14 blocks) to keep training short. Adam 1e-3, 3 epochs.
- separable: MobileNet-style, a stem conv and five depthwise-separable blocks (depthwise 3x3,
  pointwise 1x1), each conv (no bias) followed by ReLU then BN (ReLU, not ReLU6, and BN
  after the activation). Adam 3e-3, 6 epochs, no regulariser. The BN after each ReLU makes the float
  model indifferent to the per-channel scale of the conv before it, so those scales drift;
  TFLite's converter cannot fold a BN that precedes a conv, and leaves it as int8 MUL + ADD.
- seed_dense (if examples/seed_models.py has `dense`): the seed's DenseNet-BC, trained as the
  examples train it (Adam 1e-3, 4 epochs).

Then the cost: export seconds with and without int8_rewrites, on the separable model and on
keras.applications.MobileNetV2(alpha=0.35, 96x96, weights=None) with digits-like calibration
images, with the machine's load average.

    python tools/bench_int8_rewrites.py --seeds 0 1 2 --json int8_rewrites.json
    python tools/bench_int8_rewrites.py --models separable --seeds 0 --no-cost
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kopt.flows.data import digits_splits, load_digits_like  # noqa: E402
from kopt.flows.distill import recalibrate_bn  # noqa: E402
from kopt.keras_io import from_keras, to_keras  # noqa: E402
from kopt.rewriting import PassManager  # noqa: E402
from kopt.runtime import LiteRTRunner, convert_tflite, export_tflite  # noqa: E402
from kopt.runtime.int8_prep import STEPS, rule_for  # noqa: E402
from rewrites.fold_batchnorm import FoldBatchNorm  # noqa: E402

L = keras.layers
CALIBRATION = 200


def densenet(growth: int = 12, layers: int = 4, blocks: int = 2) -> keras.Model:
    x = inp = keras.Input((28, 28, 1))
    x = L.Conv2D(2 * growth, 3, strides=2, padding="same", use_bias=False)(x)
    for block in range(blocks):
        for _ in range(layers):
            h = L.Conv2D(4 * growth, 1, use_bias=False)(L.ReLU()(L.BatchNormalization()(x)))
            h = L.Conv2D(growth, 3, padding="same", use_bias=False)(
                L.ReLU()(L.BatchNormalization()(h)))
            x = L.Concatenate()([x, h])
        if block < blocks - 1:
            x = L.Conv2D(x.shape[-1] // 2, 1, use_bias=False)(
                L.ReLU()(L.BatchNormalization()(x)))
            x = L.AveragePooling2D(2)(x)
    x = L.GlobalAveragePooling2D()(L.ReLU()(L.BatchNormalization()(x)))
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


def separable(width: int = 16) -> keras.Model:
    def relu_bn(h):
        return L.BatchNormalization()(L.ReLU()(h))

    x = inp = keras.Input((28, 28, 1))
    x = relu_bn(L.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x))
    for filters, stride in ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1)):
        x = relu_bn(L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x))
        x = relu_bn(L.Conv2D(width * filters, 1, use_bias=False)(x))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


def seed_dense() -> keras.Model:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    from seed_models import dense

    return dense()


MODELS = {"densenet": (densenet, 3, 1e-3), "separable": (separable, 6, 3e-3),
          "seed_dense": (seed_dense, 4, 1e-3)}


def train(name: str, seed: int, splits: Any) -> keras.Model:
    build, epochs, rate = MODELS[name]
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile(keras.optimizers.Adam(rate), "sparse_categorical_crossentropy")
    model.fit(*splits.train, epochs=epochs, batch_size=64, verbose=0)
    return recalibrate_bn(model, splits.train[0], seed=seed)


def scores(flat_or_path: Any, x: np.ndarray, y: np.ndarray, expected: np.ndarray) -> dict:
    got = LiteRTRunner(flat_or_path).run(x).argmax(1)
    return {"accuracy": float(np.mean(got == y)), "agreement": float(np.mean(got == expected))}


def measure(model: keras.Model, splits: Any, tmp: str) -> dict:
    """Float, plain PTQ, each rewrite alone, and the default export, on the test split."""
    cal = splits.train[0][:CALIBRATION]
    x, y = splits.test
    expected = np.asarray(model.predict(x, verbose=0)).argmax(1)
    rows: dict[str, Any] = {"float": {"accuracy": float(np.mean(expected == y))}}
    start = time.perf_counter()
    plain = export_tflite(model, f"{tmp}/plain.tflite", cal, int8_rewrites=False)
    rows["plain PTQ"] = dict(scores(plain.path, x, y, expected),
                             export_s=round(time.perf_counter() - start, 1))
    folded, report = PassManager([FoldBatchNorm()]).run(from_keras(model), reference=model)
    rows["fold_batchnorm"] = dict(scores(convert_tflite(to_keras(folded), "int8", cal), x, y,
                                         expected), applied=len(report.applied))
    for name in STEPS:
        rule = rule_for(name, cal)
        g, report = PassManager([rule], verify=rule.exact).run(folded)
        row = {"applied": len(report.applied)}
        if report.applied:
            row.update(scores(convert_tflite(to_keras(g), "int8", cal), x, y, expected))
        rows[f"+ {name}"] = row
    start = time.perf_counter()
    default = export_tflite(model, f"{tmp}/default.tflite", cal)
    rows["default export"] = dict(scores(default.path, x, y, expected),
                                  export_s=round(time.perf_counter() - start, 1),
                                  chosen=default.int8_rewrites.get("chosen", []),
                                  search=default.int8_rewrites)
    return rows


def cost(model: keras.Model, data: np.ndarray, tmp: str) -> dict:
    """Export seconds without and with int8_rewrites (each once, plain first)."""
    out = {"load_before": os.getloadavg()}
    for flag in (False, True):
        start = time.perf_counter()
        r = export_tflite(model, f"{tmp}/cost.tflite", data, int8_rewrites=flag)
        out[f"int8_rewrites={flag}"] = round(time.perf_counter() - start, 1)
        if flag:
            out["chosen"] = r.int8_rewrites.get("chosen", [])
            out["search_s"] = r.int8_rewrites.get("seconds")
            out["candidates"] = {k: v.get("seconds") for k, v in
                                 r.int8_rewrites.get("candidates", {}).items()}
            out["search"] = r.int8_rewrites
    out["load_after"] = os.getloadavg()
    return out


def table(results: dict) -> str:
    lines = []
    for model, seeds in results.items():
        lines.append(f"\n{model}: test accuracy / top-1 agreement with float, per seed")
        names = list(next(iter(seeds.values())))
        width = max(len(n) for n in names)
        lines.append(" " * (width + 2) + "".join(f"seed {s:<14}" for s in seeds))
        for name in names:
            cells = []
            for rows in seeds.values():
                r = rows[name]
                if "agreement" in r:
                    cells.append(f"{100 * r['accuracy']:5.1f} / {100 * r['agreement']:5.1f}   ")
                elif "accuracy" in r:
                    cells.append(f"{100 * r['accuracy']:5.1f}           ")
                else:
                    cells.append(f"{'not applicable':<17}")
            lines.append(f"{name:<{width}}  " + " ".join(cells))
        chosen = {s: rows["default export"]["chosen"] for s, rows in seeds.items()}
        lines.append(f"chosen by the default export: {chosen}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--json", metavar="PATH", help="write the measured numbers here")
    p.add_argument("--no-cost", action="store_true", help="skip the export-time measurements")
    args = p.parse_args()

    splits = digits_splits(size=28)
    results: dict[str, dict] = {}
    costs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for seed in args.seeds:
                start = time.perf_counter()
                model = train(name, seed, splits)
                trained = time.perf_counter() - start
                results.setdefault(name, {})[seed] = measure(model, splits, tmp)
                print(f"{name} seed {seed}: trained in {trained:.0f} s, measured in "
                      f"{time.perf_counter() - start - trained:.0f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
                if not args.no_cost and name == "separable" and "separable" not in costs:
                    costs["separable"] = cost(model, splits.train[0][:CALIBRATION], tmp)
        if not args.no_cost:
            mnv2 = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3),
                                                  weights=None)
            costs["mobilenetv2_0.35_96"] = cost(mnv2, load_digits_like(mnv2)[0][:CALIBRATION],
                                                tmp)
    print(table(results))
    for name, c in costs.items():
        print(f"\nexport cost, {name}: {c['int8_rewrites=False']} s plain, "
              f"{c['int8_rewrites=True']} s with int8_rewrites (search {c['search_s']} s, "
              f"candidates {c['candidates']}, chosen {c['chosen']}); load average "
              f"{c['load_before'][0]:.1f} -> {c['load_after'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "cost": costs}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
