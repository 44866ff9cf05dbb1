"""Benchmark: how long from_keras + to_keras take (median of several runs) per architecture.

    python tools/bench_roundtrip.py [--runs 3] [ResNet50 InceptionV3 NASNetMobile ...]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

import kopt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="*", default=["ResNet50", "InceptionV3", "NASNetMobile"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':<16}{'nodes':>7}{'from_keras s':>14}{'to_keras s':>12}{'round trip s':>14}")
    for name in args.models:
        model = getattr(keras.applications, name)(weights=None)
        lift, emit = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            g = kopt.from_keras(model)
            t1 = time.perf_counter()
            kopt.to_keras(g)
            t2 = time.perf_counter()
            lift.append(t1 - t0)
            emit.append(t2 - t1)
        a, b = statistics.median(lift), statistics.median(emit)
        print(f"{name:<16}{len(g):>7}{a:>14.2f}{b:>12.2f}{a + b:>14.2f}")


if __name__ == "__main__":
    main()
