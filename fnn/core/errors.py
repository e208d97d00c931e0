"""Error classes and check helpers: one message style for every layer.

Messages read ``"<layer>: expected <what>, got <what> (shape ...)"`` plus a hint,
and are raised in Python before XLA sees the arrays.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

# At most this many characters of a value's repr in any message.
MAX_REPR = 300

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 120, 120, 60


def bounded_repr(value: object, limit: int = MAX_REPR) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, without ever building the whole
    repr (a YAML document of nested anchors can expand to gigabytes).

    >>> bounded_repr(list(range(100)))
    '[0, 1, 2, 3, 4, 5, ...]'
    >>> len(bounded_repr("x" * 10_000)) <= 300
    True
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FnnError(ValueError):
    """Base class of fnn's user-facing errors (a ``ValueError``)."""


class ShapeError(FnnError):
    """An input's shape or rank does not fit a layer or its parameters."""


class ConfigError(FnnError):
    """A constructor argument, name or config value is invalid."""


def closest(name: str, valid: Iterable[str]) -> str:
    """A ``" Did you mean 'x'?"`` hint for a misspelled ``name`` (or ``""``)."""
    match = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" Did you mean {match[0]!r}?" if match else ""


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ConfigError:
    """Error for an unknown string identifier, listing the valid ones."""
    valid = sorted(valid)
    return ConfigError(
        f"unknown {kind} {bounded_repr(name)}.{closest(str(name)[:100], valid)} Valid {kind}s: "
        f"{', '.join(valid)}."
    )


def lookup(kind: str, identifier, table: Mapping, aliases: Mapping = MappingProxyType({})):
    """``identifier`` itself if callable, else ``table[name]`` (after ``aliases``); a
    ``ConfigError`` listing the valid names otherwise (activations, initializers)."""
    if callable(identifier):
        return identifier
    if isinstance(identifier, str):
        key = aliases.get(identifier, identifier)
        if key in table:
            return table[key]
        raise unknown_name(kind, identifier, table)
    raise ConfigError(f"expected an {kind} name or callable, got {type(identifier).__name__}.")


def shape_of(x) -> tuple[int, ...]:
    """Shape of an array, tracer or ``jax.ShapeDtypeStruct``."""
    return tuple(getattr(x, "shape", ()))


def check_rank(
    layer: str,
    x,
    *,
    rank: int | None = None,
    min_rank: int | None = None,
    layout: str | None = None,
    argument: str = "inputs",
) -> None:
    """Raise ``ShapeError`` unless ``x`` has exactly ``rank`` (or at least ``min_rank``) dims.

    ``layout`` names the expected axes, e.g. ``"[batch, height, width, channels]"``.
    """
    shape = shape_of(x)
    ndim = len(shape)
    if rank is not None and ndim != rank:
        want = layout or f"rank {rank}"
        raise ShapeError(
            f"{layer}: expected {argument} of rank {rank} {want}, got rank {ndim} (shape {shape})."
        )
    if min_rank is not None and ndim < min_rank:
        want = f" {layout}" if layout else ""
        raise ShapeError(
            f"{layer}: expected {argument} of rank >= {min_rank}{want}, got rank {ndim} "
            f"(shape {shape})."
        )


def check_last_dim(layer: str, x, expected: int, *, param: str, param_shape: Sequence[int]) -> None:
    """Raise ``ShapeError`` unless ``x.shape[-1] == expected`` (the width the params were built for)."""
    shape = shape_of(x)
    if not shape or shape[-1] != expected:
        hint = (
            " Did you forget a Flatten() before this layer?"
            if len(shape) > 2 and shape[-1] != expected
            else ""
        )
        raise ShapeError(
            f"{layer}: expected inputs with last dimension {expected} ({param} has shape "
            f"{tuple(param_shape)}), got inputs of shape {shape}.{hint}"
        )


def check_num_inputs(layer: str, inputs: Sequence, expected: int) -> None:
    """Raise ``ShapeError`` unless exactly ``expected`` inputs were given."""
    if len(inputs) != expected:
        raise ShapeError(f"{layer}: expected {expected} input(s), got {len(inputs)}.")


def check_mask(layer: str, x, mask, *, what: str = "a mask") -> None:
    """Raise ``ShapeError`` unless ``mask`` (if given) is ``[batch, time]`` of inputs ``x``."""
    if mask is None:
        return
    want = shape_of(x)[:2]
    if shape_of(mask) != want:
        raise ShapeError(
            f"{layer}: expected {what} of shape {want} ([batch, time] of the inputs), got shape "
            f"{shape_of(mask)} (inputs shape {shape_of(x)}); True marks real steps."
        )
