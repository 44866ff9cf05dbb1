"""Shared fixtures: quiet TensorFlow, seeded randomisation of weights and BN statistics, freeing
memory between big models, and the run order that keeps the xdist workers evenly loaded."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's oneDNN CPU allocator pools large buffers and never gives them back, so a worker
# keeps the peak of the biggest zoo model for the rest of the run. Same oneDNN kernels, same
# numbers; only the allocator changes. Set before TensorFlow is imported (xdist workers inherit).
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")

import ctypes  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kopt.testing import assert_same_function, randomize_weights  # noqa: E402, F401

TOOLS = Path(__file__).resolve().parents[1] / "tools"

# Tests that take long: run them first so that no worker is left with one of them at the end.
# Order among them is collection order; everything else follows in collection order.
_LONG_FIRST = ("tests/test_optimize_property.py", "tests/test_docs.py", "tests/test_zoo.py",
               "tests/test_compress.py::test_tree_flow", "tests/test_int8_prep.py",
               "tests/test_distribute.py", "tests/test_search.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks added here
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_FIRST))
    for item in items:
        # Tests sharing a module-scoped fixture (often a trained model) stay on one xdist worker
        # (--dist loadgroup), so the fixture is built once, not once per worker.
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        if not item.get_closest_marker("xdist_group") and any(
                d[-1].scope == "module" for d in defs.values() if d):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap pages back to the OS
    except (OSError, AttributeError):
        pass


@pytest.fixture
def free_models():
    """Drop Keras' global state and collect what the test built, before and after it."""
    import keras

    # one garbage collection per test, after it: a collection over a big model's heap takes up
    # to a second, and the previous test's teardown has already collected before this one
    keras.backend.clear_session(free_memory=False)
    yield
    keras.backend.clear_session()  # gc.collect() included
    _malloc_trim()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def small_digits():
    """Quick data for the data-flow tests: the first 1024 training digits at 12x12, and the
    test split, as (x, y, x_test, y_test)."""
    from kopt.flows.data import load_digits

    x, y, xt, yt = load_digits(size=12, seed=0)
    return x[:1024], y[:1024], xt, yt


@pytest.fixture
def int8_before_after(tmp_path):
    """export(model, rule, samples) -> the full-int8 ExportResults of `model` and of `model`
    rewritten by `rule` (kopt.testing.check_rule), both calibrated on the same `samples`
    seeded normal inputs: for rule tests that compare the two .tflite op lists."""
    from kopt.runtime import export_tflite
    from kopt.testing import check_rule

    def export(model, rule, samples):
        after = check_rule(model, rule).model
        x = np.random.default_rng(0).normal(size=(samples,) + tuple(model.input_shape[1:]))
        x = x.astype("float32")
        return (export_tflite(model, tmp_path / "before.tflite", x),
                export_tflite(after, tmp_path / "after.tflite", x))

    return export


@pytest.fixture(scope="session")
def load_tool():
    """load_tool(name) -> tools/<name>.py as a module (tools/ is not a package), executed afresh
    and registered in sys.modules under `name`: dataclasses look their module up there."""
    def load(name):
        spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load



@pytest.fixture(autouse=True)
def _no_fast_state_learning(monkeypatch):
    """A search or a benchmark quote learns the machine's fast state for its first seconds
    (kopt.runtime.clock.FastState.LEARN_S, 5 s; 15 s for a quote): the tests check what is
    decided, not how well this machine reads, and their first five readings learn enough.
    tests/test_latency.py tests the learning itself with learn_s given."""
    from kopt.runtime.clock import FastState

    monkeypatch.setattr(FastState, "LEARN_S", 0.0)
