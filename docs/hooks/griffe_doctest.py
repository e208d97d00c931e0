"""Griffe extension: show the doctest examples of fnn's docstrings as Python code blocks.

fnn's docstrings put ``>>>`` examples in plain paragraphs (pytest runs them as doctests);
Markdown would read their output (``[0.5, 1.0]``) as link references. This wraps each run of
doctest lines (a ``>>>`` line up to the next blank line) in a ``pycon`` fence before
mkdocstrings renders the docstring.
"""

from __future__ import annotations

import griffe


def fence_doctests(text: str) -> str:
    """``text`` with every doctest paragraph wrapped in a fenced ``pycon`` block."""
    out: list[str] = []
    inside = False
    in_fence = False
    indent = ""
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if not inside and not in_fence and stripped.startswith(">>>"):
            inside = True
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
        elif inside and not stripped:
            out.append(f"{indent}```")
            inside = False
        out.append(line)
    if inside:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fences the doctest paragraphs of every loaded object's docstring."""

    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        del node, agent, kwargs
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)


class RuntimeDocstrings(griffe.Extension):
    """Docstrings of module attributes that hold functions made at import time.

    Static analysis sees ``Conv2D = _conv(2)`` or the ``fnn.ops`` wrappers as attributes
    without docstrings, and misses names bound by tuple unpacking
    (``Conv1D, Conv2D, Conv3D = ...``) altogether; their runtime objects have docstrings.
    For each fnn module this imports the module, gives such attributes the runtime
    object's docstring and adds the public names griffe did not see.
    """

    def on_package(self, *, pkg, **kwargs) -> None:
        del kwargs
        if pkg.name == "fnn":
            self._fill(pkg)

    def _fill(self, module) -> None:
        import importlib
        import inspect

        try:
            runtime = importlib.import_module(module.path)
        except Exception:  # a module that does not import is reported by the build
            return
        public = getattr(runtime, "__all__", None)
        if public is None:
            public = [
                n
                for n, v in vars(runtime).items()
                if not n.startswith("_")
                and (inspect.isfunction(v) or inspect.isclass(v))
                and getattr(v, "__module__", None) == runtime.__name__
            ]
        for name in public:
            value = getattr(runtime, name, None)
            if name not in module.members and callable(value) and not inspect.ismodule(value):
                module.set_member(name, griffe.Attribute(name, lineno=None, endlineno=None))
        for name, member in list(module.members.items()):
            if member.is_alias:
                continue
            if member.is_module and not name.startswith("_"):
                self._fill(member)
            elif member.is_attribute and member.docstring is None:
                value = getattr(runtime, name, None)
                if callable(value) and not isinstance(value, type(runtime)):
                    doc = inspect.getdoc(value)
                    if doc and doc != inspect.getdoc(type(value)):
                        member.docstring = griffe.Docstring(fence_doctests(doc), parent=member)
