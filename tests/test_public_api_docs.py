"""Every public name has a docstring (with shapes where it takes arrays) and appears in the
generated API reference.

Public names: ``fnn.__all__`` and, for each public module (``fnn`` and every module under
it whose dotted name has no part starting with ``_``), its ``__all__`` or else the functions
and classes it defines. "Appears in the reference" means the identifier is in the built
site's ``objects.inv`` (written by mkdocstrings), under the module's own name.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import types

import docs_site
import pytest

sys.path.insert(0, str(docs_site.ROOT / "docs" / "hooks"))
import api_pages

sys.path.pop(0)

# Argument names that carry arrays: a function taking one of them documents shapes.
ARRAY_ARGS = {"x", "inputs", "y_true", "y_pred", "logits", "labels", "images", "sequences"}
# A shape in a docstring: ``[batch, units]``, ``(n, 3)``, ``[..., f]``, ``->``, the word
# shape, or words that fix the output's shape from the input's (elementwise, per example).
SHAPE = re.compile(
    r"\[[\w\s,.*+/-]*\]|\(\s*\w+\s*,[\w\s,.*]*\)|shape|scalar|->|elementwise|element-wise"
    r"|per example|identity|over the last axis",
    re.I,
)


def _public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(module).items()
            if not n.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", None) == module.__name__
        ]
    return [n for n in names if not isinstance(getattr(module, n), types.ModuleType)]


def _symbols() -> list[tuple[str, str, object]]:
    out = []
    for name in api_pages.public_modules():
        module = importlib.import_module(name)
        out.append((name, "", module))
        out.extend((name, n, getattr(module, n)) for n in _public_names(module))
    return out


SYMBOLS = _symbols()


def _documentable(obj) -> bool:
    return inspect.isfunction(obj) or inspect.isclass(obj) or isinstance(obj, types.ModuleType)


def _takes_arrays(obj) -> bool:
    if not inspect.isfunction(obj):
        return False
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return bool(ARRAY_ARGS & set(params))


def test_fnn_all_is_covered():
    import fnn

    covered = {f"{m}.{n}" if n else m for m, n, _ in SYMBOLS}
    # a public module (fnn.losses) is covered by the page of the module it is (fnn.training.losses)
    missing = [
        n
        for n in fnn.__all__
        if f"fnn.{n}" not in covered and getattr(getattr(fnn, n), "__name__", None) not in covered
    ]
    assert not missing, f"fnn.__all__ names missing from the public modules: {missing}"


def test_every_public_name_has_a_docstring():
    missing = [
        f"{m}.{n}" if n else m
        for m, n, obj in SYMBOLS
        if _documentable(obj) and not (inspect.getdoc(obj) or "").strip()
    ]
    assert not missing, f"public names without a docstring: {missing}"


def test_functions_taking_arrays_document_shapes():
    missing = [
        f"{m}.{n}"
        for m, n, obj in SYMBOLS
        if n and _takes_arrays(obj) and not SHAPE.search(inspect.getdoc(obj) or "")
    ]
    assert not missing, f"take arrays, docstring gives no shape: {missing}"


def test_every_public_name_is_in_the_api_reference():
    inv = docs_site.inventory(docs_site.built_site())
    missing = [f"{m}.{n}" if n else m for m, n, _ in SYMBOLS if (f"{m}.{n}" if n else m) not in inv]
    assert not missing, f"not in the built API reference: {missing}"


@pytest.mark.parametrize("name", ["fnn.layers.Dense", "fnn.serial", "fnn.Sequential", "fnn.train"])
def test_reference_pages_of_key_names(name):
    inv = docs_site.inventory(docs_site.built_site())
    # fnn.train is the public alias of fnn.training.step: its reference page is that module's.
    real = {"fnn.train": "fnn.training.step"}.get(name, name)
    assert real in inv, f"{name} has no entry in the reference"
