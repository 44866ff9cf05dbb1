"""Data in every form Keras takes reaches optimize(data=...): numpy, tf.data (batched or not,
x / (x, y) / (x, y, sample_weight)), PyDataset, generators (one-shot or a function returning
one, endless with steps_per_epoch), dicts for multi-input models; streams are read lazily and
bounded; bad data stops with a DataError naming what is wrong, before any output."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import kopt
from kopt.errors import DataError
from kopt.keras_io.batches import Batches, as_batches, take

L = keras.layers
FAST = dict(merge_width=(), prune_ratio=0.5, svd_energy=(), epochs=1)


@pytest.fixture(scope="module")
def model(small_digits):
    x, y, _, _ = small_digits
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1), name="image")
    h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = L.Dense(32, activation="relu")(L.Flatten()(L.MaxPooling2D(2)(h)))
    m = keras.Model(inp, L.Dense(10, activation="softmax")(h))
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return m


class Digits(keras.utils.PyDataset):
    def __init__(self, x, y, batch=64):
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self):
        return -(-len(self.x) // self.batch)

    def __getitem__(self, i):
        s = slice(i * self.batch, (i + 1) * self.batch)
        return self.x[s], self.y[s]


def _endless(x, y, batch=64, pulled=None):
    """An endless stream, as a function returning a fresh generator; counts batches read."""
    def gen():
        for i in itertools.count():
            if pulled is not None:
                pulled.append(i)
            j = (i * batch) % (len(x) - batch)
            yield x[j:j + batch], y[j:j + batch]
    return gen


# ---- reading the forms -------------------------------------------------------------------------
def test_every_form_reads_as_the_same_batches(small_digits, model):
    x, y, _, _ = small_digits
    x, y = x[:200], y[:200]
    sw = np.ones(len(x), np.float32)
    forms = {
        "numpy x": x,
        "numpy (x, y)": (x, y),
        "numpy (x, y, sw)": (x, y, sw),
        "dict": {"image": x},
        "tf.data batched": tf.data.Dataset.from_tensor_slices((x, y)).batch(64),
        "tf.data unbatched": tf.data.Dataset.from_tensor_slices((x, y)),
        "tf.data x only": tf.data.Dataset.from_tensor_slices(x).batch(64),
        "tf.data (x, y, sw)": tf.data.Dataset.from_tensor_slices((x, y, sw)).batch(64),
        "tf.data dicts": tf.data.Dataset.from_tensor_slices(({"image": x}, y)).batch(64),
        "PyDataset": Digits(x, y),
        "function": lambda: ((x[i:i + 64], y[i:i + 64]) for i in range(0, 200, 64)),
        "list of batches": [(x[i:i + 64], y[i:i + 64]) for i in range(0, 200, 64)],
    }
    for name, data in forms.items():
        src = Batches(data, 64, model=model, what=name)
        batches = list(src)
        assert [len(b[0]["image"] if isinstance(b[0], dict) else b[0]) for b in batches] == \
            [64, 64, 64, 8], name
        first = batches[0][0]["image"] if isinstance(batches[0][0], dict) else batches[0][0]
        np.testing.assert_allclose(first, x[:64], err_msg=name)
        assert (batches[0][1] is None) == (name in ("numpy x", "dict", "tf.data x only")), name
        assert len(list(src)) == 4, name  # every pass starts again
    gen = ((x[i:i + 64], y[i:i + 64]) for i in range(0, 200, 64))  # one-shot: goes on
    once = Batches(gen, 64, steps=2, model=model)
    assert [len(b[0]) for b in once] == [64, 64] and [len(b[0]) for b in once] == [64, 8]


def test_streams_are_read_lazily_and_bounded(small_digits):
    x, y, _, _ = small_digits
    pulled = []
    batches = as_batches(_endless(x, y, pulled=pulled))  # endless: a bounded sample
    assert sum(len(b) for b in batches) == 1024 and len(pulled) == 16
    src = Batches(_endless(x, y), 64, steps=5)
    assert src.count() == 5 and len(list(src)) == 5
    with pytest.raises(DataError, match="endless"):
        list(Batches(tf.data.Dataset.from_tensor_slices(x).batch(8).repeat(), 8))
    with pytest.raises(DataError, match="one-shot generator of unknown length"):
        Batches(iter([x[:8]]), 8).count()
    sample = take(as_batches({"a": x, "b": x[:, :, :, 0]}), 100)  # multi-input: per input
    assert sample["a"].shape == (100, 12, 12, 1) and sample["b"].shape == (100, 12, 12)


# ---- optimize with each form -------------------------------------------------------------------
def test_optimize_with_tf_data_and_validation(small_digits, model):
    """The issue: a batched (x, y) dataset with a dataset for validation crashed."""
    x, y, xt, yt = small_digits
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(1024, seed=0).batch(64)
    vs = tf.data.Dataset.from_tensor_slices((xt, yt)).batch(64)
    opt = kopt.Optimizer()
    small = opt.optimize(model, data=ds, validation=vs, max_accuracy_drop=0.05, **FAST)
    base = float(np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt))
    assert opt.steps[0]["val_acc"] == pytest.approx(base)
    assert [s["step"] for s in opt.steps] == ["original", "prune 0.5", "final distillation",
                                              "fuse (exact)"]
    assert small.count_params() <= model.count_params()


def test_optimize_with_pydataset_and_endless_generators(small_digits, model):
    x, y, xt, yt = small_digits
    opt = kopt.Optimizer()
    opt.optimize(model, data=Digits(x, y), validation=(xt, yt), max_accuracy_drop=1.0, **FAST)
    assert opt.steps[1]["kept"]
    pulled = []  # an endless stream, bounded per epoch; validation held out of it
    opt.optimize(model, data=_endless(x, y, pulled=pulled), steps_per_epoch=10,
                 max_accuracy_drop=1.0, **FAST)
    assert opt.steps[0]["val_acc"] > 0.5 and len(pulled) < 200
    once = _endless(x, y)()  # a one-shot generator: goes on from pass to pass
    opt.optimize(model, data=once, validation=Digits(xt, yt), steps_per_epoch=8,
                 max_accuracy_drop=1.0, **FAST)
    assert opt.steps[1]["kept"]


def test_multi_input_dicts_reach_the_rules_as_dicts(small_digits):
    x, y, xt, yt = small_digits
    keras.utils.set_random_seed(0)
    a, b = keras.Input((12, 12, 1), name="a"), keras.Input((4,), name="b")
    h = L.Flatten()(L.Conv2D(16, 3, padding="same", activation="relu")(a))
    h = L.Dense(32, activation="relu")(L.Concatenate()([h, b]))
    m = keras.Model([a, b], L.Dense(10, activation="softmax")(h))
    m.compile("adam", "sparse_categorical_crossentropy")
    extra, extra_t = np.ones((len(x), 4), np.float32), np.ones((len(xt), 4), np.float32)
    m.fit({"a": x, "b": extra}, y, epochs=1, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices(({"a": x, "b": extra}, y)).batch(64)
    opt = kopt.Optimizer()
    small = opt.optimize(m, data=ds, validation=({"a": xt, "b": extra_t}, yt),
                         max_accuracy_drop=1.0, **FAST)
    assert opt.steps[1]["kept"] and small.count_params() < m.count_params()
    opt.optimize(m, data=({"b": extra, "a": x}, y), max_accuracy_drop=1.0, **FAST)  # numpy
    assert opt.steps[1]["kept"]


# ---- bad data: a DataError naming what is wrong ------------------------------------------------
def _fails(model, data, match, **kwargs):
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(DataError, match=match):
        kopt.optimize(model, data=data, max_accuracy_drop=1.0, **FAST, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_empty_dataset(small_digits, model):
    x, y, _, _ = small_digits
    _fails(model, tf.data.Dataset.from_tensor_slices((x[:0], y[:0])).batch(64), "empty")
    _fails(model, (x[:0], y[:0]), "empty")


def test_input_shape_or_dtype_not_matching(small_digits, model):
    x, y, _, _ = small_digits
    _fails(model, (x[:, :10, :10], y), r"shape \(1024, 10, 10, 1\).*\(None, 12, 12, 1\)")
    as_text = tf.data.Dataset.from_tensor_slices((x.astype(str), y)).batch(64)
    _fails(model, as_text, "dtype")


def test_labels_out_of_range(small_digits, model):
    x, y, _, _ = small_digits
    _fails(model, (x, y + 5), r"labels out of range.*14.*10 classes")
    later = y.copy()
    later[700] = 12  # met only while distilling from a tf.data pipeline: still a DataError
    ds = tf.data.Dataset.from_tensor_slices((x, later)).batch(64)
    _fails(model, ds, "labels out of range.*10 classes", validation=(x[:200], y[:200]))


def test_nan_or_inf(small_digits, model):
    x, y, _, _ = small_digits
    bad = x.copy()
    bad[3, 0, 0, 0] = np.nan
    _fails(model, (bad, y), "NaN or inf in the inputs")
    later = x.copy()
    later[700, 0, 0, 0] = np.inf  # met only while distilling from a stream: still a DataError
    stream = lambda: ((later[i:i + 64], y[i:i + 64]) for i in range(0, 1024, 64))  # noqa: E731
    _fails(model, stream, "NaN or inf", validation=(x[:200], y[:200]))  # counting its length
    _fails(model, stream, "NaN or inf", validation=(x[:200], y[:200]), steps_per_epoch=16)
    ds = tf.data.Dataset.from_tensor_slices((later, y)).batch(64)  # checked inside tf.data
    _fails(model, ds, "NaN or inf in the inputs", validation=(x[:200], y[:200]))


def test_dict_keys_not_matching_inputs(small_digits, model):
    x, y, _, _ = small_digits
    _fails(model, tf.data.Dataset.from_tensor_slices(({"pixels": x}, y)).batch(64),
           r"keys \['pixels'\] do not match the model's inputs \['image'\]")


def test_validation_smaller_than_a_batch(small_digits, model):
    x, y, xt, yt = small_digits
    _fails(model, (x, y), "fewer than one batch", validation=(xt[:10], yt[:10]))
    small = tf.data.Dataset.from_tensor_slices((xt[:10], yt[:10])).batch(64)
    _fails(model, (x, y), "fewer than one batch", validation=small)


def test_teacher_outputs_of_a_stream_are_computed_once_per_sample(small_digits, model):
    """A finite stream read again gives its samples back, in another order and batching."""
    from kopt.flows.distill import TeacherCache
    from kopt.flows.tasks import batch_outputs

    x = small_digits[0][:96]
    cache = TeacherCache()
    first = cache.outputs(model, x[:64])
    np.testing.assert_allclose(first[0], batch_outputs(model, x[:64])[0], rtol=1e-6)
    again = cache.outputs(model, x[32:96][::-1])  # 32 seen, 32 new, reversed
    np.testing.assert_allclose(again[0], batch_outputs(model, x[32:96][::-1])[0], rtol=1e-5,
                               atol=1e-7)
    assert cache.hits == 32 and len(cache.store) == 96
    full = TeacherCache(limit=0)  # no room: computed every time, still right
    assert full.outputs(model, x[:8])[0].shape == (8, 10) and not full.store


def test_teacher_outputs_of_arrays_are_computed_once_per_run(small_digits, model,
                                                              monkeypatch):
    """A latency search retrains many candidates on the same arrays: with the run's cache the
    teacher passes over them once, and each retrain reads its outputs in its own shuffled
    order; other arrays are computed afresh."""
    import kopt.flows.distill as distill
    from kopt.flows.distill import TeacherCache, retrain

    x, y = small_digits[0][:128], small_digits[1][:128]
    passes = []
    real = distill.predict_outputs
    monkeypatch.setattr(distill, "predict_outputs",
                        lambda m, xs, **kw: passes.append(m) or real(m, xs, **kw))
    cache = TeacherCache()
    for _ in range(2):
        retrain(keras.models.clone_model(model), model, (x, y), epochs=1, recalibrate=False,
                teacher_cache=cache)
    assert passes.count(model) == 1 and cache.hits == 128
    outputs = cache.of_arrays(model, x[::-1].copy())
    assert passes.count(model) == 2  # other arrays: the teacher runs again
    np.testing.assert_allclose(outputs[0], real(model, x[::-1].copy())[0], rtol=1e-5,
                               atol=1e-7)
