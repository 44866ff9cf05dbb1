"""kopt.flows.for_runtime keeps a runtime-dependent exact rewrite only where the runtime measures
it faster; the latency search starts from that model, quotes its speed-up over the original and
does not distil it. The runtime is faked (latency counts HARD_SWISH ops as slow or fast), so
the decision is tested without timing anything."""

import keras
import numpy as np
import pytest

from kopt.flows.for_runtime import for_runtime
from kopt.flows.search import Target, latency_search
from kopt.keras_io import to_keras
from kopt.runtime.latency import LatencyModel
from kopt.testing import assert_same_function

L = keras.layers


def _hard_swish_net():
    x = inp = keras.Input((8, 8, 3))
    x = L.Activation("hard_swish", name="hs")(L.BatchNormalization()(L.Conv2D(8, 3)(x)))
    return keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(x)))


def _fake(monkeypatch, hard_swish_ms):
    """Latency (measured and predicted): hard_swish_ms per hard-swish (an Activation layer
    here), 0.1 ms per other layer. Returns that function of a Keras model."""
    def ms(model):
        model = model if hasattr(model, "layers") else to_keras(model)
        return sum(hard_swish_ms if isinstance(layer, L.Activation) else 0.1
                   for layer in model.layers)

    monkeypatch.setattr(LatencyModel, "measure_side_by_side",
                        lambda self, models, runs=None: [ms(m) for m in models])
    monkeypatch.setattr(LatencyModel, "measure", lambda self, m, runs=None: ms(m))
    monkeypatch.setattr(LatencyModel, "runner", lambda self, m: m)
    monkeypatch.setattr(LatencyModel, "predict", lambda self, m, progress=False: ms(m))
    return ms


@pytest.mark.parametrize("hard_swish_ms, kept", [(1.0, ["split_hard_swish"]), (0.01, [])])
def test_kept_only_where_measured_faster(tmp_path, monkeypatch, hard_swish_ms, kept):
    _fake(monkeypatch, hard_swish_ms)
    model = _hard_swish_net()
    out, names = for_runtime(model, LatencyModel(cache_dir=tmp_path))
    assert names == kept
    assert (out is model) == (not kept)
    assert "hs" in [layer.name for layer in model.layers]  # the caller's model is untouched
    if kept:
        assert not any(isinstance(layer, L.Activation) for layer in out.layers)
        assert_same_function(model, out, rtol=1e-5)


def test_a_rewrite_the_runtime_cannot_prepare_is_not_kept(tmp_path, monkeypatch):
    """LiteRT refused a split 7x7 depthwise conv on a 2x2 map ("failed to create XNNPACK
    runtime"): for_runtime leaves that rule out with a warning and goes on."""
    _fake(monkeypatch, 1.0)

    def refuse(self, models, runs=None):
        raise RuntimeError("failed to create XNNPACK runtime")

    monkeypatch.setattr(LatencyModel, "measure_side_by_side", refuse)
    model = _hard_swish_net()
    out, names = for_runtime(model, LatencyModel(cache_dir=tmp_path))
    assert out is model and names == []


def test_search_starts_from_the_rewrite_and_quotes_the_original(tmp_path, monkeypatch):
    """The rewrite alone meets 1.5x: the search stops there, quotes the speed-up over the
    original and does not distil the exact model."""
    ms = _fake(monkeypatch, 1.0)
    model = _hard_swish_net()
    lm = LatencyModel(cache_dir=tmp_path)
    start, _ = for_runtime(model, lm)
    distilled = []
    res = latency_search(model, Target(speedup=1.5), lambda m: 1.0,
                         lambda m, epochs: distilled.append(m), latency=lm, max_drop=0.01,
                         measure_runs=1, start=start)
    assert res.reached and res.model is start and not distilled
    assert [s["step"] for s in res.steps] == ["original", "0: exact rewrites for litert-int8"]
    assert ms(model) / ms(start) >= 1.5  # the fake's figures
    assert res.original_ms == ms(model) and res.speedup == pytest.approx(ms(model) / ms(start))
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    assert np.allclose(model.predict(x, verbose=0), res.model.predict(x, verbose=0), atol=1e-5)


def test_optimize_for_a_speedup_keeps_the_split(tmp_path, monkeypatch):
    """Through the public API: where the runtime measures the split faster, the model returned
    has no hard-swish left, and the steps say where the speed came from."""
    import warnings

    import kopt

    monkeypatch.setenv("KOPT_CACHE_DIR", str(tmp_path))
    _fake(monkeypatch, 1.0)
    model = _hard_swish_net()
    rng = np.random.default_rng(0)
    data = rng.normal(size=(96, 8, 8, 3)).astype("float32"), rng.integers(0, 4, 96)
    opt = kopt.Optimizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kopt.StaleBatchNormWarning)
        fast = opt.optimize(model, data, max_accuracy_drop=1.0, target=1.5, epochs=1,
                            batch_size=8, measure_runs=1)
    assert opt.search.reached
    assert opt.steps[1]["step"] == "0: exact rewrites for litert-int8"
    assert not any(isinstance(layer, L.Activation) for layer in fast.layers)
    assert any(isinstance(layer, L.Multiply) for layer in fast.layers)
