"""The package's import order: core <- layers <- training <- distributed <- io <- shell <- cli.

Every ``import`` statement in ``fnn/`` (module level and inside functions) is read from the
source with ``ast``; a module may import only modules of its own folder or of folders
before it, and no two modules may import each other, directly or through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fnn"
ORDER = ("core", "layers", "training", "distributed", "io", "shell", "cli")
# Public modules outside the folders, each placed at a level of ORDER: ``fnn.ops`` is core
# (jax, numpy and fnn.core only); ``fnn.utils`` sits at the shell (``plot_model`` draws
# models) but its array helpers import nothing above training and its time-series windows
# (a PyDataset) nothing above io.
PLACED = {
    "fnn.ops": "core",
    "fnn.utils": "shell",
    "fnn.utils.arrays": "training",
    "fnn.utils.plotting": "shell",
    "fnn.utils.timeseries": "io",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The fnn modules that ``path`` imports (``from fnn.x import y`` counts ``fnn.x.y``
    when that is a module, else ``fnn.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(n for n in names if n == "fnn" or n.startswith("fnn."))
    return found


def _folder(module: str) -> str | None:
    if module in PLACED:
        return PLACED[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) & set(modules) for name, path in modules.items()}


def test_every_module_lives_in_a_layer_folder():
    loose = sorted(m for m in _modules() if _folder(m) is None and m not in ("fnn", "fnn.__main__"))
    assert not loose, f"modules outside {ORDER}: {loose}"


def test_imports_point_down_the_layer_order():
    against = []
    for module, imported in _graph().items():
        here = _folder(module)
        if here is None:  # fnn/__init__.py and __main__.py sit on top of everything
            continue
        for target in imported:
            there = _folder(target)
            if target == "fnn" or there is None or ORDER.index(there) > ORDER.index(here):
                against.append(f"{module} imports {target}")
    assert not against, "imports against core <- ... <- cli:\n" + "\n".join(sorted(against))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is not a cycle back to it
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(target) is None:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [node])


def test_the_checker_sees_an_arrow_against_the_order(tmp_path):
    """The import reader finds a function-level import (how cycles used to hide)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from fnn.shell.model import Model\n")
    assert _imports(source, _modules()) == {"fnn.shell.model"}


def test_placed_modules_exist_and_sit_at_their_level():
    """Every PLACED module exists, and a placed module counts at its level (``fnn.ops``
    may not import ``fnn.layers``)."""
    assert set(PLACED) <= set(_modules())
    assert _folder("fnn.ops") == "core" and ORDER.index(_folder("fnn.layers.dense")) > 0
