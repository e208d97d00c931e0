"""Dense: an affine map over the last axis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from fnn.core import activations, initializers
from fnn.core.errors import ConfigError, check_last_dim, check_rank
from fnn.core.layer import Layer, param_dtype, register_layer


class Affine(NamedTuple):
    """The kernel, bias and activation that Dense and the convolutions share (not a layer):
    ``y = activation(x ⋆ kernel + bias)``."""

    act: Callable
    kernel_init: Callable
    bias_init: Callable
    use_bias: bool

    @classmethod
    def get(cls, activation, use_bias, kernel_initializer, bias_initializer) -> Affine:
        """Resolve the Keras ``activation`` and initializer arguments (names or callables)."""
        act = activations.get(activation)
        kernel_init = initializers.get(kernel_initializer)
        return cls(act, kernel_init, initializers.get(bias_initializer), use_bias)

    def init(self, key, x, dtype: Any, kernel_shape, units: int) -> dict:
        """``{"kernel": [*kernel_shape], "bias": [units]}`` (no bias without ``use_bias``)
        in ``param_dtype(x, dtype)``; kernel and bias from the two halves of ``key``."""
        dtype_ = param_dtype(x, dtype)
        kernel_key, bias_key = jax.random.split(key)
        params = {"kernel": self.kernel_init(kernel_key, kernel_shape, dtype_)}
        if self.use_bias:
            params["bias"] = self.bias_init(bias_key, (units,), dtype_)
        return params

    def output(self, y, params):
        """``activation(y + bias)``: ``[..., units] -> [..., units]``."""
        if self.use_bias:
            y = y + params["bias"]
        return self.act(y)


@register_layer(weight_order=("kernel", "bias"))
def Dense(
    units: int,
    activation=None,
    use_bias: bool = True,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    dtype=None,
    name: str = "dense",
) -> Layer:
    """Affine map over the last axis: ``[..., in_features] -> [..., units]``.

    Params (Keras layout): ``kernel [in_features, units]``, ``bias [units]``.

    >>> import jax, jax.numpy as jnp, fnn
    >>> layer = fnn.layers.Dense(4, activation="relu")
    >>> params, state = layer.init(jax.random.key(0), jnp.ones((2, 3)))
    >>> layer.apply(params, state, jnp.ones((2, 3)))[0].shape
    (2, 4)
    """
    if not isinstance(units, int) or units <= 0:
        raise ConfigError(f"{name}: expected units to be a positive int, got {units!r}.")
    affine = Affine.get(activation, use_bias, kernel_initializer, bias_initializer)

    def init(key, x):
        check_rank(name, x, min_rank=1, layout="[..., features]")
        return affine.init(key, x, dtype, (x.shape[-1], units), units), {}

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        kernel = params["kernel"]
        check_last_dim(name, x, kernel.shape[0], param="kernel", param_shape=kernel.shape)
        return affine.output(x @ kernel, params), state

    return Layer(init, apply, name)
