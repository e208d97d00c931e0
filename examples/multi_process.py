"""Hand-written loop on purpose: multi-process data-parallel training on digits (jax.distributed).

Every process runs this same script. They meet at a coordinator (process 0), then
``jax.devices()`` lists the devices of all processes, one sharded train step spans them,
each process feeds only its own slice of every global batch
(``fnn.distributed.process_local_batch``; ``Model.fit`` has no such per-process input, hence
the written-out loop), and only process 0 prints and saves.

One machine (localhost), 2 processes x 2 CPU devices, started for you (~30 s on 2 cores):

    python examples/multi_process.py --launch 2

or by hand, one terminal per process (the port is any free one):

    FNN_COORDINATOR_ADDRESS=127.0.0.1:12355 FNN_NUM_PROCESSES=2 FNN_PROCESS_ID=0 \\
        XLA_FLAGS=--xla_force_host_platform_device_count=2 python examples/multi_process.py
    FNN_COORDINATOR_ADDRESS=127.0.0.1:12355 FNN_NUM_PROCESSES=2 FNN_PROCESS_ID=1 \\
        XLA_FLAGS=--xla_force_host_platform_device_count=2 python examples/multi_process.py

GPU cluster: one process per node (it uses all the node's GPUs) or per GPU
(``FNN_LOCAL_DEVICE_IDS=<gpu>``). Under SLURM or Open MPI JAX finds the coordinator, the
process count and ids itself: ``srun --nodes=4 --ntasks-per-node=1 python
examples/multi_process.py --cluster``. Elsewhere set ``FNN_COORDINATOR_ADDRESS=<node 0's
host>:<port>``, ``FNN_NUM_PROCESSES`` and ``FNN_PROCESS_ID`` on every node (reachable
port, same values everywhere except the id).

TPU pod: run the script on every host at once, nothing to set, e.g.
``gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all
--command="python examples/multi_process.py --cluster"``.

``--cluster`` lets JAX detect the set-up (SLURM, Open MPI, TPU pods); with neither it nor
the ``FNN_*`` variables the script starts 2 local processes (``--launch 2``).

The global batch size must divide by the total number of devices.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

import fnn.distributed as dist


def train(epochs: int, batch_size: int, seed: int, out: str | None) -> float:
    # initialize() must come before any other JAX work in the process.
    dist.initialize(timeout_s=60)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import fnn
    from fnn.distributed import data_parallel
    from fnn.layers import Dense, Dropout
    from fnn.train import (
        compute_metrics,
        init_train_state,
        make_predict_step,
        make_train_step,
        reset_metrics,
    )

    def log(*args):
        if dist.is_primary():
            print(*args, flush=True)

    log(
        f"{jax.process_count()} processes, {jax.device_count()} devices "
        f"({jax.local_device_count()} per process)"
    )
    # Every process loads the same split and draws the same batch order.
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits(seed=seed)
    model = fnn.serial(Dense(128, activation="relu"), Dropout(0.1), Dense(10))
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [fnn.metrics.SparseCategoricalAccuracy(name="accuracy")]
    optimizer = fnn.optimizers.get("adam", 3e-3)
    state = init_train_state(
        model, optimizer, jax.random.key(seed), jnp.zeros((1, 64)), metrics=metrics
    )
    dp = data_parallel(make_train_step(model, loss, optimizer, metrics))
    state = dp.put_state(state)
    for epoch in range(1, epochs + 1):
        # Full batches only: every batch must split evenly over all devices.
        for batch in fnn.datasets.batches(
            x_train, y_train, batch_size, seed=seed, epoch=epoch, drop_remainder=True
        ):
            # This process's rows only; data_parallel assembles the global batch.
            state, logs = dp(state, dist.process_local_batch(batch))
        host = dp.get_state(state)
        values = compute_metrics(host.metric_states, metrics)
        log(
            f"epoch {epoch:2d}  loss {float(values['loss']):.4f}  "
            f"accuracy {float(values['accuracy']):.4f}"
        )
        state = dp.put_state(reset_metrics(host))
    host = dp.get_state(state)
    logits = jax.jit(make_predict_step(model))(host.params, host.state, x_test)
    test_acc = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    log(f"final test accuracy: {test_acc:.4f}")
    if out and dist.is_primary():
        flat = jax.tree_util.tree_leaves_with_path(host.params)
        np.savez(out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
        log(f"params saved to {out}")
    return test_acc


def launch(num_processes: int, argv: list[str], timeout_s: float) -> int:
    """Start ``num_processes`` copies of this script on localhost; wait at most ``timeout_s``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for i in range(num_processes):
        env = dict(
            os.environ,
            FNN_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            FNN_NUM_PROCESSES=str(num_processes),
            FNN_PROCESS_ID=str(i),
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_PLATFORMS="cpu",
        )
        procs.append(subprocess.Popen([sys.executable, __file__, *argv], env=env))
    try:
        return max(proc.wait(timeout=timeout_s) for proc in procs)
    except subprocess.TimeoutExpired:
        print(f"processes still running after {timeout_s:g} s; stopping them", file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launch", type=int, metavar="N", help="start N local processes")
    parser.add_argument("--cluster", action="store_true", help="let JAX detect the cluster")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="process 0 saves the trained params here (.npz)")
    args = parser.parse_args()
    if not (args.launch or args.cluster or os.environ.get(dist.ENV_NUM_PROCESSES)):
        args.launch = 2
    if args.launch:
        rest = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
        rest += ["--seed", str(args.seed)] + (["--out", args.out] if args.out else [])
        sys.exit(launch(args.launch, rest, timeout_s=300))
    train(args.epochs, args.batch_size, args.seed, args.out)
