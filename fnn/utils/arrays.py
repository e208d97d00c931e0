"""Keras's array utilities on NumPy: labels, padding, normalization, splits and seeds.

Imports nothing above ``fnn.training`` (these are plain NumPy functions).

>>> to_categorical([0, 2], num_classes=3).tolist()
[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
>>> pad_sequences([[1, 2, 3], [4]], maxlen=2).tolist()
[[2, 3], [0, 4]]
"""

from __future__ import annotations

import random

import numpy as np

from fnn.core.errors import ConfigError, ShapeError


def to_categorical(y, num_classes: int | None = None) -> np.ndarray:
    """Integer class labels ``[...]`` (or ``[..., 1]``) -> one-hot float ``[..., num_classes]``
    (``num_classes`` defaults to ``max(y) + 1``)."""
    y = np.asarray(y)
    if y.size and not np.issubdtype(y.dtype, np.integer) and np.any(y != np.round(y)):
        raise ConfigError(
            f"to_categorical: expected integer class labels, got values like {y.flat[0]!r} "
            f"(dtype {y.dtype}). Round or argmax them first."
        )
    y = y.astype(np.int64)
    shape = y.shape[:-1] if y.ndim > 1 and y.shape[-1] == 1 else y.shape
    flat = y.reshape(-1)
    num_classes = int(flat.max()) + 1 if not num_classes else int(num_classes)
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        raise ConfigError(
            f"to_categorical: expected labels in [0, {num_classes}), got labels from "
            f"{int(flat.min())} to {int(flat.max())}. Pass num_classes= large enough."
        )
    out = np.zeros((flat.size, num_classes))
    out[np.arange(flat.size), flat] = 1.0
    return out.reshape((*shape, num_classes))


def pad_sequences(
    sequences,
    maxlen: int | None = None,
    dtype="int32",
    padding: str = "pre",
    truncating: str = "pre",
    value=0.0,
) -> np.ndarray:
    """A list of ``n`` sequences (each ``[length, *sample_shape]``) -> ``[n, maxlen,
    *sample_shape]``, padded with ``value`` and cut to ``maxlen`` at the start (``"pre"``)
    or end (``"post"``); ``maxlen`` defaults to the longest sequence."""
    for arg, got in (("padding", padding), ("truncating", truncating)):
        if got not in ("pre", "post"):
            raise ConfigError(f"pad_sequences: expected {arg} 'pre' or 'post', got {got!r}.")
    try:
        lengths = [len(s) for s in sequences]
    except TypeError:
        raise ConfigError(
            "pad_sequences: expected a list of sequences (lists or arrays), got "
            f"{type(sequences).__name__} holding a non-sequence."
        ) from None
    sample_shape = next((np.asarray(s).shape[1:] for s in sequences if len(s)), ())
    if maxlen is None:
        maxlen = max(lengths, default=0)
    out = np.full((len(lengths), maxlen, *sample_shape), value, dtype=dtype)
    for i, seq in enumerate(sequences):
        if not len(seq) or not maxlen:
            continue
        kept = np.asarray(seq[-maxlen:] if truncating == "pre" else seq[:maxlen], dtype=dtype)
        if kept.shape[1:] != sample_shape:
            raise ShapeError(
                f"pad_sequences: expected every sequence's items of shape {sample_shape}, got "
                f"{kept.shape[1:]} in sequence {i}."
            )
        if padding == "post":
            out[i, : len(kept)] = kept
        else:
            out[i, maxlen - len(kept) :] = kept
    return out


def normalize(x, axis: int = -1, order: int = 2) -> np.ndarray:
    """``x`` divided by its ``order``-norm along ``axis`` (zero norms left as 1), same shape."""
    x = np.asarray(x)
    norm = np.atleast_1d(np.linalg.norm(x, order, axis))
    norm[norm == 0] = 1
    return x / np.expand_dims(norm, axis)


def _split_size(name: str, size, total: int) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise ConfigError(
            f"split_dataset: expected {name} an int, a float or None, got {type(size).__name__}."
        )
    if (isinstance(size, int) and not 0 < size < total) or (
        isinstance(size, float) and not 0 < size < 1
    ):
        raise ConfigError(
            f"split_dataset: expected {name} a positive int below the {total} samples or a "
            f"float in (0, 1), got {size!r}."
        )
    return round(size * total) if isinstance(size, float) else size


def split_dataset(dataset, left_size=None, right_size=None, shuffle: bool = False, seed=None):
    """An array (or a tuple/list/dict of arrays with one row per sample) -> ``(left, right)``
    of the same structure, as Keras's ``split_dataset``: sizes as sample counts (int) or
    fractions (float), the missing one the complement; ``shuffle`` permutes the samples
    first (Python's ``random.Random(seed).shuffle``, the permutation Keras draws). Keras
    returns ``tf.data`` datasets; fnn returns the arrays.

    >>> left, right = split_dataset(np.arange(10), left_size=0.8)
    >>> left.tolist(), right.tolist()
    ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    """
    if isinstance(dataset, dict):
        leaves = dict(dataset)
    elif isinstance(dataset, list | tuple):
        leaves = dict(enumerate(dataset))
    else:
        leaves = {None: dataset}
    leaves = {k: np.asarray(v) for k, v in leaves.items()}
    sizes = {k: (len(v) if v.ndim else None) for k, v in leaves.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ShapeError(
            "split_dataset: expected arrays with the same number of samples, got lengths "
            f"{[v.shape[:1] for v in leaves.values()]}."
        )
    total = next(iter(sizes.values()))
    if left_size is None and right_size is None:
        raise ConfigError("split_dataset: expected left_size or right_size, got neither.")
    left, right = (
        _split_size("left_size", left_size, total),
        _split_size("right_size", right_size, total),
    )
    if (
        isinstance(left_size, float)
        and isinstance(right_size, float)
        and left_size + right_size > 1
    ):
        raise ConfigError(
            f"split_dataset: expected left_size + right_size <= 1, got {left_size + right_size}."
        )
    left = total - right if left is None else left
    right = total - left if right is None else right
    if left + right > total or not left or not right:
        raise ConfigError(
            f"split_dataset: expected two non-empty splits within the {total} samples, got "
            f"left {left} and right {right}."
        )
    order = list(range(total))
    if shuffle:
        random.Random(random.randint(0, 10**6) if seed is None else seed).shuffle(order)
    pick = {"left": np.asarray(order[:left]), "right": np.asarray(order[total - right :])}

    def rebuild(idx):
        parts = {k: v[idx] for k, v in leaves.items()}
        if isinstance(dataset, dict):
            return parts
        if isinstance(dataset, list | tuple):
            return type(dataset)(parts[i] for i in range(len(dataset)))
        return parts[None]

    return rebuild(pick["left"]), rebuild(pick["right"])


def set_random_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and the keys of eager layer calls
    (``Dense(3)(x)`` outside a model), as Keras does. Models keep their own explicit
    seeds: ``compile(seed=...)`` and ``jax.random.key``."""
    from fnn.core import eager

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(f"set_random_seed: expected an int seed, got {seed!r}.")
    random.seed(int(seed))
    np.random.seed(int(seed))
    eager.set_seed(int(seed))


def get_file(fname=None, origin=None, *args, **kwargs):
    """Not available: fnn never downloads. Always raises ``ConfigError``."""
    del args, kwargs
    raise ConfigError(
        f"get_file: fnn never downloads files (got fname={fname!r}, origin={origin!r}). "
        "Download the file yourself (e.g. curl -L -o FILE URL), then pass its local path; "
        "for small bundled datasets see fnn.datasets."
    )
