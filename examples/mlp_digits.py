"""Hand-written loop on purpose: an MLP on digits with nothing but jax.value_and_grad and optax.

Run: python examples/mlp_digits.py [--epochs 30]   (about 10 s on 2 CPU cores)

This is the raw functional step every other example gets from ``fnn.train`` or
``Model.fit``: params are a dict, the step is a pure function compiled with ``jax.jit``,
gradients come from ``jax.value_and_grad`` and updates from optax. Data and batches come
from ``fnn.datasets``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from fnn.layers import Dense, Dropout


def main(epochs: int = 30, batch_size: int = 64, seed: int = 0) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits(seed=seed)  # x [n, 64]
    model = fnn.serial(
        Dense(128, activation="relu"),
        Dropout(0.1),
        Dense(64, activation="relu"),
        Dense(10),
    )
    params, state = model.init(jax.random.key(seed), jax.ShapeDtypeStruct((1, 64), jnp.float32))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    def loss_fn(params, state, x, y, rng):
        logits, state = model.apply(params, state, x, rng=rng, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, state

    @jax.jit
    def train_step(params, state, opt_state, x, y, rng):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    @jax.jit
    def accuracy(params, state, x, y):
        logits, _ = model.apply(params, state, x)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    fnn.summary(model, jax.ShapeDtypeStruct((batch_size, 64), jnp.float32))
    rng = jax.random.key(seed + 1)
    for epoch in range(1, epochs + 1):
        losses = []
        # Full batches only, so the step compiles once.
        for x, y in fnn.datasets.batches(
            x_train, y_train, batch_size, seed=seed, epoch=epoch, drop_remainder=True
        ):
            rng, step_rng = jax.random.split(rng)
            params, state, opt_state, loss = train_step(params, state, opt_state, x, y, step_rng)
            losses.append(loss)
        if epoch == 1 or epoch % 5 == 0:
            test_acc = float(accuracy(params, state, x_test, y_test))
            print(
                f"epoch {epoch:3d}  loss {float(np.mean(losses)):.4f}  test accuracy {test_acc:.4f}"
            )
    test_acc = float(accuracy(params, state, x_test, y_test))
    print(f"final test accuracy: {test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.batch_size, args.seed)
