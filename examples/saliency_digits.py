"""Saliency maps for a digits classifier with ``jax.grad`` (explainability).

Run: python examples/saliency_digits.py [--out saliency.png]   (about 15 s)

A saliency map is the gradient of the predicted class's logit with respect to the input
pixels: ``|d logit_c / d x|``, shape ``[8, 8]`` per image. With a pure ``apply`` it is one
``jax.grad`` of a closure over the params, vmapped over the batch.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import train
from fnn.layers import Conv2D, Dense, Flatten, MaxPooling2D


def saliency(layer, params, state, images):
    """``|d logit_predicted / d image|``: ``[n, 8, 8, 1] -> [n, 8, 8]``."""

    def predicted_logit(image):
        logits, _ = layer.apply(params, state, image[None])
        return logits[0, jnp.argmax(logits[0])]

    grads = jax.vmap(jax.grad(predicted_logit))(images)
    return jnp.abs(grads[..., 0])


def main(epochs: int = 10, out: str | None = None) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits(as_images=True)
    model = fnn.serial(
        Conv2D(16, 3, padding="same", activation="relu"),
        MaxPooling2D(),
        Flatten(),
        Dense(10),
    )
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    ts = train.init_train_state(model, "adam", jax.random.key(0), x_train[:1])
    step = jax.jit(train.make_train_step(model, loss, "adam"), donate_argnums=0)
    for epoch in range(epochs):
        for batch in fnn.datasets.batches(x_train, y_train, 32, seed=0, epoch=epoch):
            ts, _ = step(ts, batch)
    logits, _ = model.apply(ts.params, ts.state, x_test)
    acc = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    print(f"test accuracy {acc:.4f}")

    maps = np.asarray(jax.jit(lambda x: saliency(model, ts.params, ts.state, x))(x_test[:8]))
    # Pixels that are blank in every digit of the training set should get little saliency.
    blank = x_train.max(axis=0)[..., 0] == 0
    share_on_ink = 1 - maps[:, blank].sum() / maps.sum()
    print(
        f"saliency maps {maps.shape}; share of saliency on pixels that ever carry ink: "
        f"{share_on_ink:.3f}"
    )
    if out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 8, figsize=(12, 3.2))
        for i in range(8):
            axes[0, i].imshow(x_test[i, ..., 0], cmap="gray_r")
            axes[0, i].set_title(f"label {y_test[i]}")
            axes[1, i].imshow(maps[i], cmap="hot")
            for ax in axes[:, i]:
                ax.axis("off")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        print(f"wrote {out}")
    return acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=None, help="PNG file for the saliency maps")
    args = parser.parse_args()
    main(args.epochs, args.out)
