"""Transfer learning on digits: train on classes 0-4, freeze the body, fit a new head on 5-9.

Run: python examples/transfer_learning.py   (about 15 s on 2 CPU cores)

The body's params are copied with ``fnn.train.transfer_params`` and frozen with
``fnn.train.freeze`` (exactly zero updates, no optimizer state for them); only the new
head trains. Both models train with ``fnn.train``'s pure step, one compiled call per epoch.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import train
from fnn.layers import Dense


def build(num_classes: int, head_units: int = 0) -> fnn.Layer:
    """Body (``hidden1``, ``hidden2``) plus a head: ``[batch, 64] -> [batch, num_classes]``."""
    head = [Dense(head_units, activation="relu", name="head_hidden")] if head_units else []
    return fnn.serial(
        Dense(128, activation="relu", name="hidden1"),
        Dense(128, activation="relu", name="hidden2"),
        *head,
        Dense(num_classes, name="head"),
    )


def fit(layer, train_state, optimizer, x, y, epochs: int, batch_size: int = 32, seed: int = 0):
    """``epochs`` epochs of ``fnn.train``'s step, each one compiled call (``make_multi_step``
    scans the step over the epoch's batches); returns the final TrainState."""
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    step = train.make_train_step(layer, loss, optimizer)
    run_epoch = jax.jit(train.make_multi_step(step), donate_argnums=0)
    for epoch in range(epochs):
        # Full batches only, stacked [steps, batch, ...] along the scan's axis.
        batches = fnn.datasets.batches(
            x, y, batch_size, seed=seed, epoch=epoch, drop_remainder=True
        )
        train_state, _ = run_epoch(train_state, tuple(map(np.stack, zip(*batches))))
    return train_state


def accuracy(layer, params, state, x, y) -> float:
    logits, _ = jax.jit(layer.apply)(params, state, x)
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


def main(epochs: int = 15, seed: int = 0) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits(seed=seed)
    low_train, low_test = y_train < 5, y_test < 5

    source = build(5)
    source_state = train.init_train_state(
        source, "adam", jax.random.key(seed), jax.ShapeDtypeStruct((1, 64), jnp.float32)
    )
    source_state = fit(source, source_state, "adam", x_train[low_train], y_train[low_train], epochs)
    acc_source = accuracy(
        source, source_state.params, source_state.state, x_test[low_test], y_test[low_test]
    )
    print(f"source model on digits 0-4: test accuracy {acc_source:.4f}")

    target = build(5, head_units=64)
    fresh_params, fresh_state = target.init(
        jax.random.key(seed + 1), jax.ShapeDtypeStruct((1, 64), jnp.float32)
    )
    params = train.transfer_params(fresh_params, source_state.params, where=["hidden1", "hidden2"])
    frozen_adam = train.freeze("adam", ["hidden1", "hidden2"])
    target_state = train.init_train_state(
        target, frozen_adam, jax.random.key(seed + 2), params=params, state=fresh_state
    )
    # Host copies: the step donates (reuses) the buffers of the state it is given.
    body_before = jax.tree.map(np.array, {k: params[k] for k in ("hidden1", "hidden2")})
    x_high, y_high = x_train[~low_train], y_train[~low_train] - 5
    target_state = fit(target, target_state, frozen_adam, x_high, y_high, epochs)
    unchanged = all(
        np.array_equal(body_before[k][p], target_state.params[k][p])
        for k in body_before
        for p in body_before[k]
    )
    acc_target = accuracy(
        target, target_state.params, target_state.state, x_test[~low_test], y_test[~low_test] - 5
    )
    print(
        f"new head on digits 5-9 (frozen body, unchanged: {unchanged}): accuracy {acc_target:.4f}"
    )
    return acc_target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.seed)
