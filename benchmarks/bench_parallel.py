"""Step time of fnn.distributed.data_parallel against hand-written pmap / sharded-jit steps.

Run: python benchmarks/bench_parallel.py [--devices 1,2,4,8] [--steps 50] [--repeats 7]

Without an accelerator it makes 8 fake CPU devices (they share the host's cores, so no
speed-up with more devices is expected; the point is the overhead of the wrapper). The
MLP (64 -> 256 -> 256 -> 10, Adam, global batch 512) is the same in every variant, every
step gets a fresh NumPy batch (host-to-device copy included everywhere), and variants are
timed interleaved, best of ``--repeats`` runs of ``--steps`` steps each. Ratios above 1 mean
data_parallel is slower than the hand-written equivalent (target: <= 1.05).

Measured on the shared 2-core CPU box (8 fake devices; load ~17, so +-10% noise), best of
15 x 20 steps: pmap data_parallel / hand-written pmap = 1.004, 0.948, 1.004, 0.994 for
1/2/4/8 devices; sharded data_parallel / hand-written sharded jit = 0.89-1.05; the
wrapper's own Python time is 17-25 us per call (~0.3% of a step).
"""

from __future__ import annotations

import argparse
import os
import time

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fnn
from fnn.distributed import batch_mesh, data_parallel, replicate, shard_batch
from fnn.layers import Dense

GLOBAL_BATCH = 512


def make_step(model, optimizer, axis_name=None):
    def loss_fn(params, state, x, y):
        logits, state = model.apply(params, state, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    def step(ts, batch):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            ts["params"], ts["state"], batch["x"], batch["y"]
        )
        if axis_name is not None:
            grads, loss = jax.lax.pmean((grads, loss), axis_name)
        updates, opt_state = optimizer.update(grads, ts["opt_state"], ts["params"])
        params = optax.apply_updates(ts["params"], updates)
        return {"params": params, "state": state, "opt_state": opt_state}, {"loss": loss}

    return step


def time_loop(call, state, batches, steps):
    state, _ = call(state, batches[0])  # compile and warm up
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(steps):
        state, logs = call(state, batches[i % len(batches)])
    jax.block_until_ready((state, logs))
    return (time.perf_counter() - start) / steps


def bench(n, steps, repeats, model, optimizer, ts, batches):
    devices = jax.devices()[:n]
    variants = {}

    # Hand-written pmap: replicated state, batch reshaped to [n, batch / n, ...].
    p_step = jax.pmap(make_step(model, optimizer, "batch"), axis_name="batch", devices=devices)
    variants["pmap (hand-written)"] = (
        lambda s, b: p_step(s, shard_batch(b, n)),
        replicate(ts, devices),
    )
    dp = data_parallel(make_step(model, optimizer, "batch"), devices=n, method="pmap")
    variants["pmap (data_parallel)"] = (dp, dp.put_state(ts))

    # Hand-written sharded jit: the global-view step over a 1-D mesh.
    mesh = batch_mesh(devices)
    rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
    j_step = jax.jit(
        make_step(model, optimizer), in_shardings=(rep, split), out_shardings=(rep, rep)
    )
    variants["sharded (hand-written)"] = (
        lambda s, b: j_step(s, jax.device_put(b, split)),
        jax.device_put(ts, rep),
    )
    ds = data_parallel(make_step(model, optimizer), devices=n, method="sharded")
    variants["sharded (data_parallel)"] = (ds, ds.put_state(ts))

    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, (call, state) in variants.items():
            best[name] = min(best[name], time_loop(call, state, batches, steps))
    return best


def wrapper_overhead_us(dp, state, batch, hand_prep, calls=2000):
    """Python time data_parallel adds per call: its __call__ around a no-op step, minus
    what the hand-written loop also does there (``hand_prep``, e.g. reshaping the batch)."""
    dp(state, batch)  # build and check once
    compiled, dp._fn = dp._fn, lambda s, b: (s, {})
    try:
        best_dp = best_hand = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                dp(state, batch)
            best_dp = min(best_dp, (time.perf_counter() - start) / calls)
            start = time.perf_counter()
            for _ in range(calls):
                hand_prep(batch)
            best_hand = min(best_hand, (time.perf_counter() - start) / calls)
    finally:
        dp._fn = compiled
    return (best_dp - best_hand) * 1e6


def main(devices=(1, 2, 4, 8), steps=50, repeats=7):
    model = fnn.serial(Dense(256, activation="relu"), Dense(256, activation="relu"), Dense(10))
    optimizer = optax.adam(1e-3)
    params, state = model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 64), jnp.float32))
    ts = {"params": params, "state": state, "opt_state": optimizer.init(params)}
    rng = np.random.default_rng(0)
    batches = [
        {
            "x": rng.normal(size=(GLOBAL_BATCH, 64)).astype(np.float32),
            "y": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32),
        }
        for _ in range(4)
    ]
    print(f"backend {jax.default_backend()}, device {jax.devices()[0].device_kind}, ")
    print(f"global batch {GLOBAL_BATCH}, best of {repeats} x {steps} steps, ms per step")
    header = f"{'devices':>7}  {'pmap hand':>9}  {'pmap dp':>9}  {'ratio':>6}"
    header += f"  {'shard hand':>10}  {'shard dp':>9}  {'ratio':>6}  {'dp shard/hand pmap':>18}"
    print(header)
    rows = {}
    for n in devices:
        if n > jax.device_count():
            print(f"{n:>7}  (only {jax.device_count()} devices)")
            continue
        t = bench(n, steps, repeats, model, optimizer, ts, batches)
        ph, pd = t["pmap (hand-written)"], t["pmap (data_parallel)"]
        sh, sd = t["sharded (hand-written)"], t["sharded (data_parallel)"]
        rows[n] = t
        print(
            f"{n:>7}  {ph * 1e3:>9.3f}  {pd * 1e3:>9.3f}  {pd / ph:>6.3f}  {sh * 1e3:>10.3f}  "
            f"{sd * 1e3:>9.3f}  {sd / sh:>6.3f}  {sd / ph:>18.3f}"
        )
    n = max(rows) if rows else 1
    for method, axis in (("pmap", "batch"), ("sharded", None)):
        dp = data_parallel(make_step(model, optimizer, axis), devices=n, method=method)
        prep = (lambda b: shard_batch(b, n)) if method == "pmap" else (lambda b: b)
        extra = wrapper_overhead_us(dp, dp.put_state(ts), batches[0], prep)
        step_ms = rows[n][f"{method} (data_parallel)"] * 1e3 if rows else float("nan")
        print(
            f"data_parallel Python overhead ({method}, {n} devices): {extra:.1f} us per call "
            f"= {extra / 10 / step_ms:.2f}% of a {step_ms:.2f} ms step"
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    main(tuple(int(n) for n in args.devices.split(",")), args.steps, args.repeats)
