"""Keras 3 on the JAX backend (``KERAS_BACKEND=jax``, set by the runner): a
``keras.Sequential`` compiled with Adam(1e-3) and sparse categorical cross-entropy on
logits; ``train_on_batch`` in a loop, and ``fit`` on in-memory NumPy arrays."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras

from benchmarks.common import Bench, device_pool
from benchmarks.scenarios import (
    CNN_DENSE,
    CNN_FILTERS,
    CNN_KERNEL,
    CNN_POOL,
    LEARNING_RATE,
    LSTM_UNITS,
    MULTI,
    NUM_CLASSES,
    Scenario,
    fit_arrays,
)

if keras.backend.backend() != "jax":
    raise ImportError(f"keras runs on the {keras.backend.backend()!r} backend, not jax")

L = keras.layers


def make_model(scenario: Scenario, steps_per_execution: int = 1) -> keras.Model:
    keras.utils.set_random_seed(0)
    layers = [keras.Input(scenario.input_shape)]
    if scenario.kind == "mlp":
        layers += [L.Dense(w, activation="relu") for w in scenario.hidden]
    elif scenario.kind == "cnn":
        for filters in CNN_FILTERS:
            layers += [L.Conv2D(filters, CNN_KERNEL, activation="relu"), L.MaxPooling2D(CNN_POOL)]
        layers += [L.Flatten(), L.Dense(CNN_DENSE, activation="relu")]
    else:
        layers += [L.LSTM(LSTM_UNITS) if scenario.kind == "lstm" else L.GRU(LSTM_UNITS)]
    model = keras.Sequential([*layers, L.Dense(NUM_CLASSES)])
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    return model


def _sync(model):
    jax.block_until_ready([v.value for v in model.trainable_variables])


def build_train_on_batch(scenario: Scenario, x, y) -> Bench:
    model = make_model(scenario)
    xs, ys = device_pool(x, y)

    def run(n):
        loss = None
        for i in range(n):
            loss = model.train_on_batch(xs[i % len(xs)], ys[i % len(ys)])
        jax.block_until_ready(loss)
        _sync(model)

    return Bench(run)


def _build_fit(scenario: Scenario, x, y, spe: int) -> Bench:
    model = make_model(scenario, spe)
    # One in-memory dataset long enough for the largest block; fit reads a prefix.
    cache: dict[int, tuple] = {}

    def run(n):
        if n not in cache:
            cache[n] = fit_arrays(x, y, n)
        xf, yf = cache[n]
        model.fit(xf, yf, batch_size=scenario.batch, epochs=1, verbose=0, shuffle=False)
        _sync(model)

    return Bench(run, spe, warm_block=True)


def build_fit(scenario: Scenario, x, y) -> Bench:
    return _build_fit(scenario, x, y, 1)


def build_fit10(scenario: Scenario, x, y) -> Bench:
    return _build_fit(scenario, x, y, MULTI)


VARIANTS = {"keras_tob": build_train_on_batch, "keras_fit": build_fit, "keras_fit10": build_fit10}
