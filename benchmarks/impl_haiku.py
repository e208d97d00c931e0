"""Haiku: ``hk.transform`` (without apply rng) and a jitted optax step with donated
buffers, the Haiku idiom."""

from __future__ import annotations

import haiku as hk
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
)


def forward_fn(scenario: Scenario):
    def forward(x):
        if scenario.kind == "mlp":
            for width in scenario.hidden:
                x = jax.nn.relu(hk.Linear(width)(x))
        elif scenario.kind == "cnn":
            window = (1, CNN_POOL, CNN_POOL, 1)
            for filters in CNN_FILTERS:
                x = jax.nn.relu(hk.Conv2D(filters, CNN_KERNEL, padding="VALID")(x))
                x = hk.max_pool(x, window, window, padding="VALID")
            x = jax.nn.relu(hk.Linear(CNN_DENSE)(hk.Flatten()(x)))
        else:
            # hk.GRU applies the reset gate before the recurrent matmul (Keras reset_after=False).
            core = hk.LSTM(LSTM_UNITS) if scenario.kind == "lstm" else hk.GRU(LSTM_UNITS)
            state = core.initial_state(x.shape[0])
            _, final = hk.dynamic_unroll(core, jnp.swapaxes(x, 0, 1), state)
            x = final.hidden if scenario.kind == "lstm" else final
        return hk.Linear(NUM_CLASSES)(x)

    return forward


def build_jit(scenario: Scenario, x, y) -> Bench:
    model = hk.without_apply_rng(hk.transform(forward_fn(scenario)))
    optimizer = optax.adam(LEARNING_RATE)
    params = model.init(jax.random.key(0), x[0])

    def loss_fn(params, x, y):
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def one_step(carry, x, y):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    xs, ys = device_pool(x, y)
    step = jax.jit(one_step, donate_argnums=0)
    return step_loop(step, (params, optimizer.init(params)), xs, ys)


VARIANTS = {"haiku_jit": build_jit}
