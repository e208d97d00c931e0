"""fit/predict refuse data that would train silently wrong (issue 18): data of another
shape than the declared fnn.Input (Keras raises too), 0 examples, string labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.layers import Conv2D, Dense, Flatten


@pytest.fixture(scope="module")
def mlp():
    model = fnn.Sequential([fnn.Input(shape=(4,)), Dense(3)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_sequential_input_shape_is_enforced_with_the_users_shape(mlp):
    x5, y = np.ones((8, 5), "float32"), np.zeros(8, "int32")
    pattern = (
        r"sequential: expected input 'input_layer\w*' of shape \(None, 4\) .*got shape \(8, 5\)"
    )
    with pytest.raises(fnn.ShapeError, match=pattern):
        mlp.fit(x5, y, epochs=1, verbose=0)
    with pytest.raises(fnn.ShapeError, match=pattern):  # (8, 5), not the padded (32, 5)
        mlp.predict(x5, verbose=0)
    with pytest.raises(fnn.ShapeError, match=r"got shape \(8, 5\)"):
        mlp.evaluate(x5, y, verbose=0)
    assert mlp.get_weights()[0].shape == (4, 3)  # not rebuilt for 5 features


def test_rank3_images_to_a_cnn_are_an_input_problem():
    model = fnn.Sequential([fnn.Input(shape=(8, 8, 1)), Conv2D(2, 3), Flatten(), Dense(3)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.ones((6, 8, 8), "float32")  # channels axis forgotten
    pattern = r"expected input '\w+' of shape \(None, 8, 8, 1\) .*got shape \(6, 8, 8\)"
    with pytest.raises(fnn.ShapeError, match=pattern) as info:
        model.fit(x, np.zeros(6, "int32"), epochs=1, verbose=0)
    assert "y does not fit" not in str(info.value)
    with pytest.raises(fnn.ShapeError, match=pattern):
        model.predict(x, verbose=0)


def test_fit_on_zero_examples_raises(mlp):
    with pytest.raises(fnn.ConfigError, match=r"sequential: fit got 0 examples"):
        mlp.fit(np.ones((0, 4), "float32"), np.zeros(0, "int32"), epochs=1, verbose=0)


@pytest.mark.parametrize("labels", [np.array(["cat", "dog"] * 4), np.array(["a"] * 8, object)])
def test_string_labels_name_the_loss(mlp, labels):
    with pytest.raises(
        fnn.ConfigError,
        match=r"sequential: y holds \w+ values such as 'cat'|'a'.*loss "
        r"'sparse_categorical_crossentropy' needs numeric labels",
    ):
        mlp.fit(np.ones((8, 4), "float32"), labels, epochs=1, verbose=0)


def test_layer_errors_name_the_unique_name_in_the_model():
    model = fnn.Sequential(
        [fnn.Input(shape=(8, 8, 1)), Conv2D(2, 3), Conv2D(2, 3), Conv2D(2, 9), Flatten()]
    )
    with pytest.raises(fnn.ShapeError, match=r"^conv2d_2: expected spatial size at least"):
        model.build((None, 8, 8, 1))
    stack = fnn.serial(Dense(4), Dense(3))
    params, state = stack.init(jax.random.key(0), jnp.ones((2, 5)))
    with pytest.raises(fnn.ShapeError, match=r"^dense: expected inputs with last dimension 5"):
        stack.apply(params, state, jnp.ones((2, 6)))
    params["dense_1"]["kernel"] = jnp.ones((7, 3))  # a wrong weight in the second Dense
    with pytest.raises(fnn.ShapeError, match=r"^dense_1: expected inputs with last dimension 7"):
        stack.apply(params, state, jnp.ones((2, 5)))
