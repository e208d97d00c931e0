"""Train an LSTM on digits, each 8x8 image read as a sequence of 8 rows, with Model.fit.

Run: python examples/lstm_digits.py [--epochs 40]   (about 15 s on 2 CPU cores)

Each digit becomes 8 time steps of 8 pixel features in [0, 1]; LSTM(64) reads the rows top
to bottom and Dense(10) classifies its last output. ``fnn.Sequential`` with an
``fnn.Input`` shape, compiled with an Adam learning rate and logits loss as in Keras.
"""

from __future__ import annotations

import argparse

import fnn
from fnn.layers import LSTM, Dense


def main(
    epochs: int = 40, batch_size: int = 32, learning_rate: float = 3e-3, seed: int = 0, verbose=2
) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits(seed=seed)
    x_train, x_test = x_train.reshape(-1, 8, 8), x_test.reshape(-1, 8, 8)  # [n, rows, pixels]
    model = fnn.Sequential([fnn.Input((8, 8)), LSTM(64), Dense(10)])
    model.compile(
        optimizer=fnn.optimizers.get("adam", learning_rate),
        loss=fnn.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        seed=seed,
    )
    model.summary()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    _, test_acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"final test accuracy: {test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.batch_size, args.learning_rate, args.seed)
