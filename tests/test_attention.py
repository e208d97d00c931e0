"""MultiHeadAttention and TransformerEncoderBlock against explicit per-head numpy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.layers import Embedding, MultiHeadAttention, PositionalEmbedding, TransformerEncoderBlock

KEY = jax.random.key(0)


def _normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _with_random_biases(params, seed=1):
    """Biases are zero at init; make them non-zero so the reference checks their layout."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "bias":
            return jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(fill, params)


def _softmax(s):
    e = np.exp(s - s.max())
    return e / e.sum()


def _mha_reference(params, query, value, key, mask=None, return_probs=False):
    """softmax(Q K^T / sqrt(d)) V, one batch element, one head and one query row at a time."""
    p = jax.tree.map(np.asarray, params)
    wq, wk, wv, wo = (p[n]["kernel"] for n in ("query", "key", "value", "attention_output"))
    bq, bk, bv, bo = (p[n].get("bias", 0.0) for n in ("query", "key", "value", "attention_output"))
    batch, t_q, _ = query.shape
    t_v = value.shape[1]
    heads, key_dim = wq.shape[1], wq.shape[2]
    out = np.zeros((batch, t_q, wo.shape[-1]))
    probs = np.zeros((batch, heads, t_q, t_v))
    for b in range(batch):
        for h in range(heads):
            q = query[b] @ wq[:, h, :] + (bq[h] if np.ndim(bq) else 0.0)
            k = key[b] @ wk[:, h, :] + (bk[h] if np.ndim(bk) else 0.0)
            v = value[b] @ wv[:, h, :] + (bv[h] if np.ndim(bv) else 0.0)
            for i in range(t_q):
                s = np.array([q[i] @ k[j] for j in range(t_v)]) / np.sqrt(key_dim)
                if mask is not None:
                    s = np.where(mask[b, i], s, -1e30)
                probs[b, h, i] = _softmax(s)
                out[b, i] += (probs[b, h, i] @ v) @ wo[h]
        out[b] += bo
    return (out, probs) if return_probs else out


@pytest.mark.parametrize("jit", [False, True])
def test_cross_attention_matches_per_head_loop(jit):
    mha = MultiHeadAttention(num_heads=3, key_dim=4, value_dim=2, output_shape=7)
    query, value, key = _normal((2, 3, 6), 0), _normal((2, 5, 5), 1), _normal((2, 5, 4), 2)
    mask = np.random.default_rng(3).random((2, 3, 5)) > 0.3
    mask[:, :, 0] = True  # every query row sees at least one key
    params, state = mha.init(KEY, query, value, key, mask)
    assert jax.tree.map(jnp.shape, params) == {
        "query": {"kernel": (6, 3, 4), "bias": (3, 4)},
        "key": {"kernel": (4, 3, 4), "bias": (3, 4)},
        "value": {"kernel": (5, 3, 2), "bias": (3, 2)},
        "attention_output": {"kernel": (3, 2, 7), "bias": (7,)},
    }
    params = _with_random_biases(params)
    apply = jax.jit(mha.apply) if jit else mha.apply
    y, new_state = apply(params, state, query, value, key, mask)
    np.testing.assert_allclose(
        y, _mha_reference(params, query, value, key, mask), rtol=1e-4, atol=1e-5
    )
    assert new_state == {}


def test_self_attention_defaults_scores_and_no_bias():
    mha = MultiHeadAttention(2, 3, use_bias=False, return_attention_scores=True)
    x = _normal((2, 4, 5))
    params, state = mha.init(KEY, x)
    assert all(set(p) == {"kernel"} for p in params.values())
    (y, scores), _ = mha.apply(params, state, x)
    want, probs = _mha_reference(params, x, x, x, return_probs=True)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, probs, rtol=1e-5, atol=1e-6)
    assert y.shape == (2, 4, 5)  # output width defaults to the query's


def test_causal_mask_makes_outputs_independent_of_future_tokens():
    mha = MultiHeadAttention(2, 4, use_causal_mask=True)
    x = _normal((1, 6, 8))
    params, state = mha.init(KEY, x)
    y, _ = mha.apply(params, state, x)
    tril = np.tril(np.ones((6, 6), bool))[None]
    np.testing.assert_allclose(y, _mha_reference(params, x, x, x, tril), rtol=1e-4, atol=1e-5)
    for t in range(5):
        changed = x.copy()
        changed[:, t + 1 :] = _normal((1, 5 - t, 8), seed=10 + t)
        y2, _ = mha.apply(params, state, changed)
        np.testing.assert_allclose(y2[:, : t + 1], y[:, : t + 1], rtol=1e-5, atol=1e-6)
        assert not np.allclose(y2[:, t + 1 :], y[:, t + 1 :])
    # Combined with an attention mask, both apply.
    pad = np.ones((1, 6, 6), bool)
    pad[..., 4:] = False
    y3, _ = mha.apply(params, state, x, None, None, pad)
    np.testing.assert_allclose(
        y3, _mha_reference(params, x, x, x, tril & pad), rtol=1e-4, atol=1e-5
    )


def test_fully_masked_query_row_gets_uniform_weights_and_broadcast_masks():
    mha = MultiHeadAttention(1, 2, return_attention_scores=True)
    x = _normal((2, 3, 4))
    params, state = mha.init(KEY, x)
    mask = np.ones((2, 3, 3), bool)
    mask[0, 1] = False
    (_, scores), _ = mha.apply(params, state, x, x, x, mask)
    np.testing.assert_allclose(scores[0, 0, 1], np.full(3, 1 / 3), rtol=1e-6)
    # A padding mask [batch, 1, T_v] broadcasts over the query axis.
    padding = np.array([[True, True, False], [True, False, False]])
    (y, scores), _ = mha.apply(params, state, x, x, x, padding[:, None, :])
    np.testing.assert_array_equal(scores[1, 0, :, 1:], np.zeros((3, 2)))
    full = np.broadcast_to(padding[:, None, :], (2, 3, 3))
    np.testing.assert_allclose(y, _mha_reference(params, x, x, x, full), rtol=1e-4, atol=1e-5)


def test_dropout_drops_attention_probabilities_with_the_given_key():
    rate = 0.5
    mha = MultiHeadAttention(2, 3, dropout=rate, return_attention_scores=True)
    x = _normal((2, 4, 6))
    params, state = mha.init(KEY, x)
    rng = jax.random.key(42)
    (y_train, scores), _ = mha.apply(params, state, x, rng=rng, train=True)
    (y_eval, _), _ = mha.apply(params, state, x)
    assert not np.allclose(y_train, y_eval)
    # Reference: the same keep-mask applied to the reference probabilities, by hand.
    keep = np.asarray(jax.random.bernoulli(rng, 1 - rate, (2, 2, 4, 4)))
    _, probs = _mha_reference(params, x, x, x, return_probs=True)
    np.testing.assert_allclose(scores, probs, rtol=1e-5, atol=1e-6)  # scores are pre-dropout
    dropped = np.where(keep, probs / (1 - rate), 0.0)
    p = jax.tree.map(np.asarray, params)
    want = np.zeros((2, 4, 6))
    for b in range(2):
        for h in range(2):
            v = x[b] @ p["value"]["kernel"][:, h] + p["value"]["bias"][h]
            want[b] += dropped[b, h] @ v @ p["attention_output"]["kernel"][h]
        want[b] += p["attention_output"]["bias"]
    np.testing.assert_allclose(y_train, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(fnn.ConfigError, match=r"multi_head_attention: train=True with dropout"):
        mha.apply(params, state, x, train=True)


def test_attention_check_grads_float64_vmap_and_eval_shape():
    mha = MultiHeadAttention(2, 2, use_causal_mask=True)
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 4)))
        params, state = mha.init(KEY, x)
        assert params["query"]["kernel"].dtype == jnp.float64
        params = _with_random_biases(params)
        f = jax.jit(lambda p, x: mha.apply(p, state, x)[0])
        check_grads(f, (params, x), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    spec = jax.ShapeDtypeStruct((8, 10, 16), jnp.float32)
    abstract, _ = jax.eval_shape(mha.init, KEY, spec)
    assert abstract["attention_output"]["kernel"].shape == (2, 2, 16)
    params, state = mha.init(KEY, jnp.zeros((1, 3, 4)))
    xs = _normal((3, 2, 3, 4))  # vmap over an extra leading axis
    ys = jax.vmap(lambda xb: mha.apply(params, state, xb)[0])(xs)
    for i in range(3):
        np.testing.assert_allclose(ys[i], mha.apply(params, state, xs[i])[0], rtol=1e-5, atol=1e-6)


def test_attention_errors():
    mha = MultiHeadAttention(2, 4, name="mha")
    with pytest.raises(
        fnn.ShapeError,
        match=r"mha: expected query of rank 3 \[batch, time, features\], got rank 2 "
        r"\(shape \(4, 8\)\)",
    ):
        mha.init(KEY, jnp.zeros((4, 8)))
    with pytest.raises(
        fnn.ShapeError, match=r"mha: expected key and value with the same \[batch, time\]"
    ):
        mha.init(KEY, jnp.zeros((1, 3, 8)), jnp.zeros((1, 5, 8)), jnp.zeros((1, 4, 8)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"mha: expected attention_mask of shape \[batch, T_q, T_v\] = \(1, 3, 5\) \(or "
        r"broadcastable to it\), got shape \(1, 5, 3\)",
    ):
        mha.init(KEY, jnp.zeros((1, 3, 8)), jnp.zeros((1, 5, 8)), None, jnp.ones((1, 5, 3), bool))
    params, state = mha.init(KEY, jnp.zeros((1, 3, 8)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"mha: expected query inputs with last dimension 8 \(query kernel has shape "
        r"\(8, 2, 4\)\), got query of shape \(1, 3, 6\)",
    ):
        mha.apply(params, state, jnp.zeros((1, 3, 6)))
    with pytest.raises(fnn.ConfigError, match=r"mha: expected num_heads to be a positive int"):
        MultiHeadAttention(0, 4, name="mha")
    with pytest.raises(fnn.ConfigError, match=r"expected dropout in \[0, 1\)"):
        MultiHeadAttention(2, 4, dropout=1.0)


# ---------------------------------------------------------------- TransformerEncoderBlock


def _layernorm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * np.asarray(p["gamma"]) + np.asarray(p["beta"])


def _block_reference(params, x, norm_first, eps=1e-6, mask=None):
    p = jax.tree.map(np.asarray, params)

    def attention(h):
        return _mha_reference(p["attention"], h, h, h, mask)

    def ffn(h):
        hidden = np.maximum(h @ p["ffn"]["dense"]["kernel"] + p["ffn"]["dense"]["bias"], 0)
        return hidden @ p["ffn"]["dense_1"]["kernel"] + p["ffn"]["dense_1"]["bias"]

    if norm_first:
        x = x + attention(_layernorm(x, p["norm1"], eps))
        return x + ffn(_layernorm(x, p["norm2"], eps))
    x = _layernorm(x + attention(x), p["norm1"], eps)
    return _layernorm(x + ffn(x), p["norm2"], eps)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_matches_composition(norm_first):
    # jit only: a block is ~100 ops and eager mode compiles each one (the doctest runs eagerly).
    block = TransformerEncoderBlock(num_heads=2, key_dim=3, ff_dim=10, norm_first=norm_first)
    x = _normal((2, 5, 6))
    params, state = block.init(KEY, x)
    assert jax.tree.map(jnp.shape, params)["ffn"] == {
        "dense": {"kernel": (6, 10), "bias": (10,)},
        "dense_1": {"kernel": (10, 6), "bias": (6,)},
    }
    rng = np.random.default_rng(5)
    params = _with_random_biases(params)
    params["norm1"]["gamma"] = jnp.asarray(rng.normal(1, 0.3, 6), jnp.float32)
    y, _ = jax.jit(block.apply)(params, state, x)
    np.testing.assert_allclose(y, _block_reference(params, x, norm_first), rtol=1e-4, atol=1e-4)


def test_encoder_block_padding_mask_hides_padded_tokens_and_passes_through():
    block = TransformerEncoderBlock(2, 4, 8)
    x = _normal((2, 4, 8))
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    params, state = block.init(KEY, x, mask)
    apply = jax.jit(block.apply)
    (y, mask_out), _ = apply(params, state, x, mask)
    np.testing.assert_array_equal(mask_out, mask)
    key_mask = np.broadcast_to(mask[:, None, :], (2, 4, 4))
    np.testing.assert_allclose(
        y, _block_reference(params, x, False, mask=key_mask), rtol=1e-4, atol=1e-4
    )
    changed = x.copy()
    changed[~mask] = 100.0  # garbage in padded positions
    (y2, _), _ = apply(params, state, changed, mask)
    np.testing.assert_allclose(y2[mask], y[mask], rtol=1e-5, atol=1e-5)


def test_encoder_block_causal_dropout_and_grads():
    block = TransformerEncoderBlock(2, 2, 6, dropout=0.3, use_causal_mask=True, norm_first=True)
    x = _normal((1, 4, 4))
    params, state = block.init(KEY, x)
    apply = jax.jit(block.apply, static_argnames="train")
    y, _ = apply(params, state, x)
    changed = x.copy()
    changed[:, 2:] += 1.0
    y2, _ = apply(params, state, changed)
    np.testing.assert_allclose(y2[:, :2], y[:, :2], rtol=1e-5, atol=1e-6)
    ya, _ = apply(params, state, x, rng=jax.random.key(3), train=True)
    yb, _ = apply(params, state, x, rng=jax.random.key(3), train=True)
    yc, _ = apply(params, state, x, rng=jax.random.key(4), train=True)
    np.testing.assert_array_equal(ya, yb)  # same key, same dropout
    assert not np.allclose(ya, y) and not np.allclose(ya, yc)
    with pytest.raises(fnn.ConfigError, match=r"needs a PRNG key"):
        block.apply(params, state, x, train=True)
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)
        p64, s64 = block.init(KEY, x64)
        f = jax.jit(lambda p, x: block.apply(p, s64, x)[0])
        check_grads(f, (p64, x64), order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


def test_text_encoder_in_serial_and_summary_and_errors():
    model = fnn.serial(
        Embedding(30, 8, mask_zero=True),
        PositionalEmbedding(6),
        TransformerEncoderBlock(2, 4, 16, name="encoder"),
    )
    ids = jnp.array([[5, 6, 7, 0, 0, 0], [1, 2, 3, 4, 5, 0]])
    params, state = jax.jit(model.init)(KEY, ids)
    (y, mask), _ = jax.jit(model.apply)(params, state, ids)
    assert y.shape == (2, 6, 8) and mask.tolist()[0] == [True] * 3 + [False] * 3
    lines = []
    fnn.summary(model, jax.ShapeDtypeStruct((2, 6), jnp.int32), print_fn=lines.append)
    assert any("attention (MultiHeadAttention)" in line for line in lines)
    block = TransformerEncoderBlock(2, 4, 16, name="enc")
    with pytest.raises(fnn.ShapeError, match=r"enc: expected inputs of rank 3 \[batch, time"):
        block.init(KEY, jnp.zeros((6, 8)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"enc: expected a padding mask of shape \(2, 6\) \(\[batch, time\] of the inputs\), "
        r"got shape \(2, 5\)",
    ):
        block.init(KEY, jnp.zeros((2, 6, 8)), jnp.ones((2, 5), bool))
    with pytest.raises(fnn.ConfigError, match=r"enc: expected ff_dim to be a positive int"):
        TransformerEncoderBlock(2, 4, 0, name="enc")
