"""Multi-process start-up values and failure paths of ``fnn.distributed.initialize``.

The value resolution is a pure function (tested without a cluster). The failure paths run
this file as 2 worker processes on 127.0.0.1 (gloo CPU collectives): a peer killed mid-run
and processes that disagree on the process count must each end within a bounded time with
one line naming the cause, never JAX's C++ abort (``SIGABRT`` and an absl stack trace).
(A process whose peer never starts: tests/test_distributed.py.) Also: process 0 killed, a
peer killed inside collectives, and sys.exit on one process (marked slow).
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fnn.distributed as dist
from fnn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 2
N, GLOBAL = 37, 8  # 4 global batches a epoch, 5 examples left out
ABORT_SIGNS = ("Check failure stack trace", "SIGABRT", "Aborted", "client.h:80]")


def test_resolve_config_precedence():
    env = {
        "FNN_COORDINATOR_ADDRESS": "fnn-host:1111",
        "JAX_COORDINATOR_ADDRESS": "jax-host:2222",
        "FNN_NUM_PROCESSES": "4",
        "FNN_PROCESS_ID": "3",
        "JAX_LOCAL_DEVICE_IDS": "0,1",
        "FNN_DIST_TIMEOUT": "12.5",
        "FNN_DIST_HEARTBEAT_TIMEOUT": "7",
    }
    # FNN_* before JAX_*; JAX_* where no FNN_* is set.
    assert dist.resolve_config(environ=env) == dist.DistributedConfig(
        "fnn-host:1111", 4, 3, (0, 1), 12.5, 7.0
    )
    # Arguments before every variable.
    assert dist.resolve_config(
        "arg-host:3333", 2, 0, 5, timeout_s=1, heartbeat_timeout_s=2, environ=env
    ) == dist.DistributedConfig("arg-host:3333", 2, 0, (5,), 1.0, 2.0)
    no_fnn = {k: v for k, v in env.items() if not k.startswith("FNN_")}
    assert dist.resolve_config(environ=no_fnn) == dist.DistributedConfig(
        "jax-host:2222", None, None, (0, 1), 300.0, 100.0
    )
    # Nothing set anywhere: every value is left to JAX's cluster detection; empty counts
    # as unset.
    assert dist.resolve_config(environ={"FNN_NUM_PROCESSES": " "}) == dist.DistributedConfig(
        None, None, None, None, 300.0, 100.0
    )


def test_resolve_config_errors():
    resolve = dist.resolve_config
    with pytest.raises(
        ConfigError, match=r"expected timeout_s > 0, got nan \(seconds, below 1e6\)"
    ):
        resolve(timeout_s=float("nan"), environ={})
    with pytest.raises(ConfigError, match=r"expected heartbeat_timeout_s > 0, got -1 "):
        resolve(heartbeat_timeout_s=-1, environ={})
    with pytest.raises(ConfigError, match=r"seconds in \$FNN_DIST_TIMEOUT, got 'soon'"):
        resolve(environ={"FNN_DIST_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match=r"comma-separated integers in \$JAX_LOCAL_DEVICE_IDS"):
        resolve(environ={"JAX_LOCAL_DEVICE_IDS": "0;1"})
    with pytest.raises(ConfigError, match=r"expected num_processes >= 1, got True"):
        resolve(num_processes=True, environ={})
    with pytest.raises(ConfigError, match=r"expected process_id in 0 \.\. 3, got 4"):
        resolve(environ={"FNN_NUM_PROCESSES": "4", "FNN_PROCESS_ID": "4"})
    with pytest.raises(ConfigError, match=r"'host:port', got 'x{76}\.\.\.\.$"):
        resolve("x" * 500, environ={})  # bounded message


def worker(
    port: int, process_id: int, num_processes: int, raise_on: int = -1, exit_on: int = -1
) -> None:
    """One process: join, pass a cross-process barrier, then work locally until killed;
    or, given ``raise_on``, loop over barriers until that process raises at step 3 (or,
    given ``exit_on``, calls ``sys.exit(3)`` there; ``exit_on == num_processes``: every
    process ends normally there)."""
    dist.initialize(
        f"127.0.0.1:{port}",
        num_processes,
        process_id,
        timeout_s=30,
        heartbeat_timeout_s=HEARTBEAT_S,
    )
    from jax.experimental import multihost_utils

    # This process's share of two epochs, by its real jax.process_index().
    shards = [dist.process_epoch_indices(N, GLOBAL, epoch=e, seed=3).tolist() for e in (0, 1)]
    print("SHARDS", json.dumps(shards), flush=True)
    multihost_utils.sync_global_devices("joined")
    print("JOINED", flush=True)  # the test kills a peer only after this: outside collectives
    if raise_on < 0:
        # Outside a collective, only the watchdog notices a dead peer. (Inside one, gloo
        # raises "Connection closed by peer" at once: a Python error, exit status 1.)
        time.sleep(120)
    for i in range(600):  # at most ~2 minutes; the test kills the peer long before
        multihost_utils.sync_global_devices(f"step {i}")
        time.sleep(0.2)
        if i == 3 and process_id == raise_on:
            raise RuntimeError(f"boom in process {process_id}")
        if i == 3 and exit_on == num_processes:
            print("DONE", flush=True)
            return
        if i == 3 and process_id == exit_on:
            sys.exit(3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(counts, port, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FNN_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS="")
    return [
        subprocess.Popen(
            [sys.executable, __file__, "worker", str(port), str(i), str(n), *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, n in enumerate(counts)
    ]


def collect(procs, joined=None):
    """Read every process's output on its own thread (``joined[i]`` set at its JOINED)."""
    outputs = [[] for _ in procs]

    def read(i):
        for line in procs[i].stdout:
            outputs[i].append(line)
            if joined is not None and line.startswith("JOINED"):
                joined[i].set()

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(procs))]
    for t in threads:
        t.start()
    return outputs, threads


def finish(procs, threads, outputs, timeout_s):
    """Wait at most ``timeout_s`` for every process; kill what is left and fail."""
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"processes still running after {timeout_s} s, killed: {outputs}")
    finally:
        for t in threads:
            t.join(timeout=5)
    return [p.returncode for p in procs], ["".join(o) for o in outputs]


def test_peer_killed_mid_run_stops_the_survivor_with_one_line():
    procs, outputs, threads = start_joined()  # both inside the barrier loop
    procs[1].kill()
    killed_at = time.monotonic()
    codes, text = finish(procs, threads, outputs, timeout_s=30)
    took = time.monotonic() - killed_at
    assert codes == [dist.EXIT_CODE, -9], text
    lines = [ln for ln in text[0].splitlines() if ln.startswith("fnn.distributed:")]
    assert lines == [
        f"fnn.distributed: process 1 of 2 stopped sending heartbeats for {HEARTBEAT_S} s "
        "(killed, crashed or its host lost?); stopping process 0. Raise heartbeat_timeout_s "
        "($FNN_DIST_HEARTBEAT_TIMEOUT) if it was only slow."
    ], text[0]
    assert not any(sign in text[0] for sign in ABORT_SIGNS), text[0]
    # Silent for HEARTBEAT_S, checked every HEARTBEAT_S / 4; JAX's own abort would only
    # come at 2 * HEARTBEAT_S + 10 s.
    assert took < 2 * HEARTBEAT_S + 10, took
    # Each process read only its half of every global batch; together: each example of the
    # epoch's order once (the reference is the formula, one process reading everything).
    shards = [
        np.array(json.loads(next(ln for ln in t.splitlines() if ln.startswith("SHARDS"))[7:]))
        for t in text
    ]
    for e in (0, 1):
        order = np.random.default_rng([3, e]).permutation(N)[: 4 * GLOBAL].reshape(4, GLOBAL)
        np.testing.assert_array_equal(np.concatenate([s[e] for s in shards], axis=1), order)
    assert shards[0].shape == (2, 4, GLOBAL // 2)
    assert not set(shards[0][0].ravel()) & set(shards[1][0].ravel())


def test_process_epoch_indices_cover_each_example_once():
    for shuffle in (False, True):
        parts = [
            dist.process_epoch_indices(24, 6, epoch=2, shuffle=shuffle, process_index=i,
                                       process_count=3)
            for i in range(3)
        ]  # fmt: skip
        assert all(p.shape == (4, 2) for p in parts)
        seen = np.concatenate([p.ravel() for p in parts])
        np.testing.assert_array_equal(np.sort(seen), np.arange(24))
    np.testing.assert_array_equal(
        dist.process_epoch_indices(24, 6, shuffle=False, process_index=1, process_count=3),
        np.arange(24).reshape(4, 6)[:, 2:4],
    )
    one = dist.process_epoch_indices(24, 6, epoch=0, process_index=0, process_count=1)
    other = dist.process_epoch_indices(24, 6, epoch=1, process_index=0, process_count=1)
    assert sorted(one.ravel()) == sorted(other.ravel()) and (one != other).any()
    with pytest.raises(ConfigError, match=r"divisible by the 4 processes, got 6\. Use 4 or 8"):
        dist.process_epoch_indices(24, 6, process_index=0, process_count=4)
    with pytest.raises(ConfigError, match=r"at least one global batch of 32 examples, got 24"):
        dist.process_epoch_indices(24, 32, process_index=0, process_count=1)


def test_peer_error_stops_the_others_at_once():
    """Process 0 (the coordinator's host) raises: process 1 stops with one line naming the
    error, and neither waits in JAX's shutdown barrier or aborts in C++."""
    procs = start([2, 2], free_port(), "0")
    outputs, threads = collect(procs)
    codes, text = finish(procs, threads, outputs, timeout_s=60)
    assert codes == [1, dist.EXIT_CODE], text
    assert "RuntimeError: boom in process 0" in text[0]
    lines = [ln for ln in text[1].splitlines() if ln.startswith("fnn.distributed:")]
    assert lines == [
        "fnn.distributed: process 0 of 2 ended with an error (RuntimeError: boom in process 0);"
        " stopping process 1."
    ], text[1]
    for out in text:
        assert not any(sign in out for sign in ABORT_SIGNS), out


def test_process_count_disagreement_raises_on_each_process():
    procs = start([2, 3], free_port())
    outputs, threads = collect(procs)
    codes, text = finish(procs, threads, outputs, timeout_s=60)
    assert codes == [1, 1], text
    for mine, theirs, out in ((0, 1, text[0]), (1, 0, text[1])):
        counts = {0: 2, 1: 3}
        assert (
            f"fnn.distributed.runtime.DistributedError: fnn.distributed.initialize: process "
            f"{mine} was started with num_processes={counts[mine]} but process {theirs} with "
            f"num_processes={counts[theirs]}. Use the same num_processes in every process."
        ) in out, out
        assert "JOINED" not in out and not any(sign in out for sign in ABORT_SIGNS), out


def fnn_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("fnn.distributed:")]


def start_joined(*extra):
    """Two workers, both past their first cross-process barrier."""
    procs = start([2, 2], free_port(), *extra)
    joined = [threading.Event(), threading.Event()]
    outputs, threads = collect(procs, joined)
    if not all(e.wait(60) for e in joined):
        for p in procs:
            p.kill()
        pytest.fail(f"processes did not join: {outputs}")
    time.sleep(0.5)
    return procs, outputs, threads


@pytest.mark.slow
def test_coordinator_process_killed_stops_the_peer_with_one_line():
    """Process 0 hosts the coordinator's address; killed, its peer's JAX client used to
    abort in C++ at once. The service runs in a process of its own, so process 0 is one
    more silent peer for the watchdog."""
    procs, outputs, threads = start_joined()
    procs[0].kill()
    killed_at = time.monotonic()
    codes, text = finish(procs, threads, outputs, timeout_s=30)
    assert codes == [-9, dist.EXIT_CODE], text
    assert fnn_lines(text[1]) == [
        f"fnn.distributed: process 0 of 2 stopped sending heartbeats for {HEARTBEAT_S} s "
        "(killed, crashed or its host lost?); stopping process 1. Raise heartbeat_timeout_s "
        "($FNN_DIST_HEARTBEAT_TIMEOUT) if it was only slow."
    ], text[1]
    assert not any(sign in text[1] for sign in ABORT_SIGNS), text[1]
    assert time.monotonic() - killed_at < 2 * HEARTBEAT_S + 10


@pytest.mark.slow
def test_peer_killed_inside_collectives_gives_one_line_not_gloos_traceback():
    procs, outputs, threads = start_joined("9")  # both loop over barriers; none raises
    procs[1].kill()
    codes, text = finish(procs, threads, outputs, timeout_s=30)
    assert codes == [dist.EXIT_CODE, -9], text
    (line,) = fnn_lines(text[0])
    assert re.fullmatch(
        r"fnn\.distributed: process 0 of 2: a collective failed, a peer process is gone "
        r"\(killed or crashed\?\): Gloo \w+ failed: (Connection closed by peer|Connection reset"
        r"|Broken pipe).*; stopping\.",
        line,
    ), line
    assert "Traceback" not in text[0] and not any(s in text[0] for s in ABORT_SIGNS), text[0]


@pytest.mark.slow
def test_sys_exit_on_one_process_is_reported_to_the_other():
    """Process 1 calls sys.exit(3) between barriers: process 0, blocked in the next one,
    says so and stops; process 1 does not wait in JAX's shutdown barrier for it."""
    procs, outputs, threads = start_joined("9", "1")
    codes, text = finish(procs, threads, outputs, timeout_s=40)
    assert codes == [dist.EXIT_CODE, dist.EXIT_CODE], text
    assert fnn_lines(text[0]) == [
        f"fnn.distributed: process 1 of 2 exited (sys.exit, or its script ended) {HEARTBEAT_S} s "
        "ago while process 0 still runs; stopping process 0."
    ], text[0]
    assert len(fnn_lines(text[1])) == 1, text[1]
    for out in text:
        assert "Traceback" not in out and not any(s in out for s in ABORT_SIGNS), out


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(*(int(a) for a in sys.argv[2:]))


SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2"}
SLURM.update(SLURM_PROCID="0", SLURM_LOCALID="0")


def test_detected_cluster_reads_only_launcher_variables(monkeypatch):
    assert dist.detected_cluster(SLURM) == "slurm"
    assert dist.detected_cluster({**SLURM, "SLURM_NTASKS": "1"}) is None  # one task
    assert dist.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is None  # no srun
    ompi = {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "4"}
    assert dist.detected_cluster(ompi) == "ompi"
    assert dist.detected_cluster({**ompi, "OMPI_COMM_WORLD_SIZE": "1"}) is None
    assert dist.detected_cluster({"TPU_WORKER_HOSTNAMES": "t0,t1"}) == "tpu"
    assert dist.detected_cluster({"TPU_WORKER_HOSTNAMES": "t0"}) is None
    # A notebook pod (no indexed Job) is not a cluster.
    assert dist.detected_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None
    # fnn train joins only when told to or launched as several processes.
    from fnn.cli import commands

    calls = []
    monkeypatch.setattr(dist, "initialize", lambda: calls.append(dict(os.environ)))
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "TPU_", "FNN_", "KUBERNETES_", "JOB_")):
            monkeypatch.delenv(name)
    commands._join_processes()
    assert calls == []
    monkeypatch.setenv("FNN_DISTRIBUTED", "1")  # asked for: JAX's detection decides
    commands._join_processes()
    monkeypatch.delenv("FNN_DISTRIBUTED")
    assert len(calls) == 1
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    commands._join_processes()
    assert len(calls) == 2


SLURM_WORKER = """
import jax
from fnn.cli import commands
commands._join_processes()
print("joined", jax.process_index(), jax.process_count(), jax.device_count(), flush=True)
"""


@pytest.mark.slow
def test_two_srun_tasks_join_without_any_fnn_variable():
    """Two processes with the variables ``srun -n 2`` sets (on localhost): ``fnn train``'s
    start-up joins them through JAX's own Slurm detection."""
    # JAX's Slurm port is 61440 + job id % 4096: pick a job id whose port is free.
    with socket.socket() as sock:
        for port in range(61440 + os.getpid() % 4000, 65536):
            try:
                sock.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FNN_", "SLURM_"))}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env.update({**SLURM, "SLURM_JOB_ID": str(port - 61440), "FNN_DIST_TIMEOUT": "60"})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SLURM_WORKER],
            env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=90)[0])
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    for i, out in enumerate(outputs):
        assert f"joined {i} 2 4" in out, out
