"""Ensembles and hyper-parameter sweeps as one vmapped program.

A fnn model is a pure function of a params pytree, so n models are one model over params
with a leading ``[n]`` member axis: ``ensemble(layer, n)`` vmaps ``init`` over n keys and
``apply`` over the members. Training is the same: ``init_ensemble_train_state`` is
``init_train_state`` vmapped over n keys, ``make_ensemble_train_step`` is
``make_train_step`` vmapped over the member axis of the ``TrainState`` (the batch shared,
or each member's own ``[n, batch, ...]``), so n members train in one compiled step.

A sweep is an ensemble whose members differ in optimizer hyperparameters: the optimizer is
``optax.inject_hyperparams`` over a named fnn optimizer, so each member's learning rate is
a value in its ``opt_state`` (``[n]`` after vmap), not a constant baked into the program;
new sweep values reuse the compiled step (``CompileCounter`` counts XLA compiles).
Values of the layer or loss (a dropout rate, label smoothing) are values too:
``make_hyper_steps`` builds each member's layer and loss inside the traced step from the
values its ``TrainState`` carries (``hyper_state``).

>>> import jax, jax.numpy as jnp, fnn
>>> from fnn.layers import Dense
>>> members = fnn.train.ensemble(Dense(2), 4)
>>> params, state = members.init(jax.random.key(0), jnp.zeros((5, 3)))
>>> params["kernel"].shape, members.apply(params, state, jnp.ones((5, 3)))[0].shape
((4, 3, 2), (4, 5, 2))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.core.errors import ConfigError, ShapeError
from fnn.core.layer import Layer
from fnn.training import loop as loop_lib
from fnn.training import optimizers as optimizers_lib
from fnn.training import step as step_lib

__all__ = [
    "CompileCounter",
    "compute_member_metrics",
    "ensemble",
    "hyper_state",
    "init_ensemble_train_state",
    "init_sweep_train_state",
    "make_ensemble_train_step",
    "make_hyper_steps",
    "member_orders",
    "predictive_stats",
    "set_sweep_hyperparams",
    "sweep_optimizer",
    "sweep_table",
]


def _check_members(what: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"{what}: expected a member count n >= 1, got {n!r}.")
    return int(n)


def ensemble(layer: Layer, n: int, *, name: str | None = None) -> Layer:
    """``n`` independently initialised copies of ``layer`` as one layer.

    ``init(key, *inputs)``: ``layer.init`` vmapped over ``jax.random.split(key, n)``, so
    every leaf of params/state gets a leading ``[n]`` axis (member i is ``layer.init`` with
    key i). ``apply(params, state, *inputs)``: the shared inputs through every member,
    ``[batch, ...] -> [n, batch, ...]`` (each member its own dropout key).
    """
    n = _check_members("ensemble", n)
    name = name or f"{layer.name}_ensemble"

    def init(key, *inputs):
        # One compiled program instead of n-wide eager ops (which compile one by one).
        members = jax.jit(jax.vmap(lambda k: layer.init(k, *inputs)))
        return members(jax.random.split(key, n))

    def apply(params, state, *inputs, rng=None, train=False):
        lead = {jnp.shape(a)[0] for a in jax.tree.leaves(params)}
        if lead != {n}:
            raise ShapeError(
                f"{name}: expected params with a leading member axis of size {n}, got leading "
                f"sizes {sorted(lead)}. Build them with {name}.init."
            )
        keys = None if rng is None else jax.random.split(rng, n)

        def one(p, s, k):
            return layer.apply(p, s, *inputs, rng=k, train=train)

        return jax.vmap(one)(params, state, keys)

    return Layer(init, apply, name)


def init_ensemble_train_state(
    layer: Layer, optimizer, key: jax.Array, n: int, *example_inputs, **kwargs
) -> step_lib.TrainState:
    """``init_train_state`` vmapped over ``jax.random.split(key, n)``: a ``TrainState`` whose
    every leaf has a leading ``[n]`` member axis; member i equals
    ``init_train_state(layer, optimizer, keys[i], *example_inputs, **kwargs)``."""
    n = _check_members("init_ensemble_train_state", n)

    def one(k):
        return step_lib.init_train_state(layer, optimizer, k, *example_inputs, **kwargs)

    return jax.jit(jax.vmap(one))(jax.random.split(key, n))


def make_ensemble_train_step(
    layer: Layer, loss, optimizer, metrics: Sequence = (), *, same_batch: bool = True, **kwargs
) -> Callable:
    """``make_train_step(...)`` vmapped over the member axis of the ``TrainState``.

    ``same_batch=True``: every member sees the batch ``(x [batch, ...], y)``; ``False``:
    the batch carries a member axis, ``x [n, batch, ...]`` (see ``member_orders`` for each
    member's own shuffle). ``logs`` values get a leading ``[n]``.
    """
    step = step_lib.make_train_step(layer, loss, optimizer, metrics, **kwargs)
    return jax.vmap(step, in_axes=(0, None if same_batch else 0))


def compute_member_metrics(metric_states, metrics: Sequence = ()) -> dict[str, np.ndarray]:
    """``{name: [n] values}``: ``compute_metrics`` of every member's metric states."""
    out = jax.vmap(lambda ms: step_lib.compute_metrics(ms, metrics))(metric_states)
    return {k: np.asarray(v) for k, v in out.items()}


def member_orders(
    num_examples: int, n: int, *, seed: int, epoch: int, shuffle: bool = True
) -> np.ndarray:
    """``[n, num_examples]`` sample orders of one epoch: member i shuffles as a single run
    with seed ``seed + i`` (``fnn.training.loop.epoch_order``; ``shuffle=False``: every
    member in order).

    >>> member_orders(5, 2, seed=0, epoch=0, shuffle=False).tolist()
    [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    """
    n = _check_members("member_orders", n)
    return np.stack(
        [
            loop_lib.epoch_order(num_examples, seed=seed + i, epoch=epoch, shuffle=shuffle)
            for i in range(n)
        ]
    )


def predictive_stats(member_outputs, *, from_logits: bool = True) -> dict[str, jax.Array]:
    """Combined prediction of an ensemble: ``[n, batch, classes]`` logits (or
    probabilities) -> ``{"probs": [batch, classes] mean of the members' probabilities,
    "entropy": [batch] entropy of that mean (total uncertainty, nats),
    "mutual_information": [batch] entropy minus the members' mean entropy (their
    disagreement), "variance": [batch, classes] variance of the probabilities}``.
    """
    out = jnp.asarray(member_outputs)
    if out.ndim < 3:
        raise ShapeError(
            f"predictive_stats: expected member outputs [n, batch, classes], got shape {out.shape}."
        )
    probs = jax.nn.softmax(out, axis=-1) if from_logits else out
    mean = jnp.mean(probs, axis=0)

    def entropy(p):
        return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)

    total = entropy(mean)
    return {
        "probs": mean,
        "entropy": total,
        "mutual_information": total - jnp.mean(entropy(probs), axis=0),
        "variance": jnp.var(probs, axis=0),
    }


# --------------------------------------------------------------------------- sweeps


def sweep_optimizer(
    name: str | Callable[..., optax.GradientTransformation],
    hyperparams: Mapping[str, Any],
    **fixed,
) -> optax.GradientTransformation:
    """The fnn optimizer ``name`` (``fnn.optimizers.get(name, **fixed, **hyperparams)``)
    under ``optax.inject_hyperparams``: the ``hyperparams`` (``learning_rate``, or any
    numeric argument of that optimizer such as ``beta_1``, ``momentum``, adamw's
    ``weight_decay``) live in ``opt_state.hyperparams``, values rather than constants of
    the compiled program. ``name`` may instead be a factory ``(**fixed, **hyperparams) ->
    GradientTransformation`` (e.g. one that builds a schedule peaking at the swept
    ``learning_rate``); it must accept the values as arrays (no Python ``if`` on them)."""
    if isinstance(name, str):

        def build(**values):
            return optimizers_lib.get(name, **fixed, **values)

    elif callable(name):

        def build(**values):
            return name(**fixed, **values)

    else:
        raise ConfigError(f"sweep_optimizer: expected an optimizer name or factory, got {name!r}.")

    # inject_hyperparams binds its arguments to the factory's signature, so spell it out.
    build.__signature__ = inspect.Signature(
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in hyperparams]
    )
    return optax.inject_hyperparams(build)(**hyperparams)


def init_sweep_train_state(
    layer: Layer,
    optimizer: str | Callable[..., optax.GradientTransformation],
    key: jax.Array,
    *example_inputs,
    hyperparams: Mapping[str, Sequence[float]],
    same_init: bool = True,
    fixed: Mapping[str, Any] | None = None,
    **kwargs,
) -> tuple[step_lib.TrainState, optax.GradientTransformation]:
    """``(train_state, optimizer)`` for a sweep: member i trains with ``{k: v[i]}`` from
    ``hyperparams`` (equal-length sequences, e.g. ``{"learning_rate": [1e-3, 3e-3]}``).

    ``optimizer``: a name or a factory, as ``sweep_optimizer`` takes. Pass the returned
    optimizer to ``make_ensemble_train_step``. ``same_init``: every member
    starts from ``key``'s initialisation (a fair comparison; member i then equals
    ``init_train_state(layer, optimizer_i, key, ...)``), else member i uses
    ``split(key, n)[i]``. Changing the values needs no recompilation of the step.
    """
    if not hyperparams:
        raise ConfigError("init_sweep_train_state: expected hyperparams={name: [values]}.")
    sizes = {k: len(v) for k, v in hyperparams.items()}
    if len(set(sizes.values())) != 1:
        raise ConfigError(
            f"init_sweep_train_state: expected one value per member for every swept "
            f"hyperparameter, got lengths {sizes}."
        )
    n = _check_members("init_sweep_train_state", next(iter(sizes.values())))
    values = {k: jnp.asarray(v, jnp.float32) for k, v in hyperparams.items()}
    tx = sweep_optimizer(optimizer, {k: v[0] for k, v in values.items()}, **dict(fixed or {}))
    keys = jnp.stack([key] * n) if same_init else jax.random.split(key, n)

    def one(k, vals):
        ts = step_lib.init_train_state(layer, tx, k, *example_inputs, **kwargs)
        return set_sweep_hyperparams(ts, vals)

    return jax.jit(jax.vmap(one))(keys, values), tx


def set_sweep_hyperparams(
    train_state: step_lib.TrainState, values: Mapping[str, Any]
) -> step_lib.TrainState:
    """``train_state`` whose optimizer (a ``sweep_optimizer``) runs with ``values``
    (``{name: scalar}``; vmap it over ``[n]`` values to make the members of a sweep)."""
    hp = dict(train_state.opt_state.hyperparams)
    unknown = sorted(set(values) - set(hp))
    if unknown:
        raise ConfigError(
            f"set_sweep_hyperparams: the optimizer injects {sorted(hp)}, not {unknown}."
        )
    hp.update({k: jnp.asarray(v).astype(jnp.asarray(hp[k]).dtype) for k, v in values.items()})
    return train_state._replace(opt_state=train_state.opt_state._replace(hyperparams=hp))


def hyper_state(train_state: step_lib.TrainState, values: Mapping[str, Any]) -> step_lib.TrainState:
    """``train_state`` whose ``state`` also carries a member's layer/loss values for
    ``make_hyper_steps``: ``{"model": the layer's state, "hyper": {name: float32 scalar}}``
    (vmap it over ``[n]`` values to make the members of a sweep)."""
    hyper = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    return train_state._replace(state={"model": train_state.state, "hyper": hyper})


def make_hyper_steps(
    build: Callable[[Mapping[str, jax.Array]], tuple[Layer, Any]],
    optimizer,
    metrics: Sequence = (),
) -> tuple[Callable, Callable]:
    """``(train_step, eval_step)`` of a member whose layer and loss take traced values:
    ``build(values) -> (layer, loss)`` is called inside the step with the ``{name: scalar}``
    its state carries (``hyper_state``), e.g. a layer ``fnn.core.spec.rebuild`` with a
    ``Dropout`` rate of ``values["rate"]`` and a loss with ``label_smoothing=`` a value.
    The steps are ``make_train_step``'s and ``make_eval_step``'s of that layer and loss
    (same signatures), the values passed through unchanged; vmapped over members (e.g.
    ``fnn.training.loop.Trainer(members=n, steps=...)``), new values reuse the program.

    For example (members ``jax.vmap(hyper_state, in_axes=(None, 0))(ts, {"rate": [n],
    "smoothing": [n]})``, trained by ``jax.vmap(train_step, in_axes=(0, None))``)::

        model = fnn.serial(Dense(64), Dropout(0.1), Dense(10))

        def build(v):
            drop = rebuild(model.children[1][1], rate=v["rate"])
            layers = (model.children[0][1], drop, model.children[2][1])
            loss = fnn.losses.SparseCategoricalCrossentropy(
                from_logits=True, label_smoothing=v["smoothing"]
            )
            return rebuild(model, layers=layers), loss

        train_step, eval_step = make_hyper_steps(build, "adam")
    """

    def values(state) -> Mapping[str, jax.Array]:
        if not isinstance(state, Mapping) or set(state) != {"model", "hyper"}:
            raise ConfigError(
                "make_hyper_steps: expected a train state made by hyper_state "
                "(state {'model': ..., 'hyper': {name: value}})."
            )
        return state["hyper"]

    def train_step(train_state, batch):
        hyper = values(train_state.state)
        layer, loss = build(hyper)
        step = step_lib.make_train_step(layer, loss, optimizer, metrics)
        new, logs = step(train_state._replace(state=train_state.state["model"]), batch)
        return new._replace(state={"model": new.state, "hyper": hyper}), logs

    def eval_step(metric_states, params, state, batch):
        layer, loss = build(values(state))
        step = step_lib.make_eval_step(layer, loss, metrics)
        return step(metric_states, params, state["model"], batch)

    return train_step, eval_step


def sweep_table(hyperparams: Mapping[str, Sequence[float]], results: Mapping[str, Any]) -> str:
    """A Markdown table: one row per member, its hyperparameters then its ``results``
    (``{metric: [n] values}``, e.g. from ``compute_member_metrics``)."""
    cols = list(hyperparams) + list(results)
    rows = [
        [f"{float(hyperparams[c][i]):.4g}" for c in hyperparams]
        + [f"{float(np.asarray(results[c])[i]):.4f}" for c in results]
        for i in range(len(next(iter(hyperparams.values()))))
    ]
    lines = ["| member | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    lines += [f"| {i} | " + " | ".join(r) + " |" for i, r in enumerate(rows)]
    return "\n".join(lines)


class CompileCounter:
    """Counts XLA backend compilations inside a ``with`` block (``jax.monitoring``'s
    compile-duration event), e.g. to check that new sweep values reuse the program.

    >>> import jax, jax.numpy as jnp, fnn
    >>> f = jax.jit(lambda x: x * 2)
    >>> a, b = jnp.ones(3), jnp.zeros(3)  # outside: creating them may compile too
    >>> with fnn.train.CompileCounter() as c:
    ...     _ = f(a); _ = f(b)
    >>> c.count
    1
    """

    _active: ClassVar[list[CompileCounter]] = []
    _registered: ClassVar[bool] = False

    def __init__(self):
        self.count = 0

    @classmethod
    def _listen(cls, event, duration, **kwargs):
        del duration, kwargs
        if event == "/jax/core/compile/backend_compile_duration":
            for counter in cls._active:
                counter.count += 1

    def __enter__(self):
        if not CompileCounter._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileCounter._listen)
            CompileCounter._registered = True
        CompileCounter._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileCounter._active.remove(self)
        return False
