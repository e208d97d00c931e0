"""Pytree path helpers shared by training, checkpoints and data parallelism.

>>> import jax
>>> path, _ = jax.tree_util.tree_flatten_with_path({"dense": {"kernel": 1}})[0][0]
>>> slash_path(path), describe_path(path)
('dense/kernel', "['dense']['kernel']")
"""

from __future__ import annotations

from typing import Any

import jax


def key_name(entry: Any) -> Any:
    """The dict key, sequence index or attribute name of one pytree path entry."""
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def slash_path(path: tuple) -> str:
    """``"dense/kernel"``: the entries of a pytree path joined by ``/`` (``""`` for the root)."""
    return "/".join(str(key_name(entry)) for entry in path)


def describe_path(path: tuple) -> str:
    """``"['dense']['kernel']"`` (``jax.tree_util.keystr``) for messages; ``"<root>"`` if empty."""
    return jax.tree_util.keystr(path) if path else "<root>"
