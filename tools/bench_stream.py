"""Benchmark optimize(data=...) on streams: memory stays flat however much data flows through,
and a tf.data pipeline is as fast as the same data given as numpy arrays.

Part 1 compresses a small CNN classifier from an endless generator of 64x64x3 images made on
the fly (oriented gratings: the class is the orientation; phase, frequency, colour and noise
vary), steps per epoch bounded, validation from a second seeded generator. It reports the wall
time, the data streamed through the flow, and the process RSS sampled every 0.2 s (peak, and at
each quarter of the run: flat means nothing is kept). Part 2 runs optimize on the same N images
as numpy arrays and as a tf.data.Dataset, alternating, in the same process, and reports both.

    python tools/bench_stream.py                       # defaults: a few minutes on 2 cores
    python tools/bench_stream.py --steps 400 --epochs 3 --samples 8192 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kopt  # noqa: E402

L = keras.layers
SIZE, CLASSES, BATCH = 64, 10, 64


def gratings(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n images and labels: a sinusoidal grating whose orientation is the class."""
    y = rng.integers(0, CLASSES, n)
    theta = (y + rng.uniform(-0.3, 0.3, n)) * np.pi / CLASSES
    freq = rng.uniform(0.15, 0.35, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    r = np.arange(SIZE, dtype=np.float32) - SIZE / 2
    u = np.cos(theta)[:, None, None] * r[None, None, :] + np.sin(theta)[:, None, None] * \
        r[None, :, None]
    g = 0.5 + 0.5 * np.sin(freq[:, None, None] * u + phase[:, None, None])
    colour = rng.uniform(0.3, 1.0, (n, 1, 1, 3))
    x = g[..., None] * colour + rng.normal(0, 0.2, (n, SIZE, SIZE, 3))
    return x.astype(np.float32), y


def stream(seed: int, counter: list | None = None):
    """An endless generator of batches, each made on the fly and never kept."""
    rng = np.random.default_rng(seed)
    while True:
        if counter is not None:
            counter.append(1)
        yield gratings(rng, BATCH)


def cnn() -> keras.Model:
    inp = keras.Input((SIZE, SIZE, 3))
    h = inp
    for width in (32, 48, 64):
        h = L.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(h)
        h = L.ReLU()(L.BatchNormalization()(h))
    h = L.Dense(64, activation="relu")(L.GlobalAveragePooling2D()(h))
    return keras.Model(inp, L.Dense(CLASSES, activation="softmax")(h))


class RssSampler:
    """Current RSS every `period` seconds in a background thread (from /proc/self/statm)."""

    def __init__(self, period: float = 0.2):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.samples.append(int(f.read().split()[1]) * self._page / 2**30)
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def part_stream(args: argparse.Namespace) -> None:
    keras.utils.set_random_seed(0)
    model = cnn()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(stream(1), steps_per_epoch=args.steps, epochs=args.train_epochs, verbose=0,
              shuffle=False)
    kopt.recalibrate_bn(model, stream(1))  # brief training leaves BN statistics behind
    print(f"trained the original from the stream: {time.perf_counter() - t0:.1f} s")
    pulled: list = []
    options = dict(merge_width=(), prune_ratio=args.prune, svd_energy=(), epochs=args.epochs)
    opt = kopt.Optimizer()
    with RssSampler() as rss:
        t0 = time.perf_counter()
        small = opt.optimize(model, data=stream(2, pulled), steps_per_epoch=args.steps,
                             validation=lambda: stream(3), validation_steps=args.val_steps,
                             max_accuracy_drop=0.02, **options)
        wall = time.perf_counter() - t0
    gb = len(pulled) * BATCH * SIZE * SIZE * 3 * 4 / 2**30
    quarters = [rss.samples[min(len(rss.samples) - 1, int(q * len(rss.samples)))]
                for q in (0.25, 0.5, 0.75, 1.0)]
    print(f"stream compress: {wall:.1f} s, {len(pulled)} training batches read "
          f"({gb:.2f} GB as float32, plus {args.val_steps} validation batches per evaluation)")
    print(f"  RSS during it: peak {max(rss.samples):.2f} GB; at 1/4, 1/2, 3/4, end: "
          + ", ".join(f"{q:.2f}" for q in quarters) + " GB")
    print(f"  process peak RSS so far (ru_maxrss): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    for s in opt.steps:
        print(f"  {s['step']:<14} params {s['params']:>7}  val_acc {s['val_acc']:.4f}  "
              f"{'kept' if s['kept'] else 'rolled back'}")
    del small


def part_compare(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(4)
    x, y = gratings(rng, args.samples)
    xv, yv = gratings(rng, args.samples // 4)
    keras.utils.set_random_seed(0)
    model = cnn()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=args.train_epochs, batch_size=BATCH, verbose=0)
    kopt.recalibrate_bn(model, x)
    options = dict(merge_width=(), prune_ratio=args.prune, svd_energy=(), epochs=args.epochs,
                   max_accuracy_drop=0.02)

    def numpy_run(opt: kopt.Optimizer) -> None:
        opt.optimize(model, data=(x, y), validation=(xv, yv), **options)

    def tfdata_run(opt: kopt.Optimizer) -> None:
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(BATCH)
        vs = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(BATCH)
        opt.optimize(model, data=ds, validation=vs, **options)

    wall: dict[str, list[float]] = {"numpy": [], "tf.data": []}
    cpu: dict[str, list[float]] = {"numpy": [], "tf.data": []}
    acc: dict[str, list[float]] = {"numpy": [], "tf.data": []}
    for _ in range(args.repeats):  # alternating, so that both share the machine's noise
        for name, run in (("numpy", numpy_run), ("tf.data", tfdata_run)):
            opt = kopt.Optimizer()
            t0, c0 = time.perf_counter(), time.process_time()
            run(opt)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            acc[name].append(opt.steps[-1]["val_acc"])
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in wall}
    for name in wall:
        runs = ", ".join(f"{v:.1f}" for v in wall[name])
        scores = ", ".join(f"{v:.4f}" for v in acc[name])
        print(f"optimize(data={name:<7}) on {args.samples} images: wall median "
              f"{med[name][0]:.1f} s ({runs}); CPU median {med[name][1]:.1f} s; "
              f"validation accuracy after: {scores}")
    print(f"tf.data / numpy: wall {med['tf.data'][0] / med['numpy'][0]:.2f}, "
          f"CPU {med['tf.data'][1] / med['numpy'][1]:.2f}")

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150, help="batches of 64 per epoch (stream)")
    p.add_argument("--val-steps", type=int, default=16, help="validation batches per pass")
    p.add_argument("--epochs", type=int, default=5, help="distillation epochs per step")
    p.add_argument("--train-epochs", type=int, default=2, help="epochs to train the original")
    p.add_argument("--prune", type=float, nargs="+", default=[0.5], help="prune ratios to try")
    p.add_argument("--samples", type=int, default=4096, help="images for the numpy/tf.data run")
    p.add_argument("--repeats", type=int, default=2, help="numpy/tf.data runs of each")
    p.add_argument("--skip", choices=("stream", "compare"), help="leave one part out")
    args = p.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}; TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}, {os.cpu_count()} CPUs")
    if args.skip != "stream":
        part_stream(args)
    if args.skip != "compare":
        part_compare(args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
