"""Every ```python block in README.md and docs/*.md runs.

The blocks of one file run in order in one namespace (a later block may use what an earlier
one made), in a temporary working directory, with Keras' seeds set and against a copy of the
rule registry (a rule a page defines does not join the default set of later tests). A block
that cannot run as it stands (it needs a file the reader has) is fenced ```text or ```bash,
which are not run; a fence with any other language, or none, fails here, so no block is
skipped by accident. A python block whose first line is a comment naming a file of this
repository (`# rewrites/fold_rescaling.py`) quotes that file and must match it verbatim.
Tracebacks point at the Markdown file's own line numbers.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
RUN = "python"
NOT_RUN = {"bash", "text"}
FENCE = re.compile(r"^\s*```(?P<lang>[^`\s]*)\s*$")
QUOTE = re.compile(r"^# (?P<path>[\w./-]+\.py)$")


def blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, line number of the code's first line, code) for every fenced block."""
    found, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.name}:{start}: code fence is never closed")
        found.append((opening["lang"], start + 1, textwrap.dedent("\n".join(body))))
        i += 1
    return found


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _with_python(paths: list[Path]) -> list[Path]:
    return [p for p in paths if any(lang == RUN for lang, _, _ in blocks(p))]


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_every_fence_says_whether_it_runs(path):
    other = [(line, lang) for lang, line, _ in blocks(path)
             if lang != RUN and lang not in NOT_RUN]
    assert other == [], f"{_id(path)}: fence these ```python (run) or ```bash / ```text"


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_quoted_code_matches_its_file(path):
    for lang, line, code in blocks(path):
        head, _, rest = code.partition("\n")
        quote = QUOTE.match(head) if lang == RUN else None
        if quote and (ROOT / quote["path"]).is_file():
            source = (ROOT / quote["path"]).read_text()
            assert rest.strip("\n") in source, \
                f"{_id(path)}:{line}: the block no longer matches {quote['path']}"


@pytest.mark.parametrize("path", _with_python(DOCS), ids=_id)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    import keras

    from kopt.rewriting import registry

    import rewrites  # noqa: F401  (the shipped rules register themselves first)

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    namespace: dict = {"__name__": f"docs.{path.stem.lower()}"}
    for lang, line, code in blocks(path):
        if lang == RUN:  # padded so that tracebacks show the Markdown file's line numbers
            exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)


def test_readme_and_design_have_python_blocks():
    assert _with_python([ROOT / "README.md", ROOT / "docs" / "design.md"]) == \
        [ROOT / "README.md", ROOT / "docs" / "design.md"]
