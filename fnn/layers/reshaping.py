"""Shape-changing layers without parameters: Flatten, Reshape, and channels-last
``UpSampling1D/2D/3D``, ``ZeroPadding1D/2D/3D``, ``Cropping1D/2D/3D`` (one N-d
implementation each)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fnn.core.errors import ConfigError, ShapeError, check_rank, shape_of
from fnn.core.layer import Layer, register_layer
from fnn.layers import _spatial


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


def _upsampling(rank: int, size, interpolation: str, name: str) -> Layer:
    size = _spatial.int_tuple(size, rank, "size", name)
    allowed = ("nearest", "bilinear") if rank == 2 else ("nearest",)
    if interpolation not in allowed:
        raise ConfigError(
            f"{name}: expected interpolation {' or '.join(map(repr, allowed))}, "
            f"got {interpolation!r}."
        )

    def apply(params, state, x, *, rng=None, train=False):
        del params, rng, train
        spatial, _ = _spatial.check_input(name, x, rank)
        if interpolation == "bilinear":
            shape = (x.shape[0], *(n * s for n, s in zip(spatial, size)), x.shape[-1])
            dtype = jnp.result_type(x, jnp.float32)
            return jax.image.resize(x.astype(dtype), shape, "bilinear", antialias=False), state
        for axis, s in enumerate(size, start=1):
            x = jnp.repeat(x, s, axis=axis)
        return x, state

    return Layer(_no_params, apply, name)


def _zero_padding(rank: int, padding, name: str) -> Layer:
    pads = _spatial.int_pairs(padding, rank, "padding", name)

    def apply(params, state, x, *, rng=None, train=False):
        del params, rng, train
        _spatial.check_input(name, x, rank)
        return jnp.pad(x, ((0, 0), *pads, (0, 0))), state

    return Layer(_no_params, apply, name)


def _cropping(rank: int, cropping, name: str) -> Layer:
    crops = _spatial.int_pairs(cropping, rank, "cropping", name)

    def apply(params, state, x, *, rng=None, train=False):
        del params, rng, train
        spatial, _ = _spatial.check_input(name, x, rank)
        if any(lo + hi >= n for n, (lo, hi) in zip(spatial, crops)):
            raise ShapeError(
                f"{name}: expected cropping {crops} to leave at least one position per axis, "
                f"got inputs of shape {shape_of(x)} (spatial {spatial})."
            )
        index = tuple(slice(lo, n - hi) for n, (lo, hi) in zip(spatial, crops))
        return x[(slice(None), *index)], state

    return Layer(_no_params, apply, name)


_UPSAMPLING_DOC = """Repeat each {rank}-D position ``size`` times per axis:
    ``{layout} -> [batch, *(n * size), channels]``.{extra}

    >>> import jax.numpy as jnp, fnn
    >>> fnn.layers.{cls}(2).apply({{}}, {{}}, jnp.ones({shape}))[0].shape
    {out_shape}
    """


def _upsampling_factory(rank: int):
    def factory(size=2, interpolation="nearest", name: str = f"up_sampling{rank}d") -> Layer:
        return _upsampling(rank, size, interpolation, name)

    extra = (
        ' ``interpolation="bilinear"`` interpolates with half-pixel centres instead '
        "(``jax.image.resize``, as Keras on JAX)."
        if rank == 2
        else ""
    )
    return _spatial.register_ranked(
        factory,
        f"UpSampling{rank}D",
        _UPSAMPLING_DOC,
        rank=rank,
        extra=extra,
        shape=(2, *(3,) * rank, 4),
        out_shape=(2, *(6,) * rank, 4),
    )


_PADDING_DOC = """Pad the {rank}-D positions with zeros: ``{layout} -> [batch, *(n + before + after),
    channels]``. ``padding`` is an int (every side), {forms}.

    >>> import jax.numpy as jnp, fnn
    >>> fnn.layers.{cls}({example}).apply({{}}, {{}}, jnp.ones({shape}))[0].shape
    {out_shape}
    """

_CROPPING_DOC = """Crop the {rank}-D positions: ``{layout} -> [batch, *(n - before - after),
    channels]``. ``cropping`` is an int (every side), {forms}.

    >>> import jax.numpy as jnp, fnn
    >>> fnn.layers.{cls}({example}).apply({{}}, {{}}, jnp.ones({shape}))[0].shape
    {out_shape}
    """


def _register_pairs(
    factory, class_name: str, doc: str, rank: int, size: int, first: int, rest: int
):
    """Register a ZeroPadding/Cropping factory of one rank. Its docstring example changes
    inputs of ``size`` per axis by ``(1, 2)`` on the first axis and ``(1, 1)`` on the
    others, to ``first`` and ``rest`` positions."""
    if rank == 1:
        forms, example = "or a pair ``(before, after)``", "(1, 2)"
    else:
        forms = f"{rank} ints (symmetric per axis) or {rank} pairs ``(before, after)``"
        example = repr(((1, 2),) + ((1, 1),) * (rank - 1))
    return _spatial.register_ranked(
        factory,
        f"{class_name}{rank}D",
        doc,
        rank=rank,
        forms=forms,
        example=example,
        shape=(2, *(size,) * rank, 3),
        out_shape=(2, first, *(rest,) * (rank - 1), 3),
    )


def _zero_padding_factory(rank: int):
    def factory(padding=1, name: str = f"zero_padding{rank}d") -> Layer:
        return _zero_padding(rank, padding, name)

    return _register_pairs(factory, "ZeroPadding", _PADDING_DOC, rank, 4, 7, 6)


def _cropping_factory(rank: int):
    # Keras defaults: Cropping1D crops one step each side, Cropping2D/3D nothing.
    def factory(cropping=1 if rank == 1 else 0, name: str = f"cropping{rank}d") -> Layer:
        return _cropping(rank, cropping, name)

    return _register_pairs(factory, "Cropping", _CROPPING_DOC, rank, 6, 3, 4)


UpSampling1D, UpSampling2D, UpSampling3D = (_upsampling_factory(r) for r in (1, 2, 3))
ZeroPadding1D, ZeroPadding2D, ZeroPadding3D = (_zero_padding_factory(r) for r in (1, 2, 3))
Cropping1D, Cropping2D, Cropping3D = (_cropping_factory(r) for r in (1, 2, 3))
