"""Merge layers: combine several inputs into one (after ``fan_out`` or ``parallel``)."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from fnn.core.errors import ShapeError, shape_of
from fnn.core.layer import Layer, register_layer


def _no_params(key, *inputs):
    del key, inputs
    return {}, {}


def _elementwise(op, name: str) -> Layer:
    def apply(params, state, *inputs, rng=None, train=False):
        del params, rng, train
        if len(inputs) < 2:
            raise ShapeError(f"{name}: expected at least 2 inputs, got {len(inputs)}.")
        shapes = [shape_of(x) for x in inputs]
        if len(set(shapes)) != 1:
            raise ShapeError(f"{name}: expected inputs of equal shape, got shapes {shapes}.")
        return op(inputs), state

    return Layer(_no_params, apply, name)


@register_layer
def Add(name: str = "add") -> Layer:
    """Sum of equal-shape inputs: ``[...] x n -> [...]``."""
    return _elementwise(lambda xs: functools.reduce(jnp.add, xs), name)


@register_layer
def Multiply(name: str = "multiply") -> Layer:
    """Product of equal-shape inputs: ``[...] x n -> [...]``."""
    return _elementwise(lambda xs: functools.reduce(jnp.multiply, xs), name)


@register_layer
def Average(name: str = "average") -> Layer:
    """Mean of equal-shape inputs: ``[...] x n -> [...]``."""
    return _elementwise(lambda xs: functools.reduce(jnp.add, xs) / len(xs), name)


@register_layer
def Maximum(name: str = "maximum") -> Layer:
    """Elementwise maximum of equal-shape inputs: ``[...] x n -> [...]``."""
    return _elementwise(lambda xs: functools.reduce(jnp.maximum, xs), name)


@register_layer
def Concatenate(axis: int = -1, name: str = "concatenate") -> Layer:
    """Join inputs along ``axis``: ``[..., a], [..., b] -> [..., a + b]``.

    >>> import jax.numpy as jnp, fnn
    >>> y, _ = fnn.layers.Concatenate().apply({}, {}, jnp.ones((2, 3)), jnp.ones((2, 4)))
    >>> y.shape
    (2, 7)
    """

    def apply(params, state, *inputs, rng=None, train=False):
        del params, rng, train
        if len(inputs) < 2:
            raise ShapeError(f"{name}: expected at least 2 inputs, got {len(inputs)}.")
        shapes = [shape_of(x) for x in inputs]
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1:
            raise ShapeError(f"{name}: expected inputs of equal rank, got shapes {shapes}.")
        rank = ranks.pop()
        ax = axis % rank
        others = {tuple(d for i, d in enumerate(s) if i != ax) for s in shapes}
        if len(others) != 1:
            raise ShapeError(
                f"{name}: expected inputs to match on every axis except axis {axis}, "
                f"got shapes {shapes}."
            )
        return jnp.concatenate(inputs, axis=axis), state

    return Layer(_no_params, apply, name)


def _merge_function(factory):
    """Keras's lowercase merge functions: ``concatenate([a, b], axis=1)`` builds the layer
    and calls it on the tensors (symbolic or arrays) in one go."""

    def merge(inputs, *args, **kwargs):
        return factory(*args, **kwargs)(list(inputs))

    merge.__name__ = factory.__name__.lower()
    merge.__doc__ = (
        f"``{factory.__name__}(...)(inputs)`` in one call (Keras's functional form): "
        "a list of arrays -> one array."
    )
    return merge


concatenate = _merge_function(Concatenate)
add = _merge_function(Add)
multiply = _merge_function(Multiply)
average = _merge_function(Average)
maximum = _merge_function(Maximum)
