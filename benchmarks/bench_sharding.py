"""Sharded parameters, scan-over-layers and remat: three measurements in one run.

Run: python -m benchmarks.bench_sharding [--rounds 7] [--steps 10] [--blocks 48]

1. FSDP step time: ``fnn.data_parallel(fnn.train step, devices=make_mesh(fsdp=8),
   rules=...)`` against a hand-written ``jax.jit`` step with ``NamedSharding`` in/out
   shardings per leaf (same model apply, same optax Adam, same batches, host-to-device copy
   of each NumPy batch included in both). Timed in interleaved rounds of ``--steps`` steps;
   medians over ``--rounds``; ratio fnn / hand-written (goal <= 1.05).
2. Compile time of a train step over ``fnn.repeat(block, 48)`` against 48 unrolled blocks
   (``fnn.serial``), ``jit(...).lower(...).compile()`` wall time (goal: >= 5x faster).
3. Peak temporary memory of the gradient of a deep MLP (32 tanh Dense layers of 512, batch
   1024, in groups of 4) with every group under ``fnn.remat`` against the plain one: XLA's
   ``compiled.memory_analysis()`` temp bytes of the compiled gradient (goal: lower), with
   the groups chained by ``fnn.repeat`` and by ``fnn.serial``.

Without an accelerator it makes 8 fake CPU devices (sharing the host's cores; the step
ratio measures fnn's overhead, not a speed-up). Prints one table; ``--json`` also dumps it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
from fnn.distributed import data_parallel, make_mesh
from fnn.layers import Dense, LayerNormalization

FSDP_RULES = {"*/kernel": ("fsdp", None)}


def fsdp_step_times(rounds: int, steps: int, width: int = 512, batch: int = 256) -> dict:
    model = fnn.serial(*[Dense(width, activation="tanh") for _ in range(4)], Dense(16))
    mesh = make_mesh(fsdp=8)
    x_spec = jax.ShapeDtypeStruct((batch, width), jnp.float32)
    rng = np.random.default_rng(0)
    data = [
        (
            rng.normal(size=(batch, width)).astype(np.float32),
            rng.integers(0, 16, batch).astype(np.int32),
        )
        for _ in range(steps)
    ]
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    adam = optax.adam(1e-3)

    # fnn: the library's step and placement.
    dp = data_parallel(fnn.train.make_train_step(model, loss, adam), devices=mesh, rules=FSDP_RULES)
    ts = dp.init_state(lambda: fnn.train.init_train_state(model, adam, jax.random.key(0), x_spec))

    # Hand-written: plain params/opt-state dicts, NamedSharding per leaf, jit.
    def hand_loss(params, x, y):
        logits, _ = model.apply(params, {}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def hand_step(state, batch):
        params, opt_state = state
        value, grads = jax.value_and_grad(hand_loss)(params, *batch)
        updates, opt_state = adam.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    def spec_of(path, leaf):
        is_kernel = jax.tree_util.keystr(path).endswith("['kernel']")
        return NamedSharding(mesh, P("fsdp", None) if is_kernel and leaf.ndim == 2 else P())

    params0 = jax.eval_shape(model.init, jax.random.key(0), x_spec)[0]
    state_shapes = jax.eval_shape(lambda p: (p, adam.init(p)), params0)
    state_sh = jax.tree_util.tree_map_with_path(spec_of, state_shapes)
    batch_sh = NamedSharding(mesh, P(("data", "fsdp")))
    replicated = NamedSharding(mesh, P())
    init = jax.jit(
        lambda: (lambda p: (p, adam.init(p)))(model.init(jax.random.key(1), x_spec)[0]),
        out_shardings=state_sh,
    )
    hand = jax.jit(
        hand_step,
        in_shardings=(state_sh, (batch_sh, batch_sh)),
        out_shardings=(state_sh, replicated),
    )
    hs = init()

    def run_fnn(ts):
        for b in data:
            ts, logs = dp(ts, b)
        jax.block_until_ready(ts)
        return ts

    def run_hand(hs):
        for b in data:
            hs, value = hand(hs, jax.device_put(b, batch_sh))
        jax.block_until_ready(hs)
        return hs

    ts, hs = run_fnn(ts), run_hand(hs)  # compile and warm up
    fnn_times, hand_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        ts = run_fnn(ts)
        fnn_times.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        hs = run_hand(hs)
        hand_times.append((time.perf_counter() - start) / steps)
    f, h = statistics.median(fnn_times), statistics.median(hand_times)
    return {"fnn_step_ms": 1e3 * f, "hand_step_ms": 1e3 * h, "step_ratio": f / h}


def _block(dim: int) -> fnn.Layer:
    return fnn.residual(
        LayerNormalization(), Dense(2 * dim, activation="gelu"), Dense(dim), name="block"
    )


def compile_times(blocks: int, dim: int = 64, batch: int = 32) -> dict:
    x = jax.ShapeDtypeStruct((batch, dim), jnp.float32)

    def compile_seconds(layer) -> float:
        params = jax.eval_shape(layer.init, jax.random.key(0), x)[0]

        def loss(p, x):
            return jnp.mean(layer.apply(p, {}, x)[0] ** 2)

        start = time.perf_counter()
        jax.jit(jax.value_and_grad(loss)).lower(params, x).compile()
        return time.perf_counter() - start

    scanned = compile_seconds(fnn.repeat(_block(dim), blocks))
    unrolled = compile_seconds(fnn.serial(*[_block(dim).renamed(f"b{i}") for i in range(blocks)]))
    return {
        "repeat_compile_s": scanned,
        "unrolled_compile_s": unrolled,
        "compile_speedup": unrolled / scanned,
    }


def remat_memory(depth: int = 32, group: int = 4, width: int = 512, batch: int = 1024) -> dict:
    """Temp bytes of the compiled gradient of ``depth`` tanh Dense layers in groups of
    ``group``, each group plain or under ``fnn.remat`` (only a group's input is kept; its
    activations are recomputed in the backward pass); the groups chained by ``fnn.repeat``
    (scan) and by ``fnn.serial`` (unrolled)."""
    x = jax.ShapeDtypeStruct((batch, width), jnp.float32)

    def one_group(name="g"):
        return fnn.serial(
            *[Dense(width, activation="tanh", name=f"d{i}") for i in range(group)], name=name
        )

    def temp_bytes(layer) -> int:
        params = jax.eval_shape(layer.init, jax.random.key(0), x)[0]

        def loss(p, x):
            return jnp.mean(layer.apply(p, {}, x)[0] ** 2)

        compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
        return int(compiled.memory_analysis().temp_size_in_bytes)

    n = depth // group
    out = {}
    for wrap_name, wrap in (("plain", lambda g: g), ("remat", fnn.remat)):
        scanned = fnn.repeat(wrap(one_group()), n)
        unrolled = fnn.serial(*[wrap(one_group(f"g{k}")) for k in range(n)])
        out[f"repeat_{wrap_name}_temp_mb"] = temp_bytes(scanned) / 2**20
        out[f"serial_{wrap_name}_temp_mb"] = temp_bytes(unrolled) / 2**20
    out["remat_ratio_repeat"] = out["repeat_remat_temp_mb"] / out["repeat_plain_temp_mb"]
    out["remat_ratio_serial"] = out["serial_remat_temp_mb"] / out["serial_plain_temp_mb"]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=48)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    results = {
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        **fsdp_step_times(args.rounds, args.steps),
        **compile_times(args.blocks),
        **remat_memory(),
    }
    for key, value in results.items():
        print(f"{key:20s} {value:.4g}" if isinstance(value, float) else f"{key:20s} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
