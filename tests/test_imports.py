"""The package's import graph, read from the source (every import statement, those inside functions too):
no module imports itself round a cycle, and nothing below the package root imports the root ``ssmzoo``
(arrows point down: cli -> tasks -> models -> layers -> modules -> ops)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ssmzoo"


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package by dotted name: (file, is a package's __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imports_of(name: str, path: Path, is_package: bool, known: set[str]) -> dict[str, int]:
    """The package's modules that ``name`` imports, with the line of the first import. ``from X import Y``
    depends on X.Y when that is a module (importing a submodule through its package), else on X."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        for target in targets:
            # Python imports a package before any of its modules: a module's import of its own package (an
            # ancestor, below the root) adds no edge and can close no cycle.
            ancestor = name.startswith(f"{target}.") and target != "ssmzoo"
            if target in known and target != name and not ancestor:
                found.setdefault(target, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {name: imports_of(name, path, is_package, set(known)) for name, (path, is_package) in known.items()}


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each a cycle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycles():
    edges = graph()
    assert len(edges) > 100  # the walk found the package
    found = cycles(edges)
    described = ["; ".join(f"{a} -> {b} (line {edges[a][b]})" for a in c for b in c if b in edges[a]) for c in found]
    assert not found, "import cycles:\n" + "\n".join(described)


def test_nothing_below_the_root_imports_the_root():
    edges = graph()
    offenders = {name: deps["ssmzoo"] for name, deps in edges.items() if "ssmzoo" in deps}
    assert not offenders, f"modules importing the package root ssmzoo (module: line): {offenders}"


@pytest.mark.parametrize("lower,upper", [("ssmzoo.ops", "ssmzoo.modules"), ("ssmzoo.ops", "ssmzoo.layers"),
                                         ("ssmzoo.modules", "ssmzoo.layers"), ("ssmzoo.layers", "ssmzoo.models"),
                                         ("ssmzoo.models", "ssmzoo.tasks"), ("ssmzoo.layers", "ssmzoo.data")])
def test_arrows_point_down(lower, upper):
    edges = graph()
    up = {f"{a} -> {b}": line for a, deps in edges.items() if a.startswith(lower)
          for b, line in deps.items() if b.startswith(upper)}
    assert not up, f"{lower} must not import {upper}: {up}"


def test_the_walk_sees_a_cycle_and_a_root_import(tmp_path):
    # The checks can fail: a made-up package with both faults.
    edges = {"ssmzoo": {}, "ssmzoo.a": {"ssmzoo.b": 3}, "ssmzoo.b": {"ssmzoo.a": 7, "ssmzoo": 1}}
    assert cycles(edges) == [["ssmzoo.a", "ssmzoo.b"]]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from .. import __version__\n    from . import b\n    from .. import x\n")
    assert imports_of("ssmzoo.x.m", source, False, {"ssmzoo", "ssmzoo.x", "ssmzoo.x.b"}) == {"ssmzoo": 2,
                                                                                           "ssmzoo.x.b": 3}
