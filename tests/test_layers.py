"""The floors of the house: each package imports only from floors below it (or its own), every
import counted, at module level or inside a function. The order is the one fercli/__init__.py's
docstring gives. In-function imports of fercli modules are few, and each says why it waits."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fercli

PACKAGE = Path(fercli.__file__).resolve().parent

# Lowest first. A floor is a package (fercli/<name>/) or, for the base, single modules.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("errors", "files", "provenance", "device", "paper", "plots")),
    ("vision", ("vision",)),
    ("data", ("data",)),
    ("model", ("model",)),
    ("export", ("export",)),
    ("infer", ("infer",)),
    ("evaluation", ("evaluation",)),
    ("train", ("train",)),
    ("ablation", ("ablation",)),
    ("api", ("api",)),
    ("serve", ("serve",)),
    ("bench", ("bench",)),
    ("cli", ("cli", "__main__")),
)
MAX_DEFERRED = 15  # in-function imports of fercli modules, each deferring torch or start-up time
_FLOOR_OF = {member: i for i, (_, members) in enumerate(FLOORS) for member in members}


def floor_of(module: str) -> int | None:
    """The floor of a fercli module; None for the root package (`from fercli import
    __version__` is allowed everywhere: the root imports nothing at import time)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if parts[1] not in _FLOOR_OF:
        raise AssertionError(f"{module}: its package has no floor in FLOORS (add it, and to fercli/__init__.py)")
    return _FLOOR_OF[parts[1]]


def _target(module: str, is_pkg: bool, node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str:
    if isinstance(node, ast.Import):
        return alias.name
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    # `from fercli import api` names the module fercli.api; `from fercli.x import name` the module fercli.x.
    sub = f"{mod}.{alias.name}"
    return sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file() or \
        (PACKAGE.parent / sub.replace(".", "/")).is_dir() else mod


def fercli_imports(module: str, source: str, is_pkg: bool = False) -> list[tuple[int, str, bool]]:
    """(line, imported fercli module, inside a function?) for every import in `source`."""
    tree = ast.parse(source)
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    found: dict[tuple[int, str], bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                target = _target(module, is_pkg, node, alias)
                if target.split(".")[0] == "fercli":
                    found[(node.lineno, target)] = id(node) in in_function
    return sorted((line, target, inside) for (line, target), inside in found.items())


def upward_imports(module: str, source: str, is_pkg: bool = False) -> list[str]:
    """Every import in `source` (module `module`) that points up a floor."""
    own = floor_of(module)
    bad = []
    for line, target, _ in fercli_imports(module, source, is_pkg):
        theirs = floor_of(target)
        if own is not None and theirs is not None and theirs > own:
            bad.append(f"{module}:{line} imports {target} ({FLOORS[theirs][0]} is above {FLOORS[own][0]})")
    return bad


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def test_every_import_points_down_a_floor() -> None:
    bad = [v for name, path in modules() for v in upward_imports(name, path.read_text(), path.name == "__init__.py")]
    assert not bad, "\n".join(bad)


def test_the_checker_catches_an_upward_import_even_inside_a_function() -> None:
    lazy = "def f():\n    from fercli.infer.recognizer import Recognizer\n    return Recognizer\n"
    assert upward_imports("fercli.model.networks", lazy) == [
        "fercli.model.networks:2 imports fercli.infer.recognizer (infer is above model)"]
    assert upward_imports("fercli.data.prepared", "from fercli import cli\n")  # the cli package, by name
    assert upward_imports("fercli.files", "import fercli.train.runs\n")
    assert not upward_imports("fercli.cli.train", "def f():\n    from fercli.train import runs\n")
    assert not upward_imports("fercli.provenance", "from fercli import __version__\n")


def test_in_function_imports_are_few_and_say_why() -> None:
    deferred, silent = [], []
    for name, path in modules():
        lines = path.read_text().splitlines()
        for line, target, inside in fercli_imports(name, path.read_text(), path.name == "__init__.py"):
            if not inside:
                continue
            deferred.append(f"{name}:{line} {target}")
            context = " ".join(lines[max(0, line - 4):line]).lower()
            if "deferred" not in context:
                silent.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} in a function without a "
                              f"'# deferred: <why>' comment")
    assert not silent, "\n".join(silent)
    assert len(deferred) <= MAX_DEFERRED, "\n".join(deferred)


def test_the_floors_are_the_ones_the_package_docstring_gives() -> None:
    doc = fercli.__doc__ or ""
    named = re.findall(r"^\s{4}(\w+)\s{2,}", doc, re.M)
    assert tuple(named) == tuple(name for name, _ in FLOORS), named
