"""Channel groups and entropy pruning: consistent slicing through Concatenate, Add, depthwise
and Flatten->Dense (exact when the removed channels are never read), dead channels go first."""

import keras
import numpy as np
import pytest

import kopt
from kopt.errors import KoptError
from kopt.ir.channels import channel_groups, prune_group
from kopt.rewriting import max_relative_error
from kopt.testing import check_rule, model_inputs, outputs, randomize_weights
from rewrites.prune_entropy import PruneEntropy, channel_scores, prune, sensitivity


def _branchy():
    x = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="a")(x)
    a = keras.layers.BatchNormalization(name="bn_a")(a)
    a = keras.layers.ReLU(name="relu_a")(a)
    b = keras.layers.Conv2D(8, 1, name="b")(x)
    s = keras.layers.Add(name="add")([a, b])
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(s)
    c = keras.layers.Conv2D(4, 1, name="c")(x)
    cat = keras.layers.Concatenate(name="cat")([d, c])
    e = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="e")(cat)
    e = keras.layers.MaxPooling2D(name="pool")(e)
    f = keras.layers.Flatten(name="flat")(e)
    f = keras.layers.Dense(5, activation="relu", name="fc1")(f)
    return randomize_weights(keras.Model(x, keras.layers.Dense(3, name="out")(f)))


def _groups(g):
    return {grp.key: grp for grp in channel_groups(g)}


def test_groups_follow_dependencies():
    groups = _groups(kopt.from_keras(_branchy()))
    assert groups["a"].sources == ["a", "b"] and len(groups["a"]) == 8  # Add ties both branches
    assert {"bn_a", "add", "dw", "cat", "e"} <= set(groups["a"].members)
    assert groups["c"].members == ["c", "cat", "e"]
    assert "flat" in groups["e"].members and "fc1" in groups["e"].members
    assert groups["out"].reason == "reaches model output 'out'"
    assert all(groups[k].prunable for k in ("a", "c", "e", "fc1"))


def test_opaque_reader_freezes_group():
    x = keras.Input((4, 4, 2))
    y = keras.layers.Conv2D(4, 1, name="conv")(x)
    y = keras.layers.Reshape((16, 4), name="reshape")(y)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(y)))
    reason = _groups(kopt.from_keras(model))["conv"].reason
    assert "reshape" in reason and "Reshape" in reason


@pytest.mark.parametrize("key, drop, reader, rows", [
    ("a", 2, "e", lambda k: k[:, :, 2, :]),          # through Add + depthwise + concat slot 2
    ("c", 1, "e", lambda k: k[:, :, 8 + 1, :]),      # second concat input: offset 8
    ("e", 4, "fc1", lambda k: k[4::6, :]),           # Flatten rows (h*W + w)*C + c, C = 6
])
def test_prune_is_exact_when_removed_channel_is_unread(key, drop, reader, rows):
    model = _branchy()
    layer = model.get_layer(reader)
    kernel, bias = layer.get_weights()
    rows(kernel)[...] = 0.0
    layer.set_weights([kernel, bias])
    g = kopt.from_keras(model)
    group = _groups(g)[key]
    prune_group(g, group, [i for i in range(len(group)) if i != drop])
    g.lint()
    x = model_inputs(model, batch=4)
    pruned = kopt.to_keras(g)
    assert pruned.count_params() < model.count_params()
    assert max_relative_error(outputs(model, x), outputs(pruned, x)) < 1e-5


def test_keep_all_is_identity_and_zero_is_refused():
    model = _branchy()
    g = kopt.from_keras(model)
    for group in channel_groups(g):
        if group.prunable:
            prune_group(g, group, range(len(group)))
    x = model_inputs(model, batch=2)
    assert max_relative_error(outputs(model, x), outputs(kopt.to_keras(g), x)) == 0.0
    with pytest.raises(KoptError, match="at least one"):
        prune_group(g, _groups(g)["a"], [])
    with pytest.raises(KoptError, match="cannot be pruned"):
        prune_group(g, _groups(g)["out"], [0])
    assert PruneEntropy(ratio=1.0, round_to=1, min_channels=1).keep_count(8, 1.0) == 1


def test_rule_prunes_all_groups_once():
    model = _branchy()
    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 3)).astype("float32")
    g, stats = prune(kopt.from_keras(model), x, ratio=0.5, round_to=2, min_channels=2)
    assert [n.config["filters"] for n in g.nodes_of("Conv2D")] == [4, 4, 2, 4]
    assert g.nodes_of("Dense")[0].config["units"] == 4  # 2.5 kept, rounded up to round_to
    assert stats["params"][1] < stats["params"][0] and stats["macs"][1] < stats["macs"][0]
    assert 0 < stats["error"] < 10
    assert ("out", "group cannot be pruned: reaches model output 'out'") in stats["declined"]
    assert kopt.to_keras(g).predict(x, verbose=0).shape == (32, 3)


def _dead_channel_model():
    x = keras.Input((8, 8, 1))
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(4, 3, name="next")(y)
    model = randomize_weights(keras.Model(x, keras.layers.GlobalAveragePooling2D()(y)))
    kernel, bias = model.get_layer("conv").get_weights()
    kernel[..., 3], bias[3] = 0.0, -1.0  # ReLU(-1) = 0 everywhere: a dead channel
    model.get_layer("conv").set_weights([kernel, bias])
    return model


def test_entropy_removes_dead_channel_first():
    model = _dead_channel_model()
    x = np.random.default_rng(0).normal(0, 1, (16, 8, 8, 1)).astype("float32")
    g = kopt.from_keras(model)
    scores = channel_scores(g, _groups(g)["conv"], "entropy", x)
    assert np.argmin(scores) == 3 and scores[3] == 0.0 and np.all(np.delete(scores, 3) > 1.0)
    rule = PruneEntropy(x, ratio=1 / 8, round_to=1, min_channels=1)
    r = check_rule(model, rule, applied={"prune_entropy": 1}, randomize=False, x=x)
    kept = r.graph["conv"].weights["kernel"]
    np.testing.assert_array_equal(kept, np.delete(model.get_layer("conv").get_weights()[0], 3, -1))
    assert r.error < 1e-5


def test_round_to_declines_and_sensitivity():
    model = _dead_channel_model()
    x = np.random.default_rng(0).normal(0, 1, (16, 8, 8, 1)).astype("float32")
    report = check_rule(model, PruneEntropy(x, ratio=0.25), applied=0, randomize=False).report
    assert "removes nothing" in report.why("conv")[0].reason  # 6 kept -> rounded up to 8
    g = kopt.from_keras(model)
    labels = np.argmax(outputs(model, x)[0], axis=-1)
    result = sensitivity(g, x, labels, ratios=(0.125, 0.75), tolerance=0.0, round_to=1,
                         min_channels=1)
    assert result["baseline"] == 1.0 and result["drops"]["conv"][0.125] == 0.0
    assert result["ratios"]["conv"] >= 0.125
