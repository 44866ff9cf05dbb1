"""Calibration and evaluation data: the bundled digits set, and batches from what users have.

scikit-learn ships the 8x8 UCI digits (1,797 images) inside the wheel, so tests and examples get
real images and a held-out split without a download. The easy variant is nearly solved by any
small CNN; `hard=True` (random shifts, noise, under a third of the training images) makes the
accuracy cost of an approximate rewrite visible.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from kopt.errors import DataError


class Splits(NamedTuple):
    """Disjoint digits splits, each an (x, y) pair; see digits_splits()."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    hard_test: tuple[np.ndarray, np.ndarray]


def load_digits(size: int = 28, seed: int = 0, test_fraction: float = 0.25,
                augment_shifts: bool = True, hard: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): float32 images (N, size, size, 1) in [0, 1] and int
    labels, from a stratified split fixed by `seed`. With augment_shifts the training set also
    holds copies shifted by about a pixel of the original 8x8 grid in the four directions."""
    images, labels = _digits(size)
    x_tr, x_te, y_tr, y_te = _stratified(images, labels, test_fraction, seed)
    rng = np.random.default_rng(seed)
    if hard:
        x_tr, _, y_tr, _ = _stratified(x_tr, y_tr, 0.7, seed)
        x_te = _noisy(_random_shifts(x_te, size // 6, rng), rng)
    if augment_shifts:
        x_tr, y_tr = _with_shifts(x_tr, y_tr, size)
    if hard:
        x_tr = _noisy(_random_shifts(x_tr, size // 6, rng), rng)
    order = rng.permutation(len(x_tr))
    return x_tr[order, ..., None], y_tr[order], x_te[..., None], y_te


def digits_splits(size: int = 28, seed: int = 0, validation_fraction: float = 0.15,
                  test_fraction: float = 0.25) -> Splits:
    """Train / validation / test splits with no image in two of them, plus a harder test.

    The test split is the one load_digits(size, seed, test_fraction) holds out. Validation
    images are split off the rest *before* the training set gets its shifted copies, so no
    shifted twin of a validation image is trained on (what decides a compression step must be
    as unseen as the test). Validation gets shifted copies of its own images: five times the
    samples make its accuracy five times finer-grained than one image in ~200 (0.5 points).
    hard_test is the test split shifted by up to a sixth of the image and noised (sigma 0.15):
    the accuracy cost of a rewrite shows there first.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    images, labels = _digits(size)
    x_rest, x_te, y_rest, y_te = _stratified(images, labels, test_fraction, seed)
    x_tr, x_va, y_tr, y_va = _stratified(x_rest, y_rest, validation_fraction, seed + 1)
    x_tr, y_tr = _with_shifts(x_tr, y_tr, size)
    x_va, y_va = _with_shifts(x_va, y_va, size)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_tr))
    x_hard = _noisy(_random_shifts(x_te, size // 6, rng), rng)
    return Splits((x_tr[order, ..., None], y_tr[order]), (x_va[..., None], y_va),
                  (x_te[..., None], y_te), (x_hard[..., None], y_te))


def _digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_digits

    if size < 8:
        raise DataError(f"load_digits: size must be at least 8 (the original grid), got {size}")
    digits = sk_digits()
    return _resize(digits.images.astype(np.float32) / 16.0, size), digits.target.astype(np.int64)


def _stratified(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y)


def _with_shifts(x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """x plus copies shifted by about one pixel of the 8x8 grid in the four directions."""
    step = max(1, size // 8)
    shifted = [_shift(x, dy, dx) for dy, dx in ((step, 0), (-step, 0), (0, step), (0, -step))]
    return np.concatenate([x] + shifted), np.concatenate([y] * 5)


def _resize(images: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """Bilinear upsampling (pixel centres aligned) of (N, 8, 8) images to (N, height, width)."""
    width = height if width is None else width
    src = images.shape[1]

    def taps(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * src / size - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, src - 1), (pos - lo).astype(np.float32)

    (r0, r1, tr), (c0, c1, tc) = taps(height), taps(width)
    rows = images[:, r0, :] * (1 - tr)[None, :, None] + images[:, r1, :] * tr[None, :, None]
    return rows[:, :, c0] * (1 - tc) + rows[:, :, c1] * tc


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift with zero fill (not np.roll: a digit must not wrap round the border)."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _random_shifts(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    moves = rng.integers(-limit, limit + 1, size=(len(x), 2))
    return np.stack([_shift(img[None], int(dy), int(dx))[0] for img, (dy, dx) in zip(x, moves)])


def _noisy(x: np.ndarray, rng: np.random.Generator, sigma: float = 0.15) -> np.ndarray:
    return np.clip(x + rng.normal(0, sigma, x.shape).astype(np.float32), 0.0, 1.0)


def load_digits_like(model_or_shape: Any, split: str = "all", seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits shaped for a model's first input (N, H, W, C) (channels repeated),
    scaled to [0, 1]: calibration data for any image model. `split` is "train" (first 80 %,
    shuffled with `seed`), "test" (the rest) or "all". A non-image input gets the 64 pixels
    reshaped to its shape."""
    from sklearn.datasets import load_digits as sk_digits

    shape = model_or_shape if isinstance(model_or_shape, tuple) else \
        tuple(model_or_shape.inputs[0].shape)
    h, w, c = shape[1:4] if len(shape) == 4 else (8, 8, 1)
    digits = sk_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    cut = int(0.8 * len(order))
    order = {"train": order[:cut], "test": order[cut:]}.get(split, order)
    x = _resize(digits.images[order].astype(np.float32) / 16.0, h, w)[..., None]
    x = np.repeat(x, c, axis=-1) if c != 1 else x
    if len(shape) != 4:
        x = x.reshape((len(x),) + tuple(d for d in shape[1:]))
    return x.astype(np.float32), digits.target[order].astype(np.int64)
