"""Keras 3 weights load into the fnn layers and give the same outputs (skipped without keras;
install the ``bench`` extra to run it)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn.layers import (
    BatchNormalization,
    Embedding,
    GroupNormalization,
    LayerNormalization,
    MultiHeadAttention,
    RMSNormalization,
)

keras = pytest.importorskip("keras")
KEY = jax.random.key(0)


def _keras_weights(layer):
    """``{"query": {"kernel": ...}, ...}`` or ``{"gamma": ...}`` from a Keras layer's weights."""
    out = {}
    for w in layer.weights:
        parts = w.path.split("/")[1:]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = jnp.asarray(np.asarray(w.value))
    return out


def test_multi_head_attention_matches_keras():
    rng = np.random.default_rng(0)
    q, v, k = (rng.normal(size=s).astype("float32") for s in ((2, 3, 6), (2, 5, 5), (2, 5, 4)))
    mask = rng.random((2, 3, 5)) > 0.3
    theirs = keras.layers.MultiHeadAttention(3, 4, value_dim=2, output_shape=7)
    want = theirs(q, v, key=k, attention_mask=mask, return_attention_scores=True)[0]
    ours = MultiHeadAttention(3, 4, value_dim=2, output_shape=7)
    params, state = ours.init(KEY, q, v, k, mask)
    loaded = _keras_weights(theirs)
    assert jax.tree.map(jnp.shape, loaded) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(
        ours.apply(loaded, state, q, v, k, mask)[0], want, rtol=1e-5, atol=1e-6
    )
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    theirs = keras.layers.MultiHeadAttention(2, 4)
    want = theirs(x, x, use_causal_mask=True)
    ours = MultiHeadAttention(2, 4, use_causal_mask=True)
    np.testing.assert_allclose(
        ours.apply(_keras_weights(theirs), {}, x)[0], want, rtol=1e-5, atol=1e-6
    )


def test_batch_normalization_matches_keras_in_training_and_inference():
    x = np.random.default_rng(1).normal(2, 3, size=(8, 4, 5)).astype("float32")
    theirs = keras.layers.BatchNormalization(momentum=0.9)
    want = theirs(x, training=True)
    ours = BatchNormalization(momentum=0.9)
    params, state = ours.init(KEY, x)
    y, state = ours.apply(params, state, x, train=True)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state["moving_mean"], theirs.moving_mean.value, rtol=1e-6)
    np.testing.assert_allclose(state["moving_variance"], theirs.moving_variance.value, rtol=1e-6)
    np.testing.assert_allclose(
        ours.apply(params, state, x)[0], theirs(x, training=False), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("theirs", "ours", "shape"),
    [
        (
            lambda: keras.layers.LayerNormalization(axis=[1, 2]),
            LayerNormalization((1, 2)),
            (2, 3, 8),
        ),
        (lambda: keras.layers.GroupNormalization(4), GroupNormalization(4), (2, 3, 3, 8)),
        (lambda: keras.layers.GroupNormalization(2, axis=1), GroupNormalization(2, 1), (2, 4, 5)),
        (lambda: keras.layers.RMSNormalization(), RMSNormalization(), (2, 3, 8)),
    ],
)
def test_normalization_matches_keras(theirs, ours, shape):
    rng = np.random.default_rng(2)
    x = rng.normal(1, 2, size=shape).astype("float32")
    theirs = theirs()
    theirs.build(shape)
    for w in theirs.weights:
        w.assign(rng.normal(1, 0.3, size=w.shape).astype("float32"))
    params, state = ours.init(KEY, x)
    loaded = _keras_weights(theirs)
    assert jax.tree.map(jnp.shape, loaded) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(ours.apply(loaded, state, x)[0], theirs(x), rtol=1e-5, atol=1e-5)


def test_embedding_and_mask_match_keras():
    ids = np.array([[1, 2, 0], [3, 0, 0]])
    theirs = keras.layers.Embedding(10, 4, mask_zero=True)
    want = theirs(ids)
    (y, mask), _ = Embedding(10, 4, mask_zero=True).apply(_keras_weights(theirs), {}, ids)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(mask, theirs.compute_mask(ids))
