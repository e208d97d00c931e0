"""Integrated gradients for a digits CNN, with the completeness check.

Run: python examples/integrated_gradients_digits.py [--out ig.png]   (about 15 s)

``fnn.explain.integrated_gradients`` integrates the gradient of the predicted class's
logit along the straight path from a black image to each test digit (trapezoid rule,
vmapped over the path and the batch). Completeness: each map sums to
``logit(x) - logit(baseline)``, printed as the largest gap. ``fnn.explain`` takes the
``Model`` directly; ``plot_attributions`` overlays the maps under the digits.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import fnn
from fnn.layers import Conv2D, Dense, Flatten, MaxPooling2D


def main(epochs: int = 10, out: str | None = None, verbose=0) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits(as_images=True)
    model = fnn.Sequential(
        [
            fnn.Input((8, 8, 1)),
            Conv2D(16, 3, padding="same", activation="relu"),
            MaxPooling2D(),
            Flatten(),
            Dense(10),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=fnn.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=verbose)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    x = x_test[:8]
    attr = np.asarray(jax.jit(lambda v: fnn.explain.integrated_gradients(model, v, steps=64))(x))
    logits = np.asarray(model.predict(x, verbose=0))
    base = np.asarray(model.predict(np.zeros_like(x), verbose=0))
    target = logits.argmax(-1)
    gap = logits[np.arange(8), target] - base[np.arange(8), target]
    err = np.abs(attr.sum(axis=(1, 2, 3)) - gap).max()
    print(f"test accuracy {acc:.4f}; completeness: max |sum(attr) - (f(x) - f(0))| = {err:.2e}")
    if out:
        fnn.explain.plot_attributions(x, attr, out, titles=[f"pred {t}" for t in target])
        print(f"wrote {out}")
    return acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=None, help="PNG file for the attribution maps")
    args = parser.parse_args()
    main(args.epochs, args.out)
