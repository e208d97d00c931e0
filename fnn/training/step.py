"""The functional training core: a ``TrainState`` pytree and pure step functions.

``make_train_step(layer, loss, optimizer, metrics)`` returns a pure
``step(train_state, batch) -> (train_state, logs)``: ``jax.value_and_grad`` of the
loss, one optax update, a per-step key fold_in(rng, step), the metric states accumulated. Compile it with
``jit_step(step)`` (``jax.jit(step, donate_argnums=0)`` with the key kept out of the
outputs; plain ``jax.jit`` works too); ``make_multi_step`` runs K steps per compiled
call over batches stacked on a leading axis.

>>> import jax, jax.numpy as jnp, fnn
>>> from fnn.layers import Dense
>>> model = fnn.serial(Dense(16, activation="relu"), Dense(3))
>>> loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
>>> metrics = [fnn.metrics.get("accuracy", loss=loss)]
>>> ts = fnn.train.init_train_state(model, "adam", jax.random.key(0),
...                                 jnp.zeros((8, 4)), metrics=metrics)
>>> step = jax.jit(fnn.train.make_train_step(model, loss, "adam", metrics), donate_argnums=0)
>>> ts, logs = step(ts, (jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)))
>>> sorted(fnn.train.compute_metrics(ts.metric_states, metrics))
['accuracy', 'loss']
>>> int(ts.step)
1
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.core.errors import ConfigError, FnnError, ShapeError
from fnn.core.layer import ADDED_LOSS, Layer, output_shapes
from fnn.core.pytree import slash_path
from fnn.training import losses as losses_lib
from fnn.training import metrics as metrics_lib
from fnn.training import optimizers as optimizers_lib

PyTree = Any

# The running mean of the loss kept in every TrainState's metric_states["loss"].
LOSS_METRIC = metrics_lib.Mean("loss")


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree (donate it to ``jit``).

    ``step`` int32 scalar; ``params``/``state`` the layer's; ``opt_state`` optax's;
    ``rng`` the base PRNG key (step keys are ``fold_in(rng, step)``); ``metric_states`` ``{name: metric state}``
    including ``"loss"``. (Float16 loss scaling keeps its state in ``opt_state``: see
    ``fnn.mixed_precision.LossScaleOptimizer``.)
    """

    step: jax.Array
    params: PyTree
    state: PyTree
    opt_state: PyTree
    rng: jax.Array
    metric_states: dict[str, Any]


class NonFiniteLossError(FnnError, FloatingPointError):
    """The training loss became NaN or infinite."""


# --------------------------------------------------------------------------- paths


def tree_paths(tree) -> list[str]:
    """``"/"``-joined paths of every leaf, e.g. ``["dense/bias", "dense/kernel"]``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [slash_path(path) for path, _ in leaves]


def _map_with_path(fn, tree):
    return jax.tree_util.tree_map_with_path(lambda path, x: fn(slash_path(path), x), tree)


def _prefixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _subtree_names(tree) -> list[str]:
    names = set()
    for p in tree_paths(tree):
        names.update(_prefixes(p))
    return sorted(names)


def path_matcher(where, tree, *, what: str) -> Callable[[str, Any], bool]:
    """Predicate ``(path, leaf) -> bool`` from ``where``: a regex (or list of regexes)
    full-matched against a leaf's path or any of its ancestors' (``"dense"`` selects
    ``dense/kernel`` and ``dense/bias``), or a predicate ``(path, leaf) -> bool``.
    A pattern that selects nothing in ``tree`` is a ``ConfigError``.
    """
    if callable(where):
        return where
    patterns = [where] if isinstance(where, str) else list(where)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(
            f"{what}: expected a regex, a list of regexes or a predicate (path, leaf) -> bool, "
            f"got {where!r}."
        )
    compiled = [re.compile(p) for p in patterns]
    paths = tree_paths(tree)
    for pattern, regex in zip(patterns, compiled):
        if not any(regex.fullmatch(q) for p in paths for q in _prefixes(p)):
            raise ConfigError(
                f"{what}: pattern {pattern!r} matches no parameter. Parameter paths: "
                f"{', '.join(_subtree_names(tree))}."
            )

    def match(path, leaf):
        del leaf
        return any(r.fullmatch(q) for r in compiled for q in _prefixes(path))

    return match


# --------------------------------------------------------------------------- techniques


def freeze(optimizer, where) -> optax.GradientTransformation:
    """``optimizer`` with the parameters selected by ``where`` frozen: they get exactly zero
    updates and the optimizer allocates no state for them (``optax.multi_transform`` with
    ``set_to_zero``). ``where``: see ``path_matcher`` (regexes on ``"layer/param"`` paths,
    or a predicate). Pass the result to both ``init_train_state`` and ``make_train_step``.

    >>> import fnn
    >>> opt = fnn.train.freeze("adam", ["dense", "dense_1"])
    """
    optimizer = optimizers_lib.get(optimizer)

    def labels(params):
        match = path_matcher(where, params, what="freeze")
        return _map_with_path(lambda p, x: "frozen" if match(p, x) else "trainable", params)

    return optax.multi_transform({"trainable": optimizer, "frozen": optax.set_to_zero()}, labels)


def transfer_params(params, source, where=None):
    """``params`` with the leaves selected by ``where`` (default: every path present in both)
    copied from ``source`` (cast to ``params``' dtypes): reuse a trained body under a new
    head. Raises ``ShapeError`` naming the path on a shape mismatch, ``ConfigError`` if a
    selected path is missing from ``source`` or nothing is copied.
    """
    flat_source = dict(zip(tree_paths(source), jax.tree.leaves(source)))
    match = path_matcher(where, params, what="transfer_params") if where is not None else None
    copied = []

    def take(path, leaf):
        if match is None:
            if path not in flat_source:
                return leaf
        elif not match(path, leaf):
            return leaf
        elif path not in flat_source:
            raise ConfigError(
                f"transfer_params: expected {path!r} in the source params, got paths "
                f"{', '.join(_subtree_names(source))}."
            )
        value = flat_source[path]
        if jnp.shape(value) != jnp.shape(leaf):
            raise ShapeError(
                f"transfer_params: expected {path!r} of shape {jnp.shape(leaf)} (the new "
                f"model's), got shape {jnp.shape(value)} in the source. Select only the layers "
                "that keep their shape (where=...)."
            )
        copied.append(path)
        return jnp.asarray(value, dtype=jnp.result_type(leaf))

    out = _map_with_path(take, params)
    if not copied:
        raise ConfigError(
            "transfer_params: no parameter path is shared by the two models. New model: "
            f"{', '.join(_subtree_names(params))}; source: {', '.join(_subtree_names(source))}."
        )
    return out


def L1L2(l1: float = 0.0, l2: float = 0.0, where=r"(.*/)?kernel") -> Callable[[PyTree], Any]:
    """Regularization term ``l1 * sum|w| + l2 * sum w^2`` over the parameters selected by
    ``where`` (default: every ``kernel``, as Keras's ``kernel_regularizer``); pass it to
    ``make_train_step(..., regularizers=[...])`` and it is added to the loss.
    """

    def penalty(params):
        match = path_matcher(where, params, what="L1L2")
        total = jnp.zeros([], jnp.float32)
        for path, leaf in zip(tree_paths(params), jax.tree.leaves(params)):
            if match(path, leaf):
                leaf = leaf.astype(jnp.float32)
                if l1:
                    total = total + l1 * jnp.sum(jnp.abs(leaf))
                if l2:
                    total = total + l2 * jnp.sum(jnp.square(leaf))
        return total

    return penalty


def L1(l1: float = 0.01, where=r"(.*/)?kernel"):
    """``l1 * sum|w|`` over the selected parameters (Keras default 0.01)."""
    return L1L2(l1=l1, where=where)


def L2(l2: float = 0.01, where=r"(.*/)?kernel"):
    """``l2 * sum w^2`` over the selected parameters (Keras default 0.01, no 1/2)."""
    return L1L2(l2=l2, where=where)


# --------------------------------------------------------------------------- state


def init_metric_states(metrics: Sequence = (), *, loss=None) -> dict[str, Any]:
    """``{"loss": ..., name: metric.init(), ...}`` for ``metrics`` (``Metric`` objects, or
    names resolved with ``fnn.metrics.get(..., loss=loss)``)."""
    metrics = _resolve_metrics(metrics, loss)
    return {"loss": LOSS_METRIC.init(), **{m.name: m.init() for m in metrics}}


def _resolve_metrics(metrics, loss=None) -> tuple:
    return metrics_lib.get_all(metrics, loss=loss) if metrics else ()


def init_train_state(
    layer: Layer,
    optimizer,
    key: jax.Array,
    *example_inputs,
    metrics: Sequence = (),
    params=None,
    state=None,
    loss=None,
) -> TrainState:
    """A fresh ``TrainState``: ``layer.init`` on ``example_inputs`` (arrays or
    ``jax.ShapeDtypeStruct``), unless ``params`` (and ``state``) are given, e.g. after
    ``transfer_params``; ``optimizer.init``; zero metric states; ``rng`` from ``key``.
    Metric names are
    resolved with ``loss`` (``"accuracy"`` depends on it); passing ``Metric`` objects from
    ``fnn.metrics.get_all(names, loss=...)`` to every function avoids repeating it.
    """
    init_key, rng = jax.random.split(key)
    if params is None or state is None:
        if not example_inputs:
            raise ConfigError(
                "init_train_state: expected example inputs (arrays or jax.ShapeDtypeStruct with "
                "the batch axis) to build the params, got none."
            )
        new_params, new_state = layer.init(init_key, *example_inputs)
        params = new_params if params is None else params
        state = new_state if state is None else state
    optimizer = optimizers_lib.get(optimizer)
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        state=state,
        opt_state=optimizer.init(params),
        rng=rng,
        metric_states=init_metric_states(metrics, loss=loss),
    )


def reset_metrics(train_state: TrainState) -> TrainState:
    """``train_state`` with every metric state (the running loss included) zeroed."""
    return train_state._replace(metric_states=_zeros_like(train_state.metric_states))


def _zeros_like(tree):
    # Zeros made on the host and put where each array is, in one transfer: no program to
    # compile (~15-45 ms on CPU at a first fit) and one dispatch at every epoch start.
    # Each keeps its weak type and commitment (both are part of the steps' compiled
    # signature: a change would compile them again). Traced arrays, weakly typed ones and
    # arrays of several processes take the compiled way.
    leaves, treedef = jax.tree.flatten(tree)
    committed = [getattr(a, "_committed", None) for a in leaves]
    if all(
        isinstance(a, jax.Array)
        and not isinstance(a, jax.core.Tracer)
        and not a.weak_type
        and a.is_fully_addressable
        and c is not None
        for a, c in zip(leaves, committed, strict=True)
    ):
        zeros = [np.zeros(a.shape, a.dtype) for a in leaves]
        where = [a.sharding if c else None for a, c in zip(leaves, committed, strict=True)]
        return treedef.unflatten(jax.device_put(zeros, where))
    return _compiled_zeros_like(tree)


# One dispatch for every metric state (an eager zeros_like per leaf costs ~0.1 ms each).
_compiled_zeros_like = jax.jit(lambda tree: jax.tree.map(jnp.zeros_like, tree))


def compute_metrics(metric_states: dict, metrics: Sequence = ()) -> dict[str, Any]:
    """``{name: value}`` for every state in ``metric_states`` (``"loss"`` included)."""
    by_name = {m.name: m for m in _resolve_metrics(metrics)}
    by_name["loss"] = LOSS_METRIC
    out = {}
    for name, s in metric_states.items():
        if name not in by_name:
            raise ConfigError(
                f"compute_metrics: no metric named {name!r} among {sorted(by_name)}; pass the "
                "same metrics as to init_train_state."
            )
        out[name] = by_name[name].compute(s)
    return out


# --------------------------------------------------------------------------- steps


def _unpack(batch):
    if not isinstance(batch, tuple | list) or len(batch) not in (2, 3):
        raise ConfigError(
            "expected a batch (x, y) or (x, y, sample_weight), got "
            f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}."
        )
    x, y = batch[0], batch[1]
    sample_weight = batch[2] if len(batch) == 3 else None
    inputs = tuple(x) if isinstance(x, tuple | list) else (x,)
    return inputs, y, sample_weight


def _batch_size(inputs) -> int:
    return jax.tree.leaves(inputs)[0].shape[0]


def _forward(layer, params, state, inputs, rng, train):
    # Mixed precision is the layers' own (their dtype policies); losses compute in float32.
    return layer.apply(params, state, *inputs, rng=rng, train=train)


def added_losses(state) -> jax.Array:
    """The sum of the losses layers added in their forward pass (Keras's ``add_loss``):
    every ``state`` entry named ``ADDED_LOSS`` (see ``fnn.core.subclass``)."""
    total = jnp.zeros((), jnp.float32)

    def visit(tree):
        nonlocal total
        if isinstance(tree, dict):
            for k, v in tree.items():
                if k == ADDED_LOSS:
                    total = total + jnp.asarray(v, jnp.float32)
                else:
                    visit(v)

    visit(state)
    return total


def _batch_loss(loss, regularizers, params, y, y_pred, sample_weight):
    total = loss(y, y_pred, sample_weight)
    if jnp.ndim(total):  # reduction=None: Keras's trainer sums the values
        total = jnp.sum(total)
    for reg in regularizers:
        total = total + reg(params)
    return total


def _update_metrics(metric_states, metrics, loss_value, n, y, y_pred, sw, axis_name):
    def contribution(metric_state, metric, *args):
        if axis_name is None:
            return metric.update(metric_state, *args)
        delta = metric.update(metric.init(), *args)
        delta = jax.lax.psum(delta, axis_name)
        return jax.tree.map(jnp.add, metric_state, delta)

    new = dict(metric_states)
    if "loss" in metric_states:
        new["loss"] = contribution(
            metric_states["loss"], LOSS_METRIC, loss_value, jnp.asarray(n, jnp.float32)
        )
    for m in metrics:
        # Sample (and class) weights reach only the metrics marked weighted, as Keras's
        # compile(metrics=...) vs compile(weighted_metrics=...); the loss always uses them.
        weights = sw if getattr(m, "weighted", True) else None
        new[m.name] = contribution(metric_states[m.name], m, y, y_pred, weights)
    return new


def make_train_step(
    layer: Layer,
    loss,
    optimizer,
    metrics: Sequence = (),
    *,
    axis_name: str | None = None,
    regularizers: Sequence[Callable[[PyTree], Any]] = (),
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Pure ``step(train_state, batch) -> (train_state, logs)``.

    ``batch`` is ``(x, y)`` or ``(x, y, sample_weight)``; ``x`` a tuple for multi-input
    layers. The step derives its key as ``fold_in(train_state.rng, step)``, runs ``layer.apply(..., train=True)``,
    reduces ``loss`` (a name, ``Loss`` or callable) with its ``reduction`` plus the
    ``regularizers`` terms, takes ``jax.value_and_grad``, applies one ``optimizer`` update
    and adds the batch to every metric state (``sample_weight`` reaches only metrics with
    ``weighted=True``, e.g. ``fnn.metrics.weighted(m)``: Keras's ``weighted_metrics``;
    the loss is always weighted). ``logs = {"loss": batch loss}``.

    ``axis_name`` (inside ``pmap``/``shard_map``): the gradients, loss and float model
    state are ``pmean``-ed and metric updates ``psum``-ed over that axis, so every device
    keeps identical params; each device's dropout rng is folded with its axis index.

    Mixed precision: the layers compute in their dtype policy's dtype
    (``fnn.mixed_precision``). With a ``LossScaleOptimizer`` (float16) the loss is
    multiplied by its current scale before ``jax.grad`` and the optimizer unscales the
    gradients, skipping the update when one is not finite.
    """
    loss = losses_lib.get(loss)
    optimizer = optimizers_lib.get(optimizer)
    metrics = _resolve_metrics(metrics, loss)
    regularizers = tuple(regularizers)

    def objective(params, model_state, inputs, y, sw, rng, scale):
        y_pred, new_state = _forward(layer, params, model_state, inputs, rng, True)
        total = _batch_loss(loss, regularizers, params, y, y_pred, sw)
        total = total + added_losses(new_state)
        scaled = total if scale is None else total * scale
        return scaled, (total, y_pred, new_state)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(train_state: TrainState, batch):
        inputs, y, sw = _unpack(batch)
        ls = optimizers_lib.loss_scale_state(train_state.opt_state)
        # The step's key is derived from (rng, step) instead of splitting and storing a new
        # rng: a model without dropout then compiles no key arithmetic at all (XLA drops the
        # unused fold_in), and a resumed run reproduces the same keys from the saved step.
        rng = train_state.rng
        step_rng = jax.random.fold_in(rng, train_state.step)
        if axis_name is not None:
            step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
        scale = None if ls is None else ls.dynamic_scale
        # Under loss scaling these are the scaled gradients: the optimizer unscales them.
        (_, (loss_value, y_pred, new_state)), grads = grad_fn(
            train_state.params, train_state.state, inputs, y, sw, step_rng, scale
        )
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss_value = jax.lax.pmean(loss_value, axis_name)
            new_state = jax.tree.map(
                lambda s: (
                    jax.lax.pmean(s, axis_name) if jnp.issubdtype(s.dtype, jnp.floating) else s
                ),
                new_state,
            )
        updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        logs = {"loss": loss_value}
        metric_states = _update_metrics(
            train_state.metric_states,
            metrics,
            loss_value,
            _batch_size(inputs),
            y,
            y_pred,
            sw,
            axis_name,
        )
        new_train_state = TrainState(
            step=train_state.step + 1,
            params=params,
            state=new_state,
            opt_state=opt_state,
            rng=rng,
            metric_states=metric_states,
        )
        return new_train_state, logs

    return step


def make_eval_step(
    layer: Layer,
    loss,
    metrics: Sequence = (),
    *,
    axis_name: str | None = None,
    regularizers: Sequence[Callable[[PyTree], Any]] = (),
) -> Callable[..., dict]:
    """Pure ``eval_step(metric_states, params, state, batch) -> metric_states``: the layer
    with ``train=False``, the loss into ``metric_states["loss"]`` and every metric updated
    (``psum``-ed over ``axis_name`` if given). Start from ``init_metric_states(metrics)``.
    """
    loss = losses_lib.get(loss)
    metrics = _resolve_metrics(metrics, loss)
    regularizers = tuple(regularizers)

    def eval_step(metric_states, params, state, batch):
        inputs, y, sw = _unpack(batch)
        y_pred, new_state = _forward(layer, params, state, inputs, None, False)
        loss_value = _batch_loss(loss, regularizers, params, y, y_pred, sw)
        loss_value = loss_value + added_losses(new_state)
        if axis_name is not None:
            loss_value = jax.lax.pmean(loss_value, axis_name)
        return _update_metrics(
            metric_states, metrics, loss_value, _batch_size(inputs), y, y_pred, sw, axis_name
        )

    return eval_step


def make_predict_step(layer: Layer) -> Callable[..., Any]:
    """Pure ``predict(params, state, x) -> outputs`` with ``train=False`` (``x`` a tuple for
    multi-input layers); outputs in the last layer's compute dtype, as Keras."""

    def predict(params, state, x):
        inputs = tuple(x) if isinstance(x, tuple | list) else (x,)
        return _forward(layer, params, state, inputs, None, False)[0]

    return predict


def jit_step(step: Callable, *, static_argnums: tuple = ()) -> Callable:
    """``step(train_state, *args) -> (train_state, logs)`` compiled as
    ``jax.jit(step, donate_argnums=0)`` does, except for the base PRNG key: it goes in
    undonated and, when ``step`` returns it unchanged (as this module's steps do), stays
    out of the outputs. JAX rebuilds a typed key among a program's outputs in Python at
    every call, 3-7 us of a tiny MLP's ~50 us step on CPU (measured; ``benchmarks/``).
    ``static_argnums`` count the arguments after ``train_state``; ``.compiled`` is the
    ``jax.jit`` object.

    >>> import jax, jax.numpy as jnp, fnn
    >>> model = fnn.serial(fnn.layers.Dense(3))
    >>> loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> ts = fnn.train.init_train_state(model, "sgd", jax.random.key(0), jnp.zeros((2, 4)))
    >>> step = fnn.train.jit_step(fnn.train.make_train_step(model, loss, "sgd"))
    >>> new, logs = step(ts, (jnp.ones((2, 4)), jnp.zeros(2, jnp.int32)))
    >>> int(new.step), new.rng is ts.rng
    (1, True)
    """

    def split(ts, rng, *args):
        new, logs = step(ts._replace(rng=rng), *args)
        return (new._replace(rng=None) if new.rng is rng else new), logs

    compiled = jax.jit(split, donate_argnums=0, static_argnums=tuple(i + 1 for i in static_argnums))

    def call(ts, *args):
        new, logs = compiled(ts._replace(rng=None), ts.rng, *args)
        return (new._replace(rng=ts.rng) if new.rng is None else new), logs

    call.compiled = compiled
    return call


def make_multi_step(step: Callable, *, unroll: int | bool = 1) -> Callable:
    """``multi_step(train_state, batches) -> (train_state, logs)``: ``step`` over batches
    stacked on a leading axis ``[K, batch, ...]`` in one ``lax.scan``; ``logs`` values get a
    leading ``[K]`` axis. ``unroll=True`` unrolls the loop completely (faster for conv
    nets on XLA:CPU, where a rolled loop can be slower than single steps; benchmark).
    """

    def multi_step(train_state, batches):
        return jax.lax.scan(step, train_state, batches, unroll=unroll)

    return multi_step


def make_multi_eval_step(eval_step: Callable, *, unroll: int | bool = 1) -> Callable:
    """``multi_eval(metric_states, params, state, batches) -> metric_states``: ``eval_step``
    over batches stacked on a leading axis ``[K, batch, ...]`` in one ``lax.scan``."""

    def multi_eval(metric_states, params, state, batches):
        def body(ms, batch):
            return eval_step(ms, params, state, batch), None

        return jax.lax.scan(body, metric_states, batches, unroll=unroll)[0]

    return multi_eval


# --------------------------------------------------------------------------- host checks


def check_finite(logs: dict, step) -> None:
    """Raise ``NonFiniteLossError`` naming the step if ``logs["loss"]`` is NaN or inf.

    Host-side (it reads the value back): call it after each compiled call. ``step`` is
    ``train_state.step`` *before* the call; multi-step logs ``[K]`` name the first bad step.
    """
    values = np.atleast_1d(np.asarray(logs["loss"], dtype=np.float64))
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        at = int(np.asarray(step)) + int(bad[0])
        raise NonFiniteLossError(
            f"training stopped: non-finite loss ({values[bad[0]]}) at step {at} (counting "
            "from 0). Lower the learning rate, clip gradients (global_clipnorm=...), check "
            "the inputs for NaN, or use dynamic loss scaling with float16."
        )


_PASSED: dict = {}  # check_batch's passed label checks -> the loss object checked


def _spec(a) -> tuple:
    return tuple(np.shape(a)), str(getattr(a, "dtype", type(a).__name__))


def check_batch(layer: Layer, loss, params, state, batch, *, out=None) -> None:
    """Validate a concrete batch on the host before jitting: the label shapes against the
    layer's output shape and integer labels in range (raises ``ShapeError``/``ConfigError``).
    ``out``: the output shapes when the caller already traced the layer on these inputs.
    """
    loss = losses_lib.get(loss)
    inputs, y, sw = _unpack(batch)
    if out is None:
        out = output_shapes(layer, params, state, *inputs)
    y = np.asarray(y)
    # The loss's own shape and range checks, evaluated abstractly against the output shape
    # with the concrete labels closed over (so their values are checked too). Tracing the
    # loss costs ~1 ms, paid again by every ``fit``: a check that passed for the same loss,
    # output shapes and label bytes passes again.
    key = (id(loss), jax.tree.structure(out), tuple(_spec(a) for a in jax.tree.leaves(out)))
    key += (y.dtype.str, y.shape, hashlib.blake2b(np.ascontiguousarray(y).data).digest())
    if _PASSED.get(key) is not loss:
        jax.eval_shape(lambda y_pred: loss.call(y, y_pred), out)
        if len(_PASSED) >= 64:
            _PASSED.clear()
        _PASSED[key] = loss
    if sw is not None and np.shape(sw) not in ((), (y.shape[0],), (y.shape[0], 1)):
        raise ShapeError(
            f"expected sample_weight of shape ({y.shape[0]},) (one per example), got shape "
            f"{np.shape(sw)}."
        )
