"""DP-SGD on digits with ``Model.fit(dp=...)``: per-example clipping, noise, epsilon spent.

Run: python examples/dp_digits.py   (about 20 s)

``model.fit(..., dp={...})`` trains with DP-SGD's gradient (each example's gradient
clipped to ``l2_norm_clip``, summed, Gaussian noise of std ``noise_multiplier *
l2_norm_clip`` added, divided by the batch) and logs ``epsilon`` after every epoch:
dp-accounting's RDP accountant for every step taken so far at ``delta``. Batches are
shuffled fixed-size batches, the usual stand-in for the Poisson sampling the accountant
assumes.
"""

from __future__ import annotations

import argparse

import fnn
from fnn.layers import Dense


def main(
    epochs: int = 15,
    noise_multiplier: float = 1.0,
    l2_norm_clip: float = 1.0,
    batch_size: int = 64,
    delta: float = 1e-5,
) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits()  # x [n, 64]
    model = fnn.Sequential([fnn.Input((64,)), Dense(64, activation="tanh"), Dense(10)])
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(fnn.optimizers.SGD(0.5, momentum=0.9), loss, metrics=["accuracy"], seed=0)
    dp = {"l2_norm_clip": l2_norm_clip, "noise_multiplier": noise_multiplier, "delta": delta}
    history = model.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs, dp=dp, verbose=0
    ).history
    acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)["accuracy"]
    eps = history["epsilon"][-1]
    print(
        f"DP-SGD: {epochs} epochs, clip {l2_norm_clip}, noise {noise_multiplier}: test accuracy "
        f"{acc:.4f} at ({eps:.2f}, {delta:g})-DP"
    )
    return acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=1.0)
    args = parser.parse_args()
    main(args.epochs, args.noise, args.clip)
