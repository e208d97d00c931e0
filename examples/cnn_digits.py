"""Train a small CNN on digits: a functional ``fnn.serial`` model in the Keras-style loop.

Run: python examples/cnn_digits.py [--epochs 30]   (about 20 s on 2 CPU cores)

Conv2D, BatchNormalization, MaxPooling2D, Dropout and Dense; about 98% test accuracy.
The network is a plain init/apply pair; ``fnn.Model`` wraps it for ``fit``/``evaluate``,
each step one compiled call of ``fnn.train``'s pure step. The functional state stays one
attribute away: ``model.params`` is a dict, ``model.state`` holds the BatchNormalization
moving averages.
"""

from __future__ import annotations

import argparse

import jax

import fnn
from fnn.layers import (
    Activation,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPooling2D,
)


def main(epochs: int = 30, batch_size: int = 64, seed: int = 0, verbose=2) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits(seed=seed, as_images=True)
    layer = fnn.serial(
        Conv2D(32, 3, padding="same"),  # [b, 8, 8, 32]
        # Batch statistics in training, moving averages (state) in eval. Momentum 0.9, not
        # Keras's 0.99: with 23 steps an epoch the averages then settle within an epoch.
        BatchNormalization(momentum=0.9),
        Activation("relu"),
        MaxPooling2D(),  # [b, 4, 4, 32]
        Conv2D(64, 3, padding="same", activation="relu"),  # [b, 4, 4, 64]
        MaxPooling2D(),  # [b, 2, 2, 64]
        Flatten(),
        Dropout(0.3),
        Dense(10),
    )
    model = fnn.Model(layer)
    model.compile(
        optimizer=fnn.optimizers.get("adam", 3e-3),
        loss=fnn.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        seed=seed,
    )
    model.build((None, 8, 8, 1))
    model.summary()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    moving = jax.tree.map(lambda a: a.shape, model.state)
    print(f"functional state after fit: {moving}")
    _, test_acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"final test accuracy: {test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.batch_size, args.seed)
