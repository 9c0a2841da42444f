"""haul's modules import each other without cycles (issue 11: ``tasks.app <-> handlers <->
runner``, ``worker.cli <-> worker.demo`` and ``transfer.chunked <-> sink`` were cycles).

The graph is read from the source: every import a module makes, at import time or inside a
function (a lazy import only hides a cycle until the function runs), except those under
``TYPE_CHECKING`` (they never run). A ``from package import name`` is an edge to
``package.name`` when that is a module. A module's implicit import of its own parent package is
not an edge (a package that imports its children would otherwise always be a "cycle").
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "tasks", "dashboard")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of the module except those under ``if TYPE_CHECKING:``."""
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        is_if = isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        if is_if and node.test.id == "TYPE_CHECKING":  # type: ignore[attr-defined]
            typing_only.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in typing_only
    ]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # haul uses absolute imports only; resolve anyway
                    base = name.split(".")
                    is_package = path.name == "__init__.py"
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    origin = ".".join([*base, node.module] if node.module else base)
                else:
                    origin = node.module or ""
                targets = [
                    f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                    for alias in node.names
                ]
            for target in targets:
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            nxt = todo.pop()
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                stack.append((nxt, sorted(graph[nxt])))
                path.append(nxt)
                on_path.add(nxt)
    return None


def test_the_checker_finds_a_cycle() -> None:
    """The checker itself: a two-module cycle and a longer one are found, a tree is not."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) in (["a", "b", "a"], ["b", "a", "b"])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) is not None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_haul_has_no_import_cycles() -> None:
    """No chain of imports among worker/, tasks/ and dashboard/ leads back to its start."""
    graph = import_graph()
    assert "worker.cli.demo" in graph and "tasks.app" in graph  # the graph covers the packages
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


@pytest.mark.parametrize(
    "module",
    ["tasks.app", "tasks.runner", "worker.cli.demo", "worker.transfer.sink", "worker.cli"],
)
def test_each_former_cycle_member_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    """Imported first, in a new interpreter, each module of the old cycles loads (a cycle
    shows up as an ImportError of a half-initialised module), and ``tasks.app`` builds no app
    and reads no settings when imported."""
    code = (
        f"import {module}, sys; "
        "assert 'tasks.celery' not in sys.modules, 'importing built the worker app'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
