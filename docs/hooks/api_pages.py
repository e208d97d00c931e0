"""MkDocs hook: one API reference page per public fnn module, generated at build time.

Walks the ``fnn`` package on disk, so a module another engineer adds appears in the reference
(and in the navigation under "API reference") without editing ``mkdocs.yml``. A module is
public when no part of its dotted name starts with ``_``. Each page is a single mkdocstrings
``::: module`` directive; the public short names of ``fnn/__init__.py`` (``fnn.train`` for
``fnn.training.step``, ...) are given in the page title.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
# The import order of the package (tests/test_layering.py): the reference follows it.
ORDER = ("core", "layers", "training", "distributed", "io", "shell", "cli", "ops", "utils")


def public_modules() -> list[str]:
    """Dotted names of every public module under ``fnn/``, the package itself first."""
    names = ["fnn"]
    for info in pkgutil.walk_packages([str(ROOT / "fnn")], prefix="fnn."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def public_aliases() -> dict[str, list[str]]:
    """Real module name -> the short public names ``fnn/__init__.py`` registers for it.

    Read from the source (the ``sys.modules`` alias table and the ``from fnn.x import y as z``
    imports), so the hook does not import jax.
    """
    tree = ast.parse((ROOT / "fnn" / "__init__.py").read_text())
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fnn"):
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    aliases: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    target = _dotted(value, imported)
                    if target and target != f"fnn.{key.value}":
                        aliases.setdefault(target, []).append(f"fnn.{key.value}")
    return aliases


def _dotted(node: ast.AST, imported: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return imported.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, imported)
        if base is None:
            return None
        # ``optimizers.schedules`` is the ``schedules`` attribute of fnn.training.optimizers,
        # which imports it from fnn.training.schedules.
        sibling = base.rsplit(".", 1)[0] + "." + node.attr
        return sibling if _exists(sibling) else base + "." + node.attr
    return None


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def page_path(module: str) -> str:
    return f"api/{module}.md"


def page_text(module: str, aliases: list[str]) -> str:
    also = f" (public as {', '.join(f'`{a}`' for a in aliases)})" if aliases else ""
    return f"# `{module}`\n\nGenerated from the docstrings{also}.\n\n::: {module}\n"


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fnn"


def on_files(files, config):
    aliases = public_aliases()
    for module in public_modules():
        files.append(
            File.generated(
                config, page_path(module), content=page_text(module, aliases.get(module, []))
            )
        )
    return files


def on_config(config):
    modules = public_modules()
    groups: dict[str, list] = {"fnn": []}
    for name in ORDER:
        groups[name] = []
    for module in modules:
        groups.setdefault(_group(module), []).append({module: page_path(module)})
    section = [{f"fnn.{g}" if g != "fnn" else "fnn": pages} for g, pages in groups.items() if pages]
    nav = config["nav"]
    for entry in nav:
        if isinstance(entry, dict) and "API reference" in entry:
            entry["API reference"] = [*entry["API reference"], *section]
            break
    else:
        nav.append({"API reference": section})
    return config
