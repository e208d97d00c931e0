"""UpSampling, ZeroPadding and Cropping against numpy loops, in every Keras argument form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.layers import (
    Cropping1D,
    Cropping2D,
    Cropping3D,
    UpSampling1D,
    UpSampling2D,
    UpSampling3D,
    ZeroPadding1D,
    ZeroPadding2D,
    ZeroPadding3D,
)

RNG = np.random.default_rng(0)


def apply(layer, x):
    return np.asarray(layer.apply({}, {}, x)[0])


def loop_upsample(x, size):
    spatial = [n * s for n, s in zip(x.shape[1:-1], size)]
    y = np.zeros((x.shape[0], *spatial, x.shape[-1]), x.dtype)
    for o in np.ndindex(*spatial):
        y[(slice(None), *o)] = x[(slice(None), *(oi // s for oi, s in zip(o, size)))]
    return y


def loop_pad(x, pads):
    spatial = [n + lo + hi for n, (lo, hi) in zip(x.shape[1:-1], pads)]
    y = np.zeros((x.shape[0], *spatial, x.shape[-1]), x.dtype)
    for i in np.ndindex(*x.shape[1:-1]):
        y[(slice(None), *(ii + lo for ii, (lo, _) in zip(i, pads)))] = x[(slice(None), *i)]
    return y


def loop_crop(x, crops):
    spatial = [n - lo - hi for n, (lo, hi) in zip(x.shape[1:-1], crops)]
    y = np.zeros((x.shape[0], *spatial, x.shape[-1]), x.dtype)
    for o in np.ndindex(*spatial):
        y[(slice(None), *o)] = x[(slice(None), *(oi + lo for oi, (lo, _) in zip(o, crops)))]
    return y


@pytest.mark.parametrize(
    "cls,shape,size,expected_size",
    [
        (UpSampling1D, (2, 3, 2), 3, (3,)),
        (UpSampling2D, (2, 2, 3, 2), 2, (2, 2)),
        (UpSampling2D, (2, 2, 3, 2), (1, 3), (1, 3)),
        (UpSampling3D, (1, 2, 2, 1, 2), (2, 1, 3), (2, 1, 3)),
    ],
)
def test_upsampling_nearest_repeats(cls, shape, size, expected_size):
    x = RNG.normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(apply(cls(size), x), loop_upsample(x, expected_size))


def loop_bilinear_1d(n, scale):
    """Weights [out, n] of half-pixel-centre linear interpolation, edges clamped."""
    w = np.zeros((n * scale, n))
    for o in range(n * scale):
        src = min(max((o + 0.5) / scale - 0.5, 0.0), n - 1)
        lo = int(np.floor(src))
        hi = min(lo + 1, n - 1)
        w[o, lo] += 1 - (src - lo)
        w[o, hi] += src - lo
    return w


def test_upsampling2d_bilinear_matches_half_pixel_interpolation():
    x = RNG.normal(size=(2, 3, 4, 2))
    y = apply(UpSampling2D((2, 3), interpolation="bilinear"), x.astype(np.float32))
    rows, cols = loop_bilinear_1d(3, 2), loop_bilinear_1d(4, 3)
    expected = np.einsum("oh,pw,bhwc->bopc", rows, cols, x)
    assert y.shape == (2, 6, 12, 2)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "cls,shape,padding,pads",
    [
        (ZeroPadding1D, (2, 3, 2), 2, ((2, 2),)),
        (ZeroPadding1D, (2, 3, 2), (0, 3), ((0, 3),)),
        (ZeroPadding2D, (2, 2, 3, 1), 1, ((1, 1), (1, 1))),
        (ZeroPadding2D, (2, 2, 3, 1), (2, 0), ((2, 2), (0, 0))),
        (ZeroPadding2D, (2, 2, 3, 1), ((0, 1), (2, 3)), ((0, 1), (2, 3))),
        (ZeroPadding3D, (1, 2, 1, 2, 2), (1, 0, 2), ((1, 1), (0, 0), (2, 2))),
        (ZeroPadding3D, (1, 2, 1, 2, 2), ((1, 0), (0, 2), (3, 1)), ((1, 0), (0, 2), (3, 1))),
    ],
)
def test_zero_padding_forms(cls, shape, padding, pads):
    x = RNG.normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(apply(cls(padding), x), loop_pad(x, pads))


@pytest.mark.parametrize(
    "cls,shape,cropping,crops",
    [
        (Cropping1D, (2, 6, 2), 2, ((2, 2),)),
        (Cropping1D, (2, 6, 2), (0, 3), ((0, 3),)),
        (Cropping2D, (2, 5, 6, 1), 1, ((1, 1), (1, 1))),
        (Cropping2D, (2, 5, 6, 1), (2, 0), ((2, 2), (0, 0))),
        (Cropping2D, (2, 5, 6, 1), ((0, 1), (2, 3)), ((0, 1), (2, 3))),
        (Cropping3D, (1, 4, 3, 5, 2), ((1, 0), (0, 2), (3, 1)), ((1, 0), (0, 2), (3, 1))),
    ],
)
def test_cropping_forms(cls, shape, cropping, crops):
    x = RNG.normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(apply(cls(cropping), x), loop_crop(x, crops))


def test_keras_defaults_and_names():
    x = jnp.ones((1, 4, 4, 1))
    assert apply(ZeroPadding2D(), x).shape == (1, 6, 6, 1)
    assert apply(Cropping2D(), x).shape == (1, 4, 4, 1)
    assert apply(Cropping1D(), jnp.ones((1, 4, 1))).shape == (1, 2, 1)
    assert apply(UpSampling2D(), x).shape == (1, 8, 8, 1)
    names = [cls().name for cls in (UpSampling2D, ZeroPadding1D, Cropping3D)]
    assert names == ["up_sampling2d", "zero_padding1d", "cropping3d"]
    layer = Cropping2D(((1, 0), (0, 2)), name="crop")
    assert fnn.core.get_layer_factory("Cropping2D")(**layer.spec.config).name == "crop"


LAYERS = {
    "up1d": (UpSampling1D(2), (2, 3, 2)),
    "up2d": (UpSampling2D((2, 1)), (1, 2, 3, 2)),
    "up2d_bilinear": (UpSampling2D(2, interpolation="bilinear"), (1, 2, 3, 1)),
    "up3d": (UpSampling3D(2), (1, 2, 1, 2, 1)),
    "pad1d": (ZeroPadding1D((1, 2)), (2, 3, 2)),
    "pad2d": (ZeroPadding2D(((1, 0), (0, 2))), (1, 2, 3, 2)),
    "pad3d": (ZeroPadding3D(1), (1, 2, 1, 2, 1)),
    "crop1d": (Cropping1D((1, 2)), (2, 5, 2)),
    "crop2d": (Cropping2D(((1, 0), (0, 2))), (1, 3, 4, 2)),
    "crop3d": (Cropping3D(1), (1, 3, 3, 4, 1)),
}


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_check_grads_float64_jit_vmap_eval_shape(key):
    layer, shape = LAYERS[key]
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    assert jax.eval_shape(layer.init, jax.random.key(0), spec) == ({}, {})
    with jax.enable_x64(True):
        x = RNG.normal(size=shape)

        @jax.jit
        def f(x):
            return layer.apply({}, {}, x)[0]

        assert f(x).dtype == jnp.float64
        check_grads(f, (x,), order=1, modes=["rev", "fwd"], atol=1e-6, rtol=1e-6)
    xs = RNG.normal(size=(3, *shape)).astype(np.float32)
    mapped = jax.jit(jax.vmap(lambda x: layer.apply({}, {}, x)[0]))(xs)
    np.testing.assert_allclose(mapped, np.stack([apply(layer, x) for x in xs]), atol=1e-6)


def test_cropping_more_than_the_input():
    with pytest.raises(
        fnn.ShapeError,
        match=r"cropping2d: expected cropping \(\(2, 2\), \(0, 0\)\) to leave at least one "
        r"position per axis, got inputs of shape \(1, 4, 5, 1\) \(spatial \(4, 5\)\)",
    ):
        Cropping2D((2, 0)).apply({}, {}, jnp.ones((1, 4, 5, 1)))
    with pytest.raises(fnn.ShapeError, match=r"cropping1d: expected cropping \(\(3, 4\),\)"):
        Cropping1D((3, 4)).apply({}, {}, jnp.ones((1, 6, 1)))


def test_argument_and_rank_errors():
    with pytest.raises(
        fnn.ConfigError,
        match=r"zero_padding2d: expected padding as an int, 2 ints or 2 pairs \(before, after\) "
        r"of non-negative ints, got \(1, 2, 3\)",
    ):
        ZeroPadding2D((1, 2, 3))
    with pytest.raises(
        fnn.ConfigError,
        match=r"cropping1d: expected cropping as an int or a pair \(before, after\)",
    ):
        Cropping1D(-1)
    with pytest.raises(fnn.ConfigError, match=r"cropping2d: expected cropping as an int"):
        Cropping2D(((1, 1), 2))
    with pytest.raises(
        fnn.ConfigError,
        match=r"up_sampling2d: expected interpolation 'nearest' or 'bilinear', got 'bicubic'",
    ):
        UpSampling2D(interpolation="bicubic")
    with pytest.raises(fnn.ConfigError, match=r"up_sampling1d: expected interpolation 'nearest'"):
        UpSampling1D(interpolation="bilinear")
    with pytest.raises(fnn.ConfigError, match=r"up_sampling3d: expected size to be a positive int"):
        UpSampling3D((2, 2))
    with pytest.raises(
        fnn.ShapeError,
        match=r"zero_padding2d: expected inputs of rank 4 \[batch, height, width, channels\], "
        r"got rank 3",
    ):
        ZeroPadding2D().apply({}, {}, jnp.ones((1, 4, 4)))
    with pytest.raises(fnn.ShapeError, match=r"up_sampling1d: expected inputs of rank 3"):
        UpSampling1D().apply({}, {}, jnp.ones((1, 4, 4, 1)))
