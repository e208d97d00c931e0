"""``fnn.random``: Keras's random ops for subclassed layers' ``call``, kept pure.

Inside a pure call (a subclassed layer or model in ``fit``/``apply``) every draw takes a
fresh key from the ``rng`` that ``apply`` received, so ``jit`` and reruns with the same key
give the same numbers; without an ``rng`` (inference) or outside any call, keys come from
the ``seed`` (an int or a ``SeedGenerator``) and a counter, as Keras's seeded draws.

>>> import fnn
>>> gen = fnn.random.SeedGenerator(1337)
>>> fnn.random.normal((2, 3), seed=gen).shape
(2, 3)
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from fnn.core import eager

__all__ = ["SeedGenerator", "dropout", "normal", "randint", "uniform"]


class SeedGenerator:
    """A seed and a counter: each ``next()`` is a new key (Keras's ``SeedGenerator``)."""

    def __init__(self, seed: int | None = None):
        self.seed = 0 if seed is None else int(seed)
        self._count = itertools.count()

    def next(self) -> jax.Array:
        return jax.random.fold_in(jax.random.key(self.seed), next(self._count))


def _key(seed) -> jax.Array:
    scope = eager.SCOPE.get()
    if scope is not None:
        key = scope.next_key()
        if key is not None:
            return key
    if isinstance(seed, SeedGenerator):
        return seed.next()
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if seed is None:
        return eager.next_key()
    return jax.random.key(int(seed))


def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None) -> jax.Array:
    """Normal samples ``[*shape]``."""
    dtype = jnp.dtype(dtype or "float32")
    return mean + stddev * jax.random.normal(_key(seed), tuple(shape), dtype)


def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None) -> jax.Array:
    """Uniform samples in ``[minval, maxval)``: ``[*shape]``."""
    dtype = jnp.dtype(dtype or "float32")
    return jax.random.uniform(_key(seed), tuple(shape), dtype, minval, maxval)


def randint(shape, minval, maxval, dtype="int32", seed=None) -> jax.Array:
    """Integers in ``[minval, maxval)``: ``[*shape]``."""
    return jax.random.randint(_key(seed), tuple(shape), minval, maxval, jnp.dtype(dtype))


def dropout(inputs, rate: float, noise_shape=None, seed=None) -> jax.Array:
    """``inputs`` with a ``rate`` fraction zeroed and the rest scaled by ``1 / (1 - rate)``
    (same shape as ``inputs``)."""
    shape = tuple(noise_shape) if noise_shape is not None else jnp.shape(inputs)
    keep = jax.random.bernoulli(_key(seed), 1.0 - rate, shape)
    return jnp.where(keep, inputs / (1.0 - rate), jnp.zeros_like(inputs))
