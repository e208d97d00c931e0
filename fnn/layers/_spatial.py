"""Shared argument and shape handling for the channels-last spatial layers
(convolution, pooling, padding, cropping, upsampling) of any spatial rank."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence

from fnn.core.errors import ConfigError, ShapeError, check_rank, shape_of
from fnn.core.layer import register_layer

_AXES = {1: ("steps",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def layout(rank: int) -> str:
    """``"[batch, height, width, channels]"`` for rank 2, and so on."""
    return "[batch, " + ", ".join(_AXES[rank]) + ", channels]"


def dimension_numbers(rank: int) -> tuple[str, str, str]:
    """``conv_general_dilated`` specs: inputs NWC/NHWC/NDHWC, kernel [*kernel_size, in, out]."""
    spatial = "DHW"[3 - rank :]
    return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


def check_input(layer: str, x, rank: int) -> tuple[tuple[int, ...], int]:
    """Check ``x`` is ``[batch, *spatial, channels]``; return ``(spatial, channels)``."""
    check_rank(layer, x, rank=rank + 2, layout=layout(rank))
    shape = shape_of(x)
    return shape[1:-1], shape[-1]


def is_int(value, minimum: int = 0) -> bool:
    """True for a Python or numpy integer (not a bool) ``>= minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def int_tuple(value, rank: int, argument: str, layer: str, *, minimum: int = 1) -> tuple[int, ...]:
    """An int or ``rank`` ints as a tuple of ints ``>= minimum`` (Keras argument forms)."""
    items = (value,) * rank if isinstance(value, numbers.Integral) else value
    ok = isinstance(items, Sequence) and len(items) == rank
    ok = ok and all(is_int(v, minimum) for v in items)
    if not ok:
        what = "a non-negative int" if minimum == 0 else "a positive int"
        raise ConfigError(
            f"{layer}: expected {argument} to be {what} or a tuple of {rank} such ints, "
            f"got {value!r}."
        )
    return tuple(int(v) for v in items)


def int_pairs(value, rank: int, argument: str, layer: str) -> tuple[tuple[int, int], ...]:
    """Per-axis ``(before, after)`` amounts from the Keras forms: an int (every side),
    ``rank`` ints (symmetric per axis) or ``rank`` pairs; for rank 1 a pair means
    ``(before, after)``, as in Keras ``ZeroPadding1D`` and ``Cropping1D``."""

    def is_pair(v):
        return isinstance(v, Sequence) and len(v) == 2 and all(is_int(u) for u in v)

    if is_int(value):
        return ((int(value), int(value)),) * rank
    if rank == 1 and is_pair(value):
        return ((int(value[0]), int(value[1])),)
    if isinstance(value, Sequence) and len(value) == rank:
        if all(is_int(v) for v in value):
            return tuple((int(v), int(v)) for v in value)
        if all(is_pair(v) for v in value):
            return tuple((int(a), int(b)) for a, b in value)
    forms = (
        "an int or a pair (before, after)"
        if rank == 1
        else f"an int, {rank} ints or {rank} pairs (before, after)"
    )
    raise ConfigError(
        f"{layer}: expected {argument} as {forms} of non-negative ints, got {value!r}."
    )


def padding_arg(padding, rank: int, layer: str, *, explicit: bool = True, causal: bool = False):
    """Normalise ``padding``: ``"valid"``, ``"same"`` (``"causal"`` where allowed) or, when
    ``explicit``, per-axis ``(before, after)`` pairs in the forms of ``int_pairs``."""
    if isinstance(padding, str):
        allowed = ["valid", "same"] + (["causal"] if causal else [])
        if padding.lower() in allowed:
            return padding.lower()
        more = " or explicit ints/pairs" if explicit else ""
        raise ConfigError(
            f"{layer}: expected padding {' or '.join(repr(a) for a in allowed)}{more}, "
            f"got {padding!r}."
        )
    if not explicit:
        raise ConfigError(f"{layer}: expected padding 'valid' or 'same', got {padding!r}.")
    return int_pairs(padding, rank, "padding", layer)


def effective_window(window: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Extent of a dilated window: ``d * (k - 1) + 1`` per axis."""
    return tuple(d * (k - 1) + 1 for k, d in zip(window, dilation))


def resolve_pads(padding, spatial, window, strides) -> tuple[tuple[int, int], ...]:
    """Explicit ``(before, after)`` pads for ``padding`` on inputs of size ``spatial``.

    ``"same"`` pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` in total, the extra one
    after (TensorFlow/Keras); ``"causal"`` pads ``k - 1`` before; ``window`` is dilated.
    """
    if padding == "valid":
        return ((0, 0),) * len(spatial)
    if padding == "causal":
        return tuple((k - 1, 0) for k in window)
    if padding == "same":
        pads = []
        for n, k, s in zip(spatial, window, strides):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return tuple(padding)


def check_window_fits(layer: str, x, window, pads, *, what: str = "kernel_size") -> None:
    """Raise ``ShapeError`` when the (dilated) window is larger than the padded input."""
    spatial = shape_of(x)[1:-1]
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, pads))
    if any(p < k for p, k in zip(padded, window)):
        extra = "" if padded == spatial else f" (padded to {padded})"
        raise ShapeError(
            f"{layer}: expected spatial size at least the window {tuple(window)} "
            f"({what}), got inputs of shape {shape_of(x)}{extra}. "
            "Use padding='same', a smaller window, or larger inputs."
        )


def ranked(impl: Callable, first, name: str, *, hide: Sequence[str] = ()) -> Callable:
    """``impl(first, ...)`` as a public factory: ``first`` is a spatial rank (convolutions)
    or a cell (recurrent layers). Its signature is ``impl``'s without the first parameter
    and without the ``hide`` ones (which keep ``impl``'s defaults), with ``name`` as the
    default layer name. Configs and saved models bind against that signature, so it is
    written once, on the shared implementation (which takes no ``*args``)."""
    signature = inspect.signature(impl)
    parameters = [
        p.replace(default=name) if p.name == "name" else p
        for p in list(signature.parameters.values())[1:]
        if p.name not in hide
    ]
    signature = signature.replace(parameters=parameters)

    def factory(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        # By keyword: hidden parameters may sit between the visible ones.
        return impl(first, **bound.arguments)

    factory.__signature__ = signature
    # Doctests are collected from the module that defines the implementation.
    factory.__module__ = impl.__module__
    return factory


def register_ranked(
    fn: Callable, class_name: str, doc: str, *, rank: int, weight_order=None, **values
) -> Callable:
    """Name ``fn`` ``class_name``, fill its docstring template and ``register_layer`` it:
    one N-d implementation serves the 1-D, 2-D and 3-D factories."""
    fn.__name__ = fn.__qualname__ = class_name
    fn.__doc__ = doc.format(cls=class_name, rank=rank, layout=layout(rank), **values)
    return register_layer(fn, weight_order=weight_order)
