"""Hand-written loop on purpose: data-parallel training on digits, ``--method sharded|pmap``.

Run: python examples/data_parallel.py [--method sharded|pmap] [--devices 4] [--epochs 10]
(about 20 s on 2 CPU cores)

The loop is written out to show what ``fnn.distributed.data_parallel`` does around
``fnn.train``'s step: ``dp = data_parallel(step, method=...)``, ``state = dp.put_state(state)``
once, ``state, logs = dp(state, global_batch)`` per step (each device gets
``batch / devices`` rows), ``dp.get_state(state)`` for a single copy to evaluate or save.
``Model.fit(devices=...)`` does the same for you with ``method="sharded"``.

- ``sharded`` (default; what JAX recommends, ``pmap`` is in maintenance mode): the step is
  the single-device one, written for the *global* batch (``axis_name=None``); the batch is
  placed as ``NamedSharding(mesh, P("batch"))`` over a 1-D mesh of the devices (``Auto``
  axis type; pass your own with ``devices=mesh``), the state replicated, and XLA inserts
  the cross-device reductions (gradient means, batch-norm statistics).
- ``pmap``: the step runs per device, so it is built with ``axis_name="batch"`` and
  ``pmean``-s gradients and BatchNormalization statistics over the devices itself; the
  state is replicated along a leading device axis.

Both give the single-device result up to float rounding. On a machine with several GPUs
(or a TPU host) it uses them. Without accelerators it splits the CPU into 8 fake devices
(``XLA_FLAGS``, set below before JAX starts) so the mechanics can be tried anywhere; they
share the cores, so expect no speed-up there.
"""

from __future__ import annotations

import argparse
import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import jax
import jax.numpy as jnp

import fnn
from fnn.distributed import data_parallel
from fnn.layers import BatchNormalization, Dense
from fnn.train import (
    compute_metrics,
    init_train_state,
    make_predict_step,
    make_train_step,
    reset_metrics,
)


def build(axis_name: str | None):
    """MLP with batch norm; ``axis_name`` synchronises its batch statistics across devices."""
    return fnn.serial(
        Dense(128, use_bias=False),
        BatchNormalization(axis_name=axis_name),
        fnn.layers.Activation("relu"),
        Dense(10),
    )


def main(
    devices: int | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    method: str = "sharded",
) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits(seed=seed)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [fnn.metrics.SparseCategoricalAccuracy(name="accuracy")]
    # pmap: per-device step that reduces over the device axis; sharded: the global view.
    axis_name = "batch" if method == "pmap" else None
    model = build(axis_name)
    state = init_train_state(
        model, "adam", jax.random.key(seed), jnp.zeros((1, 64)), metrics=metrics
    )
    step = make_train_step(model, loss, "adam", metrics, axis_name=axis_name)
    dp = data_parallel(step, devices=devices, method=method)
    print(f"{dp}: {batch_size // dp.num_devices} examples per device and step")

    state = dp.put_state(state)  # replicated over the devices
    for epoch in range(1, epochs + 1):
        # Full batches only: every batch must split evenly over the devices.
        for batch in fnn.datasets.batches(
            x_train, y_train, batch_size, seed=seed, epoch=epoch, drop_remainder=True
        ):
            state, logs = dp(state, batch)
        host = dp.get_state(state)
        values = compute_metrics(host.metric_states, metrics)
        print(
            f"epoch {epoch:2d}  loss {float(values['loss']):.4f}  "
            f"accuracy {float(values['accuracy']):.4f}"
        )
        state = dp.put_state(reset_metrics(host))

    host = dp.get_state(state)
    # Evaluation on one device: the same params in a model without the device axis.
    predict = jax.jit(make_predict_step(build(axis_name=None)))
    logits = predict(host.params, host.state, x_test)
    test_acc = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    print(f"final test accuracy: {test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["sharded", "pmap"], default="sharded")
    parser.add_argument("--devices", type=int, default=None, help="default: all devices")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.devices, args.epochs, args.batch_size, args.seed, args.method)
