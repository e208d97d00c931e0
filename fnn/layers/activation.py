"""Activation layers: elementwise functions by Keras name."""

from __future__ import annotations

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
