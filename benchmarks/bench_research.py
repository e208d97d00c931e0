"""Benchmark (not a test): vmapped ensembles and sweeps vs sequential ``fit`` runs, and the
DP-SGD step vs the ordinary step, on digits (XLA:CPU).

1. An 8-member ensemble (tiny MLP; digits CNN) trained in one compiled step
   (``Model.fit(ensemble=8)``, each member on its own shuffle) vs 8 sequential
   ``Model.fit`` runs of the same epochs: wall-time ratio, compiles included (goal <= 0.35).
2. An 8-value learning-rate sweep in one compiled step vs 8 ``fit`` runs (goal <= 0.35),
   and the XLA compiles when the sweep values change (goal 0).
3. ``make_dp_train_step`` vs ``make_train_step`` per-step time on the MLP (goal <= 3),
   the two interleaved (best of 30 rounds of 50 steps each).

Run: PYTHONPATH=. python benchmarks/bench_research.py [--epochs 3] [--members 8]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn.layers import Conv2D, Dense, Flatten, MaxPooling2D

LOSS = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
BATCH = 32


def mlp():
    return [Dense(64, activation="relu"), Dense(10)]


def cnn():
    return [Conv2D(16, 3, padding="same", activation="relu"), MaxPooling2D(), Flatten(), Dense(10)]


def _sequential_fits(layers, x, y, members, epochs, lrs=None):
    t0 = time.perf_counter()
    for i in range(members):
        model = fnn.Sequential([fnn.Input(x.shape[1:]), *layers()])
        opt = "adam" if lrs is None else fnn.optimizers.Adam(learning_rate=float(lrs[i]))
        model.compile(optimizer=opt, loss=LOSS, metrics=["accuracy"], seed=i)
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return time.perf_counter() - t0


def _vmapped(layers, x, y, members, epochs, lrs=None):
    t0 = time.perf_counter()
    layer = fnn.serial(*layers())
    if lrs is None:
        ts = fnn.train.init_ensemble_train_state(
            layer, "adam", jax.random.key(0), members, x[:BATCH], metrics=["accuracy"], loss=LOSS
        )
        opt, same = "adam", False
    else:
        ts, opt = fnn.train.init_sweep_train_state(
            layer,
            "adam",
            jax.random.key(0),
            x[:BATCH],
            hyperparams={"learning_rate": lrs},
            metrics=["accuracy"],
            loss=LOSS,
        )
        same = True
    step = jax.jit(
        fnn.train.make_ensemble_train_step(layer, LOSS, opt, ["accuracy"], same_batch=same),
        donate_argnums=0,
    )
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    steps = len(x) // BATCH
    for epoch in range(epochs):
        orders = fnn.train.member_orders(len(x), members, seed=0, epoch=epoch)
        for s in range(steps):
            cut = slice(s * BATCH, (s + 1) * BATCH)
            idx = jnp.asarray(orders[0, cut] if same else orders[:, cut])
            ts, _ = step(ts, (xd[idx], yd[idx]))
    jax.block_until_ready(ts)
    return time.perf_counter() - t0, step, layer


def _sweep_recompiles(step, layer, x, y, lrs):
    ts, _ = fnn.train.init_sweep_train_state(
        layer,
        "adam",
        jax.random.key(0),
        x[:BATCH],
        hyperparams={"learning_rate": lrs},
        metrics=["accuracy"],
        loss=LOSS,
    )
    batch = (jnp.asarray(x[:BATCH]), jnp.asarray(y[:BATCH]))
    with fnn.train.CompileCounter() as compiles:
        jax.block_until_ready(step(ts, batch))
    return compiles.count


def _fit_ensemble(layers, x, y, members, epochs):
    t0 = time.perf_counter()
    model = fnn.Sequential([fnn.Input(x.shape[1:]), *layers()])
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"], seed=0)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, ensemble=members)
    return time.perf_counter() - t0


def _per_step(steps, ts, batch, rounds=30, n=50):
    """Best seconds per step of each of ``steps``, measured in interleaved rounds."""
    states = {k: jax.block_until_ready(s(ts, batch)[0]) for k, s in steps.items()}
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for k, step in steps.items():
            t, t0 = states[k], time.perf_counter()
            for _ in range(n):
                t, _ = step(t, batch)
            jax.block_until_ready(t)
            best[k] = min(best[k], (time.perf_counter() - t0) / n)
            states[k] = t
    return best


def bench_dp(x, y):
    layer = fnn.serial(*mlp())
    batch = (jnp.asarray(x[:64]), jnp.asarray(y[:64]))
    init = fnn.train.init_train_state(layer, "sgd", jax.random.key(0), batch[0])
    plain = jax.jit(fnn.train.make_train_step(layer, LOSS, "sgd"))
    dp = jax.jit(
        fnn.train.make_dp_train_step(layer, LOSS, "sgd", l2_norm_clip=1.0, noise_multiplier=1.0)
    )
    best = _per_step({"plain": plain, "dp": dp}, init, batch)
    return best["plain"], best["dp"]


def main(epochs: int = 3, members: int = 8) -> dict:
    rows = {}
    lrs = list(np.geomspace(1e-4, 1e-1, members))
    for name, layers, images in [("mlp", mlp, False), ("cnn", cnn, True)]:
        (x, y), _ = fnn.datasets.load_digits(as_images=images)
        seq = _sequential_fits(layers, x, y, members, epochs)
        rows[f"ensemble_{name}"] = (_fit_ensemble(layers, x, y, members, epochs), seq)
        if name == "mlp":
            seq_s = _sequential_fits(layers, x, y, members, epochs, lrs)
            vm_s, step, layer = _vmapped(layers, x, y, members, epochs, lrs)
            rows["lr_sweep_mlp"] = (vm_s, seq_s)
            recompiles = _sweep_recompiles(step, layer, x, y, [lr * 3 for lr in lrs])
    (x, y), _ = fnn.datasets.load_digits()
    t_plain, t_dp = bench_dp(x, y)
    print(
        f"| what ({members} members, {epochs} epochs, batch {BATCH}) | one program s | "
        "sequential s | ratio |"
    )
    print("| --- | --- | --- | --- |")
    for k, (a, b) in rows.items():
        print(f"| {k} vs {members} fit runs | {a:.2f} | {b:.2f} | {a / b:.3f} |")
    print(
        f"| dp_sgd step vs ordinary step (MLP, batch 64) | {t_dp * 1e3:.3f} ms | "
        f"{t_plain * 1e3:.3f} ms | {t_dp / t_plain:.2f} |"
    )
    print(f"recompiles when the sweep values change: {recompiles}")
    return {k: a / b for k, (a, b) in rows.items()} | {"dp": t_dp / t_plain, "re": recompiles}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--members", type=int, default=8)
    args = parser.parse_args()
    main(args.epochs, args.members)
