"""Keras-named numeric ops (``keras.ops``) over ``jax.numpy``, ``jax.nn`` and ``jax.lax``.

One table, ``_OPS``, maps each Keras name to a function with Keras's signature; every op
unwraps fnn weight variables (objects with ``_fnn_variable = True`` give their ``.value``),
so ``ops.matmul(x, self.kernel)`` works inside a subclassed layer. ``ops.nn`` holds the
``keras.ops.nn`` names and ``ops.image.resize`` resizes ``[batch, h, w, c]`` images. Ops
run under ``jax.jit`` like any ``jnp`` function (``shape``, ``convert_to_numpy``,
``nonzero`` and one-argument ``where`` need concrete values, as in JAX).

>>> import numpy as np
>>> from fnn import ops
>>> ops.top_k(np.array([1.0, 5.0, 3.0]), 2)[1].tolist()
[1, 2]
>>> ops.cast(ops.one_hot(np.array([2, 0]), 3), "int32").tolist()
[[0, 0, 1], [1, 0, 0]]
"""

from __future__ import annotations

import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError, closest
from fnn.core.variables import unwrap_tree

# Array arguments go through this: fnn variables give their value, containers leaf by leaf.
unwrap = unwrap_tree


def _reduce(fn):
    """Keras's ``(x, axis=None, keepdims=False)`` over a jnp reduction."""
    return lambda x, axis=None, keepdims=False: fn(x, axis=axis, keepdims=keepdims)


def _one_hot(x, num_classes, axis=-1, dtype=None, sparse=False):
    if sparse:
        raise ConfigError(
            "ops.one_hot: expected sparse=False, got True (fnn has no sparse arrays)."
        )
    return jax.nn.one_hot(x, num_classes, dtype=dtype or "float32", axis=axis)


def _top_k(x, k, sorted=True):
    del sorted  # jax.lax.top_k always sorts (Keras allows any order with sorted=False)
    return jax.lax.top_k(x, k)


def _where(condition, x1=None, x2=None):
    if x1 is None and x2 is None:
        return jnp.nonzero(condition)
    if x1 is None or x2 is None:
        raise ConfigError("ops.where: expected both x1 and x2 or neither, got only one.")
    return jnp.where(condition, x1, x2)


def _moments(x, axes, keepdims=False, synchronized=False):
    del synchronized  # one process: nothing to synchronize
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - jax.lax.stop_gradient(mean)), axis=axes, keepdims=keepdims)
    return (mean if keepdims else jnp.squeeze(mean, axes)), var


def _normalize(x, axis=-1, order=2, epsilon=None):
    norm = jnp.linalg.norm(x, ord=order, axis=axis, keepdims=True)
    eps = 1e-12 if epsilon is None else epsilon
    return x / jnp.maximum(norm, eps)


def _crossentropy(sparse: bool):
    def fn(target, output, from_logits=False, axis=-1):
        if from_logits:
            log_p = jax.nn.log_softmax(output, axis=axis)
        else:
            output = output / jnp.sum(output, axis=axis, keepdims=True)
            log_p = jnp.log(jnp.clip(output, 1e-7, 1.0 - 1e-7))
        if sparse:
            target = jax.nn.one_hot(target, output.shape[axis], axis=axis, dtype=log_p.dtype)
        return -jnp.sum(target * log_p, axis=axis)

    return fn


def _binary_crossentropy(target, output, from_logits=False):
    if from_logits:
        return jnp.maximum(output, 0) - output * target + jnp.log1p(jnp.exp(-jnp.abs(output)))
    output = jnp.clip(output, 1e-7, 1.0 - 1e-7)
    return -(target * jnp.log(output) + (1.0 - target) * jnp.log1p(-output))


def _resize(images, size, interpolation="bilinear", antialias=False, data_format=None):
    """``[batch, h, w, c]`` or ``[h, w, c]`` -> same rank with ``(h, w) = size``."""
    if data_format not in (None, "channels_last"):
        raise ConfigError(
            f"ops.image.resize: expected data_format='channels_last', got {data_format!r}; "
            "transpose to [batch, height, width, channels] first."
        )
    if images.ndim not in (3, 4):
        raise ConfigError(
            f"ops.image.resize: expected images of rank 3 or 4, got shape {images.shape}."
        )
    shape = (*images.shape[:-3], *size, images.shape[-1])
    return jax.image.resize(images, shape, method=interpolation, antialias=antialias)


# name -> function with Keras's signature (the jnp function itself where they agree).
_OPS: dict[str, Callable] = {
    # jnp functions whose positional arguments are already Keras's
    **{
        name: getattr(jnp, name)
        for name in (  # noqa: SIM905
            "add subtract multiply divide true_divide floor_divide mod power negative maximum "
            "minimum matmul dot equal not_equal greater greater_equal less less_equal "
            "logical_and logical_or logical_not logical_xor exp log log1p expm1 sqrt square "
            "abs absolute sign floor ceil round tanh sin cos isnan isinf isfinite sort "
            "argsort concatenate stack reshape transpose expand_dims squeeze ones zeros full "
            "ones_like zeros_like full_like arange linspace eye cumsum cumprod split tile "
            "repeat take flip roll tril triu einsum tensordot outer diag trace broadcast_to "
            "meshgrid average moveaxis swapaxes ravel nonzero count_nonzero ndim size"
        ).split()
    },
    **{
        name: _reduce(getattr(jnp, name))
        for name in (  # noqa: SIM905
            "sum mean std var prod all any amax amin argmax argmin"
        ).split()
    },
    "max": lambda x, axis=None, keepdims=False, initial=None: jnp.max(
        x, axis=axis, keepdims=keepdims, initial=initial
    ),
    "min": lambda x, axis=None, keepdims=False, initial=None: jnp.min(
        x, axis=axis, keepdims=keepdims, initial=initial
    ),
    "logsumexp": _reduce(jax.nn.logsumexp),
    "norm": lambda x, ord=None, axis=None, keepdims=False: jnp.linalg.norm(
        x, ord=ord, axis=axis, keepdims=keepdims
    ),
    "clip": lambda x, x_min, x_max: jnp.clip(x, x_min, x_max),
    "rsqrt": jax.lax.rsqrt,
    "erf": jax.scipy.special.erf,
    "take_along_axis": lambda x, indices, axis=None: jnp.take_along_axis(x, indices, axis=axis),
    "pad": lambda x, pad_width, mode="constant", constant_values=None: jnp.pad(
        x,
        pad_width,
        mode=mode,
        **({} if constant_values is None else {"constant_values": constant_values}),
    ),
    "where": _where,
    "top_k": _top_k,
    "one_hot": _one_hot,
    "moments": _moments,
    "normalize": _normalize,
    "categorical_crossentropy": _crossentropy(sparse=False),
    "sparse_categorical_crossentropy": _crossentropy(sparse=True),
    "binary_crossentropy": _binary_crossentropy,
    # tensors and dtypes
    "cast": lambda x, dtype: jnp.asarray(x).astype(dtype),
    "convert_to_tensor": lambda x, dtype=None, sparse=None, ragged=None: jnp.asarray(x, dtype),
    "convert_to_numpy": np.asarray,
    "shape": np.shape,
    "dtype": lambda x: str(jnp.asarray(x).dtype),
    "stop_gradient": jax.lax.stop_gradient,
    # activations (also under ops.nn)
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "softmax": lambda x, axis=-1: jax.nn.softmax(x, axis=axis),
    "log_softmax": lambda x, axis=-1: jax.nn.log_softmax(x, axis=axis),
    "gelu": lambda x, approximate=True: jax.nn.gelu(x, approximate=approximate),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "log_sigmoid": jax.nn.log_sigmoid,
    "elu": lambda x, alpha=1.0: jax.nn.elu(x, alpha),
    "selu": jax.nn.selu,
    "leaky_relu": lambda x, negative_slope=0.2: jax.nn.leaky_relu(x, negative_slope),
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "hard_silu": jax.nn.hard_silu,
    "hard_swish": jax.nn.hard_silu,
}

# ``keras.ops.nn`` names (each is also a top-level op).
_NN = (  # noqa: SIM905
    "relu relu6 sigmoid softmax log_softmax gelu silu swish softplus softsign "
    "log_sigmoid elu selu leaky_relu hard_sigmoid hard_silu hard_swish one_hot "
    "moments normalize categorical_crossentropy sparse_categorical_crossentropy "
    "binary_crossentropy"
).split()


def _op(name: str, fn: Callable) -> Callable:
    def op(*args, **kwargs):
        return fn(*unwrap(args), **unwrap(kwargs))

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"``keras.ops.{name}`` over JAX (fnn weight variables are unwrapped)."
    return op


globals().update({name: _op(name, fn) for name, fn in _OPS.items()})
nn = types.SimpleNamespace(**{name: globals()[name] for name in _NN})
image = types.SimpleNamespace(resize=_op("resize", _resize))
__all__ = sorted([*_OPS, "image", "nn", "unwrap"])


def __getattr__(name: str):
    raise AttributeError(
        f"fnn.ops has no {name!r}.{closest(name, __all__)} fnn.ops covers the keras.ops names "
        "the keras.io examples use; for others call jax.numpy / jax.nn directly."
    )
