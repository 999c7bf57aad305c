"""The house: fercli's modules import one another without circles, and the core never
imports the CLI's libraries. Both read every import statement, at module level or inside a
function, so a lazy import cannot hide a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fercli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _lazy_exports(tree: ast.Module) -> set[ast.AST]:
    """The nodes inside a package __init__'s module-level `def __getattr__` (PEP 562): it
    runs only when an attribute is first looked up, after the package has finished
    initialising, so what it imports cannot form a circle with the package. (fercli's
    __init__ serves the Python API this way, `fercli.Recognizer`, without importing torch.)"""
    return {n for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
            for n in ast.walk(f)}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The fercli modules `path` imports (a package's __init__ counts as the package)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    lazy = _lazy_exports(tree) if path.name == "__init__.py" else set()
    for node in ast.walk(tree):
        if node in lazy:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imports_of(p, set(files)) for name, p in files.items()}
    # Importing a.b.c runs a/__init__ and a/b/__init__ first, but those are empty or import
    # downwards; an edge to a package means its __init__ only.
    return {name: {m for m in deps if m != name} for name, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_fercli_has_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 30, "the scan found too few modules to mean anything"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("library", ["typer", "rich"])
def test_only_the_cli_imports_the_terminal_libraries(library: str) -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == library or n.startswith(library + ".") for n in names):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders, f"{library} imported outside fercli/cli: {offenders}"
