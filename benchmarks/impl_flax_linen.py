"""Flax Linen: ``nn.compact`` modules, ``model.apply`` inside a jitted optax step with
donated buffers (the Linen idiom; the step is the same as the hand-written one)."""

from __future__ import annotations

import flax.linen as nn
import jax
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
)


class MLP(nn.Module):
    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(NUM_CLASSES)(x)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        for filters in CNN_FILTERS:
            x = nn.relu(nn.Conv(filters, (CNN_KERNEL, CNN_KERNEL), padding="VALID")(x))
            x = nn.max_pool(x, (CNN_POOL, CNN_POOL), strides=(CNN_POOL, CNN_POOL))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(CNN_DENSE)(x))
        return nn.Dense(NUM_CLASSES)(x)


class LSTM(nn.Module):
    kind: str = "lstm"  # or "gru" (nn.GRUCell)

    @nn.compact
    def __call__(self, x):
        cell = nn.OptimizedLSTMCell if self.kind == "lstm" else nn.GRUCell
        h = nn.RNN(cell(LSTM_UNITS))(x)[:, -1]
        return nn.Dense(NUM_CLASSES)(h)


def make_model(scenario: Scenario) -> nn.Module:
    if scenario.kind == "mlp":
        return MLP(scenario.hidden)
    return CNN() if scenario.kind == "cnn" else LSTM(kind=scenario.kind)


def build_jit(scenario: Scenario, x, y) -> Bench:
    model = make_model(scenario)
    optimizer = optax.adam(LEARNING_RATE)
    params = model.init(jax.random.key(0), x[0])["params"]

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def one_step(carry, x, y):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    xs, ys = device_pool(x, y)
    step = jax.jit(one_step, donate_argnums=0)
    return step_loop(step, (params, optimizer.init(params)), xs, ys)


VARIANTS = {"linen_jit": build_jit}
