"""The layer rules of docs/architecture.md, checked on the source: parse every module's imports with `ast`.

- `protocol` and `util` import nothing of ours (except themselves); neither imports the other;
- `server` and `worker` never import each other, and no product layer imports `cli`, `bench`, `demo`
  or `testing`;
- `cli/main.py` and `cli/lazy.py` import no command module (subcommands load lazily);
- no module of the package imports `livekit.agents` (agent scripts run by path live in `agents/` folders
  without `__init__.py`, outside the package);
- the subpackages' module-level imports form no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "agentdispatch"

#: layer -> the layers of ours it must never import (module level or inside functions)
FORBIDDEN = {
    "protocol": {"util", "server", "worker", "sip", "cli", "bench", "demo", "testing"},
    "util": {"protocol", "server", "worker", "sip", "cli", "bench", "demo", "testing"},
    "server": {"worker", "sip", "cli", "bench", "demo", "testing"},
    "worker": {"server", "sip", "cli", "bench", "demo", "testing"},
    "sip": {"worker", "cli", "bench", "demo", "testing"},
    "testing": {"cli", "bench", "demo"},
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. agentdispatch.server.app
    target: str  # imported module (or module.name), absolute
    lineno: int
    module_level: bool  # executed at import time (not in a function, not under TYPE_CHECKING)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> Iterator[Path]:
    """Every .py file that is a module of the package (its folders all have __init__.py)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        folders = [f for f in path.parents if f == PACKAGE or PACKAGE in f.parents]
        if all((folder / "__init__.py").exists() for folder in folders):
            yield path


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[Import]:
    source = module_name(path) if SRC in path.parents else f"tests.{path.stem}"
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            level_here = module_level
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                level_here = False
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, False)
                for stmt in child.orelse:
                    visit_stmt(stmt, module_level)
                continue
            visit_stmt(child, level_here)

    def visit_stmt(stmt: ast.AST, module_level: bool) -> None:
        if isinstance(stmt, ast.Import):
            found.extend(Import(source, a.name, stmt.lineno, module_level) for a in stmt.names)
        elif isinstance(stmt, ast.ImportFrom):
            if stmt.level:
                base = package.split(".")
                base = base[: len(base) - (stmt.level - 1)]
                prefix = ".".join(base + ([stmt.module] if stmt.module else []))
            else:
                prefix = stmt.module or ""
            found.extend(Import(source, f"{prefix}.{a.name}", stmt.lineno, module_level) for a in stmt.names)
        visit(stmt, module_level)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def layer(module: str) -> str:
    """The subpackage a module (or `module.name`) belongs to; "" for the root and for other packages."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "agentdispatch":
        return ""
    sub = parts[1]
    return sub if (PACKAGE / sub).is_dir() or (PACKAGE / f"{sub}.py").exists() else ""


def all_imports() -> list[Import]:
    return [imp for path in package_modules() for imp in imports_of(path)]


def test_the_checker_sees_the_package() -> None:
    layers = {layer(module_name(p)) for p in package_modules()}
    assert {"protocol", "util", "server", "worker", "cli", "bench", "demo", "testing"} <= layers
    assert any(imp.target.startswith("agentdispatch.protocol") for imp in all_imports())


def test_layers_import_only_downwards() -> None:
    broken = [
        f"{imp.source}:{imp.lineno} imports {imp.target}"
        for imp in all_imports()
        if layer(imp.target) in FORBIDDEN.get(layer(imp.source), set())
    ]
    assert broken == []


def test_cli_entry_imports_no_command_module() -> None:
    for name in ("main.py", "lazy.py"):
        ours = [
            imp.target
            for imp in imports_of(PACKAGE / "cli" / name)
            if imp.target.startswith("agentdispatch.") and imp.module_level
        ]
        assert set(ours) <= {
            "agentdispatch.__version__",
            "agentdispatch.cli.lazy.LazyCommand",
            "agentdispatch.cli.lazy.LazyGroup",
        }, (name, ours)


def test_no_module_of_the_package_imports_livekit_agents() -> None:
    users = [f"{i.source}:{i.lineno}" for i in all_imports() if i.target.startswith("livekit.agents")]
    assert users == []
    scripts = list(PACKAGE.rglob("agents/*.py"))
    assert scripts, "the benchmark agent scripts moved: update this test"
    assert not [p for p in scripts if (p.parent / "__init__.py").exists()]


def subpackage_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by DFS from each node (small graph: a handful of layers)."""
    cycles: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                cycles.append([*path, start])
            elif nxt not in path and nxt > start:
                walk(start, nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, start, [start])
    return cycles


def test_cycle_finder_finds_a_cycle() -> None:
    assert subpackage_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert subpackage_cycles({"a": {"b"}, "b": {"c"}}) == []


def test_subpackages_import_each_other_without_cycles() -> None:
    edges: dict[str, set[str]] = {}
    for imp in all_imports():
        src, dst = layer(imp.source), layer(imp.target)
        if imp.module_level and src and dst and src != dst:
            edges.setdefault(src, set()).add(dst)
    assert subpackage_cycles(edges) == [], edges


@pytest.mark.parametrize("name", ["protocol", "util"])
def test_bottom_layers_import_nothing_of_ours(name: str) -> None:
    ours = {
        layer(imp.target)
        for path in (PACKAGE / name).rglob("*.py")
        for imp in imports_of(path)
        if imp.target.startswith("agentdispatch")
    }
    assert ours <= {name}


def test_nothing_imports_the_utilities_from_protocol() -> None:
    """Clock and TaskSet live in agentdispatch.util (they moved out of protocol)."""
    moved = {"SYSTEM_CLOCK", "Clock", "SystemClock", "TaskSet"}
    tests = Path(__file__).resolve().parent
    sources = [*package_modules(), *tests.rglob("*.py")]
    old = [
        f"{path}:{imp.lineno}"
        for path in sources
        for imp in imports_of(path)
        if imp.target in {f"agentdispatch.protocol.{name}" for name in moved}
    ]
    assert old == []
