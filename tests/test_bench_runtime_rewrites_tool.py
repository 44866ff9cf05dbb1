"""tools/bench_runtime_rewrites.py's cases stay runnable: each block builds and its rule applies
to it, verified exact (the benchmark only times them; a case its rule declined would time two
identical files)."""

import pytest

from kopt.keras_io import from_keras
from kopt.rewriting import PassManager


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("bench_runtime_rewrites")


@pytest.mark.parametrize("name", ["hard_swish", "relu", "dw7", "dw7_28", "ln_map", "ln_tokens",
                                  "ln_wide"])
def test_each_case_is_rewritten_exactly(tool, name):
    build, rule = tool.cases()[name]
    model = build()
    _, report = PassManager([rule], verify=True).run(from_keras(model), reference=model)
    assert report.applied and not report.rolled_back


def test_every_case_is_covered_above(tool):
    assert set(tool.cases()) == {"hard_swish", "relu", "dw7", "dw7_28", "ln_map",
                                    "ln_tokens", "ln_wide"}
