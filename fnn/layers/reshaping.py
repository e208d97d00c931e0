"""Shape-changing layers without parameters: Flatten, Reshape."""

from __future__ import annotations

import math

from fnn.core import Layer, register_layer
from fnn.errors import ConfigError, ShapeError, check_rank, shape_of


def _no_params(key, *inputs):
    del key, inputs
    return {}, {}


@register_layer
def Flatten(name: str = "flatten") -> Layer:
    """Flatten all but the batch axis: ``[batch, d1, ..., dk] -> [batch, d1 * ... * dk]``.

    >>> import jax.numpy as jnp, fnn
    >>> fnn.layers.Flatten().apply({}, {}, jnp.ones((2, 3, 4)))[0].shape
    (2, 12)
    """

    def apply(params, state, x, *, rng=None, train=False):
        del params, rng, train
        check_rank(name, x, min_rank=1, layout="[batch, ...]")
        return x.reshape(x.shape[0], -1), state

    return Layer(_no_params, apply, name)


@register_layer
def Reshape(target_shape, name: str = "reshape") -> Layer:
    """Reshape all but the batch axis: ``[batch, ...] -> [batch, *target_shape]``.

    One entry of ``target_shape`` may be ``-1`` (inferred), as in Keras.

    >>> import jax.numpy as jnp, fnn
    >>> fnn.layers.Reshape((4, -1)).apply({}, {}, jnp.ones((2, 12)))[0].shape
    (2, 4, 3)
    """
    target_shape = tuple(int(d) for d in target_shape)
    if sum(d == -1 for d in target_shape) > 1 or any(d == 0 or d < -1 for d in target_shape):
        raise ConfigError(
            f"{name}: expected target_shape of positive sizes with at most one -1, "
            f"got {target_shape}."
        )

    def apply(params, state, x, *, rng=None, train=False):
        del params, rng, train
        check_rank(name, x, min_rank=1, layout="[batch, ...]")
        size = math.prod(shape_of(x)[1:])
        known = math.prod(d for d in target_shape if d != -1)
        fits = size % known == 0 if -1 in target_shape else size == known
        if not fits:
            raise ShapeError(
                f"{name}: cannot reshape inputs of shape {shape_of(x)} ({size} values per "
                f"example) to target_shape {target_shape}."
            )
        return x.reshape((x.shape[0], *target_shape)), state

    return Layer(_no_params, apply, name)
