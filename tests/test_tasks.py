"""Any task: the metric that decides what compress keeps (top-1 for classifiers, fidelity
otherwise, or the caller's), the distillation loss that fits the output (soft targets for
classes, squared error for values), multi-output models."""

import logging

import keras
import numpy as np
import pytest

import kopt
from kopt.flows.distill import DistillLoss
from kopt.flows.tasks import heads, labels_per_output, resolve_metric

L = keras.layers
FAST = dict(merge_width=(), prune_ratio=0.5, svd_energy=(), epochs=1)


def _trunk(inp):
    h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    return L.Flatten()(L.MaxPooling2D(2)(h))


@pytest.fixture(scope="module")
def regression(small_digits):
    """The issue's model: Conv -> Flatten -> Dense(1), float targets."""
    x, y, _, _ = small_digits
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1))
    m = keras.Model(inp, L.Dense(1)(_trunk(inp)))
    m.compile("adam", "mse")
    m.fit(x, y / 3.0, epochs=2, verbose=0)
    return m


@pytest.fixture(scope="module")
def two_heads(small_digits):
    """A class head and a box head (4 regression values)."""
    x, y, _, _ = small_digits
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1))
    h = L.Dense(32, activation="relu")(_trunk(inp))
    m = keras.Model(inp, [L.Dense(10, activation="softmax", name="cls")(h),
                          L.Dense(4, name="box")(h)])
    m.compile("adam", ["sparse_categorical_crossentropy", "mse"])
    m.fit(x, [y, _boxes(x)], epochs=2, verbose=0)
    return m


def _boxes(x):
    return np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x[:, :6].mean((1, 2, 3)),
                     x[:, 6:].mean((1, 2, 3))], axis=1).astype(np.float32)


def test_heads_are_read_from_labels_and_activations(two_heads, regression):
    y = np.array([0, 3, 9])
    cls, box = heads(two_heads, labels_per_output(two_heads, {"cls": y, "box": np.zeros((3, 4))}))
    assert (cls.classes, cls.probs, box.classes, box.probs) == (True, True, False, False)
    assert heads(two_heads, None)[0].classes and not heads(two_heads, None)[1].classes
    assert heads(two_heads, [np.eye(10)[y], None])[0].classes  # one-hot
    assert not heads(regression, [np.array([0.3, 1.7, 2.0])])[0].classes
    logits = keras.Sequential([keras.Input((4,)), L.Dense(10)])
    assert heads(logits, [y])[0].classes  # integer labels make logits a class head
    assert not heads(logits, None)[0].classes  # unlabelled logits: fidelity, squared error
    with pytest.raises(kopt.DataError, match="labels of shape"):
        heads(regression, [np.zeros((3, 2))])


def test_resolve_metric_modes_and_tolerances(two_heads, regression):
    hs, hr = heads(two_heads, None), heads(regression, None)
    acc = resolve_metric(None, None, None, 0.01, hs)
    assert acc.is_accuracy and acc.mode == "max" and acc.drop == 0.01
    fid = resolve_metric(None, None, None, 0.01, hr)
    assert fid.kind == "fidelity" and fid.drop == 0.02
    mse = resolve_metric("mse", None, 0.5, 0.01, hr)
    assert mse.kind == "keras" and mse.mode == "min" and mse.kept(1.4, 1.0)
    assert not mse.kept(1.6, 1.0)
    with pytest.raises(TypeError, match="max_metric_drop"):
        resolve_metric("mse", None, None, 0.01, hr)
    sca = resolve_metric(keras.metrics.SparseCategoricalAccuracy(), None, None, 0.03, hs)
    assert sca.mode == "max" and sca.drop == 0.03
    assert resolve_metric(lambda t, p: 0.0, "min", 1.0, 0.01, hr).kind == "callable"
    with pytest.raises(kopt.DataError, match="class scores"):
        resolve_metric("accuracy", None, None, 0.01, hr)


def test_regression_with_float_targets(small_digits, regression, caplog):
    """The issue: IndexError from one-hot encoding float targets for a Dense(1) output."""
    x, y, _, _ = small_digits
    opt = kopt.Optimizer()
    with caplog.at_level(logging.INFO, logger="kopt.flows"):
        small = opt.optimize(regression, data=(x, y / 3.0), max_metric_drop=1.0, **FAST)
    assert "fidelity to the original's outputs" in caplog.text
    assert [s["metric"] for s in opt.steps] == ["fidelity to the original's outputs"] * 4
    assert opt.steps[0]["val_score"] == 1.0 and opt.steps[1]["kept"]
    assert 0.5 < opt.steps[1]["val_score"] < 1.0
    assert small.count_params() < regression.count_params()


def test_distillation_loss_matches_the_output(small_digits, regression, two_heads):
    x, y, _, _ = small_digits
    student = keras.models.clone_model(regression)
    kopt.retrain(student, regression, data=(x[:256], y[:256] / 3.0), epochs=1)
    assert student.loss.parts == [("values", 1), ("teacher", 1)] and not student.loss.classes
    student = keras.models.clone_model(two_heads)
    kopt.retrain(student, two_heads, data=(x[:256], [y[:256], _boxes(x[:256])]), epochs=1)
    cls, box = student.loss
    assert cls.parts == [("labels", 10), ("teacher", 10)] and cls.classes and cls.probs
    assert box.parts == [("values", 4), ("teacher", 4)] and not box.classes
    loss = DistillLoss([("values", 2)], classes=False, alpha=1.0)
    assert float(loss(np.array([[1.0, 2.0]]), np.array([[1.0, 4.0]]))) == pytest.approx(2.0)


def test_named_keras_metric_and_callable(small_digits, regression):
    x, y, _, _ = small_digits
    opt = kopt.Optimizer()
    opt.optimize(regression, data=(x, y / 3.0), metric="mae", max_metric_drop=10.0, **FAST)
    assert opt.steps[0]["metric"] == "mean_absolute_error" and opt.steps[1]["kept"]
    assert opt.steps[1]["val_score"] >= 0.0  # an error: lower is better, kept within +10

    def neg_abs_error(y_true, y_pred):
        return -float(np.mean(np.abs(y_true.reshape(-1) - y_pred.reshape(-1))))

    opt.optimize(regression, data=(x, y / 3.0), metric=neg_abs_error, max_metric_drop=0.0,
                 **FAST)
    assert opt.steps[0]["metric"] == "neg_abs_error" and opt.steps[0]["val_score"] < 0
    with pytest.raises(TypeError, match="max_metric_drop"):
        kopt.optimize(regression, data=(x, y / 3.0), metric="mae", **FAST)


def test_multi_output_class_and_box_heads(small_digits, two_heads):
    x, y, xt, yt = small_digits
    opt = kopt.Optimizer()
    small = opt.optimize(two_heads, data=(x, {"cls": y, "box": _boxes(x)}),
                         validation=(xt, [yt, _boxes(xt)]), max_accuracy_drop=0.5, **FAST)
    assert opt.steps[0]["metric"] == "top-1 accuracy of 'cls'"
    base = float(np.mean(np.argmax(two_heads.predict(xt, verbose=0)[0], -1) == yt))
    assert opt.steps[0]["val_acc"] == pytest.approx(base)
    assert opt.steps[1]["kept"] and len(small.outputs) == 2
    opt.optimize(two_heads, data=x, metric="fidelity", max_metric_drop=1.0, **FAST)
    assert opt.steps[0]["val_score"] == 1.0 and opt.steps[1]["val_score"] < 1.0
