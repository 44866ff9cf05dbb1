"""FuseHorizontalSplit: parallel convs / Dense layers reading one tensor but feeding different
layers become one wider layer and a channel slice (GetItem) per branch; exact, opt-in."""

import os
import sys

import keras
import numpy as np
import pytest

import kopt
from kopt.ir.ops import GET_ITEM
from kopt.rewriting import PassManager, registered
from kopt.testing import assert_same_function, check_rule, randomize_weights
from rewrites import exact_rules
from rewrites.fuse_horizontal_split import FuseHorizontalSplit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples"))

from seed_models import tree  # noqa: E402

L = keras.layers


def _reduce_block(second_activation="relu", second_kernel=1):
    """Inception's 1x1 reduce convs: three convs read x, each feeding a different layer."""
    x = keras.Input((10, 10, 6))
    a = L.Conv2D(4, 1, padding="same", activation="relu", name="a")(x)
    b = L.Conv2D(3, second_kernel, padding="same", activation=second_activation, name="b")(x)
    c = L.Conv2D(5, 1, padding="same", activation="relu", name="c")(x)
    a = L.Conv2D(4, 3, padding="same", name="a2")(a)
    b = L.Conv2D(4, 3, padding="same", name="b2")(b)
    return keras.Model(x, [L.Concatenate()([a, b, c]), c])  # c is a model output too


def _widths(g, op="Conv2D", key="filters"):
    return sorted(n.config[key] for n in g.nodes_of(op))


def test_fuses_reduce_convs_into_one_conv_and_slices():
    r = check_rule(_reduce_block(), FuseHorizontalSplit(), applied={"fuse_horizontal_split": 1})
    g = r.graph
    assert _widths(g) == [4, 4, 12] and not {"a", "b", "c"} & {n.name for n in g}
    slices = {s.name: s for s in g.nodes_of(GET_ITEM)}
    assert sorted(slices) == ["a_slice", "b_slice", "c_slice"]
    assert len({g.single_producer(s).name for s in slices}) == 1  # all read the wide conv
    keys = {name: s.call[0][1] for name, s in slices.items()}
    assert all(key[0] is Ellipsis for key in keys.values())
    ranges = sorted((key[1].start, key[1].stop) for key in keys.values())
    assert ranges in ([(0, 3), (3, 7), (7, 12)], [(0, 4), (4, 7), (7, 12)])  # b, a or a, b
    assert {name: key[1].stop - key[1].start for name, key in keys.items()} == {
        "a_slice": 4, "b_slice": 3, "c_slice": 5}
    assert [g.out_edges(s)[0][0] for s in ("a_slice", "b_slice")] == ["a2", "b2"]
    assert g.outputs[1] == ("c_slice", 0)  # the model output moved onto its slice


def test_shared_bn_relu_fuse_with_the_convs_so_bn_still_folds():
    """Unfolded conv-BN-ReLU branches (as the search sees the model): the slices go after the
    fused BN and ReLU, and fold_batchnorm / fuse_vertical still fold them afterwards."""
    x = keras.Input((8, 8, 4))
    outs = []
    for i, width in enumerate((3, 5)):
        h = L.Conv2D(width, 1, use_bias=False, name=f"r{i}")(x)
        h = L.ReLU(name=f"relu{i}")(L.BatchNormalization(name=f"bn{i}")(h))
        outs.append(L.Conv2D(2, 3, padding="same", name=f"next{i}")(h))
    model = keras.Model(x, L.Add()(outs))
    r = check_rule(model, FuseHorizontalSplit(), applied={"fuse_horizontal_split": 1})
    g = r.graph
    assert r.ops["BatchNormalization"] == 1 and r.ops["ReLU"] == 1 and r.ops[GET_ITEM] == 2
    assert all(g.single_producer(s.name).op == "ReLU" for s in g.nodes_of(GET_ITEM))
    r = check_rule(model, exact_rules() + [FuseHorizontalSplit()],
                   applied={"fold_batchnorm": 2, "fuse_vertical": 2, "fuse_horizontal_split": 1})
    assert r.ops == {"InputLayer": 1, "Conv2D": 3, GET_ITEM: 2, "Add": 1}


def test_dense_heads_going_to_different_layers():
    x = keras.Input((7,))
    h = L.Dense(6, activation="relu")(x)
    y1 = L.Dense(3, name="h1")(L.Dense(4, name="d1")(h))
    y2 = L.Dense(2, name="h2")(L.Dense(5, name="d2")(h))
    r = check_rule(keras.Model(x, [y1, y2]), FuseHorizontalSplit(),
                   applied={"fuse_horizontal_split": 1})
    assert _widths(r.graph, "Dense", "units") == [2, 3, 6, 9] and r.ops[GET_ITEM] == 2


def test_fires_on_the_tree_examples_inception_reduce_convs():
    """In each inception block of the seed's tree, the 1x1 convs reading the block input (b1
    into the Concatenate, b2a and b3a reducing for the 3x3 branches) become one conv."""
    r = check_rule(tree(width=16, dense=32, blocks=2), exact_rules() + [FuseHorizontalSplit()])
    assert r.report.counts()["fuse_horizontal_split"] == 2
    g = r.graph
    readers = {}  # fused conv -> the layers its slices feed
    for piece in g.nodes_of(GET_ITEM):
        conv = g.single_producer(piece.name)
        readers.setdefault(conv.name, set()).update(d for d, _, _ in g.out_edges(piece.name))
        assert conv.config["filters"] == 16 + 12 + 6  # b1, b2a (3/4 of 16), b3a (12 / 2)
    assert sorted(sorted(r) for r in readers.values()) == [
        [f"{b}_b2b_conv", f"{b}_b3b_conv", f"{b}_concat"] for b in ("mixed0", "mixed1")]


def test_is_opt_in_and_exact():
    assert FuseHorizontalSplit in registered(exact=True)
    assert FuseHorizontalSplit not in registered(default_only=True)


def test_only_rewrites_the_named_place():
    x = keras.Input((6, 6, 3))
    h = L.ReLU(name="h")(x)
    ys = [L.Conv2D(2, 1, name=f"{src}{i}")(src_t) for src, src_t in (("x", x), ("h", h))
          for i in (0, 1)]
    model = keras.Model(x, [L.Conv2D(1, 1)(y) for y in ys])
    r = check_rule(model, FuseHorizontalSplit(only="h"), applied={"fuse_horizontal_split": 1})
    assert {"x0", "x1"} <= {n.name for n in r.graph} and _widths(r.graph).count(4) == 1


@pytest.mark.parametrize("kwargs, reason", [
    (dict(second_activation="linear"), "have different activation"),
    (dict(second_kernel=3), "have different kernel_size"),
])
def test_mismatched_layers_are_declined(kwargs, reason):
    """b differs from a and c, which still fuse; alone with a, b is declined with the key."""
    r = check_rule(_reduce_block(**kwargs), FuseHorizontalSplit(),
                   applied={"fuse_horizontal_split": 1})
    assert "b" in r.graph and _widths(r.graph) == [3, 4, 4, 9]
    x = keras.Input((10, 10, 6))
    a = L.Conv2D(4, 1, padding="same", activation="relu", name="a")(x)
    b = L.Conv2D(3, kwargs.get("second_kernel", 1), padding="same",
                 activation=kwargs.get("second_activation", "relu"), name="b")(x)
    check_rule(keras.Model(x, [L.ReLU()(a), L.ReLU()(b)]), FuseHorizontalSplit(), applied=0,
               declined=reason)


def test_softmax_heads_are_declined_and_softmax_followers_stay_per_branch():
    x = keras.Input((7,))
    heads = [L.Dense(3, activation="softmax")(x), L.Dense(4, activation="softmax")(x)]
    check_rule(keras.Model(x, heads), FuseHorizontalSplit(), applied=0,
               declined="has activation softmax, which mixes channels")
    heads = [L.Activation("softmax")(L.Dense(n)(x)) for n in (3, 4)]
    r = check_rule(keras.Model(x, heads), FuseHorizontalSplit(),
                   applied={"fuse_horizontal_split": 1})
    assert r.ops["Activation"] == 2  # each softmax still over its own branch's channels


def test_result_round_trips_saves_safely_and_exports_to_tflite(tmp_path):
    model = randomize_weights(_reduce_block(), seed=1)
    g, _ = PassManager([FuseHorizontalSplit()]).run(kopt.from_keras(model), reference=model)
    fused = kopt.to_keras(g)
    again = kopt.to_keras(kopt.from_keras(fused))  # the IR keeps the slices, names and keys
    names = sorted(op.name for op in fused.operations)
    assert sorted(op.name for op in again.operations) == names
    assert_same_function(model, again)
    tf_keras_model = kopt.to_keras(g, backend="tf_keras")  # tf_keras slices (SlicingOpLambda)
    assert_same_function(model, tf_keras_model)

    path = tmp_path / "fused.keras"
    fused.save(path)
    for loaded in (keras.saving.load_model(path, safe_mode=True), kopt.load_model(path)):
        assert_same_function(model, loaded)
    assert_same_function(model, kopt.to_keras(kopt.from_keras(loaded), backend="tf_keras"))

    x = np.random.default_rng(0).normal(size=(8, 10, 10, 6)).astype("float32")
    result = kopt.export_tflite(loaded, tmp_path / "fused.tflite", representative_data=x)
    assert result.ops["CONV_2D"] == 3 and result.ops["STRIDED_SLICE"] == 3
    assert not result.fallback_ops


def test_offered_by_the_latency_search_once_per_place():
    from kopt.flows.targeted import structural_moves

    model = tree(width=16, dense=32, blocks=2)
    moves = dict(m for m in structural_moves(model, calibration=None)
                 if m[0].startswith("fuse convs"))
    assert sorted(moves) == ["fuse convs reading mixed0_pool (sliced)",
                             "fuse convs reading stem_pool (sliced)"]
    g, report = PassManager([moves["fuse convs reading stem_pool (sliced)"]]).run(
        kopt.from_keras(model), reference=model)
    assert report.counts() == {"fuse_horizontal_split": 1}  # exact: verified
    before = kopt.from_keras(model)
    for op in ("Conv2D", "BatchNormalization", "ReLU"):  # mixed0's b1, b2a, b3a: conv-BN-ReLU
        assert len(g.nodes_of(op)) == len(before.nodes_of(op)) - 2, op
    assert all(g.single_producer(s.name).op == "ReLU" for s in g.nodes_of(GET_ITEM))
