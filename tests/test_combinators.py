"""Combinators: naming, state threading, rng splitting, shapes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.layers import Add, Concatenate, Dense, Dropout, Flatten


def _counter(name="counter"):
    """A stateful test layer: counts its calls in train mode, returns x + count."""

    def init(key, x):
        return {}, {"count": jnp.zeros((), jnp.int32)}

    def apply(params, state, x, *, rng=None, train=False):
        count = state["count"] + (1 if train else 0)
        return x + count, {"count": count}

    return fnn.Layer(init, apply, name)


def _noise(name="noise"):
    """Adds uniform noise from its rng: exposes which key each child received."""

    def init(key, x):
        return {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        if rng is None:
            return x, state
        return x + jax.random.uniform(rng, x.shape), state

    return fnn.Layer(init, apply, name)


def test_default_names_get_keras_suffixes_and_explicit_names_are_kept():
    model = fnn.serial(Dense(2), Dense(2, name="dense_1"), Dense(2), Dense(2))
    params, _ = model.init(jax.random.key(0), jnp.ones((1, 3)))
    assert sorted(params) == ["dense", "dense_1", "dense_2", "dense_3"]


def test_duplicate_explicit_names_are_an_error():
    with pytest.raises(fnn.ConfigError, match=r"sequential: duplicate layer names \['head'\]"):
        fnn.serial(Dense(2, name="head"), Dense(2, name="head"))


def test_non_layer_child_is_an_error():
    with pytest.raises(
        fnn.ConfigError, match="sequential: expected fnn Layer children, got PjitFunction"
    ):
        fnn.serial(jnp.tanh)


def test_serial_threads_state_through_children():
    model = fnn.serial(_counter(), Dense(2), fnn.serial(_counter()))
    x = jnp.zeros((1, 2))
    params, state = model.init(jax.random.key(0), x)
    for _ in range(3):
        _, state = model.apply(params, state, x, train=True)
    assert int(state["counter"]["count"]) == 3
    assert int(state["sequential"]["counter"]["count"]) == 3
    _, eval_state = model.apply(params, state, x, train=False)
    assert int(eval_state["counter"]["count"]) == 3


def test_serial_splits_rng_so_children_get_different_keys():
    model = fnn.serial(_noise(), fnn.Lambda(lambda x: x * 0, name="zero"), _noise())
    x = jnp.zeros((1, 1000))
    params, state = model.init(jax.random.key(0), x)
    y, _ = model.apply(params, state, x, rng=jax.random.key(3))
    # Only the second noise survives; it must not equal the first child's draw.
    first_key, _, last_key = jax.random.split(jax.random.key(3), 3)
    np.testing.assert_allclose(y, jax.random.uniform(last_key, x.shape))
    assert not np.allclose(y, jax.random.uniform(first_key, x.shape))


def test_fan_out_concatenate_and_add():
    x = jax.random.normal(jax.random.key(0), (4, 3))
    cat = fnn.serial(fnn.fan_out(Dense(2), Dense(5)), Concatenate())
    params, state = cat.init(jax.random.key(1), x)
    y, _ = cat.apply(params, state, x)
    assert y.shape == (4, 7)
    a, b = params["fan_out"]["dense"], params["fan_out"]["dense_1"]
    np.testing.assert_allclose(y[:, :2], x @ a["kernel"] + a["bias"], rtol=1e-5)
    np.testing.assert_allclose(y[:, 2:], x @ b["kernel"] + b["bias"], rtol=1e-5)

    summed = fnn.serial(fnn.fan_out(Dense(2), Dense(2)), Add())
    params, state = summed.init(jax.random.key(1), x)
    y, _ = summed.apply(params, state, x)
    a, b = params["fan_out"]["dense"], params["fan_out"]["dense_1"]
    np.testing.assert_allclose(
        y, x @ a["kernel"] + a["bias"] + x @ b["kernel"] + b["bias"], rtol=1e-5
    )


def test_parallel_maps_inputs_to_children():
    model = fnn.parallel(Dense(2), Flatten())
    x1, x2 = jnp.ones((3, 4)), jnp.ones((3, 2, 2))
    params, state = model.init(jax.random.key(0), x1, x2)
    (y1, y2), _ = model.apply(params, state, x1, x2)
    assert y1.shape == (3, 2) and y2.shape == (3, 4)
    with pytest.raises(fnn.ShapeError, match=r"parallel: expected 2 inputs .* got 1"):
        model.apply(params, state, x1)


def test_residual_adds_input_and_checks_shape():
    model = fnn.residual(Dense(3))
    x = jax.random.normal(jax.random.key(0), (2, 3))
    params, state = model.init(jax.random.key(1), x)
    y, _ = model.apply(params, state, x)
    np.testing.assert_allclose(
        y, x + x @ params["dense"]["kernel"] + params["dense"]["bias"], rtol=1e-5
    )
    with pytest.raises(fnn.ShapeError, match=r"residual: expected the residual branch to keep"):
        fnn.residual(Dense(4)).init(jax.random.key(0), x)


def test_lambda_lifts_pure_function():
    layer = fnn.Lambda(jnp.tanh, name="tanh")
    x = jnp.linspace(-2, 2, 5)
    params, state = layer.init(jax.random.key(0), x)
    assert params == {} and state == {}
    np.testing.assert_allclose(layer.apply(params, state, x)[0], np.tanh(np.linspace(-2, 2, 5)))


def test_merge_shape_errors():
    with pytest.raises(fnn.ShapeError, match=r"add: expected inputs of equal shape"):
        Add().apply({}, {}, jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(fnn.ShapeError, match=r"concatenate: expected inputs to match"):
        Concatenate(axis=-1).apply({}, {}, jnp.ones((2, 3)), jnp.ones((3, 4)))


def test_dropout_inside_serial_gets_rng():
    model = fnn.serial(Dense(4), Dropout(0.5))
    x = jnp.ones((2, 3))
    params, state = model.init(jax.random.key(0), x)
    with pytest.raises(fnn.ConfigError, match="dropout: train=True needs a PRNG key"):
        model.apply(params, state, x, train=True)
    y, _ = model.apply(params, state, x, rng=jax.random.key(0), train=True)
    assert y.shape == (2, 4)


def test_errors_inside_parallel_fan_out_and_residual_name_the_unique_child():
    x = jnp.ones((2, 3))
    for model, inputs in (
        (fnn.parallel(Dense(2), Dense(2)), (x, x)),
        (fnn.fan_out(Dense(2), Dense(2)), (x,)),
    ):
        params, state = model.init(jax.random.key(0), *inputs)
        params["dense_1"]["kernel"] = jnp.ones((5, 2))  # a wrong weight in the second Dense
        with pytest.raises(
            fnn.ShapeError, match=r"^dense_1: expected inputs with last dimension 5"
        ):
            model.apply(params, state, *inputs)
    # The second residual's own shape check names it residual_1, inside parallel too.
    pair = fnn.parallel(fnn.residual(Dense(3)), fnn.residual(Dense(4)))
    with pytest.raises(fnn.ShapeError, match=r"^residual_1: expected the residual branch"):
        pair.init(jax.random.key(0), x, x)
    body = fnn.residual(Dense(3), Dense(3))
    params, state = body.init(jax.random.key(0), x)
    params["dense_1"]["kernel"] = jnp.ones((5, 3))
    with pytest.raises(fnn.ShapeError, match=r"^dense_1: expected inputs with last dimension 5"):
        body.apply(params, state, x)
