"""SplitHardSwish: conv / depthwise / Dense (+ BN) + hard-swish becomes layer/6 * relu6(copy + 3),
exactly; the int8 file then has no HARD_SWISH op (which XNNPACK does not take in int8), and
its channels are still prunable."""

import keras
import pytest

from kopt.ir.channels import channel_groups
from kopt.testing import check_rule
from rewrites.split_hard_swish import SplitHardSwish

L = keras.layers


def _hsnet():
    x = inp = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.Activation("hard_swish", name="stem_hs")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="dw")(x)
    x = L.BatchNormalization(name="dw_bn")(x)
    x = L.Activation("hard_swish", name="dw_hs")(x)
    x = L.Conv2D(12, 1, activation="hard_swish", name="pw")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(16, activation="hard_silu", name="fc1")(x)
    return keras.Model(inp, L.Dense(4, name="fc")(x))


def test_split_is_exact():
    r = check_rule(_hsnet(), SplitHardSwish(), applied={"split_hard_swish": 4})
    g = r.graph
    assert not g.nodes_of("BatchNormalization") and len(g.nodes_of("Multiply")) == 4
    for layer in ("stem", "dw", "pw", "fc1"):
        assert g[layer].activation == "linear"
        assert g[f"{layer}_gate"].activation == "relu6"
        assert g.in_edges(f"{layer}_gate") == g.in_edges(layer)
    assert g["stem_hs"].op == "Multiply"  # the product keeps the activation's name
    assert "dw_gate" in {s for s, _, _ in g.in_edges("dw_hs")}


@pytest.mark.parametrize("model, reason", [
    (lambda: _after(L.Add()), "does not follow a conv"),
    (lambda: _after(L.Conv2D(4, 1, activation="relu")), "has its own activation"),
    (lambda: _after(L.Conv2D(4, 1), read_twice=True), "is read besides"),
])
def test_declined(model, reason):
    check_rule(model(), SplitHardSwish(), applied=0, declined=reason)


def _after(layer, read_twice=False):
    inp = keras.Input((6, 6, 4))
    x = layer([inp, inp]) if isinstance(layer, L.Add) else layer(inp)
    y = L.Activation("hard_swish")(x)
    return keras.Model(inp, L.Add()([y, x]) if read_twice else y)


def test_split_widths_stay_prunable():
    g = check_rule(_hsnet(), SplitHardSwish()).graph
    prunable = {gr.key for gr in channel_groups(g) if gr.prunable}
    assert {"stem", "fc1"} <= prunable, prunable


def test_int8_file_has_no_hard_swish(int8_before_after):
    keras.utils.set_random_seed(0)
    a, b = int8_before_after(_hsnet(), SplitHardSwish(), samples=32)
    assert a.ops.get("HARD_SWISH") == 4 and "HARD_SWISH" not in b.ops, (a.ops, b.ops)
    assert b.ops["MUL"] == 4 and not b.fallback_ops, b.fallback_ops


def test_only_the_places_named():
    g = check_rule(_hsnet(), SplitHardSwish(only=["dw", "fc1"]), applied=2).graph
    assert {n.name for n in g.nodes_of("Multiply")} == {"dw_hs", "fc1_hard_swish"}
    assert g["stem_hs"].op == "Activation" and g["pw"].activation in {"hard_swish", "hard_silu"}
