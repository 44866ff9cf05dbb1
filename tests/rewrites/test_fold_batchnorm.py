"""FoldBatchNorm: BN disappears into every linear op kind, outputs unchanged; near misses stay."""

import logging

import keras
import numpy as np
import pytest

from kopt.rewriting import Match, Rule
from kopt.testing import chain, check_rule
from rewrites.fold_batchnorm import FoldBatchNorm

L = keras.layers


AFTER = {
    "conv2d": lambda: L.Conv2D(6, 3, padding="same"),
    "conv2d_nobias": lambda: L.Conv2D(6, 3, strides=2, use_bias=False),
    "conv2d_grouped": lambda: L.Conv2D(6, 3, groups=2),
    "conv1d": lambda: L.Conv1D(5, 3, padding="causal"),
    "depthwise": lambda: L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False),
    "separable": lambda: L.SeparableConv2D(7, 3, depth_multiplier=2, padding="same"),
    "transpose": lambda: L.Conv2DTranspose(5, 3, strides=2),
    "dense": lambda: L.Dense(6),
    "dense_nobias": lambda: L.Dense(6, use_bias=False),
}
SHAPES = {"conv1d": (12, 4), "dense": (10,), "dense_nobias": (10,)}


@pytest.mark.parametrize("bn_kw", [{}, {"scale": False, "center": False}], ids=["full", "bare"])
@pytest.mark.parametrize("op", sorted(AFTER))
def test_bn_after_linear_op_is_folded(op, bn_kw):
    m = chain(SHAPES.get(op, (9, 9, 4)), AFTER[op](), L.BatchNormalization(**bn_kw))
    g = check_rule(m, FoldBatchNorm(), applied={"fold_batchnorm": 1}, seed=3).graph
    assert not g.nodes_of("BatchNormalization")
    lin = [n for n in g if n.op != "InputLayer"][0]
    assert "bias" in lin.weights and lin.config["use_bias"] is True
    assert g.count_params() < m.count_params()


BEFORE = {
    "conv2d": lambda: L.Conv2D(6, 3, use_bias=False),
    "conv1d": lambda: L.Conv1D(5, 3),
    "depthwise": lambda: L.DepthwiseConv2D(3, depth_multiplier=2),
    "separable": lambda: L.SeparableConv2D(7, 3, depth_multiplier=2, use_bias=False),
    "dense": lambda: L.Dense(6),
}


@pytest.mark.parametrize("op", sorted(BEFORE))
def test_bn_before_valid_linear_op_is_folded(op):
    m = chain(SHAPES.get(op, (9, 9, 4)), L.BatchNormalization(), BEFORE[op]())
    g = check_rule(m, FoldBatchNorm(), applied={"fold_batchnorm": 1}, seed=3).graph
    assert not g.nodes_of("BatchNormalization")


def test_bn_after_relu_conv_folds_forward_into_next_valid_conv():
    m = chain((9, 9, 3), L.Conv2D(4, 3, activation="relu"), L.BatchNormalization(),
               L.Conv2D(5, 3), L.BatchNormalization())
    r = check_rule(m, FoldBatchNorm(), applied={"fold_batchnorm": 2},
                   declined="activation 'relu'", seed=3)
    assert not r.graph.nodes_of("BatchNormalization")


def _declined(m, needle):
    r = check_rule(m, FoldBatchNorm(), applied=0, declined=needle, seed=3)
    assert len(r.graph.nodes_of("BatchNormalization")) >= 1
    bn = r.graph.nodes_of("BatchNormalization")[0].name
    assert r.report.why(bn)


def test_declines_activation_between_conv_and_bn():
    m = chain((8, 8, 3), L.Conv2D(4, 3, activation="relu", padding="same"),
               L.BatchNormalization())
    _declined(m, "activation 'relu' between Conv2D and BN")


def test_declines_when_conv_output_is_read_elsewhere():
    x = keras.Input((8, 8, 3))
    y = L.Conv2D(4, 3, padding="same")(x)
    m = keras.Model(x, L.Add()([L.BatchNormalization()(y), y]))
    _declined(m, "also read elsewhere")


def test_declines_bn_before_same_padded_conv():
    _declined(chain((8, 8, 3), L.BatchNormalization(), L.Conv2D(4, 3, padding="same")),
              "'same'-padded conv")


def test_declines_bn_before_transposed_conv():
    _declined(chain((8, 8, 3), L.BatchNormalization(), L.Conv2DTranspose(4, 3)),
              "transposed conv")


def test_declines_bn_on_a_non_channel_axis():
    _declined(chain((8, 8, 3), L.Conv2D(4, 3), L.BatchNormalization(axis=1)), "axis")


def test_declines_shared_conv():
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    conv = L.Conv2D(4, 3)
    m = keras.Model([a, b], [L.BatchNormalization()(conv(a)), L.BatchNormalization()(conv(b))])
    r = check_rule(m, FoldBatchNorm(), applied=0, declined="shared layer", seed=3)
    assert len(r.graph.nodes_of("BatchNormalization")) == 2


class _ZeroBias(Rule):
    """Deliberately wrong: drops every conv's bias (the pass manager must undo it)."""

    name = "zero_bias"

    def matches(self, g):
        for n in g.nodes_of("Conv2D"):
            if np.any(n.weights.get("bias", 0) != 0):
                yield Match(conv=n)

    def apply(self, g, m):
        m.conv.weights["bias"] = np.zeros_like(m.conv.weights["bias"])


def test_pass_manager_rolls_back_a_broken_rule(caplog):
    m = chain((8, 8, 3), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(), L.Conv2D(2, 3))
    with caplog.at_level(logging.WARNING, logger="kopt"):
        r = check_rule(m, [FoldBatchNorm(), _ZeroBias()], rolled_back="zero_bias",
                       applied={"fold_batchnorm": 1}, seed=3)  # the good rule's work is kept
    assert "outputs changed" in r.report.rolled_back[0][1]
    assert not r.graph.nodes_of("BatchNormalization")
    assert any("zero_bias" in rec.message and "rolled back" in rec.message
               for rec in caplog.records)


def test_mobilenetv2_loses_every_bn_and_relu6():
    from rewrites.fuse_vertical import FuseVertical

    m = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=0.35)
    r = check_rule(m, [FoldBatchNorm(), FuseVertical()], seed=3)  # and nothing rolled back
    assert r.report.counts()["fold_batchnorm"] == 52
    assert not r.graph.nodes_of("BatchNormalization") and not r.graph.nodes_of("ReLU")
    assert r.report.max_error < 1e-5
