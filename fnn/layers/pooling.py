"""Pooling, channels-last as in Keras: ``MaxPooling1D/2D/3D``, ``AveragePooling1D/2D/3D``,
``GlobalMaxPooling1D/2D/3D``, ``GlobalAveragePooling1D/2D/3D``.

One N-d implementation on ``jax.lax.reduce_window``; the factories fix the rank.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.core.errors import ConfigError
from fnn.core.layer import Layer
from fnn.layers import _spatial


def _no_params(key, *inputs):
    del key, inputs
    return {}, {}


def _pool(kind: str, rank: int, pool_size, strides, padding, name: str) -> Layer:
    pool_size = _spatial.int_tuple(pool_size, rank, "pool_size", name)
    strides = pool_size if strides is None else _spatial.int_tuple(strides, rank, "strides", name)
    padding = _spatial.padding_arg(padding, rank, name, explicit=False)

    def apply(params, state, x, *, rng=None, train=False):
        del params, rng, train
        spatial, _ = _spatial.check_input(name, x, rank)
        pads = _spatial.resolve_pads(padding, spatial, pool_size, strides)
        _spatial.check_window_fits(name, x, pool_size, pads, what="pool_size")
        window, steps = (1, *pool_size, 1), (1, *strides, 1)
        pads = ((0, 0), *pads, (0, 0))
        if kind == "max":
            dtype = x.dtype
            lowest = -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min
            # A concrete (numpy) init value lets JAX use its differentiable max/add windows.
            y = lax.reduce_window(x, np.array(lowest, dtype), lax.max, window, steps, pads)
            return y, state
        x = x.astype(jnp.result_type(x, jnp.float32))
        total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, window, steps, pads)
        # Keras "same" averages only the inputs inside each window, not the zero padding.
        ones = jnp.ones((1, *spatial, 1), x.dtype)
        count = lax.reduce_window(ones, np.array(0, x.dtype), lax.add, window, steps, pads)
        return total / count, state

    return Layer(_no_params, apply, name)


def _global_pool(kind: str, rank: int, keepdims: bool, name: str) -> Layer:
    if not isinstance(keepdims, bool):
        raise ConfigError(f"{name}: expected keepdims to be a bool, got {keepdims!r}.")
    reduce = jnp.max if kind == "max" else jnp.mean

    def apply(params, state, x, *, rng=None, train=False):
        del params, rng, train
        _spatial.check_input(name, x, rank)
        return reduce(x, axis=tuple(range(1, rank + 1)), keepdims=keepdims), state

    return Layer(_no_params, apply, name)


_NAMES = {"max": ("MaxPooling", "max_pooling"), "average": ("AveragePooling", "average_pooling")}


_POOL_DOC = """{rank}-D {kind} pooling over windows of ``pool_size`` moved by ``strides``
    (default ``pool_size``): ``{layout} -> [batch, *pooled, channels]``.

    Output size per axis: ``floor((n - k) / s) + 1`` for ``padding="valid"``,
    ``ceil(n / s)`` for ``"same"``.{extra}

    >>> import jax.numpy as jnp, fnn
    >>> fnn.layers.{cls}().apply({{}}, {{}}, jnp.ones({shape}))[0].shape
    {out_shape}
    """


def _pool_factory(kind: str, rank: int):
    class_name, snake = _NAMES[kind]

    def factory(pool_size=2, strides=None, padding="valid", name: str = f"{snake}{rank}d") -> Layer:
        return _pool(kind, rank, pool_size, strides, padding, name)

    extra = (
        ' With ``"same"`` the zero padding is left out of each average (as Keras).'
        if kind == "average"
        else ""
    )
    return _spatial.register_ranked(
        factory,
        f"{class_name}{rank}D",
        _POOL_DOC,
        rank=rank,
        kind=kind,
        extra=extra,
        shape=(2, *(6,) * rank, 3),
        out_shape=(2, *(3,) * rank, 3),
    )


_GLOBAL_DOC = """Global {kind} pooling over all {rank}-D positions:
    ``{layout} -> [batch, channels]`` (``[batch, {ones}, channels]`` with ``keepdims=True``).

    >>> import jax.numpy as jnp, fnn
    >>> fnn.layers.{cls}().apply({{}}, {{}}, jnp.ones({shape}))[0].shape
    (2, 3)
    """


def _global_factory(kind: str, rank: int):
    class_name, snake = _NAMES[kind]

    def factory(keepdims: bool = False, name: str = f"global_{snake}{rank}d") -> Layer:
        return _global_pool(kind, rank, keepdims, name)

    return _spatial.register_ranked(
        factory,
        f"Global{class_name}{rank}D",
        _GLOBAL_DOC,
        rank=rank,
        kind=kind,
        ones=", ".join(["1"] * rank),
        shape=(2, *(5,) * rank, 3),
    )


MaxPooling1D, MaxPooling2D, MaxPooling3D = (_pool_factory("max", r) for r in (1, 2, 3))
AveragePooling1D, AveragePooling2D, AveragePooling3D = (
    _pool_factory("average", r) for r in (1, 2, 3)
)
GlobalMaxPooling1D, GlobalMaxPooling2D, GlobalMaxPooling3D = (
    _global_factory("max", r) for r in (1, 2, 3)
)
GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalAveragePooling3D = (
    _global_factory("average", r) for r in (1, 2, 3)
)
