"""Per-layer timing report in Keras and LiteRT: layers, categories, JSON/CSV/PNG, comparison."""

import json

import pytest

keras = pytest.importorskip("keras")

from kopt.runtime import compare_reports, timing_report  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model():
    """Convs wide enough (3.7M MACs for c2) that their time stands out of the noise of the
    per-call overhead that every part's time is measured less: with 4 channels, under the
    full suite's load, every part of the Keras report once came out at 0 ms."""
    i = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(64, 3, padding="same", name="c1")(i)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    y = keras.layers.Conv2D(64, 3, padding="same", name="c2")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(3, name="fc")(x)
    return keras.Model(i, x)


@pytest.mark.parametrize("runtime", ["keras", "litert"])
def test_report(model, runtime, tmp_path):
    rep = timing_report(model, runtime=runtime, runs=10)
    assert [r["name"] for r in rep.layers] == ["c1", "bn", "relu", "c2", "add", "flat", "fc"]
    cats = {r["name"]: (r["category"], r["kind"]) for r in rep.layers}
    assert cats["c1"] == ("tensor", "conv") and cats["fc"] == ("tensor", "fc")
    assert cats["bn"] == ("non-tensor", "bn") and cats["add"] == ("non-tensor", "merge")
    assert rep.total_ms > 0 and all(r["ms"] >= 0 for r in rep.layers) and rep.sum_ms > 0
    assert abs(sum(r["share"] for r in rep.layers) - 1) < 1e-6
    assert "sum of parts" in rep.table()
    rep.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert {"runtime", "total_ms", "layers"} <= set(data) and data["runtime"] == runtime
    assert {"name", "op", "category", "ms"} <= set(data["layers"][0])
    rep.to_csv(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().startswith("name,op,category,kind,ms,share")
    rep.plot(tmp_path / "r.png")
    png = (tmp_path / "r.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 1000


def test_compare(model, tmp_path):
    """Compared in LiteRT, whose per-call overhead is ~1 us against ~0.09 ms of convs: in the
    Keras runtime the overhead (0.25-0.5 ms per tf.function call) swings by more than these
    convs take, and CI once read every tensor part of a report at 0 ms there."""
    before = timing_report(model, runtime="litert", runs=5)
    smaller = keras.Sequential([keras.Input((10, 10, 3)),
                                keras.layers.Conv2D(128, 3, padding="same", name="big"),
                                keras.layers.Flatten(name="flat"),
                                keras.layers.Dense(3, name="fc")])
    after = timing_report(smaller, runtime="litert", runs=5)
    cmp = compare_reports(before, after)
    rows = {r["name"]: r for r in cmp.rows}
    assert rows["c1"]["after_ms"] is None and rows["fc"]["after_ms"] is not None
    tensor = cmp.totals("category")["tensor"]
    assert tensor[0] > 0 and tensor[1] > 0  # before: c1, c2, fc; after: big, fc
    assert set(cmp.totals("kind")) >= {"conv", "fc", "bn", "merge"}
    assert "whole model" in cmp.table()
    cmp.to_json(tmp_path / "c.json")
    assert set(json.loads((tmp_path / "c.json").read_text())) >= {"before", "after", "layers"}
    cmp.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)


def test_fused_groups(model):
    from kopt.keras_io import from_keras
    from kopt.runtime.timing import fused_group

    g = from_keras(model)
    assert [n.name for n in fused_group(g, g["c1"])] == ["c1", "bn", "relu"]
    assert [n.name for n in fused_group(g, g["c2"])] == ["c2"]  # its reader is the Add
    # a BN no conv absorbed (pre-activation, after a Concatenate) takes its ReLU: timed alone,
    # int8 RELU cost 4x the whole DenseNet-style model's share of it
    assert [n.name for n in fused_group(g, g["bn"])] == ["bn", "relu"]
    from kopt.runtime.groups import fused_groups

    heads = [group[0].name for group in fused_groups(g)]
    assert "c1" in heads and "bn" not in heads and "relu" not in heads  # in c1's group


def test_int8_report_names_the_ops_xnnpack_leaves_to_tflite():
    """A hard-swish in full int8 is run by TFLite's own kernel (XNNPACK does not take it):
    the report says so, which is where kopt's split_hard_swish comes in."""
    i = keras.Input((8, 8, 3))
    x = keras.layers.Activation("hard_swish", name="hs")(keras.layers.Conv2D(4, 1, name="c")(i))
    m = keras.Model(i, keras.layers.Conv2D(2, 1, name="out")(x))
    rep = timing_report(m, runtime="litert-int8", runs=5)
    assert rep.fallback_ops == {"HARD_SWISH(int8)": 1}, rep.fallback_ops
    assert "ops XNNPACK does not take" in rep.table() and "HARD_SWISH(int8) x1" in rep.table()
    assert rep.to_dict()["fallback_ops"] == {"HARD_SWISH(int8)": 1}
    assert timing_report(m, runtime="litert", runs=5).fallback_ops == {}


def test_int8_report_times_an_rsqrt_alone():
    """An rsqrt timed alone used to get normal (negative) random inputs, on which TFLite's
    RSQRT fails to invoke: the report ended with LiteRT's RuntimeError on any model
    expand_layer_norm had rewritten."""
    i = keras.Input((6, 6, 4))
    v = keras.layers.Dense(1, activation="sigmoid", name="var")(keras.layers.Conv2D(4, 1)(i))
    m = keras.Model(i, keras.layers.Multiply(name="normed")([i, keras.ops.rsqrt(v)]))
    rep = timing_report(m, runtime="litert-int8", runs=5)
    assert "rsqrt" in rep.table() and rep.fallback_ops == {"RSQRT(int8)": 1}
