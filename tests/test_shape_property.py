"""Random layer stacks on inputs of a random rank: either they build, or a ShapeError names
one of the stack's unique layer names, raised by abstract evaluation (before XLA)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fnn
from fnn.core.combinators import child_names
from fnn.layers import Conv1D, Conv2D, Dense, Flatten

LAYERS = {
    "Dense": lambda: Dense(3),
    "Conv1D": lambda: Conv1D(2, 3),
    "Conv2D": lambda: Conv2D(2, 3),
    "Flatten": lambda: Flatten(),
}


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    kinds=st.lists(st.sampled_from(sorted(LAYERS)), min_size=1, max_size=4),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
)
def test_mismatched_stacks_raise_a_named_shape_error(kinds, shape):
    layers = [LAYERS[k]() for k in kinds]
    stack = fnn.serial(*layers)
    names = child_names(layers, "sequential")
    spec = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    try:
        jax.eval_shape(stack.init, jax.random.key(0), spec)
    except fnn.ShapeError as err:
        prefix = str(err).split(":", 1)[0]
        assert prefix in names, str(err)
        assert len(str(err)) < 600
    except Exception as err:  # anything else reached XLA or is unnamed
        pytest.fail(f"{kinds} on {shape}: {type(err).__name__}: {str(err)[:300]}")
