"""Which ops of a full-int8 .tflite file XNNPACK does not take, per keras.applications model.

    python tools/int8_fallbacks.py                                  # the default list
    python tools/int8_fallbacks.py MobileNetV3Small Xception --json fallbacks.json

Each model is built with weights=None at a small input size, exported with
kopt.runtime.export_tflite (full int8, 8 random calibration images) and its op table read back:
the ops XNNPACK leaves to TFLite's own kernels, which are often far slower in int8 (a
standalone RELU on 32x32x32 values took 0.18 ms on this project's machine, nine times the
convs around it). kopt.flows.for_runtime rewrites two of them (HARD_SWISH, standalone RELU);
the others are listed so that a user sees where the time may go. No timing: any machine gives
the same table for one LiteRT version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# name: input size (the smallest each accepts, or small enough to export in seconds)
MODELS = {"MobileNetV3Small": 96, "MobileNetV3Large": 96, "MobileNet": 96, "MobileNetV2": 96,
          "EfficientNetB0": 96, "EfficientNetV2B0": 96, "DenseNet121": 64, "ResNet50V2": 64,
          "Xception": 75, "NASNetMobile": 96, "ConvNeXtTiny": 64}


def fallbacks(name: str, size: int) -> dict:
    import keras
    import numpy as np

    from kopt.runtime import export_tflite

    options = {"include_preprocessing": False} if name.startswith("MobileNetV3") else {}
    model = getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None,
                                              **options)
    x = np.random.default_rng(0).normal(size=(8, size, size, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        r = export_tflite(model, os.path.join(tmp, "m.tflite"), x)
    return dict(model=name, size=size, ops=r.total_ops, xnnpack_ops=r.xnnpack_ops,
                fallback_ops=r.fallback_ops)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for name in args.models:
        row = fallbacks(name, MODELS[name])
        rows.append(row)
        print(f"{name:<18} {row['xnnpack_ops']:>4}/{row['ops']:<4} ops delegated; TFLite runs "
              f"{row['fallback_ops'] or 'nothing'}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
