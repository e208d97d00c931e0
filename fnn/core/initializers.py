"""Parameter initializers: ``(key, shape, dtype) -> Array``, by Keras name or callable.

Fan-in and fan-out follow Keras: for a kernel ``[*receptive_field, in, out]``
fan_in = in * prod(receptive_field) and fan_out = out * prod(receptive_field).

>>> import jax, fnn
>>> w = fnn.initializers.get("glorot_uniform")(jax.random.key(0), (784, 128), "float32")
>>> w.shape, bool(abs(w).max() <= (6 / (784 + 128)) ** 0.5)
((784, 128), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.nn import initializers as jinit

from fnn.core.errors import lookup

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def zeros(key, shape, dtype=jnp.float32):
    """All zeros of ``shape``."""
    del key
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32):
    """All ones of ``shape``."""
    del key
    return jnp.ones(shape, dtype)


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)

    return init


def random_normal(mean: float = 0.0, stddev: float = 0.05) -> Initializer:
    """Normal(mean, stddev) entries (Keras ``RandomNormal`` defaults)."""

    def init(key, shape, dtype=jnp.float32):
        return mean + stddev * jax.random.normal(key, shape, dtype)

    return init


def random_uniform(minval: float = -0.05, maxval: float = 0.05) -> Initializer:
    """Uniform[minval, maxval) entries (Keras ``RandomUniform`` defaults)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval, maxval)

    return init


def truncated_normal(mean: float = 0.0, stddev: float = 0.05) -> Initializer:
    """Normal(mean, stddev) truncated to two standard deviations (Keras ``TruncatedNormal``)."""

    def init(key, shape, dtype=jnp.float32):
        return mean + stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    return init


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras's fan_in/fan_out: a vector uses its length for both; a kernel
    ``[*receptive_field, in, out]`` multiplies both by the receptive field size."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _scaling(scale: float, mode: str, distribution: str, name: str) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        shape = tuple(shape)
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, fan)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        # Truncated to two standard deviations, rescaled so the variance is ``variance``.
        stddev = math.sqrt(variance) / 0.87962566103423978
        return stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    init.__name__ = name
    init.__doc__ = (
        f"Keras ``{name}``: {distribution.replace('_', ' ')} with variance "
        f"{scale:g} / {mode} (``(key, shape, dtype) -> Array``)."
    )
    return init


glorot_uniform = _scaling(1.0, "fan_avg", "uniform", "glorot_uniform")
glorot_normal = _scaling(1.0, "fan_avg", "truncated_normal", "glorot_normal")
he_uniform = _scaling(2.0, "fan_in", "uniform", "he_uniform")
he_normal = _scaling(2.0, "fan_in", "truncated_normal", "he_normal")
lecun_uniform = _scaling(1.0, "fan_in", "uniform", "lecun_uniform")
lecun_normal = _scaling(1.0, "fan_in", "truncated_normal", "lecun_normal")


def orthogonal(gain: float = 1.0) -> Initializer:
    """A (semi-)orthogonal matrix over the last axis, times ``gain`` (Keras ``Orthogonal``)."""
    return jinit.orthogonal(scale=gain)


_BY_NAME: dict[str, Initializer] = {
    "zeros": zeros,
    "ones": ones,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
    "orthogonal": orthogonal(),
    "truncated_normal": truncated_normal(),
    "random_normal": random_normal(),
    "random_uniform": random_uniform(),
}
_ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal"}


def get(identifier: str | Initializer) -> Initializer:
    """Initializer from a Keras name (``"glorot_uniform"``, ``"zeros"``, ...) or a callable."""
    return lookup("initializer", identifier, _BY_NAME, _ALIASES)


def names() -> tuple[str, ...]:
    """Every initializer name that ``get`` accepts."""
    return tuple(sorted(_BY_NAME))
