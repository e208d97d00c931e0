"""Train a small CNN on scikit-learn's bundled 8x8 digits with the functional API alone.

Run: python examples/cnn_digits.py   (about 20 s on 2 CPU cores)

Everything is explicit: params are a dict, the step is a pure function compiled
with jax.jit, gradients come from jax.value_and_grad and updates from optax.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fnn
from fnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D


def load_data(seed: int = 0):
    """Digits as float32 images scaled to [0, 1]: x [n, 8, 8, 1], integer labels [n]."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def main(epochs: int = 30, batch_size: int = 64, seed: int = 0) -> float:
    x_train, x_test, y_train, y_test = load_data(seed)
    model = fnn.serial(
        Conv2D(32, 3, padding="same", activation="relu"),  # [b, 8, 8, 32]
        MaxPooling2D(),  # [b, 4, 4, 32]
        Conv2D(64, 3, padding="same", activation="relu"),  # [b, 4, 4, 64]
        MaxPooling2D(),  # [b, 2, 2, 64]
        Flatten(),
        Dropout(0.3),
        Dense(10),
    )
    image = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    params, state = model.init(jax.random.key(seed), image)
    optimizer = optax.adam(3e-3)
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

    fnn.summary(model, jax.ShapeDtypeStruct((batch_size, 8, 8, 1), jnp.float32))
    rng = jax.random.key(seed + 1)
    order_rng = np.random.default_rng(seed)
    steps = len(x_train) // batch_size
    for epoch in range(1, epochs + 1):
        order = order_rng.permutation(len(x_train))
        losses = []
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            rng, step_rng = jax.random.split(rng)
            params, state, opt_state, loss = train_step(
                params, state, opt_state, x_train[idx], y_train[idx], step_rng
            )
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
