"""The rooms of kopt import one way: errors -> ir -> keras_io -> rewriting -> rewrites (rules)
-> runtime -> flows -> api -> cli, and no module imports itself back through others.

Read from the source (every `import` statement, function-level ones included), so a shortcut
taken inside a function is caught as well as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["kopt.errors", "kopt.progress", "kopt.ir", "kopt.keras_io", "kopt.rewriting",
         "rewrites", "kopt.testing", "kopt.runtime", "kopt.flows", "kopt.api", "kopt.cli",
         "kopt.__main__"]
"""Rooms from the bottom up; a module may import its own room and the rooms before it.
kopt.testing (test helpers) sits just above the rules it checks; kopt/__init__.py only names
modules for lazy loading and is not a room."""


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("kopt", "rewrites"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (annotations only, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path, name: str) -> set[str]:
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(name.split(".")[:-node.level] + [node.module])
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in ("kopt", "rewrites")}


def _room(module: str) -> int | None:
    for i, room in reversed(list(enumerate(ORDER))):
        if module == room or module.startswith(room + "."):
            return i
    return None


def _import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in _imports(path, name):
            while target not in modules and "." in target:  # `from pkg import name`
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                graph.add_edge(name, target)
    return graph


def test_every_module_is_in_a_room():
    rooms = {n: _room(n) for n in _modules() if n != "kopt"}
    assert [n for n, r in rooms.items() if r is None] == []


def test_imports_run_one_way():
    upward = []
    for src, dst in _import_graph().edges:
        if src == "kopt" or dst == "kopt":
            continue
        if _room(dst) > _room(src):
            upward.append(f"{src} imports {dst}")
    assert upward == []


def test_no_import_cycles():
    graph = _import_graph()
    graph.remove_nodes_from([n for n in graph if n == "kopt"])
    # a package's __init__ re-exporting its own modules is not a cycle worth reporting
    graph.remove_edges_from([(a, b) for a, b in list(graph.edges) if b.startswith(a + ".")])
    assert list(nx.simple_cycles(graph)) == []
