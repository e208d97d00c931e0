"""Convolutions against plain-numpy loops and the Keras output-size formulas."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.layers import (
    Conv1D,
    Conv1DTranspose,
    Conv2D,
    Conv2DTranspose,
    Conv3D,
    Conv3DTranspose,
    DepthwiseConv1D,
    DepthwiseConv2D,
    SeparableConv1D,
    SeparableConv2D,
)

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def textbook_valid_conv2d(X, f):
    """``Y[i, j] = sum(f * X[i:i+m, j:j+m])``: output (n - m + 1) x (n - m + 1)."""
    n, m = X.shape[0], f.shape[0]
    Y = np.zeros((n - m + 1, n - m + 1))
    for i in range(n - m + 1):
        for j in range(n - m + 1):
            Y[i, j] = np.sum(f * X[i : i + m, j : j + m])
    return Y


def loop_conv(x, w, strides, dilation, pads, groups=1):
    """The textbook loop extended to batch, channels, strides, dilation, padding, groups:
    ``y[b, o, f] = sum_{k, c} x[b, o * s + k * d, g(f) * C_g + c] * w[k, c, f]``."""
    rank = x.ndim - 2
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    ksize, cin, filters = w.shape[:rank], w.shape[-2], w.shape[-1]
    per_group = filters // groups
    out = [
        (n - d * (k - 1) - 1) // s + 1
        for n, k, s, d in zip(x.shape[1:-1], ksize, strides, dilation)
    ]
    y = np.zeros((x.shape[0], *out, filters))
    for b in range(x.shape[0]):
        for o in np.ndindex(*out):
            for f in range(filters):
                g = f // per_group
                for k in np.ndindex(*ksize):
                    pos = tuple(oi * s + ki * d for oi, ki, s, d in zip(o, k, strides, dilation))
                    y[(b, *o, f)] += x[(b, *pos)][g * cin : (g + 1) * cin] @ w[(*k, slice(None), f)]
    return y


def keras_conv_length(n, k, s, d, padding):
    if padding == "valid":
        return math.floor((n - d * (k - 1) - 1) / s) + 1
    if padding == "same":
        return math.ceil(n / s)
    lo, hi = padding
    return math.floor((n + lo + hi - d * (k - 1) - 1) / s) + 1


def keras_same_pads(n, k, s, d):
    """TensorFlow "SAME": total pad so that out = ceil(n / s), the odd one after."""
    total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


def run(layer, x, params, jit=False):
    """Apply ``layer`` with the given params after checking init builds the same layout
    (abstractly: no random kernels to compile)."""
    spec = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    layout, state = jax.eval_shape(layer.init, jax.random.key(0), spec)
    assert jax.tree.map(lambda a: a.shape, layout) == jax.tree.map(np.shape, params)
    apply = jax.jit(layer.apply) if jit else layer.apply
    return np.asarray(apply(params, {}, x)[0])


def random_params(layer, shape, dtype=np.float32):
    layout, _ = jax.eval_shape(layer.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, dtype))
    return jax.tree.map(lambda a: RNG.normal(size=a.shape).astype(dtype), layout)


def test_textbook_single_channel_valid_conv():
    X, f = randn(7, 7), randn(3, 3)
    y = run(Conv2D(1, 3, use_bias=False), X[None, :, :, None], {"kernel": f[:, :, None, None]})
    assert y.shape == (1, 5, 5, 1)
    np.testing.assert_allclose(y[0, :, :, 0], textbook_valid_conv2d(X, f), rtol=1e-5, atol=1e-5)


def test_conv1d_every_padding_stride_dilation_matches_loop_and_keras_sizes():
    x = randn(2, 7, 2)
    for k, s, d, padding in itertools.product((1, 2, 3), (1, 2, 3), (1, 2), ("valid", "same")):
        if padding == "valid" and d * (k - 1) + 1 > 7:
            continue
        w, bias = randn(k, 2, 3), randn(3)
        layer = Conv1D(3, k, strides=s, padding=padding, dilation_rate=d)
        y = run(layer, x, {"kernel": w, "bias": bias}, jit=True)
        assert y.shape == (2, keras_conv_length(7, k, s, d, padding), 3), (k, s, d, padding)
        pads = [keras_same_pads(7, k, s, d) if padding == "same" else (0, 0)]
        expected = loop_conv(x, w, (s,), (d,), pads) + bias
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5, err_msg=str((k, s, d)))


@pytest.mark.parametrize("n", [5, 6, 7, 8])
@pytest.mark.parametrize("padding", ["valid", "same", ((1, 2), (0, 1))])
def test_conv2d_output_shape_table(n, padding):
    """Every kernel x stride x dilation for one input size and padding, by abstract evaluation."""
    for k, s, d in itertools.product((1, 2, 3), (1, 2, 3), (1, 2, 3)):
        window = d * (k - 1) + 1
        if padding == "valid" and window > n:
            continue
        if isinstance(padding, tuple) and window > n + 1:
            continue
        layer = Conv2D(4, (k, 1), strides=(s, 1), padding=padding, dilation_rate=(d, 1))
        x = jax.ShapeDtypeStruct((3, n, 4, 2), jnp.float32)
        params, state = jax.eval_shape(layer.init, jax.random.key(0), x)
        out = fnn.core.output_shapes(layer, params, state, x).shape
        row_pad = padding if isinstance(padding, str) else padding[0]
        col_pad = padding if isinstance(padding, str) else padding[1]
        assert out == (
            3,
            keras_conv_length(n, k, s, d, row_pad),
            keras_conv_length(4, 1, 1, 1, col_pad),
            4,
        ), (n, k, s, d, padding)


@pytest.mark.parametrize(
    "kernel,strides,dilation,padding,groups",
    [
        ((3, 2), (1, 1), (1, 1), "valid", 1),
        ((3, 3), (2, 1), (1, 2), "same", 1),
        ((2, 3), (2, 2), (2, 1), "same", 2),
        ((3, 3), (1, 2), (1, 1), ((1, 0), (2, 1)), 4),
        ((1, 1), (1, 1), (1, 1), 1, 2),
    ],
)
def test_conv2d_matches_loop(kernel, strides, dilation, padding, groups):
    x = randn(2, 6, 7, 4)
    w, bias = randn(*kernel, 4 // groups, 4), randn(4)
    layer = Conv2D(
        4, kernel, strides, padding, dilation, groups=groups, activation="tanh", name="c"
    )
    y = run(layer, x, {"kernel": w, "bias": bias}, jit=True)
    if padding == "same":
        pads = [
            keras_same_pads(n, k, s, d) for n, k, s, d in zip((6, 7), kernel, strides, dilation)
        ]
    elif padding == "valid":
        pads = [(0, 0), (0, 0)]
    elif isinstance(padding, int):
        pads = [(padding, padding)] * 2
    else:
        pads = padding
    expected = np.tanh(loop_conv(x, w, strides, dilation, pads, groups) + bias)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_conv1d_causal_padding_only_looks_back():
    x = randn(1, 6, 2)
    w = randn(3, 2, 1)
    y = run(Conv1D(1, 3, padding="causal", dilation_rate=2, use_bias=False), x, {"kernel": w})
    expected = loop_conv(x, w, (1,), (2,), [(4, 0)])
    assert y.shape == (1, 6, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_conv3d_matches_loop_and_kernel_layout():
    x = randn(1, 4, 5, 3, 2)
    layer = Conv3D(3, (2, 3, 1), strides=(1, 2, 1), padding="same")
    params, _ = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert params["kernel"].shape == (2, 3, 1, 2, 3) and params["bias"].shape == (3,)
    w, bias = randn(2, 3, 1, 2, 3), randn(3)
    pads = [keras_same_pads(n, k, s, 1) for n, k, s in zip((4, 5, 3), (2, 3, 1), (1, 2, 1))]
    expected = loop_conv(x, w, (1, 2, 1), (1, 1, 1), pads) + bias
    np.testing.assert_allclose(run(layer, x, {"kernel": w, "bias": bias}), expected, atol=1e-5)


def keras_transpose_length(n, k, s, d, padding, output_padding):
    """keras.src.utils.conv_utils.deconv_output_length."""
    k = k + (k - 1) * (d - 1)
    if output_padding is None:
        return n * s + max(k - s, 0) if padding == "valid" else n * s
    pad = k // 2 if padding == "same" else 0
    return (n - 1) * s + k - 2 * pad + output_padding


def loop_conv_transpose(x, w, strides, dilation, padding, output_padding):
    """Scatter-add: every input position adds ``w[k] @ x`` at ``i * s + k * d``; the full
    result is then cut to the Keras length, "same" as the gradient of a TF "SAME" conv."""
    rank = x.ndim - 2
    ksize, filters = w.shape[:rank], w.shape[-2]
    full = [
        (n - 1) * s + d * (k - 1) + 1 for n, k, s, d in zip(x.shape[1:-1], ksize, strides, dilation)
    ]
    y = np.zeros((x.shape[0], *(f + 2 * s * k for f, s, k in zip(full, strides, ksize)), filters))
    for b in range(x.shape[0]):
        for i in np.ndindex(*x.shape[1:-1]):
            for k in np.ndindex(*ksize):
                pos = tuple(ii * s + kk * d for ii, kk, s, d in zip(i, k, strides, dilation))
                y[(b, *pos)] += w[k] @ x[(b, *i)]
    index = []
    for axis, (n, k, s, d) in enumerate(zip(x.shape[1:-1], ksize, strides, dilation)):
        op = None if output_padding is None else output_padding[axis]
        length = keras_transpose_length(n, k, s, d, padding, op)
        if padding == "valid":
            start = 0
        else:
            window = d * (k - 1) + 1
            start = max((math.ceil(length / s) - 1) * s + window - length, 0) // 2
        index.append(slice(start, start + length))
    return y[(slice(None), *index)]


def test_conv1d_transpose_every_combination_matches_scatter_add():
    x = randn(2, 4, 3)
    for k, s, d, padding, op in itertools.product(
        (1, 2, 3), (1, 2, 3), (1, 2), ("valid", "same"), (None, 1)
    ):
        if op is not None and op >= s:
            continue
        length = keras_transpose_length(4, k, s, d, padding, op)
        if padding == "same" and math.ceil(length / s) != 4:
            continue  # TF rejects these: a "SAME" conv of that length does not give back 4
        w, bias = randn(k, 2, 3), randn(2)
        layer = Conv1DTranspose(
            2, k, strides=s, padding=padding, output_padding=op, dilation_rate=d
        )
        y = run(layer, x, {"kernel": w, "bias": bias}, jit=True)
        assert y.shape == (2, length, 2), (k, s, d, padding, op)
        expected = loop_conv_transpose(x, w, (s,), (d,), padding, None if op is None else (op,))
        np.testing.assert_allclose(
            y, expected + bias, rtol=1e-5, atol=1e-5, err_msg=str((k, s, d, padding, op))
        )


@pytest.mark.parametrize(
    "cls,shape,kernel,strides,padding,output_padding",
    [
        (Conv2DTranspose, (2, 3, 4, 3), (3, 2), (2, 1), "same", None),
        (Conv2DTranspose, (2, 3, 4, 3), (3, 3), (2, 3), "valid", (1, 2)),
        (Conv2DTranspose, (2, 3, 4, 3), (3, 2), (2, 2), "same", (0, 1)),
        (Conv3DTranspose, (1, 2, 3, 2, 3), (2, 3, 1), (2, 1, 3), "same", None),
    ],
)
def test_conv_transpose_nd_matches_scatter_add(
    cls, shape, kernel, strides, padding, output_padding
):
    x = randn(*shape)
    layer = cls(2, kernel, strides=strides, padding=padding, output_padding=output_padding)
    params, _ = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert params["kernel"].shape == (*kernel, 2, 3)
    w, bias = randn(*kernel, 2, 3), randn(2)
    expected = loop_conv_transpose(x, w, strides, (1,) * len(kernel), padding, output_padding)
    y = run(layer, x, {"kernel": w, "bias": bias}, jit=True)
    np.testing.assert_allclose(y, expected + bias, rtol=1e-5, atol=1e-5)


def loop_depthwise(x, w, strides, dilation, pads):
    """Each channel c convolved alone with each of its kernels m -> output c * M + m."""
    channels, mult = w.shape[-2:]
    out = [
        loop_conv(x[..., c : c + 1], w[..., c : c + 1, m : m + 1], strides, dilation, pads)
        for c in range(channels)
        for m in range(mult)
    ]
    return np.concatenate(out, axis=-1)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_depthwise_conv2d_matches_per_channel_loop(padding):
    x = randn(2, 5, 6, 3)
    layer = DepthwiseConv2D((3, 2), strides=(2, 1), padding=padding, depth_multiplier=2)
    params, _ = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert params["kernel"].shape == (3, 2, 3, 2) and params["bias"].shape == (6,)
    w, bias = randn(3, 2, 3, 2), randn(6)
    pads = (
        [keras_same_pads(n, k, s, 1) for n, k, s in zip((5, 6), (3, 2), (2, 1))]
        if padding == "same"
        else [(0, 0)] * 2
    )
    expected = loop_depthwise(x, w, (2, 1), (1, 1), pads) + bias
    np.testing.assert_allclose(run(layer, x, {"kernel": w, "bias": bias}), expected, atol=1e-5)


def test_separable_conv2d_is_depthwise_then_pointwise():
    x = randn(2, 5, 5, 3)
    layer = SeparableConv2D(4, 3, dilation_rate=2, depth_multiplier=2, activation="relu")
    params, _ = jax.eval_shape(layer.init, jax.random.key(0), x)
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes == {
        "depthwise_kernel": (3, 3, 3, 2),
        "pointwise_kernel": (1, 1, 6, 4),
        "bias": (4,),
    }
    dw, pw, bias = randn(3, 3, 3, 2), randn(1, 1, 6, 4), randn(4)
    depth = loop_depthwise(x, dw, (1, 1), (2, 2), [(0, 0)] * 2)
    expected = np.maximum(np.einsum("bhwc,cf->bhwf", depth, pw[0, 0]) + bias, 0)
    params = {"depthwise_kernel": dw, "pointwise_kernel": pw, "bias": bias}
    np.testing.assert_allclose(run(layer, x, params), expected, rtol=1e-5, atol=1e-5)


def test_depthwise_and_separable_conv1d():
    x = randn(2, 6, 2)
    dw, pw = randn(3, 2, 2), randn(1, 4, 3)
    y = run(DepthwiseConv1D(3, use_bias=False, depth_multiplier=2), x, {"kernel": dw})
    depth = loop_depthwise(x, dw, (1,), (1,), [(0, 0)])
    np.testing.assert_allclose(y, depth, rtol=1e-5, atol=1e-5)
    layer = SeparableConv1D(3, 3, depth_multiplier=2, use_bias=False)
    y = run(layer, x, {"depthwise_kernel": dw, "pointwise_kernel": pw})
    np.testing.assert_allclose(y, depth @ pw[0], rtol=1e-5, atol=1e-5)


LAYERS = {
    "conv1d": (lambda: Conv1D(2, 2, strides=2, padding="same", groups=2), (2, 5, 2)),
    "conv2d": (lambda: Conv2D(2, (2, 3), dilation_rate=(1, 2), activation="tanh"), (2, 4, 6, 2)),
    "conv3d": (lambda: Conv3D(2, 2, padding="same"), (1, 3, 3, 2, 2)),
    "conv1d_t": (lambda: Conv1DTranspose(2, 3, strides=2), (2, 3, 2)),
    "conv2d_t": (lambda: Conv2DTranspose(2, 2, strides=2, padding="same"), (1, 3, 2, 2)),
    "conv3d_t": (lambda: Conv3DTranspose(1, 2, output_padding=0), (1, 2, 2, 2, 2)),
    "depthwise1d": (lambda: DepthwiseConv1D(2, depth_multiplier=2), (2, 4, 2)),
    "depthwise2d": (lambda: DepthwiseConv2D(2, padding="same"), (2, 3, 3, 2)),
    "separable1d": (lambda: SeparableConv1D(2, 2), (2, 4, 2)),
    "separable2d": (lambda: SeparableConv2D(2, 2, strides=2, activation="tanh"), (1, 4, 4, 2)),
}


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_check_grads_float64(key):
    make, shape = LAYERS[key]
    layer = make()
    with jax.enable_x64(True):
        x = RNG.normal(size=shape)
        params = random_params(layer, shape, np.float64)
        assert jax.eval_shape(layer.init, jax.random.key(0), x)[0]["bias"].dtype == jnp.float64

        @jax.jit
        def f(p, x):
            return layer.apply(p, {}, x)[0]

        check_grads(f, (params, x), order=1, modes=["rev", "fwd"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_eval_shape_init_jit_and_vmap(key):
    make, shape = LAYERS[key]
    layer = make()
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    abstract, _ = jax.eval_shape(layer.init, jax.random.key(0), spec)
    params, state = layer.init(jax.random.key(0), spec)
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, params)
    xs = randn(3, *shape)
    eager = np.stack([layer.apply(params, state, x)[0] for x in xs])
    mapped = jax.jit(jax.vmap(lambda x: layer.apply(params, state, x)[0]))(xs)
    np.testing.assert_allclose(mapped, eager, rtol=1e-5, atol=1e-5)


def test_conv2d_rank_error_names_layout():
    with pytest.raises(
        fnn.ShapeError,
        match=r"conv2d: expected inputs of rank 4 \[batch, height, width, channels\], "
        r"got rank 3 \(shape \(2, 5, 5\)\)",
    ):
        Conv2D(4, 3).init(jax.random.key(0), jnp.ones((2, 5, 5)))
    with pytest.raises(fnn.ShapeError, match=r"conv1d: expected inputs of rank 3 \[batch, steps"):
        Conv1D(4, 3).init(jax.random.key(0), jnp.ones((2, 5, 5, 1)))
    with pytest.raises(fnn.ShapeError, match=r"\[batch, depth, height, width, channels\]"):
        Conv3DTranspose(4, 3).init(jax.random.key(0), jnp.ones((2, 5, 5, 1)))


def test_kernel_larger_than_valid_input():
    with pytest.raises(
        fnn.ShapeError,
        match=r"conv2d: expected spatial size at least the window \(5, 5\) \(kernel_size, "
        r"dilation included\), got inputs of shape \(1, 4, 6, 1\)\. Use padding='same'",
    ):
        Conv2D(1, 3, dilation_rate=2).init(jax.random.key(0), jnp.ones((1, 4, 6, 1)))
    layer = Conv1D(1, 3)
    params, state = layer.init(jax.random.key(0), jnp.ones((1, 5, 1)))
    with pytest.raises(fnn.ShapeError, match=r"window \(3,\).*got inputs of shape \(1, 2, 1\)"):
        layer.apply(params, state, jnp.ones((1, 2, 1)))
    with pytest.raises(fnn.ShapeError, match=r"padded to \(3,\)"):
        Conv1D(1, 5, padding=1).init(jax.random.key(0), jnp.ones((1, 1, 1)))
    Conv2D(1, 5, padding="same").init(jax.random.key(0), jnp.ones((1, 2, 2, 1)))  # fine


def test_wrong_channel_count_for_params():
    layer = Conv2D(8, 3, name="conv")
    params, state = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 5, 5, 3)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"conv: expected inputs with 3 channels \(kernel has shape \(3, 3, 3, 8\)\), "
        r"got inputs of shape \(1, 5, 5, 4\)",
    ):
        layer.apply(params, state, jnp.ones((1, 5, 5, 4)))
    grouped = Conv2D(4, 1, groups=2)
    params, state = jax.eval_shape(grouped.init, jax.random.key(0), jnp.ones((1, 2, 2, 6)))
    with pytest.raises(
        fnn.ShapeError, match=r"with 6 channels \(kernel has shape \(1, 1, 3, 4\), groups=2\)"
    ):
        grouped.apply(params, state, jnp.ones((1, 2, 2, 4)))
    for layer, key in (
        (Conv2DTranspose(2, 3), "kernel"),
        (DepthwiseConv2D(3), "kernel"),
        (SeparableConv2D(2, 3), "depthwise_kernel"),
    ):
        params, state = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 5, 5, 3)))
        with pytest.raises(fnn.ShapeError, match=rf"expected inputs with 3 channels \({key}"):
            layer.apply(params, state, jnp.ones((1, 5, 5, 2)))


def test_groups_must_divide_filters_and_channels():
    with pytest.raises(
        fnn.ConfigError,
        match=r"conv2d: expected filters divisible by groups, got filters=6, groups=4",
    ):
        Conv2D(6, 3, groups=4)
    with pytest.raises(
        fnn.ShapeError,
        match=r"conv1d: expected input channels divisible by groups=2, got 3 channels "
        r"\(inputs of shape \(1, 5, 3\)\)",
    ):
        Conv1D(4, 3, groups=2).init(jax.random.key(0), jnp.ones((1, 5, 3)))


def test_bad_arguments():
    with pytest.raises(
        fnn.ConfigError,
        match=r"conv2d: expected padding 'valid' or 'same' or explicit ints/pairs, got 'sane'",
    ):
        Conv2D(1, 3, padding="sane")
    with pytest.raises(fnn.ConfigError, match=r"conv2d: expected padding 'valid' or 'same' or"):
        Conv2D(1, 3, padding="causal")
    with pytest.raises(
        fnn.ConfigError, match=r"conv2d_transpose: expected padding 'valid' or 'same', got 1"
    ):
        Conv2DTranspose(1, 3, padding=1)
    with pytest.raises(
        fnn.ConfigError, match=r"conv2d: expected kernel_size to be a positive int or a tuple of 2"
    ):
        Conv2D(1, (3,))
    with pytest.raises(fnn.ConfigError, match=r"expected strides to be a positive int"):
        Conv1D(1, 3, strides=0)
    with pytest.raises(fnn.ConfigError, match=r"conv3d: expected filters to be a positive int"):
        Conv3D(0, 3)
    with pytest.raises(fnn.ConfigError, match=r"expected padding as an int, 2 ints or 2 pairs"):
        Conv2D(1, 3, padding=((1, 2, 3), (0, 0)))
    with pytest.raises(
        fnn.ConfigError,
        match=r"conv1d_transpose: expected output_padding smaller than strides, got "
        r"output_padding=\(2,\), strides=\(2,\)",
    ):
        Conv1DTranspose(1, 3, strides=2, output_padding=2)
    with pytest.raises(fnn.ConfigError, match="expected depth_multiplier to be a positive int"):
        DepthwiseConv2D(3, depth_multiplier=0)


def test_glorot_fan_uses_receptive_field_and_registry():
    layer = Conv2D(64, 5)
    params, _ = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 32), jnp.float32))
    limit = np.sqrt(6 / (25 * 32 + 25 * 64))
    assert float(jnp.max(jnp.abs(params["kernel"]))) <= limit
    assert float(jnp.max(jnp.abs(params["kernel"]))) > 0.95 * limit
    assert float(jnp.sum(params["bias"] ** 2)) == 0
    assert layer.spec.class_name == "Conv2D" and dict(layer.spec.config) == {
        "filters": 64,
        "kernel_size": 5,
    }
    rebuilt = fnn.core.get_layer_factory("Conv2D")(**layer.spec.config)
    assert rebuilt.name == "conv2d"
    names = fnn.core.registered_layers()
    for cls in (Conv3DTranspose, DepthwiseConv1D, SeparableConv2D):
        assert cls.__name__ in names


def test_config_forms_lists_and_numpy_ints():
    """Arguments as a YAML/JSON config gives them (lists) or numpy integers are accepted."""
    layer = Conv2D(np.int64(4), [3, 2], strides=[np.int32(2), 1], padding=[[1, 0], [0, 1]])
    spec = jax.ShapeDtypeStruct((1, 5, 5, 2), jnp.float32)
    params, state = jax.eval_shape(layer.init, jax.random.key(0), spec)
    assert params["kernel"].shape == (3, 2, 2, 4)
    out = fnn.core.output_shapes(layer, params, state, spec).shape
    assert out == (
        1,
        keras_conv_length(5, 3, 2, 1, (1, 0)),
        keras_conv_length(5, 2, 1, 1, (0, 1)),
        4,
    )


def test_factory_doctests_are_collected_from_this_module():
    """The factories are made by ``_spatial.ranked``; their docstring examples must still be
    found (and so run) as doctests of ``fnn.layers.conv``."""
    import doctest

    import fnn.layers.conv

    found = {t.name for t in doctest.DocTestFinder().find(fnn.layers.conv) if t.examples}
    kinds = ["Conv{}D", "Conv{}DTranspose", "DepthwiseConv{}D", "SeparableConv{}D"]
    ranks = {"Conv{}D": (1, 2, 3), "Conv{}DTranspose": (1, 2, 3)}
    want = {f"fnn.layers.conv.{k.format(r)}" for k in kinds for r in ranks.get(k, (1, 2))}
    assert found == want
