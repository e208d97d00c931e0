"""Keras's ``get_weights`` order for any layer, and the flat list <-> params/state trees.

The order is Keras's: layer by layer in call order (the children that combinators call
through ``call_child``, found by tracing ``apply`` abstractly), each layer's params then
its state, and inside a layer the order the layer declares in ``Layer.weight_order``
(``Dense``: ``kernel, bias``; ``BatchNormalization``: ``gamma, beta, moving_mean,
moving_variance``). Keys a layer does not name keep their stored order, after the named
ones. Arrays that no called child owns (a custom layer with its own params beside its
children's) come last.

>>> import jax, fnn
>>> from fnn.core import weights
>>> from fnn.layers import BatchNormalization, Dense
>>> model = fnn.serial(Dense(3), BatchNormalization())
>>> x = jax.ShapeDtypeStruct((1, 4), "float32")
>>> params, state = jax.eval_shape(model.init, jax.random.key(0), x)
>>> weights.weight_names(weights.weight_paths(model, params, state, x))
['dense/kernel', 'dense/bias', 'batch_normalization/gamma', 'batch_normalization/beta', \
'batch_normalization/moving_mean', 'batch_normalization/moving_variance']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.combinators import record_calls
from fnn.core.errors import ShapeError
from fnn.core.layer import ADDED_LOSS, Layer, as_shape_struct

__all__ = ["get_path", "get_weights", "set_path", "set_weights", "weight_names", "weight_paths"]

# ("params" or "state", the keys leading to one array)
WeightPath = tuple[str, tuple[str, ...]]


def get_path(tree: Any, path: tuple) -> Any:
    """The subtree of nested dict ``tree`` at ``path`` (a tuple of keys)."""
    for k in path:
        tree = tree[k]
    return tree


def set_path(tree: Any, path: tuple, value: Any) -> Any:
    """A copy of nested dict ``tree`` with ``value`` at ``path`` (copies only that branch)."""
    if not path:
        return value
    new = dict(tree)
    new[path[0]] = set_path(tree[path[0]], path[1:], value)
    return new


def _rank(key: Any, order: tuple[str, ...]) -> int:
    if isinstance(key, str):
        for i, pattern in enumerate(order):
            if fnmatch.fnmatchcase(key, pattern):
                return i
    return len(order)


def _ordered_leaves(tree: Any, prefix: tuple, owners: Mapping[tuple, Layer], order) -> list:
    """Paths of the array leaves under ``prefix``, each dict's keys ranked by the
    ``weight_order`` of the nearest layer that owns the dict."""
    if prefix in owners:
        order = owners[prefix].weight_order or ()
    if not isinstance(tree, Mapping):
        return [prefix]
    out = []
    for k in sorted(tree, key=lambda k: _rank(k, order)):  # stable: ties keep stored order
        out.extend(_ordered_leaves(tree[k], (*prefix, k), owners, order))
    return out


def weight_paths(layer: Layer, params: Any, state: Any, *inputs: Any) -> list[WeightPath]:
    """``("params"|"state", path)`` of every array of ``layer`` in Keras's ``get_weights``
    order. ``params``, ``state`` and ``inputs`` may be arrays or ``jax.ShapeDtypeStruct``
    (only shapes are traced, nothing is computed)."""
    abstract = as_shape_struct((params, state, inputs))
    with record_calls() as records:
        # A fresh lambda each time so that no trace cache can skip the recording.
        jax.eval_shape(lambda p, s, xs: layer.apply(p, s, *xs, rng=None, train=False), *abstract)
    owners: dict[tuple, Layer] = {(): layer}
    for path, child, *_ in records:
        owners.setdefault(path, child)
    calls = list(dict.fromkeys(r[0] for r in records))
    # Calls in pre-order (a parent is recorded before its children): each call owns the
    # arrays under it that no deeper call owns, so a layer's own weights come before its
    # sublayers' (Keras's order for subclassed layers); combinators own none.
    trees = (("params", params), ("state", state))
    order: list[WeightPath] = []
    seen: set[WeightPath] = set()
    for path in dict.fromkeys([(), *calls]):
        deeper = [q for q in calls if q[: len(path)] == path and q != path]
        for kind, tree in trees:
            try:
                sub = get_path(tree, path)
            except (KeyError, TypeError):
                continue  # a child without params (or without state)
            for leaf in _ordered_leaves(sub, path, owners, ()):
                if any(leaf[: len(q)] == q for q in deeper):
                    continue
                if (kind, leaf) not in seen:
                    seen.add((kind, leaf))
                    order.append((kind, leaf))
    for kind, tree in trees:
        for leaf in _ordered_leaves(tree, (), owners, ()):
            if (kind, leaf) not in seen:
                seen.add((kind, leaf))
                order.append((kind, leaf))
    # add_loss totals are outputs of the last call, not weights (Keras lists no such thing).
    return [(kind, path) for kind, path in order if not path or path[-1] != ADDED_LOSS]


def weight_names(paths: Sequence[WeightPath]) -> list[str]:
    """``"dense/kernel"``-style names of the arrays at ``paths``."""
    return ["/".join(str(k) for k in path) for _, path in paths]


def get_weights(params: Any, state: Any, paths: Sequence[WeightPath]) -> list[np.ndarray]:
    """The arrays at ``paths`` as NumPy arrays, in that order."""
    trees = {"params": params, "state": state}
    arrays = [get_path(trees[kind], path) for kind, path in paths]
    return [np.array(a) for a in jax.device_get(arrays)]


def set_weights(
    params: Any, state: Any, paths: Sequence[WeightPath], weights: Sequence, who: str
) -> tuple[Any, Any]:
    """``(params, state)`` with ``weights[i]`` at ``paths[i]`` (cast to the current dtype);
    ``ShapeError`` naming ``who`` for a wrong count or shape."""
    weights = list(weights)
    if len(weights) != len(paths):
        listing = ", ".join(weight_names(paths))
        raise ShapeError(
            f"{who}: set_weights expected {len(paths)} arrays ({listing}), got {len(weights)}."
        )
    trees = {"params": params, "state": state}
    for (kind, path), value in zip(paths, weights, strict=True):
        old = get_path(trees[kind], path)
        if tuple(np.shape(value)) != tuple(old.shape):
            raise ShapeError(
                f"{who}: set_weights expected {'/'.join(path)} of shape {tuple(old.shape)}, "
                f"got shape {tuple(np.shape(value))}."
            )
        trees[kind] = set_path(trees[kind], path, jnp.asarray(value, old.dtype))
    return trees["params"], trees["state"]
