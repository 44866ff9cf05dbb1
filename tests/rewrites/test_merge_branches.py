"""MergeBranches: RepVGG-style re-parameterisation of parallel linear branches into one conv."""

from collections import Counter

import keras
import pytest

import kopt
from kopt.rewriting import PassManager
from kopt.testing import assert_same_function, randomize_weights
from rewrites.merge_branches import MergeBranches

L = keras.layers


def _run(model):
    model = randomize_weights(model)
    g, report = PassManager([MergeBranches()], verify=True).run(kopt.from_keras(model))
    assert assert_same_function(model, kopt.to_keras(g), rtol=1e-5) <= 1e-5
    return g, report, Counter(n.op for n in g)


def _repvgg(x, with_bn):
    """conv3x3 (+BN), conv1x1 (+BN), BN identity, Add, ReLU. Without BN the convs carry biases."""
    c = x.shape[-1]
    a = L.Conv2D(c, 3, padding="same", use_bias=not with_bn)(x)
    b = L.Conv2D(c, 1, use_bias=not with_bn)(x)
    if with_bn:
        a, b = L.BatchNormalization()(a), L.BatchNormalization()(b)
    return L.ReLU()(L.Add()([a, b, L.BatchNormalization()(x)]))


@pytest.mark.parametrize("with_bn", [False, True])
def test_repvgg_blocks_merge_into_one_conv_each(with_bn):
    x = keras.Input((8, 8, 6))
    y = _repvgg(_repvgg(x, with_bn), with_bn)
    g, report, ops = _run(keras.Model(x, y))
    assert report.counts() == {"merge_branches": 2}
    assert ops == {"InputLayer": 1, "Conv2D": 2, "ReLU": 2}
    conv = g.nodes_of("Conv2D")[0]
    assert tuple(conv.config["kernel_size"]) == (3, 3) and conv.config["padding"] == "same"
    assert report.after["macs"] < report.before["macs"]


def test_identity_shortcut_around_linear_conv_merges():
    x = keras.Input((7, 7, 4))
    y = L.Add()([x, L.Conv2D(4, 5, padding="same")(x), L.Conv2D(4, 3, padding="same")(x)])
    g, report, ops = _run(keras.Model(x, y))
    assert report.counts() == {"merge_branches": 1} and ops["Conv2D"] == 1
    assert tuple(g.nodes_of("Conv2D")[0].config["kernel_size"]) == (5, 5)


def test_resnet_shortcut_with_nonlinear_branch_does_not_match():
    x = keras.Input((8, 8, 4))
    h = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    y = L.ReLU()(L.Add()([x, L.Conv2D(4, 3, padding="same")(h)]))
    _, report, ops = _run(keras.Model(x, y))
    assert report.counts() == {} and ops["Add"] == 1
    assert any("do not read one common tensor" in d.reason for d in report.declined)


def _near_miss(case):
    x = keras.Input((8, 8, 4))
    act = "relu" if case == "activation" else None
    pad = "valid" if case == "valid" else "same"
    strides = 2 if case == "strided" else 1
    a = L.Conv2D(4, 3, padding=pad, activation=act, strides=strides)(x)
    b = L.Conv2D(4, 3, padding=pad, strides=strides)(x)
    outs = [L.Add()([a, b])]
    if case == "read_elsewhere":
        outs.append(L.GlobalAveragePooling2D()(b))
    if case == "no_conv":
        outs = [L.Add()([x, L.BatchNormalization()(x)])]
    return keras.Model(x, outs)


@pytest.mark.parametrize("case, reason", [
    ("activation", "has activation relu"),
    ("valid", "uses 'valid' padding"),
    ("strided", "is strided or dilated"),
    ("read_elsewhere", "is also read elsewhere"),
    ("no_conv", "no conv branch"),
])
def test_near_misses_are_declined(case, reason):
    _, report, ops = _run(_near_miss(case))
    assert report.counts() == {} and ops["Add"] == 1
    assert any(reason in d.reason for d in report.declined), report.declined
