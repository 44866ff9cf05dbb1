"""tools/bench_runtime_rewrites.py's cases stay runnable: each block builds and its rule applies
to it, verified exact (the benchmark only times them; a case its rule declined would time two
identical files)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from kopt.keras_io import from_keras
from kopt.rewriting import PassManager

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("bench_runtime_rewrites",
                                                  REPO / "tools/bench_runtime_rewrites.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_runtime_rewrites"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["hard_swish", "relu", "dw7", "dw7_28", "ln_map", "ln_tokens",
                                  "ln_wide"])
def test_each_case_is_rewritten_exactly(name):
    build, rule = _tool().cases()[name]
    model = build()
    _, report = PassManager([rule], verify=True).run(from_keras(model), reference=model)
    assert report.applied and not report.rolled_back


def test_every_case_is_covered_above():
    assert set(_tool().cases()) == {"hard_swish", "relu", "dw7", "dw7_28", "ln_map",
                                    "ln_tokens", "ln_wide"}
