"""The structural search moves (kopt.flows.targeted.structural_moves): on a model with a conv +
max-pool, an inception pool branch and a residual branch, the search is offered one move per
place, and rule_candidates prices each with the latency model. The runtime is faked (a fixed
cost per op plus a cost per output element), so nothing is timed."""

import math

import pytest

keras = pytest.importorskip("keras")

from kopt.flows.candidates import channel_candidates, combined_move, rule_candidates  # noqa: E402
from kopt.flows.targeted import structural_moves  # noqa: E402
from kopt.keras_io import from_keras  # noqa: E402
from kopt.runtime.latency import LatencyModel  # noqa: E402

L = keras.layers
OVERHEAD = 0.01
KINDS = ("stride for pool", "pool branch", "remove")


@pytest.fixture
def fake_runtime(monkeypatch):
    """A group costs 0.01 ms per layer plus 1 ns per output element of each layer."""

    def time(self, model, shapes):
        layers = [layer for layer in model.layers if not isinstance(layer, L.InputLayer)]
        elements = sum(math.prod(layer.output.shape[1:]) for layer in layers)
        return OVERHEAD + 0.01 * len(layers) + 1e-6 * elements

    monkeypatch.setattr(LatencyModel, "_time", time)
    monkeypatch.setattr(LatencyModel, "overhead_ms", lambda self: OVERHEAD)


def _model():
    x = inp = keras.Input((16, 16, 3))
    x = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(
        L.Conv2D(8, 3, padding="same", name="c1")(x)))
    x = L.MaxPooling2D(name="mp")(x)                                    # conv + pool
    y = L.BatchNormalization(name="bn2")(L.Conv2D(8, 3, padding="same", name="c2")(x))
    x = L.ReLU(name="r2")(L.Add(name="add")([x, y]))                     # residual branch
    pool = L.AveragePooling2D(3, strides=1, padding="same", name="ap")(x)
    x = L.Concatenate(name="cat")([L.Conv2D(4, 1, name="b1")(x),         # inception pool
                                   L.Conv2D(4, 1, name="b2")(pool)])     # branch
    return keras.Model(inp, L.Dense(4, name="fc")(L.GlobalAveragePooling2D(name="gap")(x)))


def test_structural_moves_are_offered_and_priced(tmp_path, fake_runtime):
    model = _model()
    moves = [(name, rule) for name, rule in structural_moves(model, calibration=None)
             if name.startswith(KINDS)]
    assert sorted(name for name, _ in moves) == [
        "pool branch ap as conv", "remove c2", "stride for pool mp"]
    g = from_keras(model)
    lm = LatencyModel(cache_dir=tmp_path)
    current = lm.predict(g)
    offered, fallbacks = rule_candidates(g, lm, current, 0.0, moves)
    assert fallbacks == [] and sorted(c.name for c in offered) == sorted(n for n, _ in moves)
    for cand in offered:
        assert cand.predicted_ms == pytest.approx(lm.predict(cand.graph))
        assert cand.predicted_ms < current
    by_name = {c.name: c.graph for c in offered}
    assert "mp" not in by_name["stride for pool mp"]
    assert tuple(by_name["stride for pool mp"]["c1"].config["strides"]) == (2, 2)
    assert "ap" not in by_name["pool branch ap as conv"]
    assert "c2" not in by_name["remove c2"] and "add" not in by_name["remove c2"]


def test_a_cut_out_of_reach_leaves_them_as_fallbacks(tmp_path, fake_runtime):
    model = _model()
    moves = [m for m in structural_moves(model, calibration=None) if m[0].startswith(KINDS)]
    g = from_keras(model)
    lm = LatencyModel(cache_dir=tmp_path)
    current = lm.predict(g)
    offered, fallbacks = rule_candidates(g, lm, current, current, moves)
    assert offered == [] and len(fallbacks) == len(moves)


def test_rule_moves_and_channel_cuts_are_taken_together(tmp_path, fake_runtime):
    """combined_move makes each rule move again at its place on the graph the moves before it
    left, and each channel cut again on its group: both changes are in the result, priced as
    a whole; a move that no longer applies (the pool already gone) is passed over."""
    model = _model()
    g = from_keras(model)
    lm = LatencyModel(cache_dir=tmp_path)
    current = lm.predict(g)
    rules = [m for m in structural_moves(model, calibration=None)
             if m[0] in ("stride for pool mp", "remove c2")]
    stride, remove = sorted(rule_candidates(g, lm, current, current, rules)[1],
                            key=lambda c: c.name != "stride for pool mp")
    first_cut = next(c for c in channel_candidates(g, lm, current, current).first_cuts
                     if c.info["group"] == "c1")
    move = combined_move(g, lm, current, current, [stride, first_cut, stride, remove])
    assert move.info["combined"] == ["stride for pool mp", first_cut.name, "remove c2"]
    assert "mp" not in move.graph and "c2" not in move.graph
    assert move.graph["c1"].config["filters"] == first_cut.info["width"]
    assert move.predicted_ms == pytest.approx(lm.predict(move.graph))
    assert move.predicted_ms < min(stride.predicted_ms, remove.predicted_ms,
                                   first_cut.predicted_ms)
