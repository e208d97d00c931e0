"""A Transformer with sharded parameters (FSDP x tensor parallel) on a data x fsdp x tensor mesh.

Run: python examples/sharded_transformer.py --mesh fsdp=4,tensor=2 [--blocks 4] [--steps 30]
(about 20 s on 2 CPU cores; without accelerators the CPU is split into 8 fake devices)

What it shows, in the order it happens:

1. ``mesh = fnn.distributed.make_mesh(fsdp=4, tensor=2)``: a ``data x fsdp x tensor`` mesh.
2. Sharding rules: glob patterns on parameter paths -> mesh axes per dimension
   (``fnn.distributed.TRANSFORMER_RULES`` for the blocks, plus the embedding and head).
   The blocks are ``fnn.repeat(fnn.remat(block), n)``: one stacked block run by
   ``lax.scan`` (compiled once) with activations recomputed in the backward pass; the
   rules start with ``...`` so they skip the stacking axis.
3. ``dp = fnn.data_parallel(step, devices=mesh, rules=rules)`` wraps the ordinary pure
   ``fnn.train`` step; ``dp.init_state(init)`` compiles the initialisation with the
   state's shardings as outputs, so each device only ever builds its own shards (no full
   copy anywhere); Adam's moments follow their parameters; each batch is split over
   ``data x fsdp``. The sharding table printed before training lists every parameter's
   spec and bytes per device.

Multi-host (a GPU cluster or a TPU pod): run the same script on every host with
``--multi-host`` (it calls ``fnn.distributed.initialize()`` first) and a mesh whose size
is the number of devices in all; each process feeds its own rows of every batch.
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

import fnn
from fnn.layers import (
    Dense,
    Embedding,
    GlobalAveragePooling1D,
    PositionalEmbedding,
    TransformerEncoderBlock,
)

VOCAB, TIME, CLASSES = 64, 16, 8


def build(dim: int, heads: int, blocks: int, remat: bool) -> fnn.Layer:
    block = TransformerEncoderBlock(heads, dim // heads, 4 * dim, norm_first=True, name="block")
    if remat:
        block = fnn.remat(block, policy="dots_saveable")
    return fnn.serial(
        Embedding(VOCAB, dim),
        PositionalEmbedding(TIME, kind="learned"),
        fnn.repeat(block, blocks),
        GlobalAveragePooling1D(),
        Dense(CLASSES),
    )


RULES = {
    **fnn.distributed.TRANSFORMER_RULES,
    "embedding/embeddings": ("tensor", "fsdp"),  # [vocab, dim]
    "dense/kernel": ("fsdp", None),  # [dim, classes]
}


def batches(batch_size: int, steps: int, seed: int = 0):
    """Token sequences of class ``c``: 3/4 of their tokens from band ``c`` of the vocabulary,
    the rest anywhere (a task a few dozen steps learn)."""
    rng = np.random.default_rng(seed)
    band = VOCAB // CLASSES
    for _ in range(steps):
        labels = rng.integers(0, CLASSES, batch_size)
        ids = labels[:, None] * band + rng.integers(0, band, (batch_size, TIME))
        noise = rng.random((batch_size, TIME)) < 0.25
        ids = np.where(noise, rng.integers(0, VOCAB, (batch_size, TIME)), ids)
        yield ids.astype(np.int32), labels.astype(np.int32)


def main(
    mesh: str = "fsdp=4,tensor=2",
    blocks: int = 4,
    steps: int = 30,
    batch_size: int = 32,
    dim: int = 32,
    heads: int = 4,
    remat: bool = True,
    multi_host: bool = False,
) -> dict:
    if multi_host:
        fnn.distributed.initialize()
    mesh = fnn.distributed.make_mesh(**fnn.distributed.parse_mesh(mesh))
    model = build(dim, heads, blocks, remat)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = fnn.optimizers.Adam(3e-3)
    step = fnn.train.make_train_step(model, loss, optimizer)
    dp = fnn.data_parallel(step, devices=mesh, rules=RULES, donate=True)

    def init():
        x = jax.ShapeDtypeStruct((batch_size, TIME), jnp.int32)
        return fnn.train.init_train_state(model, optimizer, jax.random.key(0), x)

    ts = dp.init_state(init)
    table = fnn.distributed.sharding_table(ts.params)
    if fnn.distributed.is_primary():
        print(f"mesh {dict(mesh.shape)}, batch split over {dp.batch_axes}")
        print(table)
    losses, start = [], time.perf_counter()
    for i, batch in enumerate(batches(batch_size, steps)):
        ts, logs = dp(ts, batch)
        losses.append(float(logs["loss"]))
        if fnn.distributed.is_primary() and (i % 10 == 0 or i == steps - 1):
            print(f"step {i:3d}  loss {losses[-1]:.4f}")
    if fnn.distributed.is_primary():
        print(f"{steps} steps in {time.perf_counter() - start:.1f}s")
    return {"losses": losses, "table": table, "state": ts}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", default="fsdp=4,tensor=2", help="axis sizes, e.g. fsdp=8")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument("--multi-host", action="store_true", help="call initialize() first")
    args = parser.parse_args()
    main(
        args.mesh,
        args.blocks,
        args.steps,
        args.batch_size,
        remat=not args.no_remat,
        multi_host=args.multi_host,
    )
