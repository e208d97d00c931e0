"""Dense: an affine map over the last axis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fnn.core import activations, initializers, regularizers
from fnn.core.errors import ConfigError, check_last_dim, check_rank
from fnn.core.layer import ADDED_LOSS, Layer, param_dtype, register_layer


class Penalties(NamedTuple):
    """Keras's ``kernel_regularizer``/``bias_regularizer``/``activity_regularizer`` of a
    layer: their sum joins the training loss through the layer's ``ADDED_LOSS`` state."""

    kernel: Callable | None
    bias: Callable | None
    activity: Callable | None

    @classmethod
    def get(cls, kernel=None, bias=None, activity=None) -> Penalties:
        return cls(regularizers.get(kernel), regularizers.get(bias), regularizers.get(activity))

    @property
    def active(self) -> bool:
        return any(r is not None for r in self)

    def init_state(self) -> dict:
        return {ADDED_LOSS: jnp.zeros((), jnp.float32)} if self.active else {}

    def state(self, params, y) -> dict:
        """``{ADDED_LOSS: penalty}`` for these params and outputs (``{}`` if none is set)."""
        if not self.active:
            return {}
        total = jnp.zeros((), jnp.float32)
        if self.kernel is not None:
            total = total + self.kernel(params["kernel"])
        if self.bias is not None and "bias" in params:
            total = total + self.bias(params["bias"])
        if self.activity is not None:
            # Keras divides the activity penalty by the batch size.
            total = total + self.activity(y) / y.shape[0]
        return {ADDED_LOSS: total}


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
    kernel_regularizer=None,
    bias_regularizer=None,
    activity_regularizer=None,
    dtype=None,
    name: str = "dense",
) -> Layer:
    """Affine map over the last axis: ``[..., in_features] -> [..., units]``.

    Params (Keras layout): ``kernel [in_features, units]``, ``bias [units]``. Regularizers
    (``fnn.regularizers.L2(1e-4)``, ...) add their penalty to the training loss.

    >>> import jax, jax.numpy as jnp, fnn
    >>> layer = fnn.layers.Dense(4, activation="relu")
    >>> params, state = layer.init(jax.random.key(0), jnp.ones((2, 3)))
    >>> layer.apply(params, state, jnp.ones((2, 3)))[0].shape
    (2, 4)
    """
    if not isinstance(units, int) or units <= 0:
        raise ConfigError(f"{name}: expected units to be a positive int, got {units!r}.")
    affine = Affine.get(activation, use_bias, kernel_initializer, bias_initializer)
    penalties = Penalties.get(kernel_regularizer, bias_regularizer, activity_regularizer)

    def init(key, x):
        check_rank(name, x, min_rank=1, layout="[..., features]")
        return affine.init(key, x, dtype, (x.shape[-1], units), units), penalties.init_state()

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        kernel = params["kernel"]
        check_last_dim(name, x, kernel.shape[0], param="kernel", param_shape=kernel.shape)
        y = affine.output(x @ kernel, params)
        return y, penalties.state(params, y) or state

    return Layer(init, apply, name)
