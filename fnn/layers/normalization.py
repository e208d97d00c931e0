"""Normalization layers: BatchNormalization, LayerNormalization, GroupNormalization,
RMSNormalization (channels-last, Keras names, arguments and weight layouts).

Statistics are computed in at least float32 (as Keras does for float16/bfloat16 inputs);
the output has the input's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fnn.core import initializers
from fnn.core.errors import ConfigError, ShapeError, check_rank, shape_of
from fnn.core.layer import Layer, param_dtype, register_layer


def _check_axis_arg(name: str, axis, *, allow_many: bool) -> tuple[int, ...]:
    many = isinstance(axis, Sequence) and not isinstance(axis, str)
    axes = tuple(axis) if many else (axis,)
    if (many and not allow_many) or not axes or not all(isinstance(a, int) for a in axes):
        want = "an int or a sequence of ints" if allow_many else "an int"
        raise ConfigError(f"{name}: expected axis to be {want}, got {axis!r}.")
    if len(set(axes)) != len(axes):
        raise ConfigError(f"{name}: expected distinct axes, got {axis!r}.")
    return axes


def _check_epsilon(name: str, epsilon) -> None:
    if not isinstance(epsilon, int | float) or epsilon < 0:
        raise ConfigError(f"{name}: expected epsilon >= 0, got {epsilon!r}.")


def _resolve_axes(name: str, axes: tuple[int, ...], x, *, allow_batch: bool) -> tuple[int, ...]:
    """Non-negative, sorted axes for ``x``'s rank (raises ``ShapeError`` if out of range)."""
    shape = shape_of(x)
    ndim = len(shape)
    lowest = 0 if allow_batch else 1
    out = []
    for a in axes:
        b = a + ndim if a < 0 else a
        if not lowest <= b < ndim:
            what = "a non-batch axis" if not allow_batch else "an axis"
            raise ShapeError(
                f"{name}: expected inputs with {what} {a} (axis={a}), got rank {ndim} "
                f"(shape {shape})."
            )
        out.append(b)
    if len(set(out)) != len(out):
        raise ShapeError(f"{name}: axes {axes} name the same dimension of inputs of shape {shape}.")
    return tuple(sorted(out))


def _param_shape(x, axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape_of(x)[a] for a in axes)


def _broadcastable(p: jax.Array, axes: tuple[int, ...], ndim: int) -> jax.Array:
    """Reshape a parameter over ``axes`` so it broadcasts against a rank-``ndim`` input."""
    shape = [1] * ndim
    for a, d in zip(axes, p.shape):
        shape[a] = d
    return p.reshape(shape)


def _check_params_fit(name: str, x, axes, axis_arg, param: str, param_shape) -> None:
    if _param_shape(x, axes) == tuple(param_shape):
        return
    if len(axis_arg) == 1:
        want = f"size {param_shape[0]} on axis {axis_arg[0]}"
    else:
        want = f"sizes {tuple(param_shape)} on axes {axis_arg}"
    raise ShapeError(
        f"{name}: expected inputs with {want} ({param} has shape {tuple(param_shape)}), got "
        f"inputs of shape {shape_of(x)}. Were the params built for another input?"
    )


def _compute_dtype(x) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _affine(y, params, axes, ndim):
    if "gamma" in params:
        y = y * _broadcastable(params["gamma"], axes, ndim)
    if "beta" in params:
        y = y + _broadcastable(params["beta"], axes, ndim)
    return y


def _first_param(params, keys):
    """``(key, array)`` of the first of ``keys`` present in ``params``, else ``(None, None)``."""
    for k in keys:
        if k in params:
            return k, params[k]
    return None, None


@register_layer(weight_order=("gamma", "beta", "moving_mean", "moving_variance"), autocast=False)
def BatchNormalization(
    axis: int = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    center: bool = True,
    scale: bool = True,
    beta_initializer="zeros",
    gamma_initializer="ones",
    moving_mean_initializer="zeros",
    moving_variance_initializer="ones",
    axis_name=None,
    dtype=None,
    name: str = "batch_normalization",
) -> Layer:
    """Normalize each channel with batch statistics (``train=True``) or with moving averages
    kept in ``state`` (``train=False``): ``[batch, ..., channels] -> same shape``.

    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta``, where ``mean`` and ``var`` are
    taken over every axis except ``axis``. With ``train=True`` they are the batch mean and the
    biased batch variance, and ``apply`` returns the updated state
    ``m = momentum * m + (1 - momentum) * batch_stat`` for both moving averages; with
    ``train=False`` it uses the moving averages and returns ``state`` unchanged.

    Params (Keras layout): ``gamma [channels]`` (if ``scale``), ``beta [channels]`` (if
    ``center``); state: ``moving_mean [channels]``, ``moving_variance [channels]``.

    ``axis_name``: the name of a mapped axis (``jax.pmap(..., axis_name=...)``, ``shard_map``
    mesh axis, ``jax.vmap(..., axis_name=...)``). When set, the batch mean and mean of squares
    are averaged over that axis with ``jax.lax.pmean``, giving the statistics of the whole
    global batch (exact when every shard has the same size); this is Keras's
    ``synchronized=True``. It then has to be called inside such a mapped function.

    >>> import jax, jax.numpy as jnp, fnn
    >>> bn = fnn.layers.BatchNormalization()
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> params, state = bn.init(jax.random.key(0), x)
    >>> y, new_state = bn.apply(params, state, x, train=True)
    >>> [round(v, 3) for v in new_state["moving_mean"].tolist()]
    [0.045, 0.055, 0.065]
    """
    (axis,) = _check_axis_arg(name, axis, allow_many=False)
    if not isinstance(momentum, int | float) or not 0.0 <= momentum <= 1.0:
        raise ConfigError(f"{name}: expected momentum in [0, 1], got {momentum!r}.")
    _check_epsilon(name, epsilon)
    beta_init = initializers.get(beta_initializer)
    gamma_init = initializers.get(gamma_initializer)
    mean_init = initializers.get(moving_mean_initializer)
    var_init = initializers.get(moving_variance_initializer)
    layout = "[batch, ..., channels]"

    def init(key, x):
        check_rank(name, x, min_rank=2, layout=layout)
        axes = _resolve_axes(name, (axis,), x, allow_batch=False)
        shape = _param_shape(x, axes)
        dtype_ = param_dtype(x, dtype)
        keys = jax.random.split(key, 4)
        params = {}
        if scale:
            params["gamma"] = gamma_init(keys[0], shape, dtype_)
        if center:
            params["beta"] = beta_init(keys[1], shape, dtype_)
        state = {
            "moving_mean": mean_init(keys[2], shape, dtype_),
            "moving_variance": var_init(keys[3], shape, dtype_),
        }
        return params, state

    def apply(params, state, x, *, rng=None, train=False):
        del rng
        check_rank(name, x, min_rank=2, layout=layout)
        axes = _resolve_axes(name, (axis,), x, allow_batch=False)
        moving_mean, moving_var = state["moving_mean"], state["moving_variance"]
        _check_params_fit(name, x, axes, (axis,), "moving_mean", moving_mean.shape)
        ndim = len(shape_of(x))
        reduce = tuple(a for a in range(ndim) if a not in axes)
        xc = x.astype(_compute_dtype(x))
        if train:
            mean = jnp.mean(xc, axis=reduce)
            if axis_name is None:
                var = jnp.var(xc, axis=reduce)
            else:
                # One collective for both moments; clamp the rounding error of E[x^2] - E[x]^2.
                mean_sq = jnp.mean(jnp.square(xc), axis=reduce)
                mean, mean_sq = jax.lax.pmean((mean, mean_sq), axis_name)
                var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            new_state = {
                "moving_mean": (momentum * moving_mean + (1.0 - momentum) * mean).astype(
                    moving_mean.dtype
                ),
                "moving_variance": (momentum * moving_var + (1.0 - momentum) * var).astype(
                    moving_var.dtype
                ),
            }
        else:
            mean, var, new_state = moving_mean, moving_var, state
        mean = _broadcastable(mean, axes, ndim)
        inv = jax.lax.rsqrt(_broadcastable(var, axes, ndim) + epsilon)
        y = _affine((xc - mean) * inv, params, axes, ndim)
        return y.astype(x.dtype), new_state

    return Layer(init, apply, name)


def _norm_params(name, x, axes, center, scale, gamma_init, beta_init, key, dtype):
    shape = _param_shape(x, axes)
    dtype_ = param_dtype(x, dtype)
    gamma_key, beta_key = jax.random.split(key)
    params = {}
    if scale:
        params["gamma"] = gamma_init(gamma_key, shape, dtype_)
    if center:
        params["beta"] = beta_init(beta_key, shape, dtype_)
    return params


@register_layer(weight_order=("gamma", "beta"), autocast=False)
def LayerNormalization(
    axis=-1,
    epsilon: float = 1e-3,
    center: bool = True,
    scale: bool = True,
    beta_initializer="zeros",
    gamma_initializer="ones",
    dtype=None,
    name: str = "layer_normalization",
) -> Layer:
    """Normalize each example over ``axis`` (an int or a sequence of ints):
    ``[..., features] -> same shape``.

    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta`` with ``mean`` and biased ``var``
    over ``axis``, per example; no state, same in training and inference.

    Params (Keras layout): ``gamma`` and ``beta`` with the input's sizes on ``axis``
    (``[features]`` for the default ``axis=-1``).

    >>> import jax, jax.numpy as jnp, fnn
    >>> ln = fnn.layers.LayerNormalization()
    >>> params, state = ln.init(jax.random.key(0), jnp.ones((2, 5, 8)))
    >>> jax.tree.map(jnp.shape, params)
    {'beta': (8,), 'gamma': (8,)}
    """
    axes_arg = _check_axis_arg(name, axis, allow_many=True)
    _check_epsilon(name, epsilon)
    beta_init = initializers.get(beta_initializer)
    gamma_init = initializers.get(gamma_initializer)

    def init(key, x):
        check_rank(name, x, min_rank=1, layout="[..., features]")
        axes = _resolve_axes(name, axes_arg, x, allow_batch=True)
        return _norm_params(name, x, axes, center, scale, gamma_init, beta_init, key, dtype), {}

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        check_rank(name, x, min_rank=1, layout="[..., features]")
        axes = _resolve_axes(name, axes_arg, x, allow_batch=True)
        key, p = _first_param(params, ("gamma", "beta"))
        if p is not None:
            _check_params_fit(name, x, axes, axes_arg, key, p.shape)
        xc = x.astype(_compute_dtype(x))
        mean = jnp.mean(xc, axis=axes, keepdims=True)
        var = jnp.var(xc, axis=axes, keepdims=True)
        y = (xc - mean) * jax.lax.rsqrt(var + epsilon)
        return _affine(y, params, axes, xc.ndim).astype(x.dtype), state

    return Layer(init, apply, name)


@register_layer(weight_order=("gamma", "beta"), autocast=False)
def GroupNormalization(
    groups: int = 32,
    axis: int = -1,
    epsilon: float = 1e-3,
    center: bool = True,
    scale: bool = True,
    beta_initializer="zeros",
    gamma_initializer="ones",
    dtype=None,
    name: str = "group_normalization",
) -> Layer:
    """Split the channels into ``groups`` and normalize each group of each example over the
    group's channels and all other non-batch axes: ``[batch, ..., channels] -> same shape``.

    ``groups=1`` is layer normalization over all non-batch axes; ``groups=-1`` (one group per
    channel) is instance normalization. The channel count must be divisible by ``groups``.

    Params (Keras layout): ``gamma [channels]``, ``beta [channels]`` (per channel, not per
    group).

    >>> import jax, jax.numpy as jnp, fnn
    >>> gn = fnn.layers.GroupNormalization(groups=4)
    >>> x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
    >>> params, state = gn.init(jax.random.key(1), x)
    >>> y, _ = gn.apply(params, state, x)
    >>> print(y.reshape(2, 6, 6, 4, 2).std(axis=(1, 2, 4))[0].round(2))
    [1. 1. 1. 1.]
    """
    (axis,) = _check_axis_arg(name, axis, allow_many=False)
    if not isinstance(groups, int) or not (groups > 0 or groups == -1):
        raise ConfigError(f"{name}: expected groups to be a positive int or -1, got {groups!r}.")
    _check_epsilon(name, epsilon)
    beta_init = initializers.get(beta_initializer)
    gamma_init = initializers.get(gamma_initializer)
    layout = "[batch, ..., channels]"

    def resolve(x) -> tuple[int, int]:
        check_rank(name, x, min_rank=2, layout=layout)
        (ax,) = _resolve_axes(name, (axis,), x, allow_batch=False)
        channels = shape_of(x)[ax]
        g = channels if groups == -1 else groups
        if channels % g:
            raise ShapeError(
                f"{name}: expected a channel count divisible by groups={g}, got {channels} "
                f"channels on axis {axis} (shape {shape_of(x)}). Choose groups that divide "
                f"{channels}."
            )
        return ax, g

    def init(key, x):
        ax, _ = resolve(x)
        return _norm_params(name, x, (ax,), center, scale, gamma_init, beta_init, key, dtype), {}

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        ax, g = resolve(x)
        key, p = _first_param(params, ("gamma", "beta"))
        if p is not None:
            _check_params_fit(name, x, (ax,), (axis,), key, p.shape)
        shape = shape_of(x)
        xc = x.astype(_compute_dtype(x))
        grouped = xc.reshape(shape[:ax] + (g, shape[ax] // g) + shape[ax + 1 :])
        reduce = tuple(a for a in range(1, grouped.ndim) if a != ax)
        mean = jnp.mean(grouped, axis=reduce, keepdims=True)
        var = jnp.var(grouped, axis=reduce, keepdims=True)
        y = ((grouped - mean) * jax.lax.rsqrt(var + epsilon)).reshape(shape)
        return _affine(y, params, (ax,), len(shape)).astype(x.dtype), state

    return Layer(init, apply, name)


@register_layer(autocast=False)
def RMSNormalization(
    axis=-1, epsilon: float = 1e-6, dtype=None, name: str = "rms_normalization"
) -> Layer:
    """Scale each example by the inverse root mean square over ``axis`` (an int or a sequence
    of ints): ``[..., features] -> same shape``.

    ``y = x / sqrt(mean(x**2) + epsilon) * scale`` (no centering, as in Keras 3).

    Params (Keras layout): ``scale`` with the input's sizes on ``axis`` (``[features]``),
    initialized to ones.

    >>> import jax, jax.numpy as jnp, fnn
    >>> rms = fnn.layers.RMSNormalization()
    >>> x = jnp.array([[3.0, 4.0]])
    >>> params, state = rms.init(jax.random.key(0), x)
    >>> [round(v, 3) for v in rms.apply(params, state, x)[0][0].tolist()]
    [0.849, 1.131]
    """
    axes_arg = _check_axis_arg(name, axis, allow_many=True)
    _check_epsilon(name, epsilon)

    def init(key, x):
        del key
        check_rank(name, x, min_rank=1, layout="[..., features]")
        axes = _resolve_axes(name, axes_arg, x, allow_batch=True)
        return {"scale": jnp.ones(_param_shape(x, axes), param_dtype(x, dtype))}, {}

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        check_rank(name, x, min_rank=1, layout="[..., features]")
        axes = _resolve_axes(name, axes_arg, x, allow_batch=True)
        _check_params_fit(name, x, axes, axes_arg, "scale", params["scale"].shape)
        xc = x.astype(_compute_dtype(x))
        inv = jax.lax.rsqrt(jnp.mean(jnp.square(xc), axis=axes, keepdims=True) + epsilon)
        y = xc * inv * _broadcastable(params["scale"], axes, xc.ndim)
        return y.astype(x.dtype), state

    return Layer(init, apply, name)
