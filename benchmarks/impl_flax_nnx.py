"""Flax NNX: stateful modules and ``nnx.Optimizer``. Two steps: ``nnx.jit`` (the
default idiom) and the documented functional fast path (``nnx.split`` once, a
``jax.jit`` step over the state that ``nnx.merge``s inside, donated buffers)."""

from __future__ import annotations

import itertools

import jax
import optax
from flax import nnx

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


class MLP(nnx.Module):
    def __init__(self, widths, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


class CNN(nnx.Module):
    def __init__(self, scenario, rngs):
        c_in, convs = scenario.input_shape[-1], []
        for filters in CNN_FILTERS:
            convs.append(
                nnx.Conv(c_in, filters, (CNN_KERNEL, CNN_KERNEL), padding="VALID", rngs=rngs)
            )
            c_in = filters
        self.convs = nnx.List(convs)
        self.head = MLP((cnn_flat_features(scenario), CNN_DENSE, NUM_CLASSES), rngs)

    def __call__(self, x):
        window = (CNN_POOL, CNN_POOL)
        for conv in self.convs:
            x = nnx.max_pool(nnx.relu(conv(x)), window, strides=window)
        return self.head(x.reshape(x.shape[0], -1))


class LSTM(nnx.Module):
    def __init__(self, scenario, rngs):
        kind = nnx.OptimizedLSTMCell if scenario.kind == "lstm" else nnx.GRUCell
        cell = kind(scenario.input_shape[-1], LSTM_UNITS, rngs=rngs)
        self.rnn = nnx.RNN(cell, rngs=rngs)
        self.head = nnx.Linear(LSTM_UNITS, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.head(self.rnn(x)[:, -1])


def make_model(scenario: Scenario):
    rngs = nnx.Rngs(0)
    if scenario.kind == "mlp":
        return MLP((scenario.input_shape[-1], *scenario.hidden, NUM_CLASSES), rngs)
    return CNN(scenario, rngs) if scenario.kind == "cnn" else LSTM(scenario, rngs)


def _train_step(model, optimizer, x, y):
    def loss_fn(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def build_nnx_jit(scenario: Scenario, x, y) -> Bench:
    model = make_model(scenario)
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)
    train_step = nnx.jit(_train_step)

    def step(carry, x, y):
        return carry, train_step(model, optimizer, x, y)

    xs, ys = device_pool(x, y)
    return step_loop(step, None, xs, ys)


def build_split(scenario: Scenario, x, y) -> Bench:
    model = make_model(scenario)
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def one_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss = _train_step(model, optimizer, x, y)
        return nnx.state((model, optimizer)), loss

    xs, ys = device_pool(x, y)
    step = jax.jit(one_step, donate_argnums=0)
    return step_loop(step, state, xs, ys)


VARIANTS = {"nnx_jit": build_nnx_jit, "nnx_split": build_split}
