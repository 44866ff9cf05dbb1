"""Bundled digits: shapes, a fixed stratified split, shifted copies; calibration batches."""

import numpy as np
import pytest

import kopt
from kopt.keras_io.batches import as_batches, take
from kopt.errors import DataError


@pytest.fixture(scope="module")
def plain():
    return kopt.load_digits(size=16, augment_shifts=False)


def test_shapes_range_and_split(plain):
    x, y, xt, yt = plain
    assert x.shape == (1347, 16, 16, 1) and xt.shape == (450, 16, 16, 1)
    assert x.dtype == xt.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10)) == set(np.unique(yt))
    train_share, test_share = np.bincount(y) / len(y), np.bincount(yt) / len(yt)
    assert np.max(np.abs(train_share - test_share)) < 0.01  # stratified
    assert not any(np.array_equal(a, b) for a in xt[:20] for b in x)  # disjoint


def test_deterministic_and_seeded(plain):
    again = kopt.load_digits(size=16, augment_shifts=False)
    for a, b in zip(plain, again):
        np.testing.assert_array_equal(a, b)
    other = kopt.load_digits(size=16, augment_shifts=False, seed=1)
    assert not np.array_equal(plain[3], other[3])


def test_augmented_and_hard(plain):
    x, y, xt, yt = kopt.load_digits(size=16)
    assert len(x) == 5 * len(plain[0]) and np.array_equal(np.bincount(y), 5 * np.bincount(plain[1]))
    np.testing.assert_array_equal(xt, plain[2])  # the test split is never augmented
    hx, hy, hxt, hyt = kopt.load_digits(size=16, hard=True, augment_shifts=False)
    assert len(hx) < len(plain[0]) / 3 and len(hyt) == len(yt)
    assert np.abs(hxt - plain[2]).mean() > 0.05  # shifted, noisy test images


def test_as_batches_accepts_arrays_pairs_datasets_and_generators(plain):
    x, y = plain[0][:100], plain[1][:100]
    assert [len(b) for b in as_batches(x, 32)] == [32, 32, 32, 4]
    assert len(as_batches((x, y), 50)) == 2
    assert len(as_batches((b for b in np.split(x, 4)), max_batches=3)) == 3
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(25)
    batches = as_batches(ds, input_shape=(None, 16, 16, 1))
    assert len(batches) == 4 and batches[0].dtype == np.float32
    assert take(batches, 30).shape == (30, 16, 16, 1)


def test_as_batches_rejects_bad_data(plain):
    with pytest.raises(DataError, match="empty"):
        as_batches(np.zeros((0, 4)))
    with pytest.raises(DataError, match="empty"):
        as_batches([])
    with pytest.raises(DataError, match="model input needs"):
        as_batches(plain[0], input_shape=(None, 28, 28, 1))
    with pytest.raises(DataError, match="shape"):
        as_batches([np.zeros(5)])
    with pytest.raises(DataError):
        as_batches(None)


def test_splits_do_not_leak():
    """No validation or test image, nor a shifted twin of one, is in the training split."""
    s = kopt.digits_splits(size=16, seed=0, validation_fraction=0.15)
    (x, y), (xv, yv), (xt, yt), (xh, yh) = s
    _, _, xt_plain, yt_plain = kopt.load_digits(size=16, seed=0)
    np.testing.assert_array_equal(xt, xt_plain)  # the same test split as load_digits
    np.testing.assert_array_equal(yh, yt)
    assert xh.shape == xt.shape and not np.array_equal(xh, xt)
    assert len(xv) == 5 * 203 and len(x) == 5 * (1347 - 203)  # each with 4 shifted copies
    train = {a.tobytes() for a in x}
    assert not any(a.tobytes() in train for a in xv)
    assert not any(a.tobytes() in train for a in xt)
    with pytest.raises(DataError, match="validation_fraction"):
        kopt.digits_splits(validation_fraction=0.0)
