"""compress(): smaller model within the allowed accuracy drop; steps past the drop roll back."""

import keras
import numpy as np
import pytest

from kopt.flows.compress import compress
from kopt.flows.data import load_digits
from kopt.flows.distill import recalibrate_bn
from kopt.keras_io import from_keras
from kopt.api import Optimizer, optimize

L = keras.layers


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y, xt, yt = load_digits(size=12, seed=0)
    inp = keras.Input((12, 12, 1))
    h = L.Conv2D(32, 3, padding="same", use_bias=False)(inp)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.MaxPooling2D(2)(h)
    h = L.Conv2D(32, 3, padding="same", use_bias=False)(h)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.Dense(64, activation="relu")(L.Flatten()(h))
    model = keras.Model(inp, L.Dense(10, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    recalibrate_bn(model, x)  # two epochs leave BN's moving statistics behind the weights
    return model, (x, y), (xt, yt)


def test_compress_is_smaller_within_drop(trained):
    model, data, val = trained
    weights = [w.copy() for w in model.get_weights()]
    small, steps = compress(model, data, val, max_accuracy_drop=0.02, prune_ratio=0.5,
                            svd_energy=0.9, epochs=2)
    assert steps[0]["step"] == "original" and steps[-1]["step"] == "fuse (exact)"
    assert set(steps[0]) >= {"step", "params", "macs", "val_acc", "kept"}
    assert any(s["kept"] and s["step"].startswith("prune") for s in steps)
    assert small.count_params() < model.count_params()
    assert steps[-1]["params"] == from_keras(small).count_params()
    assert steps[-1]["val_acc"] >= steps[0]["val_acc"] - 0.02
    for a, b in zip(weights, model.get_weights()):  # the original is not mutated
        np.testing.assert_array_equal(a, b)


def test_step_past_the_drop_is_rolled_back(trained):
    model, data, val = trained
    small, steps = compress(model, data, val, max_accuracy_drop=-1.0, prune_ratio=0.5,
                            svd_energy=0.9, epochs=1)
    approx = [s for s in steps if s["step"].split()[0] in ("prune", "svd")]
    assert approx and not any(s["kept"] for s in approx)
    # only the exact fusions ran: the same params as optimising the original directly
    assert steps[-1]["params"] == from_keras(optimize(model)).count_params()
    assert steps[-1]["val_acc"] == pytest.approx(steps[0]["val_acc"], abs=1e-9)
    x = val[0][:32]
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-4)


def test_optimize_with_unlabelled_data_runs_the_flow(trained):
    """kopt.optimize(model, data=x): labels come from the original (agreement), steps logged."""
    model, (x, _), (xt, _) = trained
    opt = Optimizer()
    small = opt.optimize(model, data=x, validation=xt, max_accuracy_drop=0.02, prune_ratio=0.5,
                         svd_energy=0.9, epochs=1, merge_width=())
    assert [s["step"] for s in opt.steps][0] == "original" and opt.steps[0]["val_acc"] == 1.0
    assert opt.steps[-1]["val_acc"] >= 0.98 and small.count_params() < model.count_params()
    with pytest.raises(TypeError, match="only with data"):
        optimize(model, prune_ratio=0.5)


def test_tree_flow_merges_blocks_one_at_a_time():
    keras.utils.set_random_seed(0)
    x, y, xt, yt = load_digits(size=12, seed=0)
    inp = keras.Input((12, 12, 1))
    s = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
    for i in range(2):
        a = L.Conv2D(16, 1, activation="relu")(s)
        b = L.Conv2D(16, 1, activation="relu")(s)
        for _ in range(2):
            b = L.Conv2D(16, 3, padding="same", activation="relu")(b)
        c = L.Conv2D(16, 1, activation="relu")(L.AveragePooling2D(3, 1, "same")(s))
        s = L.Concatenate(name=f"mixed{i}")([a, b, c])
    h = L.Dense(32, activation="relu")(L.Flatten()(L.MaxPooling2D(2)(s)))
    model = keras.Model(inp, L.Dense(10, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    small, steps = compress(model, (x, y), (xt, yt), max_accuracy_drop=0.03, merge_width=0.5,
                            prune_ratio=(), svd_energy=(), epochs=4)
    merges = [s for s in steps if s["step"].startswith("merge")]
    assert [s["step"] for s in merges] == ["merge mixed0 0.5", "merge mixed1 0.5"]
    assert all(s["kept"] for s in merges), steps
    assert merges[1]["macs"] < merges[0]["macs"] < steps[0]["macs"]
    assert not any(layer.__class__.__name__ == "Concatenate" for layer in small.layers)
    assert steps[-1]["val_acc"] >= steps[0]["val_acc"] - 0.03



@pytest.mark.parametrize("final, kept", [(0.985, False), (0.99, True)])
def test_a_near_miss_gets_one_more_round_and_the_end_one_more(trained, monkeypatch, final,
                                                              kept):
    """The flow's control, with retraining replaced by a script of validation scores: a prune
    ratio that misses by less than twice the allowed drop is distilled again (and kept when it
    then passes), one that misses by more is rolled back after one round, as is any other
    step's near miss, and the last kept model gets a final round that is kept only when
    validation does not fall."""
    import kopt.flows.compress as flow
    from kopt.flows.prepare import Prepared

    model, data, val = trained
    rounds = []
    monkeypatch.setattr(flow, "retrain", lambda m, **_: rounds.append(m))
    # original 1.0; prune 0.75 misses by 3x the drop, prune 0.5 by 1.5x then passes,
    # svd 0.9 misses by 1.5x (not pruning: no second round), then the final round; the fused
    # model is scored last
    scores = iter([1.0, 0.94, 0.97, 0.99, 0.97, final, 0.99])
    monkeypatch.setattr(Prepared, "score", lambda self, candidate, on=None: next(scores))
    small, steps = compress(model, data, val, max_accuracy_drop=0.02,
                            prune_ratio=(0.75, 0.5), svd_energy=0.9, epochs=3, merge_width=())
    assert [(s["step"], s["kept"]) for s in steps] == [
        ("original", True), ("prune 0.75", False), ("prune 0.5", False),
        ("prune 0.5 (+3 epochs)", True), ("svd 0.9", False), ("final distillation", kept),
        ("fuse (exact)", True)]
    assert len(rounds) == 5 and rounds[1] is rounds[2]  # prune 0.5 distilled twice
    assert all(rounds[4] is not m for m in rounds[:4])  # the final round works on a copy
