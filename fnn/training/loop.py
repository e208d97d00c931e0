"""The one host-side training loop: batches -> the compiled pure steps of ``fnn.train`` ->
hooks. ``Model.fit``/``evaluate``/``predict`` run here, and ``fnn train`` through them.

It owns the epoch order (:func:`epoch_order`, the only shuffle in fnn), grouping
``steps_per_execution`` steps into one compiled call (convolutions on CPU: a few unrolled
steps per call, see ``plan_steps``), staging the shuffled batches of device-resident data
on the device a block of steps at a time (blocks of one shape, so one gather program),
validation between epochs, and the batch hooks (called only when a callback overrides
them, with logs read from the device only when a hook reads them; with none, a block's
steps run in a loop that only dispatches the compiled program). The step programs
return the metrics' values, so reading logs runs no program of its own, and a first
epoch's programs start compiling on worker threads before its state is ready
(``Trainer.compile_ahead``). What it drives is duck-typed, so higher layers plug in:

- ``hooks``: ``train_state`` (read and written: the loop keeps the current
  ``TrainState`` there, so callbacks see it and may replace it), ``stop_training`` and
  ``initial_epoch`` (read; ``initial_epoch`` after ``on_train_begin``, so a callback that
  restores a backup can move it, as in Keras; optionally ``initial_batch`` too),
  ``wants(hook) -> bool`` and Keras's hook methods (``on_train_begin``,
  ``on_epoch_end``, ``on_train_batch_end``, ...).
- ``placement`` (data parallel): ``placement(train_state, batch) -> (train_state, logs)``
  with ``put_state``, ``get_state`` and ``num_devices``, as ``fnn.data_parallel`` returns.

>>> epoch_order(6, seed=0, epoch=1).tolist() == (
...     np.random.default_rng([0, 1]).permutation(6).tolist())
True
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError
from fnn.training import privacy
from fnn.training import step as step_lib

__all__ = [
    "DeviceRows",
    "LazyLogs",
    "Trainer",
    "as_batch",
    "epoch_order",
    "evaluate",
    "fit",
    "plan_steps",
    "predict",
    "take",
    "train_epoch",
]


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """``[n]`` int32 sample order of one epoch: a permutation seeded by ``(seed, epoch)``
    only (so a resumed run sees the same order), or ``arange(n)`` without ``shuffle``."""
    if not shuffle:
        return np.arange(n, dtype=np.int32)
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def take(tree, idx):
    """Rows ``idx`` of every array (NumPy or JAX arrays, inside jit too)."""
    return jax.tree.map(lambda a: a[idx], tree)


def as_batch(x, y=None, sample_weight=None) -> tuple:
    """The batch tuple of ``fnn.train``'s steps: ``(x, y)`` or ``(x, y, sample_weight)``."""
    return (x, y) if sample_weight is None else (x, y, sample_weight)


# Bytes of batches gathered at once from device-resident data (see ``_device_epoch``).
STAGE_BYTES = 1 << 24

# Most steps unrolled into one compiled call (see ``plan_steps``); an execution of more
# steps runs as several such calls between the same batch hooks. 5: steps_per_execution=10
# on the benchmarks' CNN runs as 2 calls at 1.04x the hand-written fully unrolled scan with
# 1.4x the peak RSS of single steps (2 per call: 1.19x and 1.0x; 10: 2x the RSS).
MAX_UNROLLED_STEPS = 5


def plan_steps(steps_per_execution: int | str, jaxpr) -> tuple[int, int | bool]:
    """``(steps per execution, unroll)`` for the model traced as ``jaxpr``.

    Measured on XLA:CPU: a convolution inside a rolled ``lax.scan`` runs 4-7x slower than
    alone (the benchmarks' CNN, batch 128, CPU ms per step: rolled 10-step scan 940,
    2 steps unrolled per iteration 780, one step per call 150), so convolutional models
    get an unrolled loop there (``"auto"``: 4 steps); dense models gain from several steps
    per call in a rolled scan (``"auto"``: 8), as do accelerators, where dispatch
    dominates. Unrolling grows the compiled program and the peak memory with the steps
    (same CNN, peak RSS / CPU ms per step: one step per call 620 MB / 150, 2 unrolled
    690 / 142, 4 unrolled 850 / 135, 10 unrolled 1360 / 125), so at most
    ``MAX_UNROLLED_STEPS`` (5) are unrolled into one call (:meth:`Trainer.call_steps`).
    """
    if steps_per_execution == 1:
        return 1, 1
    unrolled = jax.default_backend() == "cpu" and "conv_general_dilated" in str(jaxpr)
    unroll = True if unrolled else 1
    if steps_per_execution == "auto":
        return (4 if unrolled else 8), unroll
    return int(steps_per_execution), unroll


class LazyLogs(Mapping):
    """Batch logs computed (and synchronised with the device) only when read."""

    def __init__(self, compute: Callable[[], dict]):
        self._compute = compute
        self._values: dict | None = None

    def _get(self) -> dict:
        if self._values is None:
            if self._compute is None:
                raise RuntimeError(
                    "batch logs were read after their batch ended; copy them with dict(logs) "
                    "inside the callback hook."
                )
            self._values = self._compute()
        return self._values

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._get())

    def close(self):
        self._compute = None


@dataclasses.dataclass(frozen=True)
class DeviceRows:
    """One epoch over arrays already on the device: the full batches, rows ``order[i *
    batch_size:(i + 1) * batch_size]``, are gathered on the device a block of steps at a
    time and each compiled step slices its own (no per-step index from the host); a last
    smaller batch runs as its own program."""

    data: Any  # (x, y, sample_weight) on the device
    order: np.ndarray  # [n] sample order of the epoch
    batch_size: int
    steps: int


class Trainer:
    """The compiled programs of one ``compile``: the train step of ``fnn.train`` as single
    steps, as ``K`` stacked batches in one scan, and on a block of staged batches; the
    eval step; the metric readout. ``jit=False`` runs them eagerly.

    ``members=n``: the step is ``make_train_step`` vmapped over an ``[n]`` member axis
    of the ``TrainState`` (``fnn.train.make_ensemble_train_step``); ``same_batch=False``
    feeds member i row i of ``[n, batch, ...]`` batches (an epoch order ``[n, examples]``).
    Logs then hold each metric's mean over the members plus ``<name>_member_<i>``.
    ``dp``: a ``fnn.train.DPConfig``; the step is ``make_dp_train_step``'s. ``steps``:
    ``(train_step, eval_step)`` pure steps to run instead (same signatures; e.g.
    ``fnn.train.make_hyper_steps``'s); ``variant`` does not carry them.
    """

    def __init__(
        self,
        layer,
        loss,
        optimizer,
        metrics: Iterable = (),
        *,
        steps_per_execution: int = 1,
        unroll: int | bool = 1,
        jit: bool = True,
        members: int | None = None,
        same_batch: bool = True,
        dp=None,
        steps: tuple[Callable, Callable] | None = None,
    ):
        self.layer, self.loss, self.optimizer, self.metrics = layer, loss, optimizer, tuple(metrics)
        self.metric_names = ["loss", *(m.name for m in self.metrics)]
        self.steps_per_execution, self.unroll = steps_per_execution, unroll
        self.members, self.same_batch, self.dp = members, same_batch, dp
        self._variants: dict = {}
        self._started: set = set()  # signatures of the programs compile_ahead started
        self._pending: dict = {}  # their compiles (Futures) not yet waited for, by name
        self.options = {"steps_per_execution": steps_per_execution, "unroll": unroll, "jit": jit}
        if dp is not None:
            core = privacy.make_dp_train_step(
                layer,
                loss,
                optimizer,
                self.metrics,
                l2_norm_clip=dp.l2_norm_clip,
                noise_multiplier=dp.noise_multiplier,
                chunk_size=dp.chunk_size,
            )
        else:
            core = step_lib.make_train_step(layer, loss, optimizer, self.metrics)
        eval_core = step_lib.make_eval_step(layer, loss, self.metrics)
        if steps is not None:
            core, eval_core = steps
        if members is not None:
            core = jax.vmap(core, in_axes=(0, None if same_batch else 0))
            eval_core = jax.vmap(eval_core, in_axes=(0, 0, 0, None))
        self.core = core

        metrics_ = self.metrics

        def compute(metric_states):
            return step_lib.compute_metrics(metric_states, metrics_)

        if members is not None:
            compute = jax.vmap(compute)
        self._compute = jax.jit(compute) if jit else compute
        self._read: tuple | None = None  # (metric states, their values) of the last program

        def reading(fn):
            # The programs return the metrics' values (as Keras's train_step does) instead
            # of the batch loss: an epoch end or a batch hook reads them with no program of
            # its own (one program fewer for a first fit to compile: ~40 ms on CPU).
            def run(ts, *args):
                ts, _ = fn(ts, *args)
                return ts, ({} if ts.metric_states is None else compute(ts.metric_states))

            return run

        def staged(ts, block, base):
            # Step ``ts.step - base`` takes batch ``ts.step - base`` of the staged block
            # (every member's step counter is the same): a dynamic slice, not a gather.
            index = jnp.ravel(ts.step - base)[0]
            batch = jax.tree.map(
                lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False), block
            )
            return core(ts, as_batch(*batch))

        def block_step(ts, block, base, k):
            if k == 1:
                return staged(ts, block, base)
            multi = step_lib.make_multi_step(
                lambda t, _: staged(t, block, base), unroll=self.unroll
            )
            return multi(ts, jnp.arange(k))

        def program(fn, static_argnums=()):
            fn = reading(fn)
            return step_lib.jit_step(fn, static_argnums=static_argnums) if jit else fn

        # Each returns (train_state, metric values).
        self.step = program(core)  # (ts, batch)
        self.multi_step = program(step_lib.make_multi_step(core, unroll=unroll))  # [K, batch]
        self.take_step = program(lambda ts, data, idx: core(ts, as_batch(*take(data, idx))))
        self.block_step = program(block_step, static_argnums=(3,))  # (ts, block, base, k)

        def gather_block(data, rows, step):
            # [steps, (members,) batch] rows -> a block of batches, and a fresh copy of the
            # step counter at the block's start (the steps donate the state's own).
            return take(data, rows), jnp.copy(step)

        self.stage = jax.jit(gather_block) if jit else gather_block

        def eval_step(metric_states, params, state, batch):
            metric_states = eval_core(metric_states, params, state, batch)
            return metric_states, compute(metric_states)

        # (metric_states, params, state, batch) -> (metric_states, metric values)
        self.eval_step = jax.jit(eval_step, donate_argnums=0) if jit else eval_step

    def compile_ahead(self, ts, rows: DeviceRows) -> None:
        """Start compiling the programs an epoch over ``rows`` calls first (the block
        gather, the first step program, that of a last smaller batch) on background
        threads. ``ts``, ``rows.data``: arrays or ``jax.ShapeDtypeStruct``s.

        They are traced here, and XLA compiles them without holding the GIL, so the
        caller's own setup before the first step (making the train state: one more
        program) runs meanwhile. ``join_ahead`` waits for them, and the programs' own calls
        then find them in JAX's cache. This is a no-op for programs started already, for
        programs that are not ``jax.jit`` objects, and with ``jit=False``."""
        if not self.options["jit"]:
            return
        plan = _plan(self, rows)
        # Called at every fit and epoch: a signature seen before returns at once (~30 us).
        leaves, treedef = jax.tree.flatten((ts, rows.data))
        signature = (treedef, *((np.shape(a), a.dtype) for a in leaves))
        signature = (signature, plan.block_len, plan.first, plan.remainder.shape)
        if signature in self._started:
            return
        self._started.add(signature)
        jobs = {}
        head, rng = ts._replace(rng=None), ts.rng
        if len(plan.full):
            idx = jax.ShapeDtypeStruct((plan.block_len, *plan.full.shape[1:]), np.int32)
            jobs["stage"] = (self.stage, (rows.data, idx, _spec(ts.step)))
            block = jax.tree.map(lambda a: _spec(a, (*idx.shape, *np.shape(a)[1:])), rows.data)
            args = (head, rng, block, _spec(ts.step), plan.first)
            jobs["block"] = (getattr(self.block_step, "compiled", None), args)
        if plan.remainder.shape[-1]:
            args = (head, rng, rows.data, _spec(plan.remainder))
            jobs["take"] = (getattr(self.take_step, "compiled", None), args)
        for name, (program, args) in jobs.items():
            if not hasattr(program, "lower"):
                continue
            try:
                lowered = program.lower(*args)
            except Exception:  # the program's own call traces it again and raises the error
                continue
            self._pending[name] = _COMPILER.submit(_compile, lowered)

    def join_ahead(self, name: str | None = None) -> None:
        """Wait for the compiles ``compile_ahead`` started (``name``: only that program's,
        ``"stage"``, ``"block"`` or ``"take"``); a no-op when none is pending."""
        if not self._pending:
            return
        for key in [name] if name is not None else list(self._pending):
            future = self._pending.pop(key, None)
            if future is not None:
                future.result()

    def variant(self, *, members: int | None = None, same_batch: bool = True, dp=None):
        """This trainer's loss, optimizer and metrics as an ensemble of ``members`` and/or
        a DP-SGD step (``self`` when both are the same)."""
        key = (members, same_batch, dp)
        if key == (self.members, self.same_batch, self.dp):
            return self
        if key not in self._variants:  # compiled once per compile, reused by later fits
            self._variants[key] = Trainer(
                self.layer,
                self.loss,
                self.optimizer,
                self.metrics,
                **self.options,
                members=members,
                same_batch=same_batch,
                dp=dp,
            )
        return self._variants[key]

    def call_steps(self, k: int) -> int:
        """Steps per compiled call in an execution of ``k`` steps: ``k`` in a rolled scan;
        unrolled (``unroll=True``), the largest divisor of ``k`` up to
        ``MAX_UNROLLED_STEPS`` (one program for every call of the execution)."""
        if self.unroll is not True or k <= MAX_UNROLLED_STEPS:
            return k
        return max(c for c in range(1, MAX_UNROLLED_STEPS + 1) if k % c == 0)

    @property
    def log_names(self) -> list[str]:
        """Every key of the epoch logs: ``metric_names``, then ``<name>_member_<i>``."""
        if self.members is None:
            return list(self.metric_names)
        per = [f"{k}_member_{i}" for k in self.metric_names for i in range(self.members)]
        return [*self.metric_names, *per]

    def init_metric_states(self):
        """Fresh metric states (with the ``[members]`` axis of an ensemble)."""
        states = step_lib.init_metric_states(self.metrics)
        if self.members is None:
            return states
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.members, *jnp.shape(a))), states)

    def remember(self, metric_states, values) -> None:
        """Note ``values``, the metric values a program returned with ``metric_states``,
        for ``read_metrics``."""
        self._read = (metric_states, values)

    def read_metrics(self, metric_states) -> dict[str, float]:
        """The metrics' current values as floats (one device synchronisation); a metric
        with several values (per class, per threshold) as a numpy array, as Keras logs it.
        The values the last program returned with ``metric_states`` (``remember``), else
        computed by a program of their own."""
        read = self._read
        if read is not None and read[0] is metric_states:
            values = read[1]
        else:
            values = self._compute(metric_states)
        values = jax.device_get(values)

        def value(v):
            return float(np.asarray(v).reshape(())) if np.size(v) == 1 else np.asarray(v)

        if self.members is None:
            return {k: value(v) for k, v in values.items()}
        # Scalars first (Keras callbacks monitor them): the members' mean, then each member.
        out = {k: value(np.mean(np.asarray(v), axis=0)) for k, v in values.items()}
        for k, v in values.items():
            out.update({f"{k}_member_{i}": value(m) for i, m in enumerate(np.asarray(v))})
        return out


# ---------------------------------------------------------------------------- training

# Two threads: the block gather and the first step program (or a last smaller batch's
# step) compile side by side while the main thread prepares the first step.
_COMPILER = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="fnn-compile")


def _compile(lowered) -> None:
    # An error is left to the program's own call, which compiles it again and raises it.
    with contextlib.suppress(Exception):
        lowered.compile()


def _spec(a, shape=None) -> jax.ShapeDtypeStruct:
    """The abstract value of array ``a`` (its weak type kept: it is part of a compiled
    program's signature), with ``shape`` if given."""
    weak = bool(getattr(a, "weak_type", False))
    return jax.ShapeDtypeStruct(np.shape(a) if shape is None else shape, a.dtype, weak_type=weak)


def _call(
    hooks,
    trainer: Trainer,
    wants: tuple[bool, bool],
    first: int,
    last: int,
    fn,
    *args,
    values: bool = True,
):
    """One compiled call ``fn(train_state, *args)`` between the batch hooks; ``fn`` returns
    the metric values (a program of ``trainer``), or with ``values=False`` anything else
    (a placement's logs)."""
    if wants[0]:
        hooks.on_train_batch_begin(first, {})
    hooks.train_state, out = fn(hooks.train_state, *args)
    if values:
        trainer.remember(hooks.train_state.metric_states, out)
    if wants[1]:
        states = hooks.train_state.metric_states
        logs = LazyLogs(lambda: trainer.read_metrics(states))
        hooks.on_train_batch_end(last, logs)
        logs.close()


def _block_steps(data, batch_rows: tuple, spe: int, steps: int) -> int:
    """Steps per staged block: at most about ``STAGE_BYTES`` of batches, a multiple of
    ``spe`` (an execution never spans two blocks) when there are several blocks.

    The blocks of an epoch are made equal (the last one padded): a shorter last block
    would be a second shape, so a second gather and step program to compile.

    >>> x = np.zeros((1000, 256), np.float32)  # 1 KiB rows, 32 KiB a batch of 32
    >>> STAGE_BYTES // (32 << 10), _block_steps(x, (32,), 1, 1000), _block_steps(x, (32,), 1, 300)
    (512, 500, 300)
    """
    row_bytes = sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in jax.tree.leaves(data))
    per_step = max(1, row_bytes * int(np.prod(batch_rows)))
    most = spe * max(1, STAGE_BYTES // (per_step * spe))
    if steps <= most:
        return steps
    blocks = math.ceil(steps / most)
    return spe * math.ceil(math.ceil(steps / blocks) / spe)


def _execution_steps(spe: int, i: int, n_full: int) -> int:
    """Steps of the execution that starts at step ``i`` of ``n_full``: ``spe``, or 1 where
    fewer than ``spe`` are left."""
    return spe if spe > 1 and i + spe <= n_full else 1


class _Plan(typing.NamedTuple):
    full: np.ndarray  # [steps, (members,) batch] rows of the full batches
    remainder: np.ndarray  # [(members,) rows] of a last smaller batch (maybe none)
    block_len: int  # steps per staged block
    per_call: int  # steps per compiled call of an execution
    first: int  # steps of the first compiled call


def _plan(trainer: Trainer, rows: DeviceRows) -> _Plan:
    """How ``_device_epoch`` runs ``rows``: its batches, blocks and compiled calls."""
    order, size = rows.order, rows.batch_size
    n_full = min(order.shape[-1] // size, rows.steps)
    remainder = order[..., n_full * size :] if rows.steps > n_full else order[..., :0]
    full = order[..., : n_full * size].reshape(*order.shape[:-1], n_full, size)
    full = np.moveaxis(full, -2, 0)
    spe = trainer.steps_per_execution
    per_call = trainer.call_steps(spe)
    block_len = _block_steps(rows.data, full.shape[1:], spe, n_full) if n_full else 0
    first = min(_execution_steps(spe, 0, n_full), per_call)
    return _Plan(full, remainder, block_len, per_call, first)


def _quiet_block(trainer: Trainer, hooks, plan: _Plan, i: int, block, block_base) -> int:
    """Run the steps of the staged block that holds step ``i`` with no batch hooks to
    call; returns the step after them. The hot loop of ``fit``: it calls the compiled
    program directly with the state split as ``jit_step`` compiles it (its wrapper and
    the hooks' state cost ~5 us a step, a tenth of a tiny MLP's step; measured), and puts
    the state back together once at the end. ``stop_training`` is still checked after
    every call (a callback on another thread may set it)."""
    n_full, spe, per_call = len(plan.full), trainer.steps_per_execution, plan.per_call
    end = min(n_full, (i // plan.block_len + 1) * plan.block_len)
    program = trainer.block_step.compiled
    ts = hooks.train_state
    head, rng, values = ts._replace(rng=None), ts.rng, None
    while i < end and not hooks.stop_training:
        k = _execution_steps(spe, i, n_full)
        for _ in range(max(1, k // per_call)):
            head, values = program(head, rng, block, block_base, min(k, per_call))
            if head.rng is not None:  # a step that returned a new base key
                head, rng = head._replace(rng=None), head.rng
        i += k
    ts = head._replace(rng=rng)
    hooks.train_state = ts
    if values is not None:
        trainer.remember(ts.metric_states, values)
    return i


def _device_epoch(trainer: Trainer, hooks, rows: DeviceRows, wants, start: int = 0) -> None:
    # Batches are gathered a block at a time (one compiled gather per ~STAGE_BYTES) and
    # each step slices its batch from the block. A gather inside every step is slower on
    # XLA:CPU: it splits a gather whose operand (the whole dataset) is large across
    # threads, a fork-join that cost the tiny MLP's step ~20 us of its ~60 (measured).
    # order: [examples], or [members, examples] (each member its own order).
    plan = _plan(trainer, rows)
    full, remainder, block_len, per_call = plan.full, plan.remainder, plan.block_len, plan.per_call
    n_full, spe, i = len(full), trainer.steps_per_execution, 0
    trainer.compile_ahead(hooks.train_state, rows)

    def execution(ts, block, block_base, k):  # k steps as k / per_call compiled calls
        for _ in range(k // per_call):
            ts, logs = trainer.block_step(ts, block, block_base, per_call)
        return ts, logs

    while i < n_full and not hooks.stop_training:
        if i % block_len == 0:  # the step counter read on the device: no host sync
            trainer.join_ahead("stage")
            idx = full[i : i + block_len]
            if len(idx) < block_len:  # the last block, padded to the others' shape
                idx = np.concatenate([idx, np.repeat(idx[:1], block_len - len(idx), 0)])
            idx = jax.device_put(idx)
            block, block_base = trainer.stage(rows.data, idx, hooks.train_state.step)
        trainer.join_ahead()
        if not any(wants) and hasattr(trainer.block_step, "compiled"):
            i = _quiet_block(trainer, hooks, plan, i, block, block_base)
            continue
        k = _execution_steps(spe, i, n_full)
        fn = execution if k > per_call else trainer.block_step
        _call(hooks, trainer, wants, start + i, start + i + k - 1, fn, block, block_base, k)
        i += k
    if remainder.shape[-1] and not hooks.stop_training:
        trainer.join_ahead()
        _call(hooks, trainer, wants, start + i, start + i, trainer.take_step, rows.data, remainder)


def _shapes(tree):
    return jax.tree.map(np.shape, tree)


def _batches_epoch(trainer: Trainer, hooks, batches: Iterable, wants, start: int = 0) -> None:
    """Batches ``(x, y, sample_weight)`` already on the device; runs of
    ``steps_per_execution`` same-shaped batches go stacked into one scan."""
    spe, pending, i = trainer.steps_per_execution, [], start
    per_call = trainer.call_steps(spe)

    def execution(ts, group):  # spe batches as spe / per_call compiled calls
        for j in range(0, len(group), per_call):
            if per_call == 1:  # the single-step program, compiled already
                ts, logs = trainer.step(ts, as_batch(*group[j]))
                continue
            stacked = jax.tree.map(lambda *a: jnp.stack(a), *group[j : j + per_call])
            ts, logs = trainer.multi_step(ts, as_batch(*stacked))
        return ts, logs

    def single(batch):
        nonlocal i
        _call(hooks, trainer, wants, i, i, trainer.step, as_batch(*batch))
        i += 1

    for batch in batches:
        if hooks.stop_training:
            break
        if spe == 1:
            single(batch)
            continue
        if pending and _shapes(batch) != _shapes(pending[0]):
            while pending and not hooks.stop_training:
                single(pending.pop(0))
            if hooks.stop_training:
                break
        pending.append(batch)
        if len(pending) == spe:
            _call(hooks, trainer, wants, i, i + spe - 1, execution, list(pending))
            i += spe
            pending.clear()
    for batch in pending:
        if not hooks.stop_training:
            single(batch)


def _placed_epoch(
    trainer: Trainer, hooks, batches: Iterable, placement, wants, start: int = 0
) -> None:
    """One step per batch through ``placement``; a batch the devices cannot split evenly
    (a last smaller one) is skipped."""
    hooks.train_state = placement.put_state(hooks.train_state)
    divisor = getattr(placement, "input_divisor", None) or getattr(
        placement, "batch_divisor", placement.num_devices
    )
    for i, batch in enumerate(batches, start):
        if hooks.stop_training:
            break
        if np.shape(jax.tree.leaves(batch)[0])[0] % divisor:
            continue
        _call(hooks, trainer, wants, i, i, placement, as_batch(*batch), values=False)
    hooks.train_state = placement.get_state(hooks.train_state)


def train_epoch(
    trainer: Trainer, hooks, data: DeviceRows | Iterable, placement=None, start: int = 0
) -> None:
    """Train on one epoch of ``data``: ``DeviceRows`` or an iterable of ``(x, y,
    sample_weight)`` batches (with ``placement``: host batches, one step each). ``start``:
    the batch index of the first batch (an epoch resumed mid-way), as the hooks see it."""
    wants = (hooks.wants("on_train_batch_begin"), hooks.wants("on_train_batch_end"))
    if placement is not None:
        if isinstance(data, DeviceRows):
            raise ConfigError("train_epoch: a placement needs host batches, got DeviceRows.")
        _placed_epoch(trainer, hooks, data, placement, wants, start)
    elif isinstance(data, DeviceRows):
        _device_epoch(trainer, hooks, data, wants, start)
    else:
        _batches_epoch(trainer, hooks, data, wants, start)


def fit(
    trainer: Trainer,
    hooks,
    epoch_data: Callable[[int], DeviceRows | Iterable | None],
    *,
    epochs: int,
    validation: Callable[[], Iterable] | None = None,
    placement=None,
    epoch_logs: Callable[[Any], Mapping[str, float]] | None = None,
) -> dict[str, float]:
    """Epochs ``hooks.initial_epoch .. epochs - 1`` of ``epoch_data(epoch)`` (``None``:
    no more data, stop), each followed by ``validation()`` batches if given (logged as
    ``val_*``) and ``epoch_logs(train_state)`` (e.g. DP-SGD's epsilon so far) if given;
    returns the last epoch's logs. Metrics restart at every epoch, as Keras, except in an
    epoch resumed at batch ``hooks.initial_batch`` (read after ``on_train_begin``, like
    ``initial_epoch``): ``epoch_data`` gives its remaining batches and the restored metric
    states go on counting.
    The first epoch whose loss is NaN or infinite warns (once per fit) unless a callback
    stopped training there."""
    hooks.on_train_begin({})
    logs: dict = {}
    warned = False
    start = getattr(hooks, "initial_batch", 0)
    start = start if isinstance(start, int) else 0  # hooks that answer any name with a no-op
    for epoch in range(hooks.initial_epoch, epochs):
        if hooks.train_state.metric_states is not None and not start:
            hooks.train_state = step_lib.reset_metrics(hooks.train_state)
        data = epoch_data(epoch)
        if data is None:  # before on_epoch_begin: no epoch is opened (a progress bar) in vain
            break
        hooks.on_epoch_begin(epoch, {})
        train_epoch(trainer, hooks, data, placement, start)
        start = 0
        logs = trainer.read_metrics(hooks.train_state.metric_states)
        if epoch_logs is not None:
            logs.update(epoch_logs(hooks.train_state))
        if validation is not None:
            hooks.on_test_begin({})
            val_logs = evaluate(trainer, hooks, validation())
            hooks.on_test_end(val_logs)
            logs.update({f"val_{k}": v for k, v in val_logs.items()})
        hooks.on_epoch_end(epoch, logs)
        if hooks.stop_training:  # a callback that stops on a NaN loss has said so already
            break
        if not warned and not np.all(np.isfinite(logs.get("loss", 0.0))):
            warned = True
            warnings.warn(
                f"fit: the training loss of epoch {epoch + 1} is {logs['loss']}; check the data "
                "for NaN/inf values and the learning rate. Pass "
                "callbacks=[fnn.callbacks.TerminateOnNaN()] to stop at the first such batch.",
                RuntimeWarning,
                stacklevel=2,
            )
    hooks.on_train_end(logs)
    return logs


# ---------------------------------------------------------------------------- inference


def evaluate(trainer: Trainer, hooks, batches: Iterable) -> dict[str, float]:
    """Loss and metrics of ``hooks.train_state``'s params over ``(x, y, sample_weight)``
    batches (fresh metric states), with the test batch hooks."""
    ts = hooks.train_state
    begin, end = hooks.wants("on_test_batch_begin"), hooks.wants("on_test_batch_end")
    metric_states = trainer.init_metric_states()
    for i, batch in enumerate(batches):
        if begin:
            hooks.on_test_batch_begin(i, {})
        metric_states, values = trainer.eval_step(
            metric_states, ts.params, ts.state, as_batch(*batch)
        )
        trainer.remember(metric_states, values)
        if end:
            logs = LazyLogs(lambda current=metric_states: trainer.read_metrics(current))
            hooks.on_test_batch_end(i, logs)
            logs.close()
    return trainer.read_metrics(metric_states)


def predict(predict_step: Callable, hooks, batches: Iterable) -> list:
    """``predict_step(params, state, x)`` of ``hooks.train_state`` on each batch ``x``,
    with the predict batch hooks; the outputs stay on the device."""
    ts = hooks.train_state
    begin, end = hooks.wants("on_predict_batch_begin"), hooks.wants("on_predict_batch_end")
    outputs = []
    for i, x in enumerate(batches):
        if begin:
            hooks.on_predict_batch_begin(i, {})
        out = predict_step(ts.params, ts.state, x)
        outputs.append(out)
        if end:
            hooks.on_predict_batch_end(i, {"outputs": out})
    return outputs
