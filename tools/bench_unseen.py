"""The latency search on kinds of model it was not tuned on, through the public API: what a
user asking for N-times faster than int8 PTQ gets, measured side by side with int8 PTQ.

    python tools/bench_unseen.py                              # every kind, 2x, seed 0
    python tools/bench_unseen.py --models sepnet mlp --speedup 2.5 --json unseen.json

Kinds (digits, kopt.flows.data.digits_splits): `resnet` (a ResNet with strided stages and
projection shortcuts), `sepnet` (SeparableConv2D blocks, max pools, global pooling, dropout),
`mobilenetv3` (keras.applications.MobileNetV3Small at 64x64 RGB, random init, BN momentum
0.9), `mlp` (three Dense layers on the flattened image), `conv1d` (Conv1D over the image's rows
as a sequence), `xception` (Xception's middle flow, small: pre-activation residual blocks of
separable convs), `convnext` (ConvNeXt-style: 7x7 depthwise convs, LayerNormalization, GELU
MLPs), `vit` (a small vision transformer), `gru` (a GRU over the image's rows).
Each is trained with Adam, then kopt.Optimizer().optimize(model, train, validation,
target=speed-up, seed=seed); both int8 files are timed interleaved (examples/_harness) and
scored on the test split. The row says whether the search reached its goal, in its own words.
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
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


def resnet(shape: tuple) -> Any:
    import keras
    L = keras.layers
    x = inp = keras.Input(shape)
    x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    for width, stride in ((32, 1), (64, 2), (96, 2)):
        r = L.ReLU()(L.BatchNormalization()(
            L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)))
        r = L.BatchNormalization()(L.Conv2D(width, 3, padding="same", use_bias=False)(r))
        short = x if stride == 1 and x.shape[-1] == width else \
            L.Conv2D(width, 1, strides=stride)(x)
        x = L.ReLU()(L.Add()([r, short]))
    return keras.Model(inp, L.Dense(10, activation="softmax")(L.GlobalAveragePooling2D()(x)))


def sepnet(shape: tuple) -> Any:
    import keras
    L = keras.layers
    x = inp = keras.Input(shape)
    x = L.Conv2D(24, 3, strides=2, padding="same", activation="relu")(x)
    for width in (32, 48, 64):
        x = L.ReLU()(L.BatchNormalization()(
            L.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)))
        x = L.MaxPooling2D()(x) if width < 64 else x
    x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


def xception(shape: tuple) -> Any:
    """Xception's middle flow, small: pre-activation blocks of two ReLU-SeparableConv-BN
    units and a residual Add, whose sum the next block's first ReLU and its Add both read."""
    import keras
    L = keras.layers
    x = inp = keras.Input(shape)
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, strides=2, padding="same",
                                                 use_bias=False)(x)))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 3, padding="same", use_bias=False)(x)))
    for _ in range(3):
        r = x
        for _ in range(2):
            x = L.BatchNormalization()(L.SeparableConv2D(64, 3, padding="same",
                                                         use_bias=False)(L.ReLU()(x)))
        x = L.Add()([x, r])
    x = L.GlobalAveragePooling2D()(L.ReLU()(x))
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


def mobilenetv3(shape: tuple) -> Any:
    """keras.applications' MobileNetV3Small, its BN momentum lowered from 0.999 to 0.9: with
    0.999 the moving statistics hardly leave their initial values in the 180 steps this
    benchmark trains for, and the model scores at chance at inference."""
    import keras
    model = keras.applications.MobileNetV3Small(input_shape=shape, weights=None, classes=10,
                                                include_preprocessing=False)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def mlp(shape: tuple) -> Any:
    import keras
    L = keras.layers
    x = inp = keras.Input(shape)
    x = L.Flatten()(x)
    for width in (256, 256, 128):
        x = L.Dense(width, activation="relu")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


def conv1d(shape: tuple) -> Any:
    import keras
    L = keras.layers
    x = inp = keras.Input(shape)
    for width in (32, 64, 64):
        x = L.Conv1D(width, 3, padding="same", activation="relu")(x)
    x = L.Dense(64, activation="relu")(L.GlobalMaxPooling1D()(x))
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


def convnext(shape: tuple) -> Any:
    """ConvNeXt-style, small: a 2x2 patchify stem, then blocks of a 7x7 depthwise conv,
    LayerNormalization, a 4x Dense MLP with GELU and a residual Add."""
    import keras
    L = keras.layers
    x = inp = keras.Input(shape)
    x = L.LayerNormalization(epsilon=1e-6)(L.Conv2D(32, 2, strides=2)(x))
    for _ in range(2):
        h = L.LayerNormalization(epsilon=1e-6)(L.DepthwiseConv2D(7, padding="same")(x))
        x = L.Add()([x, L.Dense(32)(L.Dense(128, activation="gelu")(h))])
    return keras.Model(inp, L.Dense(10, activation="softmax")(L.GlobalAveragePooling2D()(x)))


def vit(shape: tuple) -> Any:
    """A small vision transformer: 4x4 patches as 49 tokens of 32, two pre-norm blocks of
    two-head self-attention and a GELU MLP."""
    import keras
    L = keras.layers
    x = inp = keras.Input(shape)
    x = L.Reshape((-1, 32))(L.Conv2D(32, 4, strides=4)(x))
    for _ in range(2):
        h = L.LayerNormalization()(x)
        x = L.Add()([x, L.MultiHeadAttention(2, 16)(h, h)])
        h = L.Dense(64, activation="gelu")(L.LayerNormalization()(x))
        x = L.Add()([x, L.Dense(32)(h)])
    x = L.GlobalAveragePooling1D()(L.LayerNormalization()(x))
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


def gru(shape: tuple) -> Any:
    """A GRU over the image's rows (28 steps of 28), then two Dense layers."""
    import keras
    L = keras.layers
    x = inp = keras.Input(shape)
    x = L.Dense(32, activation="relu")(L.GRU(48)(x))
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


# builder, input form ("image" 28x28x1, "rgb64" 64x64x3, "rows" 28 steps of 28), epochs
KINDS = {"resnet": (resnet, "image", 12), "sepnet": (sepnet, "image", 20),
         "mobilenetv3": (mobilenetv3, "rgb64", 10), "mlp": (mlp, "image", 6),
         "conv1d": (conv1d, "rows", 6), "xception": (xception, "image", 12),
         "convnext": (convnext, "image", 12), "vit": (vit, "image", 20),
         "gru": (gru, "rows", 10)}


def splits(form: str, seed: int) -> list[tuple]:
    """(train, validation, test) as (x, y) in the kind's input form."""
    import numpy as np

    from kopt.flows.data import digits_splits

    s = digits_splits(64 if form == "rgb64" else 28, seed=seed)
    shaped = {"image": lambda x: x, "rgb64": lambda x: np.repeat(x, 3, axis=-1),
              "rows": lambda x: x.reshape(len(x), x.shape[1], x.shape[2])}[form]
    return [(shaped(x), y) for x, y in (s.train, s.validation, s.test)]


def run_one(kind: str, speedup: float, seed: int, invokes: int) -> dict:
    import keras

    import kopt
    from _harness import latencies, tflite_accuracy
    from kopt.runtime import LiteRTRunner, export_tflite

    build, form, epochs = KINDS[kind]
    (x, y), validation, (xt, yt) = splits(form, seed)
    keras.utils.set_random_seed(seed)
    model = build(x.shape[1:])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    opt = kopt.Optimizer()
    t0 = time.perf_counter()
    small = opt.optimize(model, (x, y), validation, target=speedup, seed=seed)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        files = {"ptq": export_tflite(model, f"{tmp}/ptq.tflite", x[:256]),
                 "search": export_tflite(small, f"{tmp}/search.tflite", x[:256])}
        runners = {k: LiteRTRunner(f.path, threads=1) for k, f in files.items()}
        ms = latencies(runners, n=invokes, reference="ptq")
        acc = {k: tflite_accuracy(r, xt, yt) for k, r in runners.items()}
    return dict(model=kind, seed=seed, asked=speedup, measured=ms["ptq"] / ms["search"],
                ms_ptq=ms["ptq"], ms_search=ms["search"], acc_ptq=acc["ptq"],
                acc_search=acc["search"], drop_pt=100 * (acc["ptq"] - acc["search"]),
                params=(model.count_params(), small.count_params()),
                reached=opt.search.reached, message=opt.search.message, search_s=seconds,
                load=os.getloadavg()[0], steps=opt.steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--speedup", type=float, default=2.0)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--invokes", type=int, default=600)
    p.add_argument("--json", default="bench_unseen.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")  # the time of each step: where a search spends it
    for name in ("kopt.flows.search", "kopt.flows.for_runtime"):
        logging.getLogger(name).setLevel(logging.INFO)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    rows = []
    for seed in args.seeds:
        for kind in args.models:
            r = run_one(kind, args.speedup, seed, args.invokes)
            rows.append(r)
            print(f"{kind:<12} seed {seed} asked {r['asked']:g}x: measured {r['measured']:.2f}x "
                  f"({r['ms_ptq']:.4f} -> {r['ms_search']:.4f} ms), int8 test acc "
                  f"{r['acc_ptq']:.4f} -> {r['acc_search']:.4f} "
                  f"({-r['drop_pt']:+.2f} pt: search - PTQ), "
                  f"{r['search_s']:.0f} s; {r['message']}", flush=True)
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
