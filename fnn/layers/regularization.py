"""Dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.core.errors import ConfigError
from fnn.core.layer import Layer, register_layer


@register_layer
def Dropout(rate: float, noise_shape=None, name: str = "dropout") -> Layer:
    """Zero a fraction ``rate`` of the inputs when ``train=True``, scaling the rest by
    ``1 / (1 - rate)``; identity when ``train=False``. ``[...] -> [...]``.

    ``noise_shape`` (optional) broadcasts one mask over axes of size 1, as in Keras.
    Needs ``rng`` when training. ``rate`` may be a traced scalar (e.g. a sweep member's,
    ``fnn.train.make_hyper_steps``), unchecked.

    >>> import jax, jax.numpy as jnp, fnn
    >>> drop = fnn.layers.Dropout(0.5)
    >>> y, _ = drop.apply({}, {}, jnp.ones((1000,)), rng=jax.random.key(0), train=True)
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    """
    traced = isinstance(rate, jax.core.Tracer)
    if not traced and (not isinstance(rate, int | float) or not 0.0 <= rate < 1.0):
        raise ConfigError(f"{name}: expected rate in [0, 1), got {rate!r}.")

    def init(key, x):
        del key, x
        return {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        del params
        if not train or (not traced and rate == 0.0):
            return x, state
        if rng is None:
            raise ConfigError(
                f"{name}: train=True needs a PRNG key; call apply(..., rng=jax.random.key(seed), "
                "train=True)."
            )
        shape = (
            x.shape
            if noise_shape is None
            else tuple(x.shape[i] if d is None else d for i, d in enumerate(noise_shape))
        )
        keep = jax.random.bernoulli(rng, 1.0 - rate, shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), state

    return Layer(init, apply, name)
