"""Attention: MultiHeadAttention (Keras 3 weight layout) and a TransformerEncoderBlock."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fnn.core import initializers
from fnn.core.combinators import call_child, serial, split_rng
from fnn.core.errors import ConfigError, ShapeError, check_mask, check_rank, shape_of
from fnn.core.layer import Layer, param_dtype, register_layer
from fnn.layers.dense import Dense
from fnn.layers.normalization import LayerNormalization
from fnn.layers.regularization import Dropout

_SEQ = "[batch, time, features]"


def _positive_int(name: str, arg: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}: expected {arg} to be a positive int, got {value!r}.")


def _check_rate(name: str, rate) -> None:
    if not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"{name}: expected dropout in [0, 1), got {rate!r}.")


def causal_mask(query_length: int, value_length: int) -> jax.Array:
    """Bool ``[query_length, value_length]``: query ``i`` may attend to key ``j`` iff ``j <= i``
    (aligned at the first step, as Keras's ``use_causal_mask``)."""
    rows = jnp.arange(query_length)[:, None]
    cols = jnp.arange(value_length)[None, :]
    return cols <= rows


@register_layer(weight_order=("query", "key", "value", "attention_output", "kernel", "bias"))
def MultiHeadAttention(
    num_heads: int,
    key_dim: int,
    value_dim: int | None = None,
    dropout: float = 0.0,
    use_bias: bool = True,
    output_shape: int | None = None,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    use_causal_mask: bool = False,
    return_attention_scores: bool = False,
    dtype=None,
    name: str = "multi_head_attention",
) -> Layer:
    """Multi-head scaled dot-product attention (Vaswani et al., 2017), as Keras 3's layer.

    ``apply(params, state, query, value=None, key=None, attention_mask=None, *, rng, train)``:
    ``query [batch, T_q, d_q]``, ``value [batch, T_v, d_v]`` (default: ``query``, i.e.
    self-attention), ``key [batch, T_v, d_k]`` (default: ``value``)
    ``-> [batch, T_q, output_shape or d_q]``. Per head ``h``:
    ``softmax(Q_h K_h^T / sqrt(key_dim)) V_h`` with ``Q_h = query @ W_q[:, h] + b_q[h]`` etc.,
    then the heads are projected back by ``attention_output``.

    Params (Keras 3 layout, one sub-dict per ``EinsumDense``):
    ``query``: ``kernel [d_q, num_heads, key_dim]``, ``bias [num_heads, key_dim]``;
    ``key``: ``kernel [d_k, num_heads, key_dim]``, ``bias [num_heads, key_dim]``;
    ``value``: ``kernel [d_v, num_heads, value_dim]``, ``bias [num_heads, value_dim]``;
    ``attention_output``: ``kernel [num_heads, value_dim, out]``, ``bias [out]``
    (no ``bias`` entries when ``use_bias=False``).

    Masks: ``attention_mask`` is bool ``[batch, T_q, T_v]`` (or broadcastable to it, e.g.
    ``padding_mask[:, None, :]``), True = may attend. ``use_causal_mask=True`` (a constructor
    flag here, a call argument in Keras) also forbids attending to later keys, query ``i``
    seeing keys ``j <= i``. A query row whose keys are all masked gets uniform weights (as
    Keras's masked softmax). ``dropout`` drops attention probabilities when ``train=True``
    (needs ``rng``). ``return_attention_scores=True`` makes the output the tuple
    ``(outputs, scores)`` with ``scores [batch, num_heads, T_q, T_v]`` before dropout.

    Only rank-3 sequences are supported (Keras's ``attention_axes`` over several axes is not).

    >>> import jax, jax.numpy as jnp, fnn
    >>> mha = fnn.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = jnp.ones((3, 5, 8))
    >>> params, state = mha.init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, params["query"]), params["attention_output"]["kernel"].shape
    ({'bias': (2, 4), 'kernel': (8, 2, 4)}, (2, 4, 8))
    >>> mha.apply(params, state, x)[0].shape
    (3, 5, 8)
    """
    _positive_int(name, "num_heads", num_heads)
    _positive_int(name, "key_dim", key_dim)
    value_dim = key_dim if value_dim is None else value_dim
    _positive_int(name, "value_dim", value_dim)
    _check_rate(name, dropout)
    if isinstance(output_shape, tuple | list) and len(output_shape) == 1:
        output_shape = output_shape[0]
    if output_shape is not None:
        _positive_int(name, "output_shape", output_shape)
    kernel_init = initializers.get(kernel_initializer)
    bias_init = initializers.get(bias_initializer)

    def resolve(query, value, key, attention_mask):
        value = query if value is None else value
        key = value if key is None else key
        for arg, x in (("query", query), ("value", value), ("key", key)):
            check_rank(name, x, rank=3, layout=_SEQ, argument=arg)
        q_shape, v_shape, k_shape = shape_of(query), shape_of(value), shape_of(key)
        if v_shape[:2] != k_shape[:2] or q_shape[0] != v_shape[0]:
            raise ShapeError(
                f"{name}: expected key and value with the same [batch, time] and query with the "
                f"same batch, got query {q_shape}, value {v_shape}, key {k_shape}."
            )
        if attention_mask is not None:
            want = (q_shape[0], q_shape[1], v_shape[1])
            m_shape = shape_of(attention_mask)
            fits = len(m_shape) == 3 and all(m in (1, w) for m, w in zip(m_shape, want))
            if not fits:
                raise ShapeError(
                    f"{name}: expected attention_mask of shape [batch, T_q, T_v] = {want} (or "
                    f"broadcastable to it), got shape {m_shape}."
                )
        return query, value, key

    def init(prng, query, value=None, key=None, attention_mask=None):
        query, value, key = resolve(query, value, key, attention_mask)
        dtype_ = param_dtype(query, dtype)
        out_dim = output_shape or shape_of(query)[-1]
        keys = iter(jax.random.split(prng, 8))
        params = {}
        for part, x, width in (
            ("query", query, key_dim),
            ("key", key, key_dim),
            ("value", value, value_dim),
        ):
            params[part] = {
                "kernel": kernel_init(next(keys), (x.shape[-1], num_heads, width), dtype_)
            }
            if use_bias:
                params[part]["bias"] = bias_init(next(keys), (num_heads, width), dtype_)
        params["attention_output"] = {
            "kernel": kernel_init(next(keys), (num_heads, value_dim, out_dim), dtype_)
        }
        if use_bias:
            params["attention_output"]["bias"] = bias_init(next(keys), (out_dim,), dtype_)
        return params, {}

    def project(params, part, x):
        kernel = params[part]["kernel"]
        if x.shape[-1] != kernel.shape[0]:
            raise ShapeError(
                f"{name}: expected {part} inputs with last dimension {kernel.shape[0]} ({part} "
                f"kernel has shape {kernel.shape}), got {part} of shape {shape_of(x)}."
            )
        y = jnp.einsum("btd,dhk->bthk", x, kernel)
        if use_bias:
            y = y + params[part]["bias"]
        return y

    def apply(
        params, state, query, value=None, key=None, attention_mask=None, *, rng=None, train=False
    ):
        query, value, key = resolve(query, value, key, attention_mask)
        drop = train and dropout > 0.0
        if drop and rng is None:
            raise ConfigError(
                f"{name}: train=True with dropout={dropout} needs a PRNG key; call "
                "apply(..., rng=jax.random.key(seed), train=True)."
            )
        q = project(params, "query", query) / math.sqrt(key_dim)
        k = project(params, "key", key)
        v = project(params, "value", value)
        logits = jnp.einsum("bthk,bshk->bhts", q, k)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.astype(bool)[:, None, :, :]
        if use_causal_mask:
            causal = causal_mask(q.shape[1], k.shape[1])
            mask = causal if mask is None else mask & causal
        # Softmax in at least float32; masked logits get the lowest finite value, so a fully
        # masked row is uniform (Keras) and the others give exactly zero weight there.
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        scores = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        probs = scores
        if drop:
            keep = jax.random.bernoulli(rng, 1.0 - dropout, probs.shape)
            probs = jnp.where(keep, probs / (1.0 - dropout), jnp.zeros_like(probs))
        context = jnp.einsum("bhts,bshv->bthv", probs, v)
        out_kernel = params["attention_output"]["kernel"]
        out = jnp.einsum("bthv,hvo->bto", context, out_kernel)
        if use_bias:
            out = out + params["attention_output"]["bias"]
        return ((out, scores) if return_attention_scores else out), state

    return Layer(init, apply, name)


# The inner layers cast their own params (the norms keep theirs in float32).
@register_layer(autocast=False)
def TransformerEncoderBlock(
    num_heads: int,
    key_dim: int,
    ff_dim: int,
    dropout: float = 0.0,
    norm_first: bool = False,
    activation="relu",
    epsilon: float = 1e-6,
    use_causal_mask: bool = False,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    dtype=None,
    name: str = "transformer_encoder_block",
) -> Layer:
    """A Transformer encoder layer: self-attention and a feed-forward network, each with a
    residual connection and layer normalization. ``[batch, time, dim] -> [batch, time, dim]``.

    Post-norm (``norm_first=False``, the original Transformer and keras-hub's default)::

        x = norm1(x + Dropout(attention(x)));  y = norm2(x + Dropout(ffn(x)))

    Pre-norm (``norm_first=True``, easier to train deep)::

        x = x + Dropout(attention(norm1(x)));  y = x + Dropout(ffn(norm2(x)))

    ``ffn`` is ``Dense(ff_dim, activation)`` then ``Dense(dim)``; ``dropout`` also applies to
    the attention probabilities (as keras-hub's ``TransformerEncoder``).

    Params: ``attention`` (``MultiHeadAttention`` layout: ``query``, ``key``, ``value``,
    ``attention_output``), ``norm1`` and ``norm2`` (``gamma [dim]``, ``beta [dim]``),
    ``ffn`` (``dense``: ``kernel [dim, ff_dim]``, ``bias [ff_dim]``; ``dense_1``:
    ``kernel [ff_dim, dim]``, ``bias [dim]``). ``dtype``: the policy of the block and of
    every layer in it (each casts its own params).

    An optional padding mask bool ``[batch, time]`` (True = real token) as second input
    (``apply(params, state, x, mask)``, e.g. from ``Embedding(mask_zero=True)`` in a
    ``serial``) stops every position from attending to padded keys, and is passed through:
    the output is then ``(y, mask)``. ``use_causal_mask=True`` makes it a decoder-only
    (GPT-style) block.

    >>> import jax, jax.numpy as jnp, fnn
    >>> block = fnn.layers.TransformerEncoderBlock(num_heads=2, key_dim=8, ff_dim=32)
    >>> x = jnp.ones((4, 10, 16))
    >>> params, state = block.init(jax.random.key(0), x)
    >>> y, state = jax.jit(block.apply)(params, state, x)
    >>> sorted(params), y.shape
    (['attention', 'ffn', 'norm1', 'norm2'], (4, 10, 16))
    """
    _positive_int(name, "num_heads", num_heads)
    _positive_int(name, "key_dim", key_dim)
    _positive_int(name, "ff_dim", ff_dim)
    _check_rate(name, dropout)
    attention = MultiHeadAttention(
        num_heads,
        key_dim,
        dropout=dropout,
        use_causal_mask=use_causal_mask,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        dtype=dtype,
        name="attention",
    )
    norm1 = LayerNormalization(epsilon=epsilon, dtype=dtype, name="norm1")
    norm2 = LayerNormalization(epsilon=epsilon, dtype=dtype, name="norm2")
    drop = Dropout(dropout, dtype=dtype)

    def ffn(dim: int) -> Layer:
        # Built in init and apply (the width follows the input) with the block's resolved
        # policy, so apply reads no global policy.
        common = {
            "kernel_initializer": kernel_initializer,
            "bias_initializer": bias_initializer,
            "dtype": dtype,
        }
        return serial(Dense(ff_dim, activation, **common), Dense(dim, **common), name="ffn")

    def check(x, mask):
        check_rank(name, x, rank=3, layout=_SEQ)
        check_mask(name, x, mask, what="a padding mask")

    def init(key, x, mask=None):
        check(x, mask)
        k_att, k_n1, k_n2, k_ffn = jax.random.split(key, 4)
        params = {
            "attention": attention.init(k_att, x)[0],
            "norm1": norm1.init(k_n1, x)[0],
            "norm2": norm2.init(k_n2, x)[0],
            "ffn": ffn(shape_of(x)[-1]).init(k_ffn, x)[0],
        }
        return params, {}

    def apply(params, state, x, mask=None, *, rng=None, train=False):
        check(x, mask)
        r_att, r_drop1, r_ffn, r_drop2 = split_rng(rng, 4)
        attn_mask = None if mask is None else mask.astype(bool)[:, None, :]
        feed = ffn(shape_of(x)[-1])

        def child(key, layer, inputs, r):
            return call_child(key, layer, params.get(key, {}), {}, inputs, r, train)[0]

        def attend(h):
            y = child("attention", attention, (h, h, h, attn_mask), r_att)
            return child("attention_dropout", drop, (y,), r_drop1)

        def feed_forward(h):
            y = child("ffn", feed, (h,), r_ffn)
            return child("ffn_dropout", drop, (y,), r_drop2)

        if norm_first:
            x = x + attend(child("norm1", norm1, (x,), None))
            y = x + feed_forward(child("norm2", norm2, (x,), None))
        else:
            x = child("norm1", norm1, (x + attend(x),), None)
            y = child("norm2", norm2, (x + feed_forward(x),), None)
        return ((y, mask) if mask is not None else y), state

    return Layer(init, apply, name)
