"""Activation layers: elementwise functions by Keras name."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.core import activations
from fnn.core.layer import Layer, register_layer


@register_layer
def Activation(activation, name: str = "activation") -> Layer:
    """Apply an activation elementwise: ``[...] -> [...]``.

    >>> import jax.numpy as jnp, fnn
    >>> fnn.layers.Activation("relu").apply({}, {}, jnp.array([-1.0, 3.0]))[0]
    Array([0., 3.], dtype=float32)
    """
    fn = activations.get(activation)

    def init(key, x):
        del key, x
        return {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        del params, rng, train
        return fn(x), state

    return Layer(init, apply, name)


def _elementwise(fn, name: str) -> Layer:
    def init(key, x):
        del key, x
        return {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        del params, rng, train
        return fn(x), state

    return Layer(init, apply, name)


@register_layer
def ReLU(
    max_value: float | None = None,
    negative_slope: float = 0.0,
    threshold: float = 0.0,
    name: str = "re_lu",
) -> Layer:
    """Keras's ``ReLU``: ``x`` above ``threshold`` (capped at ``max_value``), else
    ``negative_slope * (x - threshold)``: ``[...] -> [...]``."""

    def fn(x):
        y = jnp.where(x >= threshold, x, negative_slope * (x - threshold))
        return y if max_value is None else jnp.minimum(y, max_value)

    return _elementwise(fn, name)


@register_layer
def LeakyReLU(negative_slope: float = 0.3, name: str = "leaky_re_lu") -> Layer:
    """``x`` for ``x >= 0``, else ``negative_slope * x`` (Keras's default slope 0.3)."""
    return _elementwise(lambda x: jax.nn.leaky_relu(x, negative_slope), name)


@register_layer
def ELU(alpha: float = 1.0, name: str = "elu") -> Layer:
    """``x`` for ``x > 0``, else ``alpha * (exp(x) - 1)``."""
    return _elementwise(lambda x: jax.nn.elu(x, alpha), name)


@register_layer
def Softmax(axis: int = -1, name: str = "softmax") -> Layer:
    """Softmax over ``axis``: ``[...] -> [...]`` (rows sum to one)."""
    return _elementwise(lambda x: jax.nn.softmax(x, axis=axis), name)
