"""SplitSeparable: a separable conv becomes a depthwise conv and a 1x1 conv, exactly, with the
same .tflite ops; split, its width can be pruned (the point of the rule)."""

import keras
import pytest

from kopt.ir.channels import channel_groups
from kopt.keras_io import from_keras
from kopt.testing import check_rule
from rewrites.split_separable import SplitSeparable

L = keras.layers


def _sepnet(rank=2, bn=True):
    conv = {1: L.SeparableConv1D, 2: L.SeparableConv2D}[rank]
    x = inp = keras.Input((12,) * rank + (3,))
    x = L.Conv2D(8, 3, padding="same", name="stem")(x) if rank == 2 else \
        L.Conv1D(8, 3, padding="same", name="stem")(x)
    x = conv(16, 3, padding="same", depth_multiplier=2, activation="relu", name="sep1")(x)
    x = L.BatchNormalization(name="bn")(x) if bn else x
    x = conv(12, 3, strides=2, padding="valid", use_bias=False, name="sep2")(x)
    x = L.GlobalAveragePooling2D()(x) if rank == 2 else L.GlobalAveragePooling1D()(x)
    return keras.Model(inp, L.Dense(4, name="fc")(x))


@pytest.mark.parametrize("rank", [1, 2])
def test_split_is_exact(rank):
    model = _sepnet(rank)
    r = check_rule(model, SplitSeparable(), applied={"split_separable": 2})
    g = r.graph
    depthwise, conv = f"DepthwiseConv{rank}D", f"Conv{rank}D"
    assert [n.op for n in g.topological()] == [
        "InputLayer", conv, depthwise, conv, "BatchNormalization", depthwise, conv,
        f"GlobalAveragePooling{rank}D", "Dense"]
    assert g["sep1"].op == conv and g["sep1"].activation == "relu"
    assert g["sep1_depthwise"].config["depth_multiplier"] == 2
    assert g["sep2_depthwise"].config["strides"] in ((2,) * rank, [2] * rank)
    assert "bias" not in g["sep2"].weights and g.count_params() == model.count_params()


def test_split_makes_the_widths_prunable():
    model = _sepnet()
    before = {gr.key for gr in channel_groups(from_keras(model)) if gr.prunable}
    after = {gr.key for gr in channel_groups(check_rule(model, SplitSeparable()).graph)
             if gr.prunable}
    assert "sep1" not in before and {"stem", "sep1"} <= after


def test_same_tflite_ops(int8_before_after):
    """The converter writes a separable conv as DEPTHWISE_CONV_2D + CONV_2D: split or not, the
    int8 file has the same ops. (No BN here: whether the int8 converter folds a BN between two
    convs depends on the weights, in both forms alike.)"""
    keras.utils.set_random_seed(0)
    a, b = int8_before_after(_sepnet(bn=False), SplitSeparable(), samples=16)
    assert a.ops == b.ops and a.ops.get("DEPTHWISE_CONV_2D") == 2, (a.ops, b.ops)
