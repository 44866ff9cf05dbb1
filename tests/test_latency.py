"""The latency model (kopt.runtime.latency): on-disk tables that never re-time an entry, keyed by
runtime and threads; predictions that add the fused groups' times; device bundles timed by the
standalone kopt/runtime/time_bundle.py and read back; channel-count steps. No assertion here is
about speed: timings are faked where only bookkeeping is tested, and real ones are only checked
to be positive (figures belong to tools/bench_latency_model.py)."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kopt.errors import ChannelSweepError, LatencyTableError, RuntimeChoiceError  # noqa: E402
from kopt.keras_io import from_keras  # noqa: E402
from kopt.runtime.channel_steps import find_steps, narrowed, sweep_widths  # noqa: E402
from kopt.runtime.groups import fused_group, fused_groups, group_key, sub_graph  # noqa: E402
from kopt.runtime.latency import LatencyModel  # noqa: E402
from kopt.runtime.latency_table import CACHE_ENV, cpu_model, litert_version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "kopt" / "runtime" / "time_bundle.py"
L = keras.layers
OVERHEAD = 0.01  # the fake timer's per-call cost (ms)


def _blocks(n: int, width: int = 8, size: int = 8) -> keras.Model:
    """n identical conv-BN-ReLU blocks (same shapes, so one table entry), then a Dense head."""
    x = inp = keras.Input((size, size, width))
    for i in range(n):
        x = L.Conv2D(width, 3, padding="same", name=f"c{i}")(x)
        x = L.ReLU(name=f"r{i}")(L.BatchNormalization(name=f"bn{i}")(x))
    return keras.Model(inp, L.Dense(3, name="fc")(L.GlobalAveragePooling2D(name="gap")(x)))


@pytest.fixture
def fake_timer(monkeypatch):
    """LatencyModel._time replaced by a counter: per-call overhead plus 1 ns per parameter, so
    every distinct group has its own deterministic time and no conversion runs."""
    calls = []

    def fake(self, model, shapes):
        calls.append((self.runtime, self.threads, tuple(map(tuple, shapes))))
        return OVERHEAD + 1e-6 * model.count_params()

    monkeypatch.setattr(LatencyModel, "_time", fake)
    return calls


def test_cache_hit_does_not_retime(tmp_path, fake_timer):
    model = _blocks(2)
    lm = LatencyModel(cache_dir=tmp_path)
    first = lm.predict(model)
    # the overhead, one conv-BN-ReLU entry (both blocks share it), the pool and the Dense
    assert lm.timed == 3 and len(fake_timer) == 4
    assert lm.path.exists() and lm.path.parent == tmp_path
    again = LatencyModel(cache_dir=tmp_path)  # a new process would read the same file
    assert again.predict(model) == pytest.approx(first)
    assert again.timed == 0 and len(fake_timer) == 4
    header, *records = [json.loads(line) for line in lm.path.read_text().splitlines()]
    assert header["meta"]["cpu"] == cpu_model() and header["meta"]["litert"] == litert_version()
    assert len([r for r in records if "key" in r]) == 3
    assert [r["overhead_ms"] for r in records if "overhead_ms" in r] == [
        pytest.approx(OVERHEAD)]


def test_tables_appended_side_by_side_and_old_format_moved(tmp_path, fake_timer):
    """Two processes sharing a table append without losing each other's entries; a line a
    killed writer cut short is skipped; a table in the old one-object format is moved."""
    first, second = LatencyModel(cache_dir=tmp_path), LatencyModel(cache_dir=tmp_path)
    first.predict(_blocks(1))
    second.predict(_blocks(1, width=4))  # other shapes: entries of its own
    assert not set(first.table.entries) & set(second.table.entries)
    with open(first.path, "a") as f:
        f.write('{"key": "cut sho')
    merged = LatencyModel(cache_dir=tmp_path)
    assert set(first.table.entries) | set(second.table.entries) == set(merged.table.entries)
    assert merged.predict(_blocks(1)) == pytest.approx(first.predict(_blocks(1)))
    assert merged.timed == 0

    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old = merged.path.name.replace(".jsonl", ".json")
    (old_dir / old).write_text(json.dumps({
        "format": "kopt-latency-table/1", "meta": merged.table.meta,
        "overhead_ms": merged.table.overhead_ms, "entries": merged.table.entries}))
    moved = LatencyModel(cache_dir=old_dir)
    assert moved.path.suffix == ".jsonl" and moved.path.exists()
    assert moved.predict(_blocks(1)) == pytest.approx(first.predict(_blocks(1)))
    assert moved.timed == 0 and moved.table.entries == merged.table.entries


def test_cache_keyed_by_runtime_and_threads(tmp_path, fake_timer):
    model = _blocks(1)
    paths = set()
    for runtime, threads in (("litert-int8", 1), ("litert-int8", 2), ("litert", 1)):
        lm = LatencyModel(runtime, threads=threads, cache_dir=tmp_path)
        lm.predict(model)
        assert lm.timed == 3, (runtime, threads)  # nothing borrowed from another table
        header = json.loads(lm.path.read_text().splitlines()[0])
        assert header["meta"]["threads"] == threads
        paths.add(lm.path)
    assert len(paths) == 3
    assert {(r, t) for r, t, _ in fake_timer} == {("litert-int8", 1), ("litert-int8", 2),
                                                  ("litert", 1)}


def test_cache_dir_from_environment(tmp_path, monkeypatch, fake_timer):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    lm = LatencyModel()
    lm.predict(_blocks(1))
    assert lm.path.parent == tmp_path / "latency" and lm.path.exists()


def test_predict_is_additive(tmp_path, fake_timer):
    lm = LatencyModel(cache_dir=tmp_path)
    one, three = lm.predict(_blocks(1)), lm.predict(_blocks(3))
    block = 1e-6 * (8 * 8 * 9 + 8 + 4 * 8)  # the conv-BN group's parameters, as faked
    assert three - one == pytest.approx(2 * block)
    rows = lm.per_layer(_blocks(3))
    assert rows.total_ms == pytest.approx(three) == pytest.approx(OVERHEAD + rows.sum_ms)
    assert [r["name"] for r in rows.layers] == ["c0", "c1", "c2", "gap", "fc"]
    assert rows.layers[0]["op"] == "Conv2D+BatchNormalization+ReLU"


def test_predict_and_measure_run_litert(tmp_path):
    """Real timings, few runs: positive, and the per-layer view sums to the prediction."""
    model = _blocks(1, width=4, size=6)
    lm = LatencyModel(cache_dir=tmp_path, runs=3)
    predicted = lm.predict(model)
    assert predicted > 0 and lm.overhead_ms() > 0
    assert lm.per_layer(model).total_ms == pytest.approx(predicted)
    assert lm.measure(model, runs=3) > 0
    wider = _blocks(1, width=8, size=6)
    runner = lm.runner(model)  # converted once, measured again without converting
    side = lm.measure_side_by_side([runner, wider, model], runs=6, rounds=3)
    assert len(side) == 3 and all(ms > 0 for ms in side)
    assert lm.measure(runner, runs=3) > 0


def test_bad_settings_are_refused(tmp_path):
    for runtime in ("tflite-gpu", "keras"):
        with pytest.raises(RuntimeChoiceError, match="litert-int8"):
            LatencyModel(runtime, cache_dir=tmp_path)
    for threads in (0, -1, 1.5):
        with pytest.raises(RuntimeChoiceError, match="threads"):
            LatencyModel(threads=threads, cache_dir=tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LatencyTableError, match="not a kopt-latency-device"):
        LatencyModel.from_device_json(bad)


def test_fused_groups_cover_every_op_once():
    g = from_keras(_blocks(2))
    groups = fused_groups(g)
    names = [n.name for group in groups for n in group]
    assert sorted(names) == sorted(n.name for n in g if n.op != "InputLayer")
    assert [n.name for n in groups[0]] == ["c0", "bn0", "r0"]
    for nodes in groups:  # a lookup without weights finds what a timing with them stored
        assert group_key(sub_graph(g, nodes, weights=False)[0]) == group_key(
            sub_graph(g, nodes)[0])
    assert group_key(sub_graph(g, groups[0])[0]) == group_key(sub_graph(g, groups[1])[0])


# ---- device bundles ------------------------------------------------------------------------
def _run_isolated(args, cwd):
    """Run kopt/runtime/time_bundle.py as a device would: kopt, TensorFlow and Keras not
    importable."""
    blocker = ("import sys, runpy\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('kopt', 'tensorflow', 'keras', 'tf_keras',\n"
               "                                  'rewrites'):\n"
               "            raise ImportError(f'{name} is not on the device')\n"
               "sys.meta_path.insert(0, Block())\n"
               f"sys.argv = [{str(SCRIPT)!r}] + {list(args)!r}\n"
               f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", blocker], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("as_zip", [False, True])
def test_bundle_round_trip(tmp_path, as_zip):
    model = _blocks(1, width=4, size=6)
    host = LatencyModel(cache_dir=tmp_path / "cache", runs=3)
    bundle = host.write_bundle(model, tmp_path / ("b.zip" if as_zip else "b"))
    names = zipfile.ZipFile(bundle).namelist() if as_zip else os.listdir(bundle)
    assert {"manifest.json", "overhead.tflite", "time_bundle.py"} <= set(names)
    assert sum(n.startswith("group_") for n in names) == 3
    out = tmp_path / "times.json"
    done = _run_isolated([str(bundle), "-o", str(out), "--runs", "3"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["meta"]["cpu"] == cpu_model() and data["meta"]["runtime"] == "litert-int8"
    assert len(data["models"]) == 1 and all(ms > 0 for ms in data["models"].values())
    device = LatencyModel.from_device_json(out)
    assert device.table.source == "device" and device.path is None
    predicted = device.predict(model)
    entries = [max(0.0, e["ms"] - data["overhead_ms"]) for e in data["entries"].values()]
    assert predicted == pytest.approx(data["overhead_ms"] + sum(entries))
    assert device.timed == 0 and host.timed == 0  # nothing timed on the host
    with pytest.raises(LatencyTableError, match="bundle"):
        device.predict(_blocks(1, width=4, size=7))  # other shapes: not in the device table
    with pytest.raises(LatencyTableError):
        device.measure(model)
    with pytest.raises(LatencyTableError):
        device.measure_side_by_side([model, model])


def test_time_bundle_imports_only_litert_numpy_stdlib():
    tree = ast.parse(SCRIPT.read_text())
    top = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top.add(node.module.split(".")[0])
    assert top - set(sys.stdlib_module_names) == {"numpy", "ai_edge_litert"}


def test_time_bundle_reads_the_cpu_as_kopt_does():
    spec = importlib.util.spec_from_file_location("time_bundle", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.cpu_model() == cpu_model()
    assert script.litert_version() == litert_version()


# ---- channel steps -------------------------------------------------------------------------
def test_find_steps_reads_plateaus():
    assert find_steps([8, 16, 24, 32], [1.0, 1.0, 2.0, 2.0]) == [16, 32]
    # a narrower width measured slower is noise: the curve is made monotone first
    assert find_steps([32, 8, 24, 16], [2.0, 1.0, 0.99, 1.02]) == [24, 32]
    assert find_steps([4, 8], [1.0, 1.01]) == [8]  # within tolerance: one plateau
    assert sweep_widths(4) == [1, 2, 3, 4] and sweep_widths(64, points=4) == [16, 32, 48, 64]


def test_channel_steps_cached_and_snapped(tmp_path, monkeypatch):
    calls = []

    def stepped(self, model, shapes):  # latency that rises every 8 output channels
        calls.append(1)
        conv = [layer for layer in model.layers if isinstance(layer, L.Conv2D)]
        return OVERHEAD + (0.1 * -(-conv[0].filters // 8) if conv else 0.0)

    monkeypatch.setattr(LatencyModel, "_time", stepped)
    model = _blocks(1, width=32)
    lm = LatencyModel(cache_dir=tmp_path)
    steps = lm.channel_steps(model, "c0", widths=[4, 8, 12, 16, 20, 24, 28, 32])
    assert steps.steps == [8, 16, 24, 32]
    assert steps.snap(5) == 8 and steps.snap(17) == 24 and steps.snap(32) == 32
    assert steps.cost(10) == pytest.approx(0.2)
    assert "<-" in steps.table()
    n = len(calls)
    assert n == 9  # eight widths and the overhead
    LatencyModel(cache_dir=tmp_path).channel_steps(model, "c0", widths=[4, 8, 12, 16, 20, 24,
                                                                        28, 32])
    assert len(calls) == n
    with pytest.raises(ChannelSweepError, match="no free output width"):
        lm.channel_steps(model, "gap")


def test_narrowed_group_keeps_followers_consistent():
    g = from_keras(_blocks(1, width=16))
    sub, _ = sub_graph(g, fused_group(g, g["c0"]))
    small = narrowed(sub, 5)
    assert small["c0"].config["filters"] == 5 and small["c0"].weights["kernel"].shape[-1] == 5
    assert small["bn0"].weights["gamma"].shape == (5,)
    assert [small[n].output_shape[-1] for n in ("c0", "bn0", "r0")] == [5, 5, 5]
    assert sub["c0"].config["filters"] == 16  # the original group is untouched
    assert np.array_equal(small["c0"].weights["kernel"], sub["c0"].weights["kernel"][..., :5])
    with pytest.raises(ChannelSweepError, match="outside"):
        narrowed(sub, 17)


# ---- the command line ----------------------------------------------------------------------
def test_cli_latency(tmp_path, capsys):
    from kopt.cli import main

    path = tmp_path / "m.keras"
    _blocks(1, width=4, size=6).save(path)
    common = ["latency", str(path), "--cache-dir", str(tmp_path / "cache"), "--runs", "3"]
    assert main(common + ["--measure", "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "Conv2D+BatchNormalization+ReLU" in out and "predicted" in out and "measured" in out
    assert json.loads((tmp_path / "t.json").read_text())["runtime"] == "litert-int8"
    assert main(common + ["--bundle", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "manifest.json").exists()
    assert "time_bundle.py" in capsys.readouterr().out
    assert main(common + ["--threads", "0"]) == 2
    assert "threads must be an integer >= 1" in capsys.readouterr().err


def _script(values):
    """read() for FastState: each call hands out the next reading [reference ms, model ms]."""
    it = iter(values)
    return lambda: next(it)


def test_fast_state_learns_the_fastest_before_a_reading_counts():
    """A first reading in the slow state would pass a check against itself: the first five
    readings only learn the reference's fastest time, and the fastest of them is returned."""
    from kopt.runtime.clock import FastState

    fast = FastState(learn_s=0)
    readings = [[0.25, 0.18], [0.17, 0.094], [0.26, 0.19], [0.24, 0.16], [0.27, 0.19]]
    assert fast.reading(_script(readings)) == [0.17, 0.094]
    assert fast.seen == 5 and fast.fastest == 0.17


def test_fast_state_retakes_a_slow_reading_and_keeps_the_best_of_its_tries():
    from kopt.runtime.clock import FastState

    fast = FastState(tries=3, learn_s=0)
    fast.reading(_script([[0.17, 0.094]] * 5))
    assert fast.reading(_script([[0.26, 0.18], [0.175, 0.095]])) == [0.175, 0.095]  # 2 reads
    assert fast.seen == 7
    # a slow spell through every try: the reading whose reference was fastest
    assert fast.reading(_script([[0.26, 0.18], [0.22, 0.15], [0.3, 0.2]])) == [0.22, 0.15]
    # a machine with one state: one reading a call
    fast.reading(_script([[0.171, 0.094]]))
    assert fast.seen == 11


def test_fast_state_learns_for_its_first_seconds():
    """A slow spell can outlast five readings: every reading of the first `learn_s` seconds
    only learns the fastest."""
    import time

    from kopt.runtime.clock import FastState

    def read():
        time.sleep(0.02)
        return [0.17, 0.094]

    fast = FastState(least=1, learn_s=0.1)
    fast.reading(read)
    assert fast.seen >= 5
    fast.reading(read)  # learnt: one reading
    assert fast.seen >= 6 and not fast.learning()
