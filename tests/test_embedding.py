"""Embedding and PositionalEmbedding against numpy lookups and the sinusoid formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.layers import Dense, Embedding, PositionalEmbedding

KEY = jax.random.key(0)


@pytest.mark.parametrize("jit", [False, True])
def test_embedding_is_a_row_lookup(jit):
    emb = Embedding(10, 4)
    ids = np.array([[1, 2, 9], [0, 0, 3]], dtype=np.int32)
    params, state = emb.init(KEY, ids)
    table = np.asarray(params["embeddings"])
    assert table.shape == (10, 4) and table.dtype == np.float32
    assert np.abs(table).max() <= 0.05 and np.abs(table).max() > 0.01  # Keras "uniform"
    apply = jax.jit(emb.apply) if jit else emb.apply
    y, new_state = apply(params, state, ids)
    np.testing.assert_array_equal(y, table[ids])
    assert new_state == {}
    # Any rank of ids works, as in Keras.
    y1, _ = emb.apply(params, state, np.array([4, 5]))
    np.testing.assert_array_equal(y1, table[[4, 5]])


def test_embedding_mask_zero_returns_a_mask_that_serial_passes_on():
    emb = Embedding(6, 3, mask_zero=True)
    ids = jnp.array([[3, 5, 0, 0], [1, 0, 0, 0]])
    params, state = emb.init(KEY, ids)
    (vectors, mask), _ = emb.apply(params, state, ids)
    np.testing.assert_array_equal(vectors, np.asarray(params["embeddings"])[np.asarray(ids)])
    assert mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask, np.asarray(ids) != 0)

    # serial splats (x, mask) into the next layer's positional inputs.
    model = fnn.serial(emb, PositionalEmbedding(8, kind="sinusoidal"))
    mp, ms = model.init(KEY, ids)
    (y, mask2), _ = model.apply(mp, ms, ids)
    np.testing.assert_array_equal(mask2, mask)
    assert y.shape == (2, 4, 3)


def test_embedding_gradient_is_a_scatter_add_and_check_grads():
    emb = Embedding(5, 2)
    ids = jnp.array([[1, 1, 3]])
    params, state = emb.init(KEY, ids)
    grads = jax.grad(lambda p: emb.apply(p, state, ids)[0].sum())(params)
    want = np.zeros((5, 2))
    np.add.at(want, np.asarray(ids).ravel(), 1.0)
    np.testing.assert_array_equal(grads["embeddings"], want)
    with jax.enable_x64(True):
        emb64 = Embedding(5, 2, dtype="float64")  # int ids carry no float dtype to follow
        p, s = emb64.init(KEY, ids)
        assert p["embeddings"].dtype == jnp.float64
        f = jax.jit(lambda p: jnp.tanh(emb64.apply(p, s, ids)[0]))
        check_grads(f, (p,), order=1, atol=1e-6, rtol=1e-6)


def test_embedding_vmap_eval_shape_and_initializer():
    emb = Embedding(7, 3, embeddings_initializer="ones", dtype="float64")
    with jax.enable_x64(True):
        params, state = jax.eval_shape(emb.init, KEY, jax.ShapeDtypeStruct((2, 5), jnp.int32))
        assert params["embeddings"].shape == (7, 3) and params["embeddings"].dtype == jnp.float64
    params, state = Embedding(7, 3).init(KEY, jnp.zeros((1, 1), jnp.int32))
    ids = jnp.array([[[1, 2], [3, 4]], [[5, 6], [0, 1]]])  # vmap over the leading axis
    ys = jax.vmap(lambda i: Embedding(7, 3).apply(params, state, i)[0])(ids)
    np.testing.assert_array_equal(ys, np.asarray(params["embeddings"])[np.asarray(ids)])


def test_embedding_errors_and_out_of_range_ids_under_jit():
    emb = Embedding(10, 4, name="emb")
    params, state = emb.init(KEY, jnp.zeros((1, 2), jnp.int32))
    # Float ids are cast to int32, as Keras's Embedding does.
    got, _ = emb.apply(params, state, jnp.array([[1.0, 3.7]]))
    np.testing.assert_array_equal(got, np.asarray(params["embeddings"])[[[1, 3]]])
    with pytest.raises(
        fnn.ShapeError, match=r"emb: expected ids in \[0, 10\), got ids in \[-1, 10\]"
    ):
        emb.apply(params, state, jnp.array([[3, 10, -1]]))
    with pytest.raises(fnn.ShapeError, match=r"emb: expected inputs of rank >= 1"):
        emb.init(KEY, jnp.zeros((), jnp.int32))
    with pytest.raises(fnn.ConfigError, match=r"emb: expected input_dim to be a positive int"):
        Embedding(0, 4, name="emb")
    with pytest.raises(fnn.ConfigError, match=r"expected output_dim to be a positive int"):
        Embedding(3, 2.5)
    with pytest.raises(
        fnn.ShapeError, match=r"emb: expected embeddings of shape \(10, 4\), got \(8, 4\)"
    ):
        emb.apply({"embeddings": jnp.zeros((8, 4))}, state, jnp.array([[1]]))
    # Under jit the ids are not concrete: out-of-range ids give NaN rows instead of an error.
    y, _ = jax.jit(emb.apply)(params, state, jnp.array([[3, 10, -1]]))
    np.testing.assert_array_equal(y[0, 0], params["embeddings"][3])
    assert np.isnan(y[0, 1:]).all()


# ---------------------------------------------------------------- PositionalEmbedding


def _sinusoids(length, dim, wavelength=10000.0):
    table = np.zeros((length, dim))
    for p in range(length):
        for i in range(dim):
            angle = p / wavelength ** (2 * (i // 2) / dim)
            table[p, i] = np.sin(angle) if i % 2 == 0 else np.cos(angle)
    return table


@pytest.mark.parametrize("jit", [False, True])
def test_sinusoidal_positions_match_the_formula(jit):
    pos = PositionalEmbedding(12, kind="sinusoidal")
    x = np.random.default_rng(0).normal(size=(2, 10, 6)).astype(np.float32)
    params, state = pos.init(KEY, x)
    assert params == {}
    apply = jax.jit(pos.apply) if jit else pos.apply
    y, _ = apply(params, state, x)
    np.testing.assert_allclose(y, x + _sinusoids(10, 6), rtol=1e-5, atol=1e-5)


def test_learned_positions_add_the_first_rows_and_pass_a_mask():
    pos = PositionalEmbedding(8, name="pos")
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    params, state = pos.init(KEY, x)
    table = np.asarray(params["embeddings"])
    assert table.shape == (8, 4)
    y, _ = pos.apply(params, state, x)
    np.testing.assert_allclose(y, x + table[:5], rtol=1e-6)
    mask = np.ones((3, 5), bool)
    (y2, mask2), _ = pos.apply(params, state, x, mask)
    np.testing.assert_allclose(y2, y)
    assert mask2 is mask
    ys = jax.vmap(lambda xb: pos.apply(params, state, xb)[0])(x[None])
    np.testing.assert_allclose(ys[0], y, rtol=1e-6)
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)
        p, s = pos.init(KEY, x64)
        f = jax.jit(lambda p, x: jnp.tanh(pos.apply(p, s, x)[0]))
        check_grads(f, (p, x64), order=1, atol=1e-6, rtol=1e-6)


def test_positional_embedding_errors():
    pos = PositionalEmbedding(4, name="pos")
    with pytest.raises(
        fnn.ShapeError,
        match=r"pos: expected at most sequence_length=4 time steps, got 6 \(shape \(1, 6, 2\)\)",
    ):
        pos.init(KEY, jnp.zeros((1, 6, 2)))
    with pytest.raises(
        fnn.ShapeError, match=r"pos: expected inputs of rank 3 \[batch, time, features\]"
    ):
        pos.init(KEY, jnp.zeros((4, 2)))
    params, state = pos.init(KEY, jnp.zeros((1, 4, 2)))
    with pytest.raises(fnn.ShapeError, match=r"pos: expected inputs with last dimension 2"):
        pos.apply(params, state, jnp.zeros((1, 4, 3)))
    with pytest.raises(fnn.ShapeError, match=r"pos: expected a mask of shape \(1, 4\)"):
        pos.apply(params, state, jnp.zeros((1, 4, 2)), jnp.ones((1, 3), bool))
    with pytest.raises(fnn.ConfigError, match=r"expected kind 'learned' or 'sinusoidal'"):
        PositionalEmbedding(4, kind="rotary")


def test_embedding_model_trains_end_to_end():
    """Token + position embeddings feed a Dense classifier; gradients reach both tables."""
    model = fnn.serial(
        Embedding(20, 8),
        PositionalEmbedding(6),
        fnn.Lambda(lambda x: x.mean(axis=1)),
        Dense(2),
    )
    ids = jnp.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    params, state = model.init(KEY, ids)
    grads = jax.jit(jax.grad(lambda p: model.apply(p, state, ids)[0][:, 0].sum()))(params)
    assert sorted(grads) == ["dense", "embedding", "positional_embedding"]
    assert np.abs(grads["positional_embedding"]["embeddings"]).sum() > 0
