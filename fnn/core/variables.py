"""What Keras-style variables have in common: a ``value`` that arithmetic, NumPy and
``fnn.ops`` read through (``Variable`` of subclassed layers, ``fnn.metrics``' metric
variables). Subclasses define ``value`` and ``assign``; this adds the rest.

>>> import jax.numpy as jnp
>>> class Box(ArrayLike):
...     def __init__(self, v):
...         self.v = jnp.asarray(v)
...     value = property(lambda self: self.v)
...     def assign(self, v):
...         self.v = jnp.asarray(v)
...         return self
>>> b = Box([1.0, 2.0])
>>> (b * 2).tolist(), b.assign_add(1.0).numpy().tolist()
([2.0, 4.0], [2.0, 3.0])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ArrayLike", "unwrap", "unwrap_tree"]


def unwrap(x):
    """``x.value`` for a variable, else ``x`` (the shape is unchanged)."""
    return x.value if getattr(x, "_fnn_variable", False) else x


def unwrap_tree(tree):
    """``tree`` with every variable replaced by its value (lists, tuples, dicts too)."""
    is_var = lambda a: getattr(a, "_fnn_variable", False) is True  # noqa: E731
    return jax.tree.map(lambda a: a.value if is_var(a) else a, tree, is_leaf=is_var)


class ArrayLike:
    """Mixin: operators, comparisons, indexing, ``numpy()``, ``assign_add``/``assign_sub``
    over ``self.value``."""

    _fnn_variable = True
    __array_priority__ = 1000  # numpy defers ``array + variable`` to the reflected operator

    @property
    def value(self):  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def assign(self, value):  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def assign_add(self, delta):
        return self.assign(self.value + unwrap(delta))

    def assign_sub(self, delta):
        return self.assign(self.value - unwrap(delta))

    def numpy(self) -> np.ndarray:
        return np.asarray(self.value)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value, dtype=dtype)

    def __float__(self):
        return float(self.value)

    def __getitem__(self, index):
        return self.value[index]

    def __len__(self):
        return len(self.value)

    def __neg__(self):
        return -self.value


def _binary(op):
    def forward(self, other):
        return op(self.value, unwrap(other))

    def backward(self, other):
        return op(unwrap(other), self.value)

    return forward, backward


for _name, _op in {
    "add": jnp.add,
    "sub": jnp.subtract,
    "mul": jnp.multiply,
    "truediv": jnp.true_divide,
    "matmul": jnp.matmul,
    "pow": jnp.power,
}.items():
    _f, _b = _binary(_op)
    setattr(ArrayLike, f"__{_name}__", _f)
    setattr(ArrayLike, f"__r{_name}__", _b)
for _name, _op in {
    "lt": jnp.less,
    "le": jnp.less_equal,
    "gt": jnp.greater,
    "ge": jnp.greater_equal,
}.items():
    setattr(ArrayLike, f"__{_name}__", _binary(_op)[0])
del _name, _op, _f, _b
