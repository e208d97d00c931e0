"""tf.keras-style ``input_shape=`` / ``input_dim=`` on the first layer of a Sequential."""

import jax
import numpy as np
import pytest

import fnn
from fnn.layers import Conv2D, Dense, Flatten, MaxPooling2D


def _classic(**first_kwargs):
    model = fnn.Sequential()
    model.add(Conv2D(8, (3, 3), activation="relu", **first_kwargs))
    model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(10, activation="softmax"))
    return model


def test_input_shape_builds_like_fnn_input():
    with_kwarg = _classic(input_shape=(8, 8, 1))
    with_input = fnn.Sequential([fnn.Input((8, 8, 1)), *_classic().layers])
    shapes = jax.tree.map(np.shape, with_kwarg.params)
    assert shapes == jax.tree.map(np.shape, with_input.params)
    # 3*3*1*8 + 8 conv params, (3*3*8)*10 + 10 dense params
    assert shapes["conv2d"]["kernel"] == (3, 3, 1, 8)
    assert shapes["dense"]["kernel"] == (72, 10)


def test_input_dim_and_config_round_trip():
    layer = Dense(4, input_dim=5)
    assert layer.input_shape == (5,)
    rebuilt = fnn.saving.layer_from_config(fnn.saving.layer_to_config(layer))
    assert rebuilt.input_shape == (5,)
    model = fnn.Sequential([Dense(4, input_dim=5), Dense(2)])
    assert model.params["dense"]["kernel"].shape == (5, 4)


def test_bad_input_shape_is_a_clear_error():
    with pytest.raises(
        fnn.ConfigError, match=r"Dense: expected input_shape to be a tuple .* got 'x'"
    ):
        Dense(3, input_shape="x")
    with pytest.raises(fnn.ConfigError, match="Dense: pass input_shape or input_dim, not both"):
        Dense(3, input_shape=(2,), input_dim=2)
