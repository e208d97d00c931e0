"""Sharded training and checkpoints across 2 processes x 2 CPU devices (127.0.0.1, gloo).

This process saves a small Transformer's initial train state under fsdp=8 (its 8 fake
devices). Two worker processes restore it onto an fsdp=2 x tensor=2 mesh spanning both
(each building only its own shards), train 5 Adam steps, each feeding only its half of
every global batch, and save a sharded checkpoint (each writing only its own shards).
Checks: the restored state equals the saved one bit for bit; the 5 steps equal the same
steps run with plain ``jax.jit`` on one device (float32, ``atol=rtol=2e-5`` on every
parameter and moment, 1e-5 on the losses: only the order of the reductions differs); the
2-process checkpoint restored on one device equals the workers' gathered state bit for
bit. Every wait is bounded; workers still running at the deadline are killed.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import fnn.distributed as dist
from fnn import checkpoint
from fnn.distributed import TRANSFORMER_RULES, Distribution, data_parallel, make_mesh
from fnn.layers import Dense, Embedding, GlobalAveragePooling1D, TransformerEncoderBlock

VOCAB, TIME, DIM, CLASSES, BATCH, STEPS = 32, 8, 16, 8, 16, 5
TOL = {"atol": 2e-5, "rtol": 2e-5}
RULES = {
    **TRANSFORMER_RULES,
    "embedding/embeddings": ("fsdp", "tensor"),
    "dense/kernel": ("fsdp", None),
}
WORKER_TIMEOUT_S = 120


def problem():
    model = fnn.serial(
        Embedding(VOCAB, DIM),
        TransformerEncoderBlock(num_heads=2, key_dim=8, ff_dim=32),
        GlobalAveragePooling1D(),
        Dense(CLASSES),
    )
    rng = np.random.default_rng(0)
    batches = [
        (
            rng.integers(0, VOCAB, (BATCH, TIME)).astype(np.int32),
            rng.integers(0, CLASSES, BATCH).astype(np.int32),
        )
        for _ in range(STEPS)
    ]
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    step = fnn.train.make_train_step(model, loss, "adam")

    def init():
        x = jax.ShapeDtypeStruct((BATCH, TIME), jnp.int32)
        return fnn.train.init_train_state(model, "adam", jax.random.key(0), x)

    return step, init, batches


def flat(tree):
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[jax.tree_util.keystr(path)] = leaf
    return out


def local_shards(tree, prefix):
    """Every shard this process holds, keyed ``prefix|path|start:stop,...`` (no gather)."""
    out = {}
    for key, leaf in flat(tree).items():
        for shard in leaf.addressable_shards:
            bounds = ",".join(
                f"{s.indices(n)[0]}:{s.indices(n)[1]}" for s, n in zip(shard.index, leaf.shape)
            )
            out[f"{prefix}|{key}|{bounds}"] = np.asarray(shard.data)
    return out


def worker(process_id: int, port: int, directory: str) -> None:
    """One of the 2 processes (started with 2 CPU devices each)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    dist.initialize(f"127.0.0.1:{port}", 2, process_id, timeout_s=30, heartbeat_timeout_s=10)
    assert (jax.process_count(), jax.device_count()) == (2, 4)
    step, init, batches = problem()
    mesh = make_mesh(fsdp=2, tensor=2)
    dp = data_parallel(step, devices=mesh, rules=RULES)
    ts = checkpoint.restore(
        f"{directory}/fsdp8", jax.eval_shape(init), shardings=Distribution(mesh, RULES)
    )
    kernel = ts.params["transformer_encoder_block"]["ffn"]["dense"]["kernel"]
    assert not kernel.is_fully_addressable and len(kernel.addressable_shards) == 2
    results = local_shards(ts, "restored")
    for i, batch in enumerate(batches):
        ts, logs = dp(ts, dist.process_local_batch(batch))
        results[f"loss/{i}"] = np.asarray(logs["loss"])
    checkpoint.save(f"{directory}/fsdp2_tensor2", ts)
    results.update(local_shards(ts, "trained"))
    np.savez(f"{directory}/process_{process_id}.npz", **results)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])


@pytest.mark.slow
def test_two_processes_restore_train_and_save_sharded(tmp_path):
    from test_distributed import free_port, run_workers

    step, init, batches = problem()
    ts0 = jax.jit(init)()
    fsdp8 = data_parallel(step, devices=make_mesh(fsdp=8), rules=RULES)
    checkpoint.save(tmp_path / "fsdp8", fsdp8.put_state(ts0))
    port = free_port()
    commands = [
        [sys.executable, __file__, "worker", str(i), str(port), str(tmp_path)] for i in (0, 1)
    ]
    codes, outputs = run_workers(commands, WORKER_TIMEOUT_S)
    assert codes == [0, 0], outputs

    ts, single, losses = ts0, jax.jit(step), []
    for batch in batches:
        ts, logs = single(ts, batch)
        losses.append(float(logs["loss"]))
    # The workers' state, gathered by nothing but the checkpoint they wrote.
    trained = checkpoint.restore(tmp_path / "fsdp2_tensor2", jax.eval_shape(init))
    full = {"restored": flat(ts0), "trained": flat(trained)}
    for path, want in flat(ts).items():
        np.testing.assert_allclose(full["trained"][path], want, **TOL, err_msg=path)
    checked = set()
    for r in (np.load(tmp_path / f"process_{i}.npz") for i in (0, 1)):
        np.testing.assert_allclose(
            [r[f"loss/{i}"] for i in range(STEPS)], losses, atol=1e-5, rtol=1e-5
        )
        for name in r.files:
            if "|" not in name:
                continue
            which, path, bounds = name.split("|")
            index = tuple(slice(*map(int, b.split(":"))) for b in bounds.split(",") if b)
            value = np.asarray(full[which][path])[index]
            shard = r[name]
            assert (shard.dtype, shard.shape, shard.tobytes()) == (
                value.dtype,
                value.shape,
                value.tobytes(),
            ), name
            checked.add((which, path))
    assert checked == {(w, p) for w in full for p in full[w]}  # every leaf of both states
    files = sorted(p.name for p in (tmp_path / "fsdp2_tensor2").iterdir())
    assert files == [
        "arrays.safetensors",
        "checkpoint.json",
        "shards_00000.safetensors",
        "shards_00001.safetensors",
    ]
