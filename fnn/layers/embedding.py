"""Embedding lookups and positional embeddings.

fnn's explicit mask protocol: a layer that produces a padding mask returns the tuple
``(outputs, mask)`` with ``mask`` a bool array ``[batch, time]`` (True = real token).
``serial`` splats the tuple, so the next layer receives the mask as its second positional
input; layers that understand masks take it as ``apply(params, state, x, mask=None, ...)``
(``PositionalEmbedding``, ``TransformerEncoderBlock``, the recurrent layers) and pass it on
when they keep the time axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import initializers
from fnn.core.errors import ConfigError, ShapeError, check_mask, check_rank, shape_of
from fnn.core.layer import Layer, param_dtype, register_layer


def _positive_int(name: str, arg: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}: expected {arg} to be a positive int, got {value!r}.")


@register_layer(autocast=False)
def Embedding(
    input_dim: int,
    output_dim: int,
    embeddings_initializer="uniform",
    mask_zero: bool = False,
    dtype=None,
    name: str = "embedding",
) -> Layer:
    """Look up a vector per integer id: ``[batch, time] int -> [batch, time, output_dim]``
    (any rank of ids works: ``[...] -> [..., output_dim]``).

    Params (Keras layout): ``embeddings [input_dim, output_dim]``; row ``i`` is the vector of
    id ``i``. ``embeddings_initializer="uniform"`` is Keras's default, uniform on
    ``[-0.05, 0.05)``.

    ``mask_zero=True`` reserves id 0 for padding: the output is the tuple
    ``(embeddings, mask)`` with ``mask = ids != 0``, bool ``[batch, time]`` (True = real token),
    which ``serial`` passes to the next layer as its second input (see the module docstring).
    As in Keras, ``input_dim`` then counts the padding id (vocabulary size + 1).

    Ids of another dtype are cast to int32, as Keras does (``keras.Input`` defaults to
    float32, so a float input of token ids is common); a fractional part is dropped. Ids outside
    ``[0, input_dim)`` raise ``ShapeError`` when ``apply`` sees concrete arrays; under
    ``jit`` they cannot be checked, and give rows of NaN so the mistake still shows in the loss.

    >>> import jax, jax.numpy as jnp, fnn
    >>> emb = fnn.layers.Embedding(100, 8, mask_zero=True)
    >>> ids = jnp.array([[5, 7, 0, 0]])
    >>> params, state = emb.init(jax.random.key(0), ids)
    >>> (vectors, mask), _ = emb.apply(params, state, ids)
    >>> vectors.shape, mask.tolist()
    ((1, 4, 8), [[True, True, False, False]])
    """
    _positive_int(name, "input_dim", input_dim)
    _positive_int(name, "output_dim", output_dim)
    emb_init = (
        initializers.random_uniform(-0.05, 0.05)
        if embeddings_initializer == "uniform"
        else initializers.get(embeddings_initializer)
    )

    def as_ids(ids):
        # Keras casts other dtypes to int32 (a float fnn.Input of token ids is common).
        dt = jnp.result_type(ids)
        if jnp.issubdtype(dt, jnp.integer):
            return ids
        if isinstance(ids, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(ids.shape, jnp.int32)
        return jnp.asarray(ids).astype(jnp.int32)

    def init(key, ids):
        check_rank(name, ids, min_rank=1, layout="[batch, ...] of integer ids")
        ids = as_ids(ids)
        return {"embeddings": emb_init(key, (input_dim, output_dim), param_dtype(ids, dtype))}, {}

    def apply(params, state, ids, *, rng=None, train=False):
        del rng, train
        check_rank(name, ids, min_rank=1, layout="[batch, ...] of integer ids")
        ids = as_ids(ids)
        table = params["embeddings"]
        if table.shape[0] != input_dim:
            raise ShapeError(
                f"{name}: expected embeddings of shape ({input_dim}, {output_dim}), got "
                f"{table.shape}."
            )
        if not isinstance(ids, jax.core.Tracer) and np.size(ids):
            host = np.asarray(ids)  # concrete here (not traced), so this cannot fail
            low, high = int(host.min()), int(host.max())
            if low < 0 or high >= input_dim:
                raise ShapeError(
                    f"{name}: expected ids in [0, {input_dim}), got ids in [{low}, {high}] "
                    f"(shape {shape_of(ids)}). Is input_dim the vocabulary size (+1 with "
                    "mask_zero)?"
                )
        # Negative ids would wrap around; map them out of range so they give NaN as well.
        safe = jnp.where(ids < 0, input_dim, ids)
        out = jnp.take(table, safe, axis=0, mode="fill", fill_value=jnp.nan)
        if mask_zero:
            return (out, ids != 0), state
        return out, state

    return Layer(init, apply, name)


def sinusoidal_positions(length: int, dim: int, max_wavelength: float = 10000.0) -> jax.Array:
    """``[length, dim]`` positional encodings of Vaswani et al. (2017), as keras-hub's
    ``SinePositionEncoding``: ``sin(p / w**(2i/dim))`` at even feature ``2i`` and
    ``cos(p / w**(2i/dim))`` at odd feature ``2i + 1``."""
    position = np.arange(length, dtype=np.float64)[:, None]
    pair = np.arange(dim) // 2
    angle = position / np.power(max_wavelength, 2.0 * pair / dim)[None, :]
    table = np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))
    return jnp.asarray(table, jnp.float32)


@register_layer
def PositionalEmbedding(
    sequence_length: int,
    kind: str = "learned",
    initializer="glorot_uniform",
    max_wavelength: float = 10000.0,
    dtype=None,
    name: str = "positional_embedding",
) -> Layer:
    """Add a vector per position to a sequence: ``[batch, time, dim] -> [batch, time, dim]``,
    for ``time <= sequence_length``.

    ``kind="learned"``: param ``embeddings [sequence_length, dim]`` (keras-hub
    ``PositionEmbedding`` layout, ``glorot_uniform`` init); the first ``time`` rows are added.
    ``kind="sinusoidal"``: no params; adds ``sinusoidal_positions(time, dim, max_wavelength)``.

    A padding mask given as second input (``apply(params, state, x, mask)``, e.g. from
    ``Embedding(mask_zero=True)`` in a ``serial``) is passed through: the output is then
    ``(x + positions, mask)``.

    >>> import jax, jax.numpy as jnp, fnn
    >>> pos = fnn.layers.PositionalEmbedding(16, kind="sinusoidal")
    >>> params, state = pos.init(jax.random.key(0), jnp.zeros((2, 4, 6)))
    >>> y, _ = pos.apply(params, state, jnp.zeros((2, 4, 6)))
    >>> y[0, 0].tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    """
    _positive_int(name, "sequence_length", sequence_length)
    if kind not in ("learned", "sinusoidal"):
        raise ConfigError(f"{name}: expected kind 'learned' or 'sinusoidal', got {kind!r}.")
    if (
        not isinstance(max_wavelength, int | float)
        or max_wavelength <= 0
        or math.isnan(max_wavelength)
    ):
        raise ConfigError(f"{name}: expected max_wavelength > 0, got {max_wavelength!r}.")
    pos_init = initializers.get(initializer)
    layout = "[batch, time, features]"

    def check(x, mask):
        check_rank(name, x, rank=3, layout=layout)
        length = shape_of(x)[1]
        if length > sequence_length:
            raise ShapeError(
                f"{name}: expected at most sequence_length={sequence_length} time steps, got "
                f"{length} (shape {shape_of(x)})."
            )
        check_mask(name, x, mask)

    def init(key, x, mask=None):
        check(x, mask)
        if kind == "sinusoidal":
            return {}, {}
        shape = (sequence_length, shape_of(x)[2])
        return {"embeddings": pos_init(key, shape, param_dtype(x, dtype))}, {}

    def apply(params, state, x, mask=None, *, rng=None, train=False):
        del rng, train
        check(x, mask)
        _, length, dim = shape_of(x)
        if kind == "learned":
            table = params["embeddings"]
            if table.shape[1] != dim:
                raise ShapeError(
                    f"{name}: expected inputs with last dimension {table.shape[1]} (embeddings "
                    f"has shape {table.shape}), got inputs of shape {shape_of(x)}."
                )
            positions = table[:length]
        else:
            positions = sinusoidal_positions(length, dim, max_wavelength)
        y = x + positions.astype(x.dtype)
        return ((y, mask) if mask is not None else y), state

    return Layer(init, apply, name)
