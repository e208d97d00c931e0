"""Benchmark (not a test): vmapped ensembles and sweeps vs sequential ``fit`` runs, and the
DP-SGD step vs the ordinary step, on digits (XLA:CPU).

1. An 8-member ensemble (tiny MLP; digits CNN) trained in one compiled step
   (``Model.fit(ensemble=8)``, each member on its own shuffle) vs 8 sequential
   ``Model.fit`` runs of the same epochs: wall-time ratio, compiles included (goal <= 0.35).
2. An 8-value learning-rate sweep in one compiled step vs 8 ``fit`` runs (goal <= 0.35),
   and the XLA compiles when the sweep values change (goal 0).
3. ``make_dp_train_step`` (ghost norms, and the two-pass variant) vs ``make_train_step``
   per-step time on the MLP (goal <= 3), interleaved (best and median of 30 rounds of
   50 steps each).

Run: PYTHONPATH=. python benchmarks/bench_research.py [--epochs 3] [--members 8] [--dp-only]
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
    """Seconds per step of each of ``steps`` in every round (``{name: [rounds]}``),
    measured in interleaved rounds of ``n`` steps."""
    states = {k: jax.block_until_ready(s(ts, batch)[0]) for k, s in steps.items()}
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            t, t0 = states[k], time.perf_counter()
            for _ in range(n):
                t, _ = step(t, batch)
            jax.block_until_ready(t)
            times[k].append((time.perf_counter() - t0) / n)
            states[k] = t
    return times


def bench_dp(x, y, rounds=30):
    """``{name: [seconds per step of each round]}`` of the ordinary step ("plain"), the
    DP-SGD step ("dp", ghost norms) and the two-pass DP-SGD step ("dp_two_pass")."""
    layer = fnn.serial(*mlp())
    batch = (jnp.asarray(x[:64]), jnp.asarray(y[:64]))
    init = fnn.train.init_train_state(layer, "sgd", jax.random.key(0), batch[0])
    plain = jax.jit(fnn.train.make_train_step(layer, LOSS, "sgd"))

    def dp(ghost):
        return jax.jit(
            fnn.train.make_dp_train_step(
                layer, LOSS, "sgd", l2_norm_clip=1.0, noise_multiplier=1.0, ghost_norms=ghost
            )
        )

    return _per_step(
        {"plain": plain, "dp": dp(True), "dp_two_pass": dp(False)}, init, batch, rounds
    )


def dp_table(times) -> str:
    """Markdown rows of ``bench_dp``'s times: best and median ms, ratios to "plain"."""
    best = {k: min(v) for k, v in times.items()}
    median = {k: float(np.median(v)) for k, v in times.items()}
    rows = ["| step (MLP, batch 64) | best ms | median ms | best ratio | median ratio |"]
    rows.append("| --- | --- | --- | --- | --- |")
    for k in times:
        rows.append(
            f"| {k} | {best[k] * 1e3:.3f} | {median[k] * 1e3:.3f} | "
            f"{best[k] / best['plain']:.2f} | {median[k] / median['plain']:.2f} |"
        )
    return "\n".join(rows)


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
    dp_times = bench_dp(x, y)
    t_plain, t_dp = min(dp_times["plain"]), min(dp_times["dp"])
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
    print(dp_table(dp_times))
    return {k: a / b for k, (a, b) in rows.items()} | {"dp": t_dp / t_plain, "re": recompiles}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--dp-only", action="store_true", help="only the DP-SGD rows")
    args = parser.parse_args()
    if args.dp_only:
        (x, y), _ = fnn.datasets.load_digits()
        print(dp_table(bench_dp(x, y)))
    else:
        main(args.epochs, args.members)
