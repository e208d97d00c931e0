"""Convolutions, channels-last as in Keras: ``Conv1D/2D/3D``, ``Conv1DTranspose/2D/3D``,
``DepthwiseConv1D/2D``, ``SeparableConv1D/2D``.

One N-d implementation per kind, on ``jax.lax.conv_general_dilated`` with inputs
``[batch, *spatial, channels]`` and Keras kernel layouts; the public factories only
fix the spatial rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fnn.core import activations, initializers
from fnn.core.errors import ConfigError, ShapeError, shape_of
from fnn.core.layer import Layer, param_dtype
from fnn.layers import _spatial
from fnn.layers.dense import Affine, Penalties


def _positive_int(value, argument: str, layer: str) -> int:
    if not _spatial.is_int(value, minimum=1):
        raise ConfigError(f"{layer}: expected {argument} to be a positive int, got {value!r}.")
    return int(value)


def _convolve(x, kernel, rank, *, strides, pads, dilation, groups=1, lhs_dilation=None):
    dtype = jnp.result_type(x, kernel)
    return lax.conv_general_dilated(
        x.astype(dtype),
        kernel.astype(dtype),
        window_strides=strides,
        padding=pads,
        lhs_dilation=lhs_dilation,
        rhs_dilation=dilation,
        dimension_numbers=_spatial.dimension_numbers(rank),
        feature_group_count=groups,
    )


def _geometry(name, rank, x, window, strides, padding):
    """Rank and window checks shared by init and apply; returns ``(channels, pads)``."""
    spatial, channels = _spatial.check_input(name, x, rank)
    pads = _spatial.resolve_pads(padding, spatial, window, strides)
    _spatial.check_window_fits(name, x, window, pads, what="kernel_size, dilation included")
    return channels, pads


def _check_channels(name, x, expected, param, param_shape, detail=""):
    if shape_of(x)[-1] != expected:
        raise ShapeError(
            f"{name}: expected inputs with {expected} channels ({param} has shape "
            f"{tuple(param_shape)}{detail}), got inputs of shape {shape_of(x)}."
        )


def _window_args(rank, kernel_size, strides, dilation_rate, name):
    """``kernel_size``, ``strides`` and ``dilation_rate`` as ``rank``-tuples of positive ints."""
    arguments = {"kernel_size": kernel_size, "strides": strides, "dilation_rate": dilation_rate}
    return tuple(_spatial.int_tuple(v, rank, k, name) for k, v in arguments.items())


def _conv(
    rank,
    filters,
    kernel_size,
    strides=1,
    padding="valid",
    dilation_rate=1,
    groups=1,
    activation=None,
    use_bias: bool = True,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    kernel_regularizer=None,
    bias_regularizer=None,
    activity_regularizer=None,
    dtype=None,
    name: str = "conv",
) -> Layer:
    penalties = Penalties.get(kernel_regularizer, bias_regularizer, activity_regularizer)
    filters = _positive_int(filters, "filters", name)
    kernel_size, strides, dilation = _window_args(rank, kernel_size, strides, dilation_rate, name)
    padding = _spatial.padding_arg(padding, rank, name, causal=rank == 1)
    groups = _positive_int(groups, "groups", name)
    if filters % groups:
        raise ConfigError(
            f"{name}: expected filters divisible by groups, got filters={filters}, groups={groups}."
        )
    affine = Affine.get(activation, use_bias, kernel_initializer, bias_initializer)
    window = _spatial.effective_window(kernel_size, dilation)

    def init(key, x):
        channels, _ = _geometry(name, rank, x, window, strides, padding)
        if channels % groups:
            raise ShapeError(
                f"{name}: expected input channels divisible by groups={groups}, got "
                f"{channels} channels (inputs of shape {shape_of(x)})."
            )
        kernel_shape = (*kernel_size, channels // groups, filters)
        return affine.init(key, x, dtype, kernel_shape, filters), penalties.init_state()

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        kernel = params["kernel"]
        _, pads = _geometry(name, rank, x, window, strides, padding)
        detail = f", groups={groups}" if groups > 1 else ""
        _check_channels(name, x, kernel.shape[-2] * groups, "kernel", kernel.shape, detail)
        y = _convolve(x, kernel, rank, strides=strides, pads=pads, dilation=dilation, groups=groups)
        y = affine.output(y, params)
        return y, penalties.state(params, y) or state

    return Layer(init, apply, name)


def _transpose_pads(kernel, stride, dilation, padding, output_padding):
    """``(before, after)`` pads of the stride-dilated input that give Keras output sizes:
    valid ``(n - 1) * s + max(k, s)``, same ``n * s``, or with ``output_padding`` p
    ``(n - 1) * s + k - 2 * pad + p`` (pad = 0 valid, ``k // 2`` same); k is dilated."""
    k = dilation * (kernel - 1) + 1
    if padding == "valid":
        extra = max(k, stride) - k if output_padding is None else output_padding
        return k - 1, k - 1 + extra
    total = stride + k - 2 if output_padding is None else k + k % 2 - 2 + output_padding
    before = min(total // 2 + total % 2, k - 1)
    return before, total - before


def _conv_transpose(
    rank,
    filters,
    kernel_size,
    strides=1,
    padding="valid",
    output_padding=None,
    dilation_rate=1,
    activation=None,
    use_bias: bool = True,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    dtype=None,
    name: str = "conv_transpose",
) -> Layer:
    filters = _positive_int(filters, "filters", name)
    kernel_size, strides, dilation = _window_args(rank, kernel_size, strides, dilation_rate, name)
    padding = _spatial.padding_arg(padding, rank, name, explicit=False)
    if output_padding is not None:
        output_padding = _spatial.int_tuple(output_padding, rank, "output_padding", name, minimum=0)
        if any(p >= s for p, s in zip(output_padding, strides)):
            raise ConfigError(
                f"{name}: expected output_padding smaller than strides, got "
                f"output_padding={output_padding}, strides={strides}."
            )
    affine = Affine.get(activation, use_bias, kernel_initializer, bias_initializer)
    pads = tuple(
        _transpose_pads(k, s, d, padding, None if output_padding is None else p)
        for k, s, d, p in zip(kernel_size, strides, dilation, output_padding or (0,) * rank)
    )

    def init(key, x):
        _, channels = _spatial.check_input(name, x, rank)
        return affine.init(key, x, dtype, (*kernel_size, filters, channels), filters), {}

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        kernel = params["kernel"]
        _spatial.check_input(name, x, rank)
        _check_channels(name, x, kernel.shape[-1], "kernel", kernel.shape)
        # The transpose of a strided convolution: dilate the input by the strides and
        # correlate with the spatially flipped kernel, in and out channels swapped.
        flipped = jnp.flip(kernel, axis=tuple(range(rank))).swapaxes(-1, -2)
        y = _convolve(
            x,
            flipped,
            rank,
            strides=(1,) * rank,
            pads=pads,
            dilation=dilation,
            lhs_dilation=strides,
        )
        return affine.output(y, params), state

    return Layer(init, apply, name)


def _depthwise(
    rank,
    kernel_size,
    strides=1,
    padding="valid",
    depth_multiplier=1,
    dilation_rate=1,
    activation=None,
    use_bias: bool = True,
    depthwise_initializer="glorot_uniform",
    bias_initializer="zeros",
    dtype=None,
    name: str = "depthwise_conv",
    *,
    filters=None,
    pointwise_initializer=None,
) -> Layer:
    """Depthwise convolution; with ``filters`` a separable one (depthwise, then 1x1)."""
    separable = filters is not None
    if separable:
        filters = _positive_int(filters, "filters", name)
    kernel_size, strides, dilation = _window_args(rank, kernel_size, strides, dilation_rate, name)
    padding = _spatial.padding_arg(padding, rank, name, causal=rank == 1)
    multiplier = _positive_int(depth_multiplier, "depth_multiplier", name)
    act = activations.get(activation)
    depthwise_init = initializers.get(depthwise_initializer)
    pointwise_init = initializers.get(pointwise_initializer) if separable else None
    bias_init = initializers.get(bias_initializer)
    affine = Affine(act, depthwise_init, bias_init, use_bias)
    window = _spatial.effective_window(kernel_size, dilation)
    depthwise_key = "depthwise_kernel" if separable else "kernel"

    def init(key, x):
        channels, _ = _geometry(name, rank, x, window, strides, padding)
        dtype_ = param_dtype(x, dtype)
        keys = jax.random.split(key, 3)
        params = {
            depthwise_key: depthwise_init(keys[0], (*kernel_size, channels, multiplier), dtype_)
        }
        out = channels * multiplier
        if separable:
            shape = ((1,) * rank) + (out, filters)
            params["pointwise_kernel"] = pointwise_init(keys[1], shape, dtype_)
            out = filters
        if use_bias:
            params["bias"] = bias_init(keys[2], (out,), dtype_)
        return params, {}

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        kernel = params[depthwise_key]
        channels, pads = _geometry(name, rank, x, window, strides, padding)
        _check_channels(name, x, kernel.shape[-2], depthwise_key, kernel.shape)
        # [*k, in, multiplier] -> [*k, 1, in * multiplier]: one group per input channel,
        # output channel c * multiplier + m as in Keras.
        grouped = kernel.reshape((*kernel.shape[:-2], 1, channels * kernel.shape[-1]))
        y = _convolve(
            x, grouped, rank, strides=strides, pads=pads, dilation=dilation, groups=channels
        )
        if separable:
            ones = (1,) * rank
            pads0 = ((0, 0),) * rank
            y = _convolve(
                y, params["pointwise_kernel"], rank, strides=ones, pads=pads0, dilation=ones
            )
        return affine.output(y, params), state

    return Layer(init, apply, name)


_EXAMPLE_INPUT = {1: (2, 9, 3), 2: (2, 9, 9, 3), 3: (2, 9, 9, 9, 3)}


def _kind(
    impl,
    class_name: str,
    name: str,
    doc: str,
    example: str,
    kernel,
    out,
    *,
    shown="kernel",
    hide=(),
    weight_order=("kernel", "bias"),
):
    """The ``rank -> factory`` maker of one convolution kind: ``impl`` as the registered
    public factory of that rank (``class_name`` and ``name`` take the rank at ``{}``).
    The docstring is ``doc`` and ``_EXAMPLE``, which calls the layer with ``example`` and
    shows the ``shown`` param, of shape ``kernel`` ``(window, in, out)``, and the output,
    of shape ``out`` ``(size, channels)``, per spatial axis."""

    def factory(rank: int):
        shape = _EXAMPLE_INPUT[rank]
        return _spatial.register_ranked(
            _spatial.ranked(impl, rank, name.format(rank), hide=hide),
            class_name.format(rank),
            doc + _EXAMPLE,
            rank=rank,
            weight_order=weight_order,
            args=example,
            shown=shown,
            out_layout=_spatial.layout(rank).replace("channels", "filters"),
            k="kernel_size" if rank == 1 else "*kernel_size",
            shape=shape,
            ones=", ".join(["1"] * rank),
            causal=', ``n`` for ``"causal"`` (left padding only)' if rank == 1 else "",
            kernel_shape=(kernel[0],) * rank + tuple(kernel[1:]),
            out_shape=(shape[0],) + (out[0],) * rank + (out[1],),
        )

    return factory


# The docstring example of every kind: its constructor arguments, and the param shown.
_EXAMPLE = """

    >>> import jax, jax.numpy as jnp, fnn
    >>> layer = fnn.layers.{cls}({args})
    >>> x = jnp.ones({shape})
    >>> params, state = layer.init(jax.random.key(0), x)
    >>> params["{shown}"].shape, layer.apply(params, state, x)[0].shape
    ({kernel_shape}, {out_shape})
    """

_CONV_DOC = """{rank}-D convolution (cross-correlation, as in Keras):
    ``{layout} -> {out_layout}``.

    Output size per axis: ``floor((n - d*(k-1) - 1) / s) + 1`` for ``padding="valid"``,
    ``ceil(n / s)`` for ``"same"``{causal}; explicit padding takes an int, {rank} ints or
    {rank} ``(before, after)`` pairs. ``groups`` splits the channels into independent groups.

    Params (Keras layout): ``kernel [{k}, in_channels / groups, filters]``, ``bias [filters]``."""


_STRIDED = '8, 3, strides=2, padding="same"'
_conv_factory = _kind(_conv, "Conv{}D", "conv{}d", _CONV_DOC, _STRIDED, (3, 3, 8), (5, 8))

_TRANSPOSE_DOC = """{rank}-D transposed convolution (the gradient of a strided convolution):
    ``{layout} -> {out_layout}``.

    Output size per axis as in Keras (``k`` dilated): ``(n - 1) * s + max(k, s)`` for
    ``padding="valid"``, ``n * s`` for ``"same"``; with ``output_padding`` p (< s),
    ``(n - 1) * s + k - 2 * pad + p`` where pad is 0 (valid) or ``k // 2`` (same).

    Params (Keras layout): ``kernel [{k}, filters, in_channels]``, ``bias [filters]``."""


_conv_transpose_factory = _kind(
    _conv_transpose,
    "Conv{}DTranspose",
    "conv{}d_transpose",
    _TRANSPOSE_DOC,
    _STRIDED,
    (3, 8, 3),
    (18, 8),
)

_DEPTHWISE_DOC = """{rank}-D depthwise convolution: each input channel convolved with its own
    ``depth_multiplier`` kernels: ``{layout} -> [..., channels * depth_multiplier]``.

    Output channel ``c * depth_multiplier + m`` comes from input channel c (Keras order);
    padding and output sizes as in ``Conv{rank}D``.

    Params (Keras layout): ``kernel [{k}, in_channels, depth_multiplier]``,
    ``bias [in_channels * depth_multiplier]``."""


_depthwise_factory = _kind(
    _depthwise,
    "DepthwiseConv{}D",
    "depthwise_conv{}d",
    _DEPTHWISE_DOC,
    "3, depth_multiplier=2",
    (3, 3, 2),
    (7, 6),
    hide=("filters", "pointwise_initializer"),
)

_SEPARABLE_DOC = """{rank}-D separable convolution: a depthwise convolution (``depth_multiplier``
    kernels per channel) followed by a pointwise (1x1) convolution to ``filters``:
    ``{layout} -> {out_layout}``. Padding and output sizes as in ``Conv{rank}D``.

    Params (Keras layout): ``depthwise_kernel [{k}, in_channels, depth_multiplier]``,
    ``pointwise_kernel [{ones}, in_channels * depth_multiplier, filters]``, ``bias [filters]``."""


def _separable(
    rank,
    filters,
    kernel_size,
    strides=1,
    padding="valid",
    dilation_rate=1,
    depth_multiplier=1,
    activation=None,
    use_bias: bool = True,
    depthwise_initializer="glorot_uniform",
    pointwise_initializer="glorot_uniform",
    bias_initializer="zeros",
    dtype=None,
    name: str = "separable_conv",
) -> Layer:
    """Depthwise convolution followed by a 1x1 one to ``filters`` (Keras's argument order)."""
    return _depthwise(**locals())


_separable_factory = _kind(
    _separable,
    "SeparableConv{}D",
    "separable_conv{}d",
    _SEPARABLE_DOC,
    "8, 3, depth_multiplier=2",
    (1, 6, 8),
    (7, 8),
    shown="pointwise_kernel",
    weight_order=("depthwise_kernel", "pointwise_kernel", "bias"),
)

Conv1D, Conv2D, Conv3D = (_conv_factory(r) for r in (1, 2, 3))
Conv1DTranspose, Conv2DTranspose, Conv3DTranspose = (_conv_transpose_factory(r) for r in (1, 2, 3))
DepthwiseConv1D, DepthwiseConv2D = (_depthwise_factory(r) for r in (1, 2))
SeparableConv1D, SeparableConv2D = (_separable_factory(r) for r in (1, 2))
