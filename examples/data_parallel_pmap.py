"""Data-parallel training on digits with ``jax.pmap``: the same step on N devices.

Run: python examples/data_parallel_pmap.py [--devices 4] [--epochs 10]   (~20 s on 2 cores)

On a machine with several GPUs (or a TPU host) it uses them. Without accelerators it
splits the CPU into 8 fake devices (``XLA_FLAGS``, set below before JAX starts) so the
mechanics can be tried anywhere; they share the cores, so expect no speed-up there.

The recipe: build the step with ``axis_name="batch"`` (it then ``pmean``-s gradients and
BatchNormalization statistics over the devices), wrap it with
``data_parallel(step, method="pmap")``, replicate the train state once with
``dp.put_state``, feed global batches (each device gets ``batch / devices`` rows) and take
a single copy back with ``dp.get_state`` to evaluate or save.
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
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

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


def load_data(seed: int = 0):
    """Digits as float32 images scaled to [0, 1]: x [n, 64], integer labels [n]."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def build(axis_name: str | None):
    """MLP with batch norm; ``axis_name`` synchronises its batch statistics across devices."""
    return fnn.serial(
        Dense(128, use_bias=False),
        BatchNormalization(axis_name=axis_name),
        fnn.layers.Activation("relu"),
        Dense(10),
    )


def main(devices: int | None = None, epochs: int = 10, batch_size: int = 128, seed: int = 0):
    x_train, x_test, y_train, y_test = load_data(seed)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [fnn.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model = build(axis_name="batch")
    state = init_train_state(
        model, "adam", jax.random.key(seed), jnp.zeros((1, 64)), metrics=metrics
    )
    step = make_train_step(model, loss, "adam", metrics, axis_name="batch")
    dp = data_parallel(step, devices=devices, method="pmap")
    print(f"{dp}: {batch_size // dp.num_devices} examples per device and step")

    state = dp.put_state(state)  # one copy per device, leading axis = devices
    order_rng = np.random.default_rng(seed)
    steps = len(x_train) // batch_size  # drop the last incomplete batch: sizes must divide
    for epoch in range(1, epochs + 1):
        order = order_rng.permutation(len(x_train))
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            state, logs = dp(state, (x_train[idx], y_train[idx]))
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
    parser.add_argument("--devices", type=int, default=None, help="default: all devices")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.devices, args.epochs, args.batch_size, args.seed)
