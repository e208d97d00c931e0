"""Eight MLPs in one compiled step: ensemble uncertainty and a learning-rate sweep on digits.

Run: python examples/ensemble_digits.py [--out ensemble.png]   (about 20 s)

``fnn.train.init_ensemble_train_state`` vmaps the initialisation over 8 keys and
``make_ensemble_train_step`` vmaps the pure training step over the member axis, so the 8
members (each on its own shuffle, ``same_batch=False``) train in one XLA program. The
combined prediction is the mean of the members' probabilities; its entropy is higher on
the test digits the ensemble gets wrong. The sweep trains 8 learning rates the same way:
the rates live in the optimizer state (``optax.inject_hyperparams``), so new values reuse
the compiled step (``CompileCounter`` shows 0 compiles).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import fnn
from fnn.layers import Dense

LOSS = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp():
    return fnn.serial(Dense(64, activation="relu"), Dense(10))


def train_members(step, ts, x, y, *, members, epochs, batch_size, same_batch, seed=0):
    """Host loop over the compiled ensemble step: per-member orders, or one shared order."""
    steps = len(x) // batch_size
    for epoch in range(epochs):
        ts = fnn.train.reset_metrics(ts)  # metrics of the last epoch only
        orders = fnn.train.member_orders(len(x), members, seed=seed, epoch=epoch)
        for s in range(steps):
            cut = slice(s * batch_size, (s + 1) * batch_size)
            idx = orders[0, cut] if same_batch else orders[:, cut]
            ts, _ = step(ts, (x[idx], y[idx]))
    return ts


def main(epochs: int = 10, members: int = 8, out: str | None = None) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits()
    layer = mlp()
    ts = fnn.train.init_ensemble_train_state(
        layer, "adam", jax.random.key(0), members, x_train[:32], metrics=["accuracy"], loss=LOSS
    )
    step = jax.jit(
        fnn.train.make_ensemble_train_step(layer, LOSS, "adam", ["accuracy"], same_batch=False),
        donate_argnums=0,
    )
    ts = train_members(
        step,
        ts,
        x_train,
        y_train,
        members=members,
        epochs=epochs,
        batch_size=32,
        same_batch=False,
    )
    logits, _ = jax.jit(fnn.ensemble(layer, members).apply)(ts.params, ts.state, x_test)
    stats = fnn.train.predictive_stats(logits)
    member_acc = np.mean(np.argmax(np.asarray(logits), -1) == y_test, axis=1)
    pred = np.argmax(np.asarray(stats["probs"]), -1)
    acc = float(np.mean(pred == y_test))
    entropy = np.asarray(stats["entropy"])
    right, wrong = entropy[pred == y_test], entropy[pred != y_test]
    print(f"members' test accuracy {member_acc.round(3).tolist()}; ensemble {acc:.4f}")
    print(
        f"predictive entropy: correct {right.mean():.3f} nats, wrong "
        f"{wrong.mean() if wrong.size else float('nan'):.3f} nats ({wrong.size} wrong)"
    )

    # Learning-rate sweep: the same vmapped step, the rate a value in each member's state.
    lrs = list(np.geomspace(1e-4, 3e-1, members))
    sweep_ts, tx = fnn.train.init_sweep_train_state(
        layer,
        "adam",
        jax.random.key(1),
        x_train[:32],
        hyperparams={"learning_rate": lrs},
        metrics=["accuracy"],
        loss=LOSS,
    )
    sweep_step = jax.jit(fnn.train.make_ensemble_train_step(layer, LOSS, tx, ["accuracy"]))
    sweep_ts = train_members(
        sweep_step,
        sweep_ts,
        x_train,
        y_train,
        members=members,
        epochs=epochs,
        batch_size=32,
        same_batch=True,
    )
    finals = fnn.train.compute_member_metrics(sweep_ts.metric_states, ["accuracy"])
    print(fnn.train.sweep_table({"learning_rate": lrs}, finals))
    other, _ = fnn.train.init_sweep_train_state(
        layer,
        "adam",
        jax.random.key(1),
        x_train[:32],
        hyperparams={"learning_rate": [lr * 2 for lr in lrs]},
        metrics=["accuracy"],
        loss=LOSS,
    )
    batch = (x_train[:32], y_train[:32])
    with fnn.train.CompileCounter() as compiles:
        sweep_step(other, batch)
    print(f"compiles for new sweep values: {compiles.count}")
    if out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
        a.hist([right, wrong], bins=20, density=True, label=["correct", "wrong"])
        a.set_xlabel("predictive entropy (nats)")
        a.legend()
        b.semilogx(lrs, finals["loss"], "o-")
        b.set_xlabel("learning rate")
        b.set_ylabel(f"last-epoch train loss ({epochs} epochs)")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        print(f"wrote {out}")
    return acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--out", default=None, help="PNG: entropy histogram and sweep curve")
    args = parser.parse_args()
    main(args.epochs, args.members, args.out)
