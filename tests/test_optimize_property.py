"""Property: optimize() keeps the function of random functional models, without rollbacks.

Models are drawn from conv / depthwise / separable / transpose / dense / BN / activation /
pool / add / concat / multiply / dropout pieces, with random BN statistics and biases.
"""

import keras
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kopt
from kopt.rewriting import max_relative_error
from kopt.testing import model_inputs, outputs, randomize_weights

L = keras.layers


def _pick(data, tensors, label):
    return tensors[data.draw(st.integers(0, len(tensors) - 1), label=label)]


def _same_shape_pair(data, tensors):
    by_shape = {}
    for t in tensors:
        by_shape.setdefault(tuple(t.shape), []).append(t)
    pairs = [ts for ts in by_shape.values() if len(ts) >= 2]
    if not pairs:
        return None
    group = pairs[data.draw(st.integers(0, len(pairs) - 1), label="pair")]
    i = data.draw(st.integers(0, len(group) - 1), label="a")
    j = data.draw(st.integers(0, len(group) - 1).filter(lambda k: k != i), label="b")
    return group[i], group[j]


def _step(data, tensors):
    kind = data.draw(st.sampled_from(
        ["conv", "conv", "conv1x1", "depthwise", "separable", "transpose", "bn", "bn", "act",
         "pool", "add", "multiply", "concat", "dropout", "pad_conv", "parallel"]), label="op")
    x = _pick(data, tensors, "input")
    h = x.shape[1]
    act = data.draw(st.sampled_from(["linear", "relu"]), label="act")
    pad = data.draw(st.sampled_from(["same", "valid"]), label="pad") if h >= 5 else "same"
    width = data.draw(st.sampled_from([4, 8]), label="width")
    if kind == "conv":
        return L.Conv2D(width, 3, padding=pad, activation=act)(x)
    if kind == "conv1x1":
        return L.Conv2D(width, 1, use_bias=data.draw(st.booleans(), label="bias"))(x)
    if kind == "depthwise":
        return L.DepthwiseConv2D(3, padding=pad, activation=act)(x)
    if kind == "separable":
        return L.SeparableConv2D(width, 3, padding=pad)(x)
    if kind == "transpose":
        return L.Conv2DTranspose(width, 3, padding="same")(x)
    if kind == "bn":
        return L.BatchNormalization(center=data.draw(st.booleans(), label="center"),
                                    scale=data.draw(st.booleans(), label="scale"))(x)
    if kind == "act":
        return data.draw(st.sampled_from([L.ReLU(), L.ReLU(max_value=6.0),
                                          L.Activation("tanh")]), label="act_layer")(x)
    if kind == "pool" and h >= 4:
        pool = data.draw(st.sampled_from([L.AveragePooling2D, L.MaxPooling2D]), label="pool")
        return pool(2, padding=pad)(x)
    if kind in ("add", "multiply"):
        pair = _same_shape_pair(data, tensors)
        if pair:
            return (L.Add() if kind == "add" else L.Multiply())(list(pair))
    if kind == "concat":
        same_hw = [t for t in tensors if t.shape[1:3] == x.shape[1:3]]
        return L.Concatenate()([x, _pick(data, same_hw, "other")])
    if kind == "dropout":
        return L.Dropout(0.3)(x)
    if kind == "pad_conv":
        return L.Conv2D(width, 3)(L.ZeroPadding2D(1)(x))
    if kind == "parallel":  # inception-like: same-input convs meeting in a Concatenate
        return L.Concatenate()([L.Conv2D(width, 1, activation=act)(x),
                                L.Conv2D(4, 1, activation=act)(x)])
    return L.BatchNormalization()(x)


def _random_model(data):
    x = keras.Input((8, 8, data.draw(st.sampled_from([2, 3]), label="cin")))
    tensors = [x]
    for _ in range(data.draw(st.integers(2, 7), label="steps")):
        tensors.append(_step(data, tensors))
    y = L.GlobalAveragePooling2D()(tensors[-1])
    y = L.Dense(6)(y)
    if data.draw(st.booleans(), label="dense_bn"):
        y = L.BatchNormalization()(y)
    y = L.Activation("relu")(y)
    outs = [L.Dense(3)(y)]
    if data.draw(st.booleans(), label="second_output") and len(tensors) > 2:
        outs.append(tensors[len(tensors) // 2])
    return keras.Model(x, outs)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_optimize_keeps_the_function(data):
    keras.backend.clear_session()
    model = randomize_weights(_random_model(data), seed=3)
    before = [w.copy() for w in model.get_weights()]
    opt = kopt.Optimizer()
    new = opt.optimize(model)
    x = model_inputs(model, batch=3)
    err = max_relative_error(outputs(model, x), outputs(new, x))
    assert err <= 1e-4, f"{err:.2e}\n{opt.report}"
    assert not opt.report.rolled_back, str(opt.report)
    assert new.count_params() <= model.count_params()
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
