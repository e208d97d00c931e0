"""Benchmark (not a test): fnn.train steps against hand-written JAX on XLA:CPU.

1. ``make_train_step`` under ``jit`` (donated state) vs a hand-written ``value_and_grad``
   + optax step of the same MLP: ratio of per-step times (target <= 1.03).
2. ``make_multi_step`` (``lax.scan`` over K steps, rolled and unrolled) vs K single
   jitted steps for a tiny MLP, where Python dispatch dominates: per-step time ratio.

Run: PYTHONPATH=. python benchmarks/bench_train_step.py [--steps 300] [--repeats 5]
Timings take the minimum over repeats of alternating runs, to damp machine noise.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from fnn import train
from fnn.layers import Dense


def _time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_step_vs_hand_written(steps, repeats, batch=128, width=256):
    model = fnn.serial(Dense(width, activation="relu"), Dense(width, activation="relu"), Dense(10))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
    opt = optax.adam(1e-3)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)

    fnn_step = jax.jit(train.make_train_step(model, loss, opt), donate_argnums=0)

    def hand_loss(params, x, y):
        logits, _ = model.apply(params, {}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def hand_step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(hand_loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    hand_step = jax.jit(hand_step, donate_argnums=(0, 1))
    holder = {"ts": train.init_train_state(model, opt, jax.random.key(0), x)}
    hand = {"p": jax.tree.map(jnp.copy, holder["ts"].params)}
    hand["o"] = opt.init(hand["p"])

    def run_fnn():
        ts = holder["ts"]
        for _ in range(steps):
            ts, logs = fnn_step(ts, (x, y))
        jax.block_until_ready(logs)
        holder["ts"] = ts

    def run_hand():
        p, o = hand["p"], hand["o"]
        for _ in range(steps):
            p, o, value = hand_step(p, o, x, y)
        jax.block_until_ready(value)
        hand["p"], hand["o"] = p, o

    run_fnn(), run_hand()  # compile and warm up
    t_fnn, t_hand = float("inf"), float("inf")
    for _ in range(repeats):
        t_fnn = min(t_fnn, _time(run_fnn, 1))
        t_hand = min(t_hand, _time(run_hand, 1))
    return t_fnn / steps, t_hand / steps


def bench_multi_step(steps, repeats, k=10, batch=16):
    model = fnn.serial(Dense(16, activation="relu"), Dense(2))
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(k, batch, 8)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 2, size=(k, batch)), jnp.int32)
    opt = optax.sgd(0.01)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    step = train.make_train_step(model, loss, opt)
    single = jax.jit(step, donate_argnums=0)
    multi = {
        unroll: jax.jit(train.make_multi_step(step, unroll=unroll), donate_argnums=0)
        for unroll in (1, True)
    }
    holder = {"ts": train.init_train_state(model, opt, jax.random.key(0), xs[0])}
    calls = max(steps // k, 1)

    def run_single():
        ts = holder["ts"]
        for _ in range(calls):
            for i in range(k):
                ts, logs = single(ts, (xs[i], ys[i]))
        jax.block_until_ready(logs)
        holder["ts"] = ts

    def run_multi(unroll):
        def run():
            ts = holder["ts"]
            for _ in range(calls):
                ts, logs = multi[unroll](ts, (xs, ys))
            jax.block_until_ready(logs)
            holder["ts"] = ts

        return run

    runs = {"single": run_single, "scan": run_multi(1), "scan_unrolled": run_multi(True)}
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], _time(run, 1))
    return {name: t / (calls * k) for name, t in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    t_fnn, t_hand = bench_step_vs_hand_written(args.steps, args.repeats)
    print(
        f"MLP 64-256-256-10, batch 128: make_train_step {t_fnn * 1e6:.1f} us/step, "
        f"hand-written {t_hand * 1e6:.1f} us/step, ratio {t_fnn / t_hand:.3f}"
    )
    times = bench_multi_step(args.steps, args.repeats)
    print(
        f"tiny MLP 8-16-2, batch 16: single {times['single'] * 1e6:.1f} us/step, "
        f"scan(10) {times['scan'] * 1e6:.1f} us/step (ratio {times['scan'] / times['single']:.3f}), "
        f"unrolled scan(10) {times['scan_unrolled'] * 1e6:.1f} us/step "
        f"(ratio {times['scan_unrolled'] / times['single']:.3f})"
    )


if __name__ == "__main__":
    main()
