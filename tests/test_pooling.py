"""Pooling against plain-numpy loops and the Keras output-size formulas."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.layers import (
    AveragePooling1D,
    AveragePooling2D,
    AveragePooling3D,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalAveragePooling3D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    GlobalMaxPooling3D,
    MaxPooling1D,
    MaxPooling2D,
    MaxPooling3D,
)

RNG = np.random.default_rng(0)


def loop_pool(x, reduce, pool, strides, padding):
    """Each output takes ``reduce`` over the inputs inside its window; with "same" the
    window may hang over the edges (TensorFlow padding), and only real inputs count."""
    spatial = x.shape[1:-1]
    if padding == "same":
        out = [math.ceil(n / s) for n, s in zip(spatial, strides)]
        before = [
            max((o - 1) * s + k - n, 0) // 2 for o, s, k, n in zip(out, strides, pool, spatial)
        ]
    else:
        out = [(n - k) // s + 1 for n, k, s in zip(spatial, pool, strides)]
        before = [0] * len(spatial)
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for o in np.ndindex(*out):
        index = []
        for oi, s, k, lo, n in zip(o, strides, pool, before, spatial):
            start = oi * s - lo
            index.append(slice(max(start, 0), min(start + k, n)))
        window = x[(slice(None), *index)]
        y[(slice(None), *o)] = reduce(window.reshape(x.shape[0], -1, x.shape[-1]), axis=1)
    return y


def output_shape(layer, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return fnn.core.output_shapes(layer, {}, {}, x).shape


@pytest.mark.parametrize("cls,reduce", [(MaxPooling1D, np.max), (AveragePooling1D, np.mean)])
def test_pool1d_every_size_stride_padding_matches_loop(cls, reduce):
    for n in (5, 6):
        x = RNG.normal(size=(2, n, 3)).astype(np.float32)
        for k, s, padding in itertools.product((1, 2, 3), (None, 1, 2, 3), ("valid", "same")):
            layer = cls(k, strides=s, padding=padding)
            y = np.asarray(jax.jit(layer.apply)({}, {}, x)[0])
            stride = k if s is None else s
            length = (n - k) // stride + 1 if padding == "valid" else math.ceil(n / stride)
            assert y.shape == (2, length, 3), (n, k, s, padding)
            expected = loop_pool(x, reduce, (k,), (stride,), padding)
            np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6, err_msg=str((n, k, s)))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pool2d_output_shape_table(padding):
    for n, k, s in itertools.product((4, 5, 6, 7), (1, 2, 3), (1, 2, 3)):
        for cls in (MaxPooling2D, AveragePooling2D):
            out = output_shape(cls((k, 2), strides=(s, 1), padding=padding), (1, n, 5, 2))
            if padding == "valid":
                assert out == (1, math.floor((n - k) / s) + 1, 4, 2), (n, k, s)
            else:
                assert out == (1, math.ceil(n / s), 5, 2), (n, k, s)


@pytest.mark.parametrize(
    "pool,strides,padding",
    [((2, 2), None, "valid"), ((3, 2), (2, 1), "same"), ((3, 3), (2, 2), "same"), (2, 3, "valid")],
)
@pytest.mark.parametrize("kind", ["max", "average"])
def test_pool2d_matches_loop(pool, strides, padding, kind):
    x = RNG.normal(size=(2, 5, 6, 3)).astype(np.float32)
    cls, reduce = (MaxPooling2D, np.max) if kind == "max" else (AveragePooling2D, np.mean)
    y = jax.jit(cls(pool, strides, padding).apply)({}, {}, x)[0]
    pool_t = pool if isinstance(pool, tuple) else (pool, pool)
    strides_t = pool_t if strides is None else strides
    strides_t = strides_t if isinstance(strides_t, tuple) else (strides_t, strides_t)
    expected = loop_pool(x, reduce, pool_t, strides_t, padding)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_same_average_excludes_padding_from_count():
    # One row [1, 2, 3] pooled by 2 with "same": the last window holds only the 3.
    y, _ = AveragePooling1D(2, padding="same").apply({}, {}, jnp.array([[[1.0], [2.0], [3.0]]]))
    np.testing.assert_allclose(y[0, :, 0], [1.5, 3.0])


@pytest.mark.parametrize("kind", ["max", "average"])
def test_pool3d_matches_loop(kind):
    x = RNG.normal(size=(1, 4, 5, 3, 2)).astype(np.float32)
    cls, reduce = (MaxPooling3D, np.max) if kind == "max" else (AveragePooling3D, np.mean)
    y = cls((2, 3, 2), strides=(2, 2, 1), padding="same").apply({}, {}, x)[0]
    expected = loop_pool(x, reduce, (2, 3, 2), (2, 2, 1), "same")
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_max_pooling_keeps_integer_dtype_average_gives_float():
    x = jnp.arange(-8, 8, dtype=jnp.int32).reshape(1, 4, 4, 1)
    y, _ = MaxPooling2D().apply({}, {}, x)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(y[0, :, :, 0], [[-3, -1], [5, 7]])
    y, _ = AveragePooling2D().apply({}, {}, x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y[0, :, :, 0], [[-5.5, -3.5], [2.5, 4.5]])


@pytest.mark.parametrize(
    "cls,rank,reduce",
    [
        (GlobalMaxPooling1D, 1, np.max),
        (GlobalMaxPooling2D, 2, np.max),
        (GlobalMaxPooling3D, 3, np.max),
        (GlobalAveragePooling1D, 1, np.mean),
        (GlobalAveragePooling2D, 2, np.mean),
        (GlobalAveragePooling3D, 3, np.mean),
    ],
)
def test_global_pooling_matches_numpy(cls, rank, reduce):
    x = RNG.normal(size=(2, *range(3, 3 + rank), 4)).astype(np.float32)
    y, _ = cls().apply({}, {}, x)
    expected = np.stack([[reduce(x[b, ..., c]) for c in range(4)] for b in range(2)])
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    y, _ = cls(keepdims=True).apply({}, {}, x)
    assert y.shape == (2, *(1,) * rank, 4)
    np.testing.assert_allclose(y.reshape(2, 4), expected, rtol=1e-6, atol=1e-6)


LAYERS = {
    "max1d": (MaxPooling1D(2, strides=1), (2, 5, 2)),
    "max2d": (MaxPooling2D(3, strides=2, padding="same"), (1, 5, 4, 2)),
    "max3d": (MaxPooling3D(2), (1, 4, 2, 2, 2)),
    "avg1d": (AveragePooling1D(3, strides=2, padding="same"), (2, 6, 2)),
    "avg2d": (AveragePooling2D((2, 3), padding="same"), (1, 3, 4, 2)),
    "avg3d": (AveragePooling3D(2, strides=1), (1, 3, 2, 2, 1)),
    "gmax1d": (GlobalMaxPooling1D(), (2, 4, 3)),
    "gmax2d": (GlobalMaxPooling2D(keepdims=True), (2, 3, 3, 2)),
    "gmax3d": (GlobalMaxPooling3D(), (1, 2, 3, 2, 2)),
    "gavg1d": (GlobalAveragePooling1D(keepdims=True), (2, 4, 3)),
    "gavg2d": (GlobalAveragePooling2D(), (2, 3, 3, 2)),
    "gavg3d": (GlobalAveragePooling3D(), (1, 2, 3, 2, 2)),
}


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_check_grads_float64_jit_vmap_eval_shape(key):
    layer, shape = LAYERS[key]
    abstract = jax.eval_shape(layer.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, "float32"))
    assert abstract == ({}, {})
    with jax.enable_x64(True):
        # Well-separated values so that finite differences never swap a window's maximum.
        x = RNG.permutation(np.prod(shape)).reshape(shape) / 10.0

        @jax.jit
        def f(x):
            return layer.apply({}, {}, x)[0]

        assert f(x).dtype == jnp.float64
        check_grads(f, (x,), order=1, modes=["rev", "fwd"], atol=1e-6, rtol=1e-6)
    xs = RNG.normal(size=(3, *shape)).astype(np.float32)
    mapped = jax.jit(jax.vmap(lambda x: layer.apply({}, {}, x)[0]))(xs)
    eager = np.stack([layer.apply({}, {}, x)[0] for x in xs])
    np.testing.assert_allclose(mapped, eager, rtol=1e-6, atol=1e-6)


def test_pool_larger_than_valid_input():
    with pytest.raises(
        fnn.ShapeError,
        match=r"max_pooling2d: expected spatial size at least the window \(3, 3\) \(pool_size\), "
        r"got inputs of shape \(1, 2, 5, 1\)\. Use padding='same'",
    ):
        MaxPooling2D(3).apply({}, {}, jnp.ones((1, 2, 5, 1)))
    with pytest.raises(fnn.ShapeError, match=r"average_pooling1d: .* window \(4,\)"):
        AveragePooling1D(4).apply({}, {}, jnp.ones((1, 3, 1)))
    y, _ = MaxPooling2D(3, padding="same").apply({}, {}, jnp.ones((1, 2, 5, 1)))
    assert y.shape == (1, 1, 2, 1)


def test_pooling_rank_and_argument_errors():
    with pytest.raises(
        fnn.ShapeError,
        match=r"max_pooling2d: expected inputs of rank 4 \[batch, height, width, channels\], "
        r"got rank 3 \(shape \(2, 4, 4\)\)",
    ):
        MaxPooling2D().apply({}, {}, jnp.ones((2, 4, 4)))
    with pytest.raises(
        fnn.ShapeError, match=r"global_average_pooling1d: expected inputs of rank 3 \[batch, steps"
    ):
        GlobalAveragePooling1D().apply({}, {}, jnp.ones((2, 4)))
    with pytest.raises(
        fnn.ConfigError, match=r"average_pooling2d: expected padding 'valid' or 'same', got 'full'"
    ):
        AveragePooling2D(padding="full")
    with pytest.raises(fnn.ConfigError, match=r"expected padding 'valid' or 'same', got 1"):
        MaxPooling1D(padding=1)
    with pytest.raises(
        fnn.ConfigError, match=r"max_pooling3d: expected pool_size to be a positive"
    ):
        MaxPooling3D((2, 2))
    with pytest.raises(fnn.ConfigError, match=r"expected strides to be a positive int"):
        MaxPooling1D(2, strides=0)
    with pytest.raises(
        fnn.ConfigError, match=r"global_max_pooling2d: expected keepdims to be a bool"
    ):
        GlobalMaxPooling2D(keepdims=1)


def test_names_and_registry():
    assert MaxPooling2D().name == "max_pooling2d"
    assert GlobalAveragePooling3D().name == "global_average_pooling3d"
    layer = AveragePooling2D((3, 3), strides=2, name="pool")
    rebuilt = fnn.core.get_layer_factory("AveragePooling2D")(**layer.spec.config)
    x = RNG.normal(size=(1, 6, 6, 1))
    np.testing.assert_array_equal(rebuilt.apply({}, {}, x)[0], layer.apply({}, {}, x)[0])
    assert rebuilt.name == "pool"
