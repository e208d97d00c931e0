"""The benchmark scenarios: model shapes, batch sizes and seeded random data.

Every implementation of a scenario builds the same network (float32, Keras-style
``valid`` convolutions, ReLU hidden layers), trains it with ``optax.adam(1e-3)`` (Keras
uses its own Adam with the same hyper-parameters) on softmax cross-entropy with integer
labels, and reads its batches from the same pool of seeded random arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_CLASSES = 10
LEARNING_RATE = 1e-3
# Distinct batches cycled through by the step loops (all already on the device).
POOL = 10
# Steps fused into one call by the multi-step variants (lax.scan, steps_per_execution).
MULTI = 10


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One model and batch size. ``steps`` is the number of steps per timed block in the
    full run, ``quick_steps`` in ``--quick`` (both multiples of ``MULTI``)."""

    name: str
    title: str
    kind: str  # "mlp", "cnn", "lstm", "gru"; the --device gpu ones: "resnet", "transformer"
    input_shape: tuple[int, ...]  # one example, no batch axis
    batch: int
    steps: int
    quick_steps: int
    hidden: tuple[int, ...] = ()  # MLP hidden widths (ReLU); the head is Dense(10)
    gpu: bool = False  # one of the accelerator-sized scenarios (``--device gpu``)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("tiny_mlp", "tiny MLP 64-64-64-10, batch 32", "mlp", (64,), 32, 300, 100,
                 hidden=(64, 64)),
        Scenario("mlp", "MLP 784-512-512-10, batch 128", "mlp", (784,), 128, 50, 20,
                 hidden=(512, 512)),
        Scenario("deep_mlp", "deep MLP 50 x Dense(128) -> 10, batch 32", "mlp", (128,), 32,
                 50, 20, hidden=(128,) * 50),
        Scenario("lstm", "LSTM seq 32, in 16, hidden 128 -> 10, batch 64", "lstm", (32, 16), 64,
                 20, 10),
        Scenario("gru", "GRU seq 32, in 16, hidden 128 -> 10, batch 64", "gru", (32, 16), 64,
                 20, 10),
        Scenario("cnn", "CNN 28x28x1 conv32-pool-conv64-pool-128-10, batch 128", "cnn",
                 (28, 28, 1), 128, 10, 10),
        # Accelerator-sized scenarios (``python -m benchmarks.run --device gpu``): large
        # batches, throughput in examples/s and the device's peak memory.
        Scenario("gpu_mlp", "MLP 784-1024-1024-10, batch 512", "mlp", (784,), 512, 200, 20,
                 hidden=(1024, 1024), gpu=True),
        Scenario("resnet", "ResNet-style CNN 32x32x3, 3 stages x 2 residual blocks, batch 256",
                 "resnet", (32, 32, 3), 256, 50, 10, gpu=True),
        Scenario("transformer", "Transformer 2 pre-norm blocks, seq 128, dim 256, 4 heads, "
                 "batch 64", "transformer", (128, 64), 64, 50, 10, gpu=True),
    )
}  # fmt: skip
CPU_SCENARIOS = tuple(name for name, s in SCENARIOS.items() if not s.gpu)
GPU_SCENARIOS = tuple(name for name, s in SCENARIOS.items() if s.gpu)
# The model kinds every implementation builds; ``resnet`` and ``transformer`` are built by
# the modules that list them in their ``KINDS`` (the others report "unavailable").
BASE_KINDS = frozenset({"mlp", "cnn", "lstm", "gru"})

# The CNN and the recurrent (LSTM, GRU) layer sizes, shared by every implementation.
CNN_FILTERS = (32, 64)
CNN_KERNEL = 3
CNN_POOL = 2
CNN_DENSE = 128
LSTM_UNITS = 128
# ResNet-style CNN: a 3x3 "same" stem, then per stage (a stride-2 3x3 conv before every
# stage but the first) RESNET_BLOCKS blocks of conv-relu-conv + skip, relu; global average
# pool; Dense(10).
RESNET_STAGES = (32, 64, 128)
RESNET_BLOCKS = 2
# Transformer: Dense(dim) on the input features, pre-norm blocks (x + MHA(LN(x)),
# x + FFN(LN(x)), FFN = Dense(ff, relu) -> Dense(dim)), mean over time, Dense(10).
TRANSFORMER_DIM = 256
TRANSFORMER_HEADS = 4
TRANSFORMER_FF = 1024
TRANSFORMER_BLOCKS = 2
LN_EPSILON = 1e-6


def cnn_flat_features(scenario: Scenario) -> int:
    """Width of the CNN's flattened feature map (valid convs, pool 2)."""
    h, w, _ = scenario.input_shape
    for _ in CNN_FILTERS:
        h, w = (h - CNN_KERNEL + 1) // CNN_POOL, (w - CNN_KERNEL + 1) // CNN_POOL
    return h * w * CNN_FILTERS[-1]


def make_pool(scenario: Scenario, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``POOL`` seeded batches: ``x [POOL, batch, *input_shape]`` float32 and
    ``y [POOL, batch]`` int32 labels in ``[0, 10)``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((POOL, scenario.batch, *scenario.input_shape), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(POOL, scenario.batch), dtype=np.int32)
    return x, y


def fit_arrays(x: np.ndarray, y: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The pool laid out as one in-memory dataset of ``steps`` batches (for ``fit``)."""
    reps = -(-steps // POOL)
    xs = np.concatenate([x] * reps)[:steps]
    ys = np.concatenate([y] * reps)[:steps]
    return xs.reshape(-1, *x.shape[2:]), ys.reshape(-1)
