"""Equinox: a model pytree applied per example under ``jax.vmap``. Two steps:
``eqx.filter_jit`` (the documented default, no donation) and the fast path that
partitions the arrays out once and jits a step over them with donated buffers."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from benchmarks.common import Bench, device_pool, step_loop
from benchmarks.scenarios import (
    CNN_DENSE,
    CNN_FILTERS,
    CNN_KERNEL,
    CNN_POOL,
    LEARNING_RATE,
    LSTM_UNITS,
    NUM_CLASSES,
    Scenario,
    cnn_flat_features,
)


class MLP(eqx.Module):
    layers: list

    def __init__(self, widths, key):
        keys = jax.random.split(key, len(widths) - 1)
        self.layers = [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(widths[:-1], widths[1:], keys)]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class CNN(eqx.Module):
    convs: list
    pool: eqx.nn.MaxPool2d
    head: MLP

    def __init__(self, scenario, key):
        keys = jax.random.split(key, len(CNN_FILTERS) + 1)
        c_in = scenario.input_shape[-1]
        self.convs = []
        for filters, k in zip(CNN_FILTERS, keys):
            self.convs.append(eqx.nn.Conv2d(c_in, filters, CNN_KERNEL, key=k))
            c_in = filters
        self.pool = eqx.nn.MaxPool2d(CNN_POOL, CNN_POOL)
        self.head = MLP((cnn_flat_features(scenario), CNN_DENSE, NUM_CLASSES), keys[-1])

    def __call__(self, x):  # x [channels, height, width]
        for conv in self.convs:
            x = self.pool(jax.nn.relu(conv(x)))
        return self.head(jnp.transpose(x, (1, 2, 0)).reshape(-1))


class LSTM(eqx.Module):
    cell: eqx.nn.LSTMCell
    head: eqx.nn.Linear

    def __init__(self, scenario, key):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.LSTMCell(scenario.input_shape[-1], LSTM_UNITS, key=k1)
        self.head = eqx.nn.Linear(LSTM_UNITS, NUM_CLASSES, key=k2)

    def __call__(self, x):  # x [time, features]
        def scan_fn(state, xt):
            return self.cell(xt, state), None

        zeros = jnp.zeros((LSTM_UNITS,), x.dtype)
        (h, _), _ = jax.lax.scan(scan_fn, (zeros, zeros), x)
        return self.head(h)


class GRU(eqx.Module):
    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear

    def __init__(self, scenario, key):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.GRUCell(scenario.input_shape[-1], LSTM_UNITS, key=k1)
        self.head = eqx.nn.Linear(LSTM_UNITS, NUM_CLASSES, key=k2)

    def __call__(self, x):  # x [time, features]
        def scan_fn(h, xt):
            return self.cell(xt, h), None

        h, _ = jax.lax.scan(scan_fn, jnp.zeros((LSTM_UNITS,), x.dtype), x)
        return self.head(h)


def make_model(scenario: Scenario):
    key = jax.random.key(0)
    if scenario.kind == "gru":
        return GRU(scenario, key)
    if scenario.kind == "mlp":
        return MLP((scenario.input_shape[-1], *scenario.hidden, NUM_CLASSES), key)
    return CNN(scenario, key) if scenario.kind == "cnn" else LSTM(scenario, key)


def _layout(scenario: Scenario):
    # Equinox convolutions take channels first; the CNN data are stored that way up front.
    if scenario.kind == "cnn":
        return lambda b: b.transpose(0, 3, 1, 2)
    return None


def _loss(model, x, y):
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def build_filter_jit(scenario: Scenario, x, y) -> Bench:
    model = make_model(scenario)
    optimizer = optax.adam(LEARNING_RATE)

    @eqx.filter_jit
    def step(carry, x, y):
        model, opt_state = carry
        loss, grads = eqx.filter_value_and_grad(_loss)(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return (eqx.apply_updates(model, updates), opt_state), loss

    xs, ys = device_pool(x, y, layout=_layout(scenario))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    return step_loop(step, (model, opt_state), xs, ys)


def build_partition(scenario: Scenario, x, y) -> Bench:
    params, static = eqx.partition(make_model(scenario), eqx.is_array)
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(params, x, y):
        return _loss(eqx.combine(params, static), x, y)

    def one_step(carry, x, y):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (eqx.apply_updates(params, updates), opt_state), loss

    xs, ys = device_pool(x, y, layout=_layout(scenario))
    step = jax.jit(one_step, donate_argnums=0)
    return step_loop(step, (params, optimizer.init(params)), xs, ys)


VARIANTS = {"eqx_filter_jit": build_filter_jit, "eqx_partition": build_partition}
