"""Weight averaging: an exponential moving average of the params (EMA), stochastic weight
averaging (SWA) and model soups.

``with_ema`` and ``with_swa`` wrap an optimizer into an optax transformation whose state
also carries the averaged params (``opt_state.average``), updated after every step from
the new params ``params + updates``; pass the wrapped optimizer to both
``init_train_state`` and ``make_train_step`` and evaluate with
``averaged_params(train_state)``. The average starts from the initial params (as Keras's
``use_ema``), so it needs no bias correction.

>>> import jax, jax.numpy as jnp, optax, fnn
>>> opt = fnn.train.with_ema(optax.sgd(0.1), decay=0.9)
>>> params = {"w": jnp.ones(2)}
>>> state = opt.init(params)
>>> updates, state = opt.update({"w": jnp.ones(2)}, state, params)
>>> round(float(state.average["w"][0]), 4)  # 0.9 * 1 + 0.1 * 0.9
0.99
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fnn.core.errors import ConfigError
from fnn.training import optimizers as optimizers_lib

__all__ = ["AveragedState", "averaged_params", "uniform_soup", "with_ema", "with_swa"]


class AveragedState(NamedTuple):
    """State of ``with_ema``/``with_swa``: the wrapped optimizer's state, the number of
    updates seen, how many params went into a SWA average, and the average (params' tree)."""

    inner: Any
    count: jax.Array  # int32 scalar: updates seen
    n_averaged: jax.Array  # int32 scalar: params averaged so far (SWA; EMA keeps 0)
    average: Any


def _needs_params(params, what):
    if params is None:
        raise ConfigError(f"{what}: update needs params (optimizer.update(g, state, params)).")


def with_ema(optimizer, decay: float = 0.999) -> optax.GradientTransformation:
    """``optimizer`` plus ``average <- decay * average + (1 - decay) * new_params`` after each
    update (``average`` starts at the initial params)."""
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"with_ema: expected 0 <= decay < 1, got decay={decay}.")
    inner = optimizers_lib.get(optimizer)

    def init(params):
        zero = jnp.zeros([], jnp.int32)
        return AveragedState(inner.init(params), zero, zero, jax.tree.map(jnp.asarray, params))

    def update(updates, state, params=None):
        _needs_params(params, "with_ema")
        updates, inner_state = inner.update(updates, state.inner, params)
        new = optax.apply_updates(params, updates)
        avg = jax.tree.map(
            lambda a, p: (decay * a + (1.0 - decay) * p).astype(a.dtype), state.average, new
        )
        return updates, AveragedState(inner_state, state.count + 1, state.n_averaged, avg)

    return optax.GradientTransformation(init, update)


def with_swa(optimizer, *, start: int, every: int = 1) -> optax.GradientTransformation:
    """``optimizer`` plus the uniform average of the params after updates ``start``,
    ``start + every``, ... (1-based update counts; Izmailov et al., 2018). Until
    ``start`` the average holds the current params. BatchNorm statistics are not
    recomputed for the averaged params (re-run the data through the model for that)."""
    if start < 1 or every < 1:
        raise ConfigError(f"with_swa: expected start >= 1 and every >= 1, got {start}, {every}.")
    inner = optimizers_lib.get(optimizer)

    def init(params):
        zero = jnp.zeros([], jnp.int32)
        return AveragedState(inner.init(params), zero, zero, jax.tree.map(jnp.asarray, params))

    def update(updates, state, params=None):
        _needs_params(params, "with_swa")
        updates, inner_state = inner.update(updates, state.inner, params)
        new = optax.apply_updates(params, updates)
        count = state.count + 1
        take = (count >= start) & ((count - start) % every == 0)
        n = state.n_averaged + take.astype(jnp.int32)

        def avg(a, p):
            running = a + (p - a) / jnp.maximum(n, 1).astype(a.dtype)
            return jnp.where(take, running, jnp.where(n == 0, p, a)).astype(a.dtype)

        average = jax.tree.map(avg, state.average, new)
        return updates, AveragedState(inner_state, count, n, average)

    return optax.GradientTransformation(init, update)


def averaged_params(train_state):
    """The averaged params kept by ``with_ema``/``with_swa`` in ``train_state.opt_state``
    (a ``TrainState`` or an optimizer state)."""
    opt_state = getattr(train_state, "opt_state", train_state)
    if not isinstance(opt_state, AveragedState):
        raise ConfigError(
            "averaged_params: expected a train state built with with_ema(...) or "
            f"with_swa(...) as the optimizer, got opt_state {type(opt_state).__name__}."
        )
    return opt_state.average


def uniform_soup(params):
    """Uniform model soup (Wortsman et al., 2022): the leafwise mean of several members'
    params, given as a list of trees or one tree with a leading ``[n]`` member axis (as
    ``fnn.train.ensemble`` builds): ``[n, ...] -> [...]``."""
    if isinstance(params, list | tuple):
        if not params:
            raise ConfigError("uniform_soup: expected at least one member's params.")
        return jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), axis=0), *params)
    return jax.tree.map(lambda a: jnp.mean(a, axis=0).astype(a.dtype), params)
