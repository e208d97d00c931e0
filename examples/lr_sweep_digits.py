"""Eight learning rates in one compiled step on digits, at the functional level.

Run: python examples/lr_sweep_digits.py [--out sweep.png]   (about 15 s)

``fnn.train.init_sweep_train_state`` gives every member the same initial params and puts
each member's learning rate in its optimizer state (``optax.inject_hyperparams``);
``make_ensemble_train_step`` vmaps the pure training step over the member axis, so the 8
runs train as one XLA program on the same batches. New sweep values reuse the compiled
step (``CompileCounter`` shows 0 compiles). The same sweep from a config file (also weight
decay, dropout rate, label smoothing): ``fnn train configs/digits_mlp_sweep.yaml``.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import fnn
from fnn.layers import Dense

LOSS = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)


def main(epochs: int = 10, members: int = 8, out: str | None = None) -> float:
    """Train ``members`` learning rates (1e-4 .. 0.3, log-spaced) for ``epochs``; print the
    member table and return the best member's test accuracy."""
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits()  # x [n, 64]
    layer = fnn.serial(Dense(64, activation="relu"), Dense(10))
    lrs = [float(v) for v in np.geomspace(1e-4, 3e-1, members)]

    def init(rates):
        return fnn.train.init_sweep_train_state(
            layer,
            "adam",
            jax.random.key(1),
            x_train[:32],
            hyperparams={"learning_rate": rates},
            metrics=["accuracy"],
            loss=LOSS,
        )

    ts, tx = init(lrs)
    step = jax.jit(fnn.train.make_ensemble_train_step(layer, LOSS, tx, ["accuracy"]))
    batch_size, steps = 32, len(x_train) // 32
    for epoch in range(epochs):
        ts = fnn.train.reset_metrics(ts)  # the table reports the last epoch
        order = fnn.train.member_orders(len(x_train), 1, seed=0, epoch=epoch)[0]
        for s in range(steps):
            idx = order[s * batch_size : (s + 1) * batch_size]
            ts, _ = step(ts, (x_train[idx], y_train[idx]))
    finals = fnn.train.compute_member_metrics(ts.metric_states, ["accuracy"])
    print(fnn.train.sweep_table({"learning_rate": lrs}, finals))

    logits, _ = jax.jit(fnn.ensemble(layer, members).apply)(ts.params, ts.state, x_test)
    test_acc = np.mean(np.argmax(np.asarray(logits), -1) == y_test, axis=1)  # [members]
    best = int(np.argmax(test_acc))
    print(f"best learning rate {lrs[best]:.2e}: test accuracy {test_acc[best]:.4f}")

    other, _ = init([lr * 2 for lr in lrs])
    with fnn.train.CompileCounter() as compiles:
        step(other, (x_train[:32], y_train[:32]))
    print(f"compiles for new sweep values: {compiles.count}")
    if out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.semilogx(lrs, np.asarray(finals["loss"]), "o-", label="last-epoch train loss")
        ax.semilogx(lrs, 1 - test_acc, "s--", label="test error")
        ax.set_xlabel("learning rate")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        print(f"wrote {out}")
    return float(test_acc[best])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--out", default=None, help="PNG: loss and test error per rate")
    args = parser.parse_args()
    main(args.epochs, args.members, args.out)
