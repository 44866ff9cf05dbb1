"""Export a Keras model to full-int8 TFLite for XNNPACK and show what was written.

    python tools/export_tflite.py model.keras -o model.tflite --digits
    python tools/export_tflite.py model.keras -o model.tflite --data calib.npz --threads 4
    python tools/export_tflite.py model.keras -o model.tflite --images photos/ --quantize none

Prints the file size, the op table, how many ops XNNPACK takes, the median latency at 1 and N
threads, and, when the data has labels (--digits, or an .npz with 'y'), the accuracy of the
Keras model and of the exported one on the held-out part.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def load_images(directory: str, shape: tuple) -> np.ndarray:
    """Every image in `directory`, resized to the model's (H, W), scaled to [0, 1]."""
    import tensorflow as tf

    exts = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
    files = sorted(f for f in os.listdir(directory) if f.lower().endswith(exts))
    images = []
    for name in files:
        raw = tf.io.read_file(os.path.join(directory, name))
        img = tf.image.decode_image(raw, channels=shape[-1], expand_animations=False)
        images.append(tf.image.resize(tf.cast(img, tf.float32) / 255.0, shape[1:3]).numpy())
    return np.stack(images) if images else np.zeros((0,) + tuple(shape[1:]), np.float32)


def load_data(args: argparse.Namespace, model) -> tuple:
    """(calibration x, evaluation x, evaluation labels or None); digits calibrate on the
    training split and are scored on the held-out split."""
    from kopt.flows.data import load_digits_like

    if args.digits:
        x_test, y_test = load_digits_like(model, split="test")
        return load_digits_like(model, split="train")[0], x_test, y_test
    if args.images:
        x = load_images(args.images, model.input_shape)
        return x, x, None
    if args.data:
        from kopt.keras_io.loading import load_arrays  # never unpickles: see docs/security.md

        x, y = load_arrays(args.data)
        return x, x, y
    return None, None, None


def accuracy(predict, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(predict(x), axis=-1) == y))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help=".keras or .h5 file")
    p.add_argument("-o", "--output", required=True, help=".tflite file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help=".npy, or .npz with 'x' (and 'y' for accuracy)")
    src.add_argument("--digits", action="store_true",
                     help="sklearn digits resized to the model's input (labels included)")
    src.add_argument("--images", help="a directory of images (no labels)")
    p.add_argument("--quantize", choices=("int8", "float16", "none"), default="int8")
    p.add_argument("--float-io", action="store_true", help="int8 model with float input/output")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="thread count for the second latency figure")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--unsafe", action="store_true", help="load with safe_mode=False")
    args = p.parse_args(argv)

    from kopt.errors import KoptError
    from kopt.runtime import LiteRTRunner, export_tflite
    from kopt.keras_io import load_model

    try:
        model = load_model(args.model, safe_mode=not args.unsafe)
        calib, x, y = load_data(args, model)
        quantize = None if args.quantize == "none" else args.quantize
        result = export_tflite(model, args.output, representative_data=calib, quantize=quantize,
                               int8_io=not args.float_io)
    except KoptError as err:
        print(f"export_tflite: error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    for threads in sorted({1, args.threads}):
        ms = LiteRTRunner(args.output, threads=threads).latency(n=args.runs, warmup=20)
        print(f"latency (batch 1, {threads} thread(s)): {ms:.4g} ms median of {args.runs}")
    if y is not None and len(y):
        runner = LiteRTRunner(args.output)
        keras_acc = accuracy(lambda a: np.asarray(model.predict(a, verbose=0)), x, y)
        print(f"accuracy on {len(y)} labelled samples: keras {keras_acc:.4f}, "
              f"tflite ({result.quantize or 'float32'}) {accuracy(runner.run, x, y):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
