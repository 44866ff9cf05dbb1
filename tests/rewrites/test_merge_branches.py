"""MergeBranches: RepVGG-style re-parameterisation of parallel linear branches into one conv."""

import keras
import pytest

from kopt.testing import check_rule
from rewrites.merge_branches import MergeBranches

L = keras.layers


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
    r = check_rule(keras.Model(x, y), MergeBranches(), applied={"merge_branches": 2})
    assert r.ops == {"InputLayer": 1, "Conv2D": 2, "ReLU": 2}
    conv = r.graph.nodes_of("Conv2D")[0]
    assert tuple(conv.config["kernel_size"]) == (3, 3) and conv.config["padding"] == "same"
    assert r.report.after["macs"] < r.report.before["macs"]


def test_identity_shortcut_around_linear_conv_merges():
    x = keras.Input((7, 7, 4))
    y = L.Add()([x, L.Conv2D(4, 5, padding="same")(x), L.Conv2D(4, 3, padding="same")(x)])
    r = check_rule(keras.Model(x, y), MergeBranches(), applied={"merge_branches": 1})
    assert r.ops["Conv2D"] == 1
    assert tuple(r.graph.nodes_of("Conv2D")[0].config["kernel_size"]) == (5, 5)


def test_resnet_shortcut_with_nonlinear_branch_does_not_match():
    x = keras.Input((8, 8, 4))
    h = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    y = L.ReLU()(L.Add()([x, L.Conv2D(4, 3, padding="same")(h)]))
    r = check_rule(keras.Model(x, y), MergeBranches(), applied=0,
                   declined="do not read one common tensor")
    assert r.ops["Add"] == 1


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
    r = check_rule(_near_miss(case), MergeBranches(), applied=0, declined=reason)
    assert r.ops["Add"] == 1
