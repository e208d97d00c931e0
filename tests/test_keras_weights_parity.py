"""get_weights/set_weights move weights both ways between Keras 3 and fnn (same predictions)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

import fnn
from fnn import layers as fl

keras = pytest.importorskip("keras")


def _pair():
    k = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Reshape((4, 16)),
            keras.layers.LSTM(6, return_sequences=True),
            keras.layers.GRU(5),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    f = fnn.Sequential(
        [
            fnn.Input((8, 8, 1)),
            fl.Conv2D(4, 3, padding="same"),
            fl.BatchNormalization(),
            fl.Activation("relu"),
            fl.MaxPooling2D(),
            fl.Reshape((4, 16)),
            fl.LSTM(6, return_sequences=True),
            fl.GRU(5),
            fl.Dense(3, activation="softmax"),
        ]
    )
    return k, f


def _randomize(weights, seed):
    rng = np.random.default_rng(seed)
    # Variances must stay positive for BatchNormalization's moving_variance.
    return [np.abs(rng.normal(size=w.shape)).astype(np.float32) * 0.5 + 0.1 for w in weights]


def _assert_weights_move_both_ways(k, f, x, randomize=_randomize):
    """Keras -> fnn and fnn -> Keras through get_weights/set_weights: same predictions."""
    assert [w.shape for w in f.get_weights()] == [w.shape for w in k.get_weights()]

    k.set_weights(randomize(k.get_weights(), 1))
    f.set_weights(k.get_weights())
    np.testing.assert_allclose(f.predict(x, verbose=0), k.predict(x, verbose=0), atol=1e-5)

    f.set_weights(randomize(f.get_weights(), 2))
    k.set_weights(f.get_weights())
    np.testing.assert_allclose(k.predict(x, verbose=0), f.predict(x, verbose=0), atol=1e-5)


def test_keras_to_fnn_and_back_give_identical_predictions():
    k, f = _pair()
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype(np.float32)
    _assert_weights_move_both_ways(k, f, x)


def _centred(weights, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in weights]


def test_bidirectional_weights_move_between_keras_and_fnn():
    """Keras lists a Bidirectional's forward layer before its backward one; both directions
    have the same shapes, so only the predictions show a swap."""
    k = keras.Sequential(
        [
            keras.Input((6, 3)),
            keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True)),
            keras.layers.Bidirectional(keras.layers.GRU(3), merge_mode="sum"),
            keras.layers.Dense(2),
        ]
    )
    f = fnn.Sequential(
        [
            fnn.Input((6, 3)),
            fl.Bidirectional(fl.LSTM(4, return_sequences=True)),
            fl.Bidirectional(fl.GRU(3), merge_mode="sum"),
            fl.Dense(2),
        ]
    )
    x = np.random.default_rng(0).normal(size=(5, 6, 3)).astype(np.float32)
    _assert_weights_move_both_ways(k, f, x, _centred)


def test_conv_and_normalization_weights_move_between_keras_and_fnn():
    k = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.SeparableConv2D(4, 3, depth_multiplier=2),
            keras.layers.DepthwiseConv2D(3),
            keras.layers.Conv2DTranspose(3, 3),
            keras.layers.GroupNormalization(groups=3),
            keras.layers.LayerNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    f = fnn.Sequential(
        [
            fnn.Input((8, 8, 3)),
            fl.SeparableConv2D(4, 3, depth_multiplier=2),
            fl.DepthwiseConv2D(3),
            fl.Conv2DTranspose(3, 3),
            fl.GroupNormalization(groups=3),
            fl.LayerNormalization(),
            fl.Flatten(),
            fl.Dense(2),
        ]
    )
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    _assert_weights_move_both_ways(k, f, x, _centred)


def test_multi_head_attention_weights_move_between_keras_and_fnn():
    """query, key, value, attention_output, each kernel then bias, as Keras."""
    q, v = keras.Input((5, 6)), keras.Input((7, 4))
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)
    k = keras.Model([q, v], mha(q, v))
    f = fnn.Model(fl.MultiHeadAttention(2, 3))
    f.build([(None, 5, 6), (None, 7, 4)])
    rng = np.random.default_rng(0)
    x = (
        rng.normal(size=(3, 5, 6)).astype(np.float32),
        rng.normal(size=(3, 7, 4)).astype(np.float32),
    )
    _assert_weights_move_both_ways(k, f, x, _centred)
