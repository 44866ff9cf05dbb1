"""retrain: distillation recovers a damaged student on real digits; fine-tuning without teacher."""

import keras
import numpy as np
import pytest

import kopt
from kopt.errors import DataError


@pytest.fixture(scope="module")
def digits():
    return kopt.load_digits(size=8, augment_shifts=False)


@pytest.fixture(scope="module")
def teacher(digits):
    x, y, _, _ = digits
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    return kopt.retrain(m, data=(x, y), epochs=8, learning_rate=3e-3)


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def _damaged(teacher, seed=1):
    student = keras.models.clone_model(teacher)
    rng = np.random.default_rng(seed)
    student.set_weights([w + rng.normal(0, 0.5, w.shape) * np.std(w)
                         for w in teacher.get_weights()])
    return student


def test_distillation_recovers_damaged_student(digits, teacher):
    x, y, xt, yt = digits
    teacher_acc = _accuracy(teacher, xt, yt)
    assert teacher_acc > 0.85
    student = _damaged(teacher)
    before = _accuracy(student, xt, yt)
    assert before < teacher_acc - 0.03  # the damage is visible
    out = kopt.retrain(student, teacher, data=x, epochs=3)  # soft targets only, no labels
    assert out is student
    after = _accuracy(student, xt, yt)
    assert after > before + 0.02 and after > teacher_acc - 0.05


def test_finetune_and_distil_with_labels(digits, teacher):
    x, y, xt, yt = digits
    student = _damaged(teacher, seed=2)
    before = _accuracy(student, xt, yt)
    kopt.retrain(student, teacher, data=(x, y), epochs=2, alpha=0.3)
    assert _accuracy(student, xt, yt) > before


def test_retrain_needs_labels_or_teacher(digits, teacher):
    with pytest.raises(DataError):
        kopt.retrain(_damaged(teacher), data=digits[0])
    with pytest.raises(DataError):
        kopt.retrain(_damaged(teacher), teacher, data=digits[0][:0])


def test_compiles_in_callers_distribution_scope(digits, teacher):
    import tensorflow as tf

    x, y, _, _ = digits
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        student = _damaged(teacher, seed=3)
        kopt.retrain(student, teacher, data=(x[:256], y[:256]), epochs=1)
    assert student.optimizer is not None and student.distribute_strategy is strategy


def test_same_seed_same_model_whenever_the_student_was_built(digits, teacher):
    """A Dropout layer seeds itself from Python's random state when built: two students built
    at different points of a process must still train to the same weights with one seed."""
    import random

    x, y, _, _ = digits

    def student():
        h = inp = keras.Input((8, 8, 1))
        h = keras.layers.Dropout(0.5)(keras.layers.Flatten()(h))
        return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))

    first = student()
    random.random()  # other work in between draws from the same state
    second = student()
    second.set_weights(first.get_weights())
    for m in (first, second):
        kopt.retrain(m, teacher, data=(x, y), epochs=1, seed=3)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
