"""What every implementation shares: the ``Bench`` handle the worker times, the step
loops, and the device copies of the data pool."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.scenarios import MULTI


class UnavailableError(Exception):
    """The implementation cannot run here (a layer or API it needs is missing)."""


@dataclasses.dataclass
class Bench:
    """``run(n)`` trains ``n`` steps and returns once their results are ready
    (``block_until_ready``); ``unit`` is the number of steps of one execution,
    so ``run(unit)`` is the first call (the one that compiles)."""

    run: Callable[[int], None]
    unit: int = 1
    note: str = ""  # shown beside the figures (e.g. a stand-in implementation)
    # fit-style runs may compile per dataset length: warm up on a full block first.
    warm_block: bool = False
    # (jitted step, example arguments) for static inspection (benchmarks.hlo), if any.
    lowerable: tuple | None = None


def step_loop(
    step: Callable, carry: Any, xs: Sequence, ys: Sequence, unit: int = 1, *, pack: bool = False
) -> Bench:
    """Python loop over ``carry, aux = step(carry, x, y)`` (``step(carry, (x, y))`` if
    ``pack``), cycling through the batches ``xs``/``ys``; each call trains ``unit`` steps.
    Blocks on the carry and the last aux."""
    import jax

    holder = [carry]

    def run(n: int) -> None:
        c, aux = holder[0], None
        k = len(xs)
        if pack:
            for i in range(n // unit):
                c, aux = step(c, (xs[i % k], ys[i % k]))
        else:
            for i in range(n // unit):
                c, aux = step(c, xs[i % k], ys[i % k])
        jax.block_until_ready((c, aux))
        holder[0] = c

    example = (carry, (xs[0], ys[0])) if pack else (carry, xs[0], ys[0])
    return Bench(run, unit, lowerable=(step, example))


def device_pool(x: np.ndarray, y: np.ndarray, unit: int = 1, layout=None):
    """The pool as lists of device arrays: single batches (``unit=1``), or groups of
    ``MULTI`` stacked batches ``[MULTI, batch, ...]`` for the multi-step variants.
    ``layout`` optionally maps one host batch to the framework's layout first."""
    import jax.numpy as jnp

    if layout is not None:
        x = np.stack([layout(b) for b in x])
    if unit == 1:
        return [jnp.asarray(b) for b in x], [jnp.asarray(b) for b in y]
    assert unit == MULTI and len(x) % MULTI == 0
    xg = x.reshape(-1, MULTI, *x.shape[1:])
    yg = y.reshape(-1, MULTI, *y.shape[1:])
    return [jnp.asarray(b) for b in xg], [jnp.asarray(b) for b in yg]
