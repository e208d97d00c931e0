"""DP-SGD on digits: per-example clipping, Gaussian noise, and the epsilon spent.

Run: python examples/dp_digits.py   (about 20 s)

``fnn.train.make_dp_train_step`` replaces the gradient of the ordinary step by DP-SGD's
(each example's gradient clipped to ``l2_norm_clip``, summed, noise of std
``noise_multiplier * l2_norm_clip`` added, divided by the batch); ``fnn.train.dp_epsilon``
asks dp-accounting's RDP accountant for the epsilon of that many steps at ``delta``.
Batches are shuffled fixed-size batches, the usual stand-in for the Poisson sampling the
accountant assumes.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import fnn
from fnn.layers import Dense

LOSS = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)


def main(
    epochs: int = 15,
    noise_multiplier: float = 1.0,
    l2_norm_clip: float = 1.0,
    batch_size: int = 64,
    delta: float = 1e-5,
) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits()
    layer = fnn.serial(Dense(64, activation="tanh"), Dense(10))
    opt = fnn.optimizers.get("sgd", 0.5, momentum=0.9)
    ts = fnn.train.init_train_state(layer, opt, jax.random.key(0), x_train[:batch_size])
    step = jax.jit(
        fnn.train.make_dp_train_step(
            layer, LOSS, opt, l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier
        ),
        donate_argnums=0,
    )
    steps = len(x_train) // batch_size
    for epoch in range(epochs):
        order = fnn.training.loop.epoch_order(len(x_train), seed=0, epoch=epoch)
        for s in range(steps):
            idx = order[s * batch_size : (s + 1) * batch_size]
            ts, logs = step(ts, (x_train[idx], y_train[idx]))
    predict = jax.jit(fnn.train.make_predict_step(layer))
    acc = float(np.mean(np.argmax(predict(ts.params, ts.state, x_test), -1) == y_test))
    eps = fnn.train.dp_epsilon(
        num_examples=len(x_train),
        batch_size=batch_size,
        noise_multiplier=noise_multiplier,
        steps=epochs * steps,
        delta=delta,
    )
    print(
        f"DP-SGD: {epochs} epochs, clip {l2_norm_clip}, noise {noise_multiplier}: test accuracy "
        f"{acc:.4f} at ({eps:.2f}, {delta:g})-DP; last batch clipped fraction "
        f"{float(logs['clipped_fraction']):.2f}"
    )
    return acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=1.0)
    args = parser.parse_args()
    main(args.epochs, args.noise, args.clip)
