"""Activation functions by Keras name or callable: ``[...] -> [...]`` elementwise.

>>> import jax.numpy as jnp, fnn
>>> fnn.activations.get("relu")(jnp.array([-1.0, 2.0]))
Array([0., 2.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fnn.core.errors import lookup

Activation = Callable[[jax.Array], jax.Array]


def linear(x):
    """Identity."""
    return x


def gelu(x):
    """Exact GELU, elementwise (Keras's default, ``approximate=False``)."""
    return jax.nn.gelu(x, approximate=False)


def leaky_relu(x, negative_slope: float = 0.2):
    """Leaky ReLU, elementwise, with Keras 3's default slope 0.2."""
    return jax.nn.leaky_relu(x, negative_slope)


def softmax(x):
    """Softmax over the last axis."""
    return jax.nn.softmax(x, axis=-1)


def log_softmax(x):
    """Log-softmax over the last axis."""
    return jax.nn.log_softmax(x, axis=-1)


def hard_sigmoid(x):
    """Keras 3 hard sigmoid, elementwise: ``relu6(x + 3) / 6``."""
    return jax.nn.relu6(x + 3.0) / 6.0


def mish(x):
    """``x * tanh(softplus(x))``, elementwise."""
    return x * jnp.tanh(jax.nn.softplus(x))


_BY_NAME: dict[str, Activation] = {
    "linear": linear,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "gelu": gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "leaky_relu": leaky_relu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "exponential": jnp.exp,
    "hard_sigmoid": hard_sigmoid,
    "mish": mish,
}


def get(identifier: str | Activation | None) -> Activation:
    """Activation from a Keras name (``"relu"``, ``"softmax"``, ...), a callable, or ``None`` (linear)."""
    if identifier is None:
        return linear
    return lookup("activation", identifier, _BY_NAME)


def names() -> tuple[str, ...]:
    """Every activation name that ``get`` accepts."""
    return tuple(sorted(_BY_NAME))


# Keras's module-level functions (``keras.activations.relu(x)``): every name above.
relu, relu6, sigmoid, tanh = jax.nn.relu, jax.nn.relu6, jax.nn.sigmoid, jnp.tanh
silu = swish = jax.nn.silu
elu, selu, softplus = jax.nn.elu, jax.nn.selu, jax.nn.softplus
softsign, exponential = jax.nn.soft_sign, jnp.exp
