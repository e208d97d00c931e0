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
