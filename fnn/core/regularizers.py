"""Weight and activity regularizers by Keras name: ``L1``, ``L2``, ``L1L2`` (``l1``,
``l2``, ``l1_l2``) map an array to a scalar penalty. A layer given one
(``Dense(..., kernel_regularizer=L2(1e-4))``) adds the penalty to the training loss
through its ``add_loss`` state entry (``fnn.core.layer.ADDED_LOSS``).

>>> import jax.numpy as jnp, fnn
>>> float(fnn.regularizers.L2(0.5)(jnp.array([1.0, 2.0])))
2.5
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax.numpy as jnp

from fnn.core.errors import ConfigError, unknown_name

__all__ = ["L1", "L1L2", "L2", "Regularizer", "get", "l1", "l1_l2", "l2"]


class Regularizer:
    """Base class: ``penalty = regularizer(x)`` (a scalar); ``get_config`` for files."""

    def __call__(self, x):
        raise NotImplementedError

    def get_config(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Mapping):
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class L1L2(Regularizer):
    """``l1 * sum(|x|) + l2 * sum(x ** 2)``."""

    l1: float = 0.0
    l2: float = 0.0

    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        total = jnp.zeros((), jnp.float32)
        if self.l1:
            total = total + self.l1 * jnp.sum(jnp.abs(x))
        if self.l2:
            total = total + self.l2 * jnp.sum(jnp.square(x))
        return total


@dataclasses.dataclass(frozen=True)
class L1(Regularizer):
    """``l1 * sum(|x|)`` (Keras's default ``l1=0.01``)."""

    l1: float = 0.01

    def __call__(self, x):
        return L1L2(l1=self.l1)(x)


@dataclasses.dataclass(frozen=True)
class L2(Regularizer):
    """``l2 * sum(x ** 2)`` (Keras's default ``l2=0.01``)."""

    l2: float = 0.01

    def __call__(self, x):
        return L1L2(l2=self.l2)(x)


l1, l2, l1_l2 = L1, L2, L1L2
_BY_NAME = {"L1": L1, "L2": L2, "L1L2": L1L2, "l1": L1, "l2": L2, "l1_l2": L1L2}


def get(identifier) -> Callable | None:
    """A regularizer from ``None``, a name (``"l2"``), ``{"class_name", "config"}`` or a
    callable ``array -> scalar``."""
    if identifier is None or callable(identifier):
        return identifier
    if isinstance(identifier, str):
        if identifier not in _BY_NAME:
            raise unknown_name("regularizer", identifier, _BY_NAME)
        return _BY_NAME[identifier]()
    if isinstance(identifier, Mapping) and "class_name" in identifier:
        cls = _BY_NAME.get(identifier["class_name"])
        if cls is None:
            raise unknown_name("regularizer", identifier["class_name"], _BY_NAME)
        return cls(**dict(identifier.get("config") or {}))
    raise ConfigError(f"expected a regularizer name, object or callable, got {identifier!r}.")


def config_of(reg) -> dict:
    """``{"class_name", "config"}`` of a built-in regularizer (for saved model files)."""
    if not isinstance(reg, L1 | L2 | L1L2):
        raise ConfigError(
            f"cannot save the regularizer {reg!r}; only fnn.regularizers.L1/L2/L1L2 are stored."
        )
    return {"class_name": type(reg).__name__, "config": reg.get_config()}
