"""Dense: an affine map over the last axis."""

from __future__ import annotations

import jax

from fnn.core import activations, initializers
from fnn.core.errors import check_last_dim, check_rank
from fnn.core.layer import Layer, param_dtype, register_layer


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
        from fnn.core.errors import ConfigError

        raise ConfigError(f"{name}: expected units to be a positive int, got {units!r}.")
    act = activations.get(activation)
    kernel_init = initializers.get(kernel_initializer)
    bias_init = initializers.get(bias_initializer)

    def init(key, x):
        check_rank(name, x, min_rank=1, layout="[..., features]")
        dtype_ = param_dtype(x, dtype)
        kernel_key, bias_key = jax.random.split(key)
        params = {"kernel": kernel_init(kernel_key, (x.shape[-1], units), dtype_)}
        if use_bias:
            params["bias"] = bias_init(bias_key, (units,), dtype_)
        return params, {}

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        kernel = params["kernel"]
        check_last_dim(name, x, kernel.shape[0], param="kernel", param_shape=kernel.shape)
        y = x @ kernel
        if use_bias:
            y = y + params["bias"]
        return act(y), state

    return Layer(init, apply, name)
