"""Multi-process training: 2 processes x 2 CPU devices must give the 1-process result.

The test starts this file as 2 worker processes on 127.0.0.1 (a free port chosen at run
time, gloo CPU collectives), each feeding only its own half of every global batch, and
compares their parameters, logs and metrics after 3 steps of ``fnn.train.make_train_step``
(BatchNormalization synchronised, Adam, accuracy and running loss) with one process
running the same step with plain ``jax.jit`` on the whole batches. Tolerance: float32, ``atol=rtol=2e-5``.
Every wait is bounded; workers still running at the deadline are killed.
"""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
import fnn.distributed as dist
from fnn.errors import ConfigError
from fnn.layers import BatchNormalization, Dense

TOL = {"atol": 2e-5, "rtol": 2e-5}
STEPS = 3
GLOBAL_BATCH = 16
ROOT = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT_S = 90


def make_problem():
    from fnn.train import init_train_state

    rng = np.random.default_rng(0)
    batches = [
        (
            rng.normal(size=(GLOBAL_BATCH, 5)).astype(np.float32),
            rng.integers(0, 3, size=GLOBAL_BATCH).astype(np.int32),
        )
        for _ in range(STEPS)
    ]
    metrics = [fnn.metrics.SparseCategoricalAccuracy(name="accuracy")]
    ts = init_train_state(model(), "adam", jax.random.key(0), jnp.ones((1, 5)), metrics=metrics)
    return metrics, ts, batches


def model(axis_name=None):
    return fnn.serial(
        Dense(16, use_bias=False),
        BatchNormalization(axis_name=axis_name),
        Dense(16, activation="tanh"),
        Dense(3),
    )


def make_step(metrics, axis_name=None):
    from fnn.train import make_train_step

    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    return make_train_step(model(axis_name), loss, "adam", metrics, axis_name=axis_name)


def fit_model(devices=None):
    """``Model.fit`` over the same batches in order, 2 epochs (no shuffle)."""
    _, _, batches = make_problem()
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    m = fnn.Model(model())
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    m.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    m.fit(x, y, batch_size=GLOBAL_BATCH, epochs=2, shuffle=False, devices=devices, verbose=0)
    return m


def fit_reader(folder: Path, devices=None, record=None):
    """``Model.fit`` from a shuffling ``.npy`` reader of the same rows (global batches of
    16), 2 epochs; ``record`` collects ``(pass, example indices)`` of every read."""
    _, _, batches = make_problem()
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", np.concatenate([b[0] for b in batches]))
    np.save(folder / "y.npy", np.concatenate([b[1] for b in batches]))

    class Recording(fnn.datasets.NpyDataset):
        def read(self, indices):
            if record is not None:
                record.append((self.epoch, np.asarray(indices).tolist()))
            return super().read(indices)

    reader = Recording(
        folder / "x.npy", folder / "y.npy", batch_size=GLOBAL_BATCH, shuffle=True, seed=2
    )
    m = fnn.Model(model())
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    m.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    m.fit(reader, epochs=2, shuffle=False, devices=devices, verbose=0)
    return m


def flat(tree):
    return {
        jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def worker(process_id: int, port: int, out: str) -> None:
    """One process of the 2-process run (started by the test with 2 CPU devices)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address = f"127.0.0.1:{port}"
    dist.initialize(address, 2, process_id, timeout_s=30, heartbeat_timeout_s=10)
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    from fnn.distributed import data_parallel
    from fnn.train import compute_metrics

    metrics, ts, batches = make_problem()
    results = {"primary": np.asarray(dist.is_primary())}
    for method, axis in (("sharded", None), ("pmap", "batch")):
        dp = data_parallel(make_step(metrics, axis), method=method)
        state = dp.put_state(ts)
        for i, batch in enumerate(batches):
            state, logs = dp(state, dist.process_local_batch(batch))
            for key, value in logs.items():
                results[f"{method}/logs/{i}/{key}"] = np.asarray(value)
        state = dp.get_state(state)
        for key, value in flat(state.params).items():
            results[f"{method}/params{key}"] = value
        for key, value in compute_metrics(state.metric_states, metrics).items():
            results[f"{method}/metrics/{key}"] = np.asarray(value)
    # Model.fit(devices=all) in both processes on the same data: each feeds its own rows.
    fitted = fit_model(devices=jax.device_count())
    for key, value in flat(fitted.params).items():
        results[f"fit/params{key}"] = value
    for key, value in fitted.history.history.items():
        results[f"fit/history/{key}"] = np.asarray(value)
    # The raw metric states count examples: a batch fed twice (each process passing all its
    # rows) would give the same means but twice the counts.
    for key, value in flat(fitted.train_state.metric_states).items():
        results[f"fit/states{key}"] = value
    # A reader: each process reads only its block of every batch.
    record = []
    fitted = fit_reader(Path(out).parent / f"reader_{process_id}", jax.device_count(), record)
    for key, value in flat(fitted.params).items():
        results[f"reader/params{key}"] = value
    for epoch in (0, 1):
        results[f"reader/read/{epoch}"] = np.asarray(
            [i for e, rows in record if e == epoch for i in rows]
        )
    try:
        dist.initialize(address, num_processes=3, process_id=process_id)
    except dist.DistributedError as err:
        results["count_error"] = np.asarray(str(err))
    np.savez(out, **results)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(commands, timeout_s, env=None, ranks=None):
    """Start every command (with ``ranks[i]`` added to the environment of command i), wait
    at most ``timeout_s`` in all, kill what is left."""
    env = dict(os.environ if env is None else env, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env = {k: v for k, v in env.items() if not k.startswith("FNN_")}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    ranks = ranks or [{}] * len(commands)
    procs = [
        subprocess.Popen(
            cmd, env={**env, **rank}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd, rank in zip(commands, ranks, strict=True)
    ]
    outputs, deadline = [], time.monotonic() + timeout_s
    try:
        for proc in procs:
            left = max(0.1, deadline - time.monotonic())
            outputs.append(proc.communicate(timeout=left)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        logs = [proc.communicate()[0][-3000:] for proc in procs]
        pytest.fail(f"workers still running after {timeout_s} s, killed. Output: {logs}")
    return [proc.returncode for proc in procs], outputs


def test_two_processes_match_one_process(tmp_path):
    port = free_port()
    outs = [tmp_path / f"process_{i}.npz" for i in range(2)]
    commands = [
        [sys.executable, __file__, "worker", str(i), str(port), str(out)]
        for i, out in enumerate(outs)
    ]
    codes, outputs = run_workers(commands, WORKER_TIMEOUT_S)
    assert codes == [0, 0], outputs

    from fnn.train import compute_metrics

    metrics, ts, batches = make_problem()
    step = jax.jit(make_step(metrics))
    ref_logs = []
    for batch in batches:
        ts, logs = step(ts, batch)
        ref_logs.append(logs)
    ref_params = flat(ts.params)
    ref_metrics = compute_metrics(ts.metric_states, metrics)

    results = [np.load(out) for out in outs]
    assert [bool(r["primary"]) for r in results] == [True, False]
    worst = {}
    for r in results:
        assert "expected 3 processes, but JAX is already initialized with 2" in str(
            r["count_error"]
        )
        for method in ("sharded", "pmap"):
            for key, ref in ref_params.items():
                np.testing.assert_allclose(r[f"{method}/params{key}"], ref, **TOL)
                diff = float(np.max(np.abs(r[f"{method}/params{key}"] - ref)))
                worst[method] = max(worst.get(method, 0.0), diff)
            for key, ref in ref_metrics.items():
                np.testing.assert_allclose(r[f"{method}/metrics/{key}"], ref, **TOL)
            for i, logs in enumerate(ref_logs):
                for key, ref in logs.items():
                    np.testing.assert_allclose(r[f"{method}/logs/{i}/{key}"], ref, **TOL)
    # Model.fit: 2 processes x 2 devices == the one-device fit (same params, same History).
    ref_fit = fit_model()
    for r in results:
        for key, ref in flat(ref_fit.params).items():
            np.testing.assert_allclose(r[f"fit/params{key}"], ref, **TOL)
            worst["fit"] = max(
                worst.get("fit", 0.0), float(np.max(np.abs(r[f"fit/params{key}"] - ref)))
            )
        for key, ref in ref_fit.history.history.items():
            np.testing.assert_allclose(r[f"fit/history/{key}"], ref, **TOL)
        for key, ref in flat(ref_fit.train_state.metric_states).items():
            np.testing.assert_allclose(r[f"fit/states{key}"], ref, **TOL)
    # A reader: the processes read disjoint blocks covering all 48 rows once a pass, and
    # train as the one-device fit over the whole batches does.
    for epoch in (0, 1):
        seen = np.concatenate([r[f"reader/read/{epoch}"] for r in results])
        assert sorted(seen.tolist()) == list(range(GLOBAL_BATCH * STEPS)), seen
    ref_reader = fit_reader(tmp_path / "reader_ref")
    for r in results:
        for key, ref in flat(ref_reader.params).items():
            np.testing.assert_allclose(r[f"reader/params{key}"], ref, **TOL)
    print(f"2 processes x 2 devices: max |param diff| = {worst}")


def test_unreachable_coordinator_fails_fast(tmp_path):
    code = textwrap.dedent(
        f"""
        import fnn.distributed as dist
        try:
            dist.initialize()  # nothing given, no cluster to detect
        except dist.DistributedError as err:
            print("NO-SETUP:", err)
        dist.initialize("127.0.0.1:{free_port()}", num_processes=2, process_id=1, timeout_s=1)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FNN_")}
    codes, outputs = run_workers([[sys.executable, "-c", code]], timeout_s=60, env=env)
    assert codes[0] != 0
    assert (
        "NO-SETUP: fnn.distributed.initialize: JAX could not set up this process: "
        "coordinator_address should be defined. Pass coordinator_address, num_processes and "
        "process_id (or set $FNN_COORDINATOR_ADDRESS, $FNN_NUM_PROCESSES, $FNN_PROCESS_ID)."
    ) in outputs[0]
    assert (
        "DistributedError: fnn.distributed.initialize: could not reach the coordinator at "
        "127.0.0.1:" in outputs[0]
    )
    assert "within 1 s (process 1 of 2; last error: Connection refused)" in outputs[0]
    assert "Start process 0 first" in outputs[0]


def test_missing_peer_stops_with_a_message():
    """Process 0 of 2 alone: the watchdog stops it at the deadline with one line (no hang,
    no JAX C++ abort)."""
    code = textwrap.dedent(
        f"""
        import fnn.distributed as dist
        dist.initialize("127.0.0.1:{free_port()}", num_processes=2, process_id=0, timeout_s=2)
        print("UNEXPECTED: initialize returned")
        """
    )
    codes, outputs = run_workers([[sys.executable, "-c", code]], timeout_s=60)
    assert codes[0] == dist.EXIT_CODE and "UNEXPECTED" not in outputs[0]
    assert (
        "fnn.distributed: process 0 of 2 has waited 2 s for all 2 processes to join "
        "the coordinator at 127.0.0.1:"
    ) in outputs[0]
    assert "Check that every process was started with the same coordinator address" in outputs[0]
    assert "Check failure stack trace" not in outputs[0] and "client.h" not in outputs[0]


def test_initialize_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"expected num_processes >= 1, got 0"):
        dist.initialize("127.0.0.1:1234", num_processes=0, process_id=0)
    with pytest.raises(ConfigError, match=r"expected process_id in 0 \.\. 1, got 2"):
        dist.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(ConfigError, match=r"expected coordinator_address 'host:port', got 'nope'"):
        dist.initialize("nope", num_processes=2, process_id=0)
    with pytest.raises(ConfigError, match=r"expected timeout_s > 0, got 0"):
        dist.initialize("127.0.0.1:1234", num_processes=2, process_id=0, timeout_s=0)
    monkeypatch.setenv("FNN_NUM_PROCESSES", "2")
    monkeypatch.setenv("FNN_PROCESS_ID", "5")
    with pytest.raises(ConfigError, match=r"expected process_id in 0 \.\. 1, got 5"):
        dist.initialize("127.0.0.1:1234")
    monkeypatch.setenv("FNN_PROCESS_ID", "first")
    with pytest.raises(ConfigError, match=r"expected an integer in \$FNN_PROCESS_ID, got 'first'"):
        dist.initialize("127.0.0.1:1234")
    monkeypatch.setenv("FNN_PROCESS_ID", "1")
    jax.devices()  # this pytest process already runs JAX on its own
    with pytest.raises(
        dist.DistributedError,
        match=r"JAX is already running on this process's devices alone; call initialize\(\) first",
    ):
        dist.initialize("127.0.0.1:1234")


def test_process_batch_slices():
    blocks = [process_batch_slice(12, i, 3) for i in range(3)]
    assert blocks == [slice(0, 4), slice(4, 8), slice(8, 12)]
    x = np.arange(12)
    np.testing.assert_array_equal(np.concatenate([x[b] for b in blocks]), x)
    with pytest.raises(
        ConfigError,
        match=r"expected a global batch size divisible by the 3 processes, got 10\. Use 9 or 12 \(any multiple of 3\)",
    ):
        process_batch_slice(10, 0, 3)
    assert dist.is_primary()
    batch = {"x": np.ones((8, 2))}
    assert dist.process_local_batch(batch)["x"].shape == (8, 2)


process_batch_slice = dist.process_batch_slice

if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])


def test_fnn_train_as_two_processes_matches_one_process(tmp_path):
    """``fnn train`` started twice with $FNN_* set: jax.distributed, Model.fit over all 4
    devices, process 0 alone prints and writes the run files; the final checkpoint equals
    the one-process data-parallel run of the same config."""
    config = str(ROOT / "configs" / "digits_mlp.yaml")
    sets = [
        "epochs=2", "batch_size=64", "plots=false", "tensorboard=false",
        "distribute.strategy=data_parallel", "model.layers[2].Dropout.rate=0.0",
    ]  # fmt: skip

    def command(run):
        args = [a for s in [*sets, f"run_dir={run}"] for a in ("--set", s)]
        return [sys.executable, "-m", "fnn", "train", config, *args]

    port = free_port()
    ranks = [
        {"FNN_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "FNN_NUM_PROCESSES": "2",
         "FNN_PROCESS_ID": str(i)}
        for i in range(2)
    ]  # fmt: skip
    codes, outputs = run_workers([command(tmp_path / "two")] * 2, WORKER_TIMEOUT_S, ranks=ranks)
    assert codes == [0, 0], outputs
    assert "4 device(s)" in outputs[0] and "test_accuracy" in outputs[0]
    # Process 1 trains silently: none of fnn train's lines (gloo's own connection lines,
    # which its threads may interleave, aside).
    for line in ("training digits_mlp.yaml", "epoch 1/2", "done in", "wrote "):
        assert line in outputs[0] and line not in outputs[1], line
    codes, single = run_workers([command(tmp_path / "one")], WORKER_TIMEOUT_S)
    assert codes == [0], single
    assert "2 device(s)" in single[0]
    results = {}
    for name in ("two", "one"):
        run = tmp_path / name
        step = fnn.checkpoint.list_steps(run / "checkpoints")[-1]
        results[name] = fnn.checkpoint.restore(run / "checkpoints" / f"step_{step:08d}")
        assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert int(results["two"]["step"]) == int(results["one"]["step"]) == 2 * (1437 // 64)
    for a, b in zip(
        jax.tree.leaves(results["two"]["params"]), jax.tree.leaves(results["one"]["params"])
    ):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
