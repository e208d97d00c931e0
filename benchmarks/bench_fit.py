"""``Model.fit`` per-step time against the functional jitted step, in one run.

Run: PYTHONPATH=. python benchmarks/bench_fit.py [--steps 200] [--repeats 5]

Tiny MLP 64-64-64-10 (relu), batch 32, adam 1e-3, sparse softmax cross-entropy on seeded
random data held in memory. Prints median microseconds per steady-state step (compile
excluded), as wall time and as this process's CPU time (steadier on a shared machine),
and the ratios:

- fit / functional: ``Model.fit`` (steps_per_execution=1, shuffling on) against
  ``jax.jit(fnn.train.make_train_step(...), donate_argnums=0)`` called in a Python loop on
  batches already on the device (the fastest way to feed it). Target <= 1.10.
- fit spe=10 / fit spe=1: ten steps per compiled call (``lax.scan``). Target < 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import train as train_lib
from fnn.layers import Dense

BATCH = 32


def make_layer():
    return fnn.serial(
        Dense(64, activation="relu"), Dense(64, activation="relu"), Dense(10), name="mlp"
    )


def loss():
    return fnn.losses.SparseCategoricalCrossentropy(from_logits=True)


def functional_times(x, y, steps, repeats):
    layer = make_layer()
    metrics = [fnn.metrics.get("accuracy", loss=loss())]
    ts = train_lib.init_train_state(layer, "adam", jax.random.key(0), x[:BATCH], metrics=metrics)
    step = jax.jit(train_lib.make_train_step(layer, loss(), "adam", metrics), donate_argnums=0)
    batches = [
        jax.device_put((x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]))
        for i in range(steps)
    ]
    ts, _ = step(ts, batches[0])  # compile
    jax.block_until_ready(ts)
    times = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            ts, _ = step(ts, batch)
        jax.block_until_ready(ts)
        times.append(((time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps))
    return times


class EpochTimer(fnn.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        # The epoch logs are read from the device before this hook: the time includes
        # every step of the epoch.
        steps = self.params["steps"]
        wall = (time.perf_counter() - self._start) / steps
        self.times.append((wall, (time.process_time() - self._cpu) / steps))


def fit_times(x, y, steps, repeats, steps_per_execution):
    model = fnn.Model(make_layer())
    model.compile(
        optimizer="adam",
        loss=loss(),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    timer = EpochTimer()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # compile
    model.fit(x, y, batch_size=BATCH, epochs=repeats, verbose=0, callbacks=[timer])
    return timer.times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n = args.steps * BATCH
    x = rng.normal(size=(n, 64)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    # Interleave the implementations so machine-load drift hits all of them alike.
    results = {"functional": [], "fit": [], "fit spe=10": []}
    for _ in range(3):
        results["functional"] += functional_times(x, y, args.steps, args.repeats)
        results["fit"] += fit_times(x, y, args.steps, args.repeats, 1)
        results["fit spe=10"] += fit_times(x, y, args.steps, args.repeats, 10)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
    print(f"tiny MLP 64-64-64-10, batch {BATCH}, {args.steps} steps/epoch")
    med = {}
    for col, label in ((0, "wall"), (1, "process CPU")):
        m = {k: statistics.median(t[col] for t in v) * 1e6 for k, v in results.items()}
        med[label] = m
        print(f"{label} time (median us/step, min-max):")
        for k, v in m.items():
            lo, hi = (f(t[col] for t in results[k]) * 1e6 for f in (min, max))
            print(f"  {k:<12} {v:8.1f}  ({lo:.1f}-{hi:.1f})")
        print(f"  fit / functional step:   {m['fit'] / m['functional']:.3f}  (target <= 1.10)")
        print(f"  fit spe=10 / fit spe=1:  {m['fit spe=10'] / m['fit']:.3f}  (target < 1)")
        print(f"  fit spe=10 / functional: {m['fit spe=10'] / m['functional']:.3f}")
    return med


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing
    main()
