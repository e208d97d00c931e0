"""Multi-process training on JAX's own runtime (``jax.distributed``).

Every process runs the same script; they meet at a coordinator (process 0's address):

>>> import fnn.distributed as dist
>>> dist.initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # doctest: +SKIP

On a cluster JAX finds the values itself (Slurm, Open MPI, Kubernetes, Cloud TPU pods),
so ``dist.initialize()`` with no arguments is enough (see :func:`resolve_config` for the
order in which arguments, ``FNN_*`` and ``JAX_*`` variables are read). Then
``jax.devices()`` lists every process's devices, :func:`fnn.distributed.data_parallel` spans
all of them, each process feeds only its own slice of the global batch
(:func:`process_batch_slice`) and only the primary process (:func:`is_primary`) writes logs
and checkpoints.

Failures end within a bounded time with one line on stderr naming the cause: a process
that never joins (``timeout_s``), processes that disagree on the process count (a
:class:`DistributedError` on each), and a peer that dies or stops mid-run
(``heartbeat_timeout_s``: a watchdog thread prints the reason and exits the process with
:data:`EXIT_CODE` before JAX's own, later, C++ abort), process 0 included, inside a
collective or not, killed or leaving early with ``sys.exit``.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Sharding

from fnn.core.errors import ConfigError, FnnError

__all__ = [
    "EXIT_CODE",
    "DistributedConfig",
    "DistributedError",
    "detected_cluster",
    "global_batch",
    "initialize",
    "is_primary",
    "process_batch_slice",
    "process_epoch_indices",
    "process_local_batch",
    "resolve_config",
]

PyTree = Any

ENV_COORDINATOR_ADDRESS = "FNN_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "FNN_NUM_PROCESSES"
ENV_PROCESS_ID = "FNN_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "FNN_LOCAL_DEVICE_IDS"
ENV_TIMEOUT = "FNN_DIST_TIMEOUT"
ENV_HEARTBEAT_TIMEOUT = "FNN_DIST_HEARTBEAT_TIMEOUT"
# The two variables JAX itself reads; read here too so they can be checked and reported.
JAX_ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
JAX_ENV_LOCAL_DEVICE_IDS = "JAX_LOCAL_DEVICE_IDS"

EXIT_CODE = 1
"""The exit status of a process that the watchdog stops (a peer died, never joined, ...)."""

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 100.0
# JAX's own deadlines are set later than fnn's, so the watchdog always speaks first.
_JAX_MARGIN_S = 10
_KV_PREFIX = "fnn/runtime"


class DistributedError(FnnError):
    """The processes could not meet (unreachable coordinator, mismatched set-up)."""


class DistributedConfig(NamedTuple):
    """Resolved start-up values; ``None`` means "left to JAX's cluster detection"."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None
    timeout_s: float
    heartbeat_timeout_s: float


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip() != "":
            return name, value.strip()
    return None


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    found = _first(environ, name)
    if found is None:
        return None
    try:
        return int(found[1])
    except ValueError:
        raise ConfigError(
            f"fnn.distributed.initialize: expected an integer in ${name}, got {_short(found[1])}."
        ) from None


def _env_seconds(environ: Mapping[str, str], name: str) -> float | None:
    found = _first(environ, name)
    if found is None:
        return None
    try:
        return float(found[1])
    except ValueError:
        raise ConfigError(
            f"fnn.distributed.initialize: expected a number of seconds in ${name}, got "
            f"{_short(found[1])}."
        ) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"fnn.distributed.initialize: expected coordinator_address 'host:port', got "
            f"{_short(address)}."
        )
    return host.strip("[]"), int(port)


def resolve_config(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    *,
    timeout_s: float | None = None,
    heartbeat_timeout_s: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedConfig:
    """The start-up values :func:`initialize` uses (a pure function of its inputs).

    Each value comes from the first of: the argument; ``$FNN_COORDINATOR_ADDRESS``,
    ``$FNN_NUM_PROCESSES``, ``$FNN_PROCESS_ID``, ``$FNN_LOCAL_DEVICE_IDS`` (comma
    separated); ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_LOCAL_DEVICE_IDS``; else ``None``,
    which JAX's cluster detection fills in (Slurm, Open MPI, Kubernetes, Cloud TPU).
    ``timeout_s`` comes from the argument, ``$FNN_DIST_TIMEOUT`` or 300 s;
    ``heartbeat_timeout_s`` from the argument, ``$FNN_DIST_HEARTBEAT_TIMEOUT`` or 100 s.
    ``environ`` defaults to ``os.environ``.

    >>> resolve_config(environ={"FNN_NUM_PROCESSES": "4", "FNN_PROCESS_ID": "1",
    ...                         "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})[:3]
    ('10.0.0.1:1234', 4, 1)
    >>> resolve_config(num_processes=2, environ={"FNN_NUM_PROCESSES": "4"}).num_processes
    2
    """
    environ = os.environ if environ is None else environ
    if coordinator_address is None:
        found = _first(environ, ENV_COORDINATOR_ADDRESS, JAX_ENV_COORDINATOR_ADDRESS)
        coordinator_address = found[1] if found else None
    if num_processes is None:
        num_processes = _env_int(environ, ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(environ, ENV_PROCESS_ID)
    if local_device_ids is None:
        found = _first(environ, ENV_LOCAL_DEVICE_IDS, JAX_ENV_LOCAL_DEVICE_IDS)
        if found is not None:
            try:
                local_device_ids = [int(part) for part in found[1].split(",")]
            except ValueError:
                raise ConfigError(
                    f"fnn.distributed.initialize: expected comma-separated integers in "
                    f"${found[0]}, got {_short(found[1])}."
                ) from None
    if timeout_s is None:
        timeout_s = _env_seconds(environ, ENV_TIMEOUT) or DEFAULT_TIMEOUT_S
    if heartbeat_timeout_s is None:
        heartbeat_timeout_s = (
            _env_seconds(environ, ENV_HEARTBEAT_TIMEOUT) or DEFAULT_HEARTBEAT_TIMEOUT_S
        )

    if num_processes is not None and (
        isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1
    ):
        raise ConfigError(
            f"fnn.distributed.initialize: expected num_processes >= 1, got {_short(num_processes)}."
        )
    if process_id is not None and (
        isinstance(process_id, bool)
        or not isinstance(process_id, int)
        or process_id < 0
        or (num_processes is not None and process_id >= num_processes)
    ):
        limit = f"0 .. {num_processes - 1}" if num_processes else "an integer >= 0"
        raise ConfigError(
            f"fnn.distributed.initialize: expected process_id in {limit}, got {_short(process_id)}."
        )
    for name, value in (("timeout_s", timeout_s), ("heartbeat_timeout_s", heartbeat_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
            raise ConfigError(
                f"fnn.distributed.initialize: expected {name} > 0, got {_short(value)} "
                "(seconds, below 1e6)."
            )
    if coordinator_address is not None:
        _split_address(coordinator_address)
    if isinstance(local_device_ids, int):
        local_device_ids = [local_device_ids]
    if local_device_ids is not None:
        local_device_ids = tuple(local_device_ids)
        if not all(isinstance(i, int) and i >= 0 for i in local_device_ids):
            raise ConfigError(
                f"fnn.distributed.initialize: expected local_device_ids of integers >= 0, got "
                f"{_short(local_device_ids)}."
            )
    return DistributedConfig(
        coordinator_address,
        num_processes,
        process_id,
        local_device_ids,
        float(timeout_s),
        float(heartbeat_timeout_s),
    )


def _count(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, ""))
    except ValueError:
        return 0


def detected_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The multi-process launcher that started this process, from its environment alone
    (no network query, no import): ``"slurm"`` (``srun`` with more than one task),
    ``"ompi"`` (``mpirun`` with more than one rank), ``"k8s"`` (a pod of an indexed
    Kubernetes Job, with the ``kubernetes`` package installed), ``"tpu"`` (a Cloud TPU
    slice that lists several workers); ``None`` for a plain run. The variables are the
    ones JAX's cluster detection reads, so :func:`initialize` with no arguments then
    finds the same set-up.

    >>> detected_cluster({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]",
    ...                   "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"})
    'slurm'
    >>> detected_cluster({"SLURM_JOB_ID": "7"}) is None  # salloc, or sbatch without srun
    True
    """
    environ = os.environ if environ is None else environ
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    if all(v in environ for v in slurm) and _count(environ, "SLURM_NTASKS") > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in environ and _count(environ, "OMPI_COMM_WORLD_SIZE") > 1:
        return "ompi"
    if "KUBERNETES_SERVICE_HOST" in environ and "JOB_COMPLETION_INDEX" in environ:
        import importlib.util

        if importlib.util.find_spec("kubernetes") is not None:
            return "k8s"
    workers = _first(environ, "TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")
    if workers is not None and len(workers[1].split(",")) > 1:
        return "tpu"
    return None


def _stop(reason: str) -> None:
    """Print one line and end the process now (from any thread).

    ``os._exit`` skips the interpreter's and JAX's exit handlers on purpose: with a peer
    gone they would wait in JAX's shutdown barrier and then abort in C++.
    """
    try:
        sys.stderr.write(f"fnn.distributed: {reason}\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_CODE)


def _wait_for_coordinator(address: str, timeout_s: float, who: str) -> None:
    """Poll the coordinator's TCP port until it accepts connections or time runs out.

    JAX aborts the whole process (no Python exception) when it cannot connect, so the
    unreachable case is caught here first.
    """
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(1.0, timeout_s))):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"fnn.distributed.initialize: could not reach the coordinator at {address} "
                    f"within {timeout_s:g} s ({who}; last error: {err.strerror or err}). Start "
                    "process 0 first (it hosts the coordinator), check the host, port and "
                    "firewall, or raise timeout_s."
                ) from None
            time.sleep(0.1)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    *,
    timeout_s: float | None = None,
    heartbeat_timeout_s: float | None = None,
    cluster_detection_method: str | None = None,
    watchdog: bool = True,
) -> None:
    """Join the processes of a multi-process run (call it first, before any JAX work).

    Args:
      coordinator_address: ``"host:port"`` of process 0.
      num_processes: how many processes take part.
      process_id: this process's rank, ``0 .. num_processes - 1``.
      local_device_ids: the accelerators this process uses; ``None`` uses all it sees.
      timeout_s: how long every process may take to join. An unreachable coordinator
        raises :class:`DistributedError`; a reachable one whose peers do not all join in
        time ends this process with one line on stderr and exit status :data:`EXIT_CODE`.
      heartbeat_timeout_s: after a joined peer has been silent this long (killed, crashed,
        machine lost) the others stop the same way. A peer that ends with an uncaught
        Python exception tells the others at once.
      cluster_detection_method: passed to ``jax.distributed.initialize`` (e.g.
        ``"mpi4py"``, or ``"deactivate"`` to skip cluster detection).
      watchdog: ``False`` leaves mid-run failures to JAX (which aborts in C++).

    Where each value comes from when an argument is ``None`` (``FNN_*``, then ``JAX_*``
    variables, then JAX's cluster detection for Slurm, Open MPI, Kubernetes and Cloud TPU):
    see :func:`resolve_config`. Processes that disagree on the process count each raise
    :class:`DistributedError`. On CPU the cross-process collectives use gloo unless
    ``jax_cpu_collectives_implementation`` says otherwise. Calling it again with the same
    set-up does nothing; a different process count raises :class:`DistributedError`.
    Process 0 starts the coordination service as a child process of its own, so a
    killed process 0 is one more silent peer (JAX would otherwise abort every peer in
    C++ at once). A process that leaves (``sys.exit``) while its peers still run: they
    stop ``heartbeat_timeout_s`` later, and it does not wait in JAX's shutdown barrier;
    both then exit with :data:`EXIT_CODE`. A collective that fails because a peer is gone
    prints gloo's reason as one line instead of its traceback.
    """
    cfg = resolve_config(
        coordinator_address,
        num_processes,
        process_id,
        local_device_ids,
        timeout_s=timeout_s,
        heartbeat_timeout_s=heartbeat_timeout_s,
    )
    if jax.distributed.is_initialized():
        _check_process_count(cfg.num_processes, "already initialized with")
        return
    from jax._src import xla_bridge  # the public API has no "is the backend up?" query

    if xla_bridge.backends_are_initialized():
        raise DistributedError(
            "fnn.distributed.initialize: JAX is already running on this process's devices "
            "alone; call initialize() first, before any JAX computation, jax.devices() or "
            "jax.device_put (e.g. at the top of your script's main)."
        )

    who = _who(cfg.process_id, cfg.num_processes)
    deadline = time.monotonic() + cfg.timeout_s
    if cfg.coordinator_address is not None and cfg.process_id not in (None, 0):
        _wait_for_coordinator(cfg.coordinator_address, cfg.timeout_s, who)
    left = max(0.5, deadline - time.monotonic())

    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # older JAX: none
    # JAX's connect aborts the process in C++ at its deadline; the timer, due earlier,
    # ends it with a readable line instead.
    timer = threading.Timer(
        left,
        _stop,
        args=(
            f"{who} has waited {cfg.timeout_s:g} s for all {cfg.num_processes or 'the'} "
            f"processes to join the coordinator at "
            f"{cfg.coordinator_address or '(auto-detected)'}; stopping. Check that every "
            "process was started with the same coordinator address and num_processes, and "
            f"distinct process ids, or raise timeout_s (${ENV_TIMEOUT}).",
        ),
    )
    timer.daemon = True
    timer.start()
    try:
        try:
            with _service_in_own_process():
                jax.distributed.initialize(
                    cfg.coordinator_address,
                    cfg.num_processes,
                    cfg.process_id,
                    list(cfg.local_device_ids) if cfg.local_device_ids is not None else None,
                    cluster_detection_method=cluster_detection_method,
                    initialization_timeout=math.ceil(left) + _JAX_MARGIN_S,
                    heartbeat_timeout_seconds=_jax_heartbeat_s(cfg.heartbeat_timeout_s),
                )
        except (ValueError, RuntimeError, TypeError) as err:
            raise DistributedError(
                f"fnn.distributed.initialize: JAX could not set up {who}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__} Pass "
                "coordinator_address, num_processes and process_id (or set "
                f"${ENV_COORDINATOR_ADDRESS}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})."
            ) from err
        _agree_on_process_count(max(0.5, deadline - time.monotonic()))
    finally:
        timer.cancel()
    if watchdog:
        _start_watchdog(cfg.heartbeat_timeout_s)


# The coordination service, run in a process of its own. Hosted inside process 0 (JAX's
# way) it dies with process 0, and every peer's JAX client then aborts the peer in C++ at
# once (an absl stack trace and SIGABRT; JAX 0.10 offers no hook for that error). Outside
# it, a killed process 0 is one more silent peer: each watchdog stops its process with one
# line, and the service outlives process 0 by JAX's own heartbeat deadline so that the
# watchdogs speak first. It ends at once when process 0 shuts JAX down normally.
_SERVICE_SCRIPT = """
import sys, time
from jaxlib import _jax
address, n, heartbeat, shutdown, linger = sys.argv[1:6]
service = _jax.get_distributed_runtime_service(
    address, int(n), heartbeat_timeout=int(heartbeat), shutdown_timeout=int(shutdown))
print("ready", flush=True)
if sys.stdin.readline().strip() != "done":  # end of input: process 0 is gone
    time.sleep(float(linger))
service.shutdown()
"""
_SERVICE_START_S = 60.0


class _ServiceProcess:
    """Stands for JAX's ``DistributedRuntimeService`` object: the service in a child
    process, shut down (as JAX does at exit, after every client's shutdown barrier) by
    telling the child ``done``."""

    def __init__(self, address: str, num_nodes: int, heartbeat_s: int, shutdown_s: int):
        import select
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVICE_SCRIPT, address, str(num_nodes), str(heartbeat_s),
             str(shutdown_s), str(heartbeat_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Not process 0's stderr: a lingering service would hold its pipe open.
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        ready, _, _ = select.select([self.proc.stdout], [], [], _SERVICE_START_S)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(
                f"the coordination service did not start on {address} within "
                f"{_SERVICE_START_S:g} s (port in use?)."
            )

    def shutdown(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write("done\n")
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=30)


@contextlib.contextmanager
def _service_in_own_process():
    """While ``jax.distributed.initialize`` runs, its service factory starts
    :class:`_ServiceProcess` instead (a JAX whose factory differs keeps its own)."""
    from jax._src import distributed as jax_distributed

    real = jax_distributed._jax
    factory = real.get_distributed_runtime_service

    class _Jax:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def get_distributed_runtime_service(
            address, num_nodes, heartbeat_timeout=100, shutdown_timeout=300, **rest
        ):
            if any(rest.values()):  # recoverable=True, ...: JAX's own service
                return factory(address, num_nodes, heartbeat_timeout=heartbeat_timeout,
                               shutdown_timeout=shutdown_timeout, **rest)  # fmt: skip
            return _ServiceProcess(address, num_nodes, heartbeat_timeout, shutdown_timeout)

    jax_distributed._jax = _Jax()
    try:
        yield
    finally:
        jax_distributed._jax = real


def _who(process_id: int | None, num_processes: int | None) -> str:
    if process_id is not None and num_processes is not None:
        return f"process {process_id} of {num_processes}"
    return "this process"


def _jax_heartbeat_s(heartbeat_timeout_s: float) -> int:
    return math.ceil(2 * heartbeat_timeout_s) + _JAX_MARGIN_S


def _runtime_state():
    from jax._src import distributed  # the client and the joined rank/count live here

    return distributed.global_state


def _agree_on_process_count(timeout_s: float) -> None:
    """Every process publishes its process count and compares with its peers'.

    JAX's coordinator only counts registrations, so a process started with a larger
    ``num_processes`` than the coordinator's joins it and would hang later in the device
    topology exchange; the count is checked here, before any device work.
    """
    state = _runtime_state()
    client, n, rank = state.client, state.num_processes, state.process_id
    client.key_value_set(f"{_KV_PREFIX}/num_processes/{rank}", str(n), allow_overwrite=True)
    peers = range(1, n) if rank == 0 else [0]
    ms = max(1, int(timeout_s * 1000))
    for peer in peers:
        try:
            theirs = int(client.blocking_key_value_get(f"{_KV_PREFIX}/num_processes/{peer}", ms))
        except Exception as err:  # JAX's runtime error type is not public
            raise DistributedError(
                f"fnn.distributed.initialize: process {rank} of {n} got no process count "
                f"from process {peer} within {timeout_s:.0f} s "
                f"({str(err).splitlines()[0][:120]}). Use the same num_processes in every "
                "process."
            ) from None
        if theirs != n:
            raise DistributedError(
                f"fnn.distributed.initialize: process {rank} was started with num_processes="
                f"{n} but process {peer} with num_processes={theirs}. Use the same "
                "num_processes in every process."
            )


# A collective whose peer process is gone: gloo's words for a closed or reset connection.
_PEER_GONE = re.compile(r"Gloo .*(Connection closed by peer|Connection reset|Broken pipe)")


class _Watchdog:
    """Heartbeats through the coordinator's key-value store; stops the process when a peer
    falls silent for ``timeout_s``, reports an uncaught exception, or leaves (``exiting``)
    while this process still runs for ``timeout_s``."""

    def __init__(self, timeout_s: float):
        state = _runtime_state()
        self.client, self.n, self.rank = state.client, state.num_processes, state.process_id
        self.timeout_s = timeout_s
        self.interval_s = min(1.0, timeout_s / 4)
        self.exiting = False
        self.failed: str | None = None

    def key(self, rank: int) -> str:
        return f"{_KV_PREFIX}/alive/{rank}"

    def beats(self) -> dict[int, str]:
        # One call reads every heartbeat: n calls a round for n processes, not n^2.
        found = self.client.key_value_dir_get(f"{_KV_PREFIX}/alive/")
        return {int(key.rsplit("/", 1)[-1]): value for key, value in found}

    def value(self, beat: int) -> str:
        if self.failed:
            return f"failed {self.failed}"
        return f"exiting {beat}" if self.exiting else str(beat)

    def run(self) -> None:
        beat = 0
        seen = {p: (None, time.monotonic()) for p in range(self.n) if p != self.rank}
        left_at: dict[int, float] = {}  # peer -> when it was first seen exiting
        while True:
            beat += 1
            try:
                self.client.key_value_set(
                    self.key(self.rank), self.value(beat), allow_overwrite=True
                )
                now = time.monotonic()
                beats = self.beats()
                for peer, (last, since) in list(seen.items()):
                    theirs = beats.get(peer)
                    if theirs is not None and theirs.startswith("failed"):
                        _stop(
                            f"process {peer} of {self.n} ended with an error "
                            f"({theirs[7:] or 'see its log'}); stopping process {self.rank}."
                        )
                    if theirs is not None and theirs.startswith("exiting"):
                        left_at.setdefault(peer, now)
                        if not self.exiting and now - left_at[peer] > self.timeout_s:
                            _stop(
                                f"process {peer} of {self.n} exited (sys.exit, or its script "
                                f"ended) {self.timeout_s:g} s ago while process {self.rank} "
                                f"still runs; stopping process {self.rank}."
                            )
                    if theirs != last:
                        seen[peer] = (theirs, now)
                    elif now - since > self.timeout_s:
                        state = "stopped sending heartbeats" if last else "never sent a heartbeat"
                        _stop(
                            f"process {peer} of {self.n} {state} for {self.timeout_s:g} s "
                            f"(killed, crashed or its host lost?); stopping process "
                            f"{self.rank}. Raise heartbeat_timeout_s (${ENV_HEARTBEAT_TIMEOUT})"
                            " if it was only slow."
                        )
            except Exception as err:  # any failed call means the store is unreachable
                if self.exiting:
                    return  # process 0 shut its coordinator down first: a normal end
                _stop(
                    f"process {self.rank} of {self.n} lost the coordinator "
                    f"({str(err).splitlines()[0][:120]}); stopping."
                )
            time.sleep(self.interval_s)

    def excepthook(self, previous):
        def hook(kind, value, tb):
            text = str(value).splitlines()[0] if str(value) else ""
            self.failed = f"{kind.__name__}: {text[:120]}"
            if _PEER_GONE.search(text):
                # gloo's traceback says nothing more than its last line; say that line.
                reason = re.sub(r"\[[^\]]*\.cc:\d+\] ", "", text).removeprefix("UNKNOWN: ")
                sys.stderr.write(
                    f"fnn.distributed: process {self.rank} of {self.n}: a collective failed, "
                    f"a peer process is gone (killed or crashed?): {reason[:160]}; stopping.\n"
                )
                return
            previous(kind, value, tb)

        return hook

    def at_exit(self) -> None:
        # Runs before JAX's own exit handler (atexit is last-in first-out), which then
        # waits for every peer in its shutdown barrier while the heartbeats go on.
        self.exiting = True
        with contextlib.suppress(Exception):  # best effort on the way out
            self.client.key_value_set(self.key(self.rank), self.value(0), allow_overwrite=True)
        # Process 0 hosts the store the peers read; it stays a little longer so they read
        # this process's last word first.
        linger = 2 * self.interval_s + 0.5 if self.rank == 0 else 0.0
        if self.failed:
            # The peers stop when they read this. JAX's shutdown would wait for them and
            # then abort in C++ once they are gone, so leave now (the traceback is printed).
            time.sleep(linger)
            self._leave()
        # A normal end: every process leaves within timeout_s of the others. One still
        # running then (blocked in a collective with this one?) stops on its own; so does
        # this one, rather than wait in JAX's shutdown barrier (and abort there).
        # (Waiting a little longer than the peers do lets them speak first.)
        deadline = time.monotonic() + self.timeout_s + 2 * self.interval_s + 0.5 + linger
        running: list[int] = []
        while time.monotonic() < deadline:
            try:
                beats = self.beats()
            except Exception:  # the store is gone: JAX's shutdown has nothing to wait for
                return
            running = [
                p for p in range(self.n)
                if p != self.rank and not beats.get(p, "").startswith(("exiting", "failed"))
            ]  # fmt: skip
            if not running:
                return
            time.sleep(self.interval_s)
        sys.stderr.write(
            f"fnn.distributed: process {self.rank} of {self.n} exits while process(es) "
            f"{', '.join(map(str, running))} still run after {self.timeout_s:g} s; not waiting "
            "for them.\n"
        )
        self._leave()

    def _leave(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CODE)


def _start_watchdog(timeout_s: float) -> None:
    dog = _Watchdog(timeout_s)
    sys.excepthook = dog.excepthook(sys.excepthook)
    atexit.register(dog.at_exit)
    thread = threading.Thread(target=dog.run, name="fnn-distributed-watchdog", daemon=True)
    thread.start()


def _check_process_count(expected: int | None, what: str) -> None:
    if expected is not None and jax.process_count() != expected:
        raise DistributedError(
            f"fnn.distributed.initialize: expected {expected} processes, but JAX is {what} "
            f"{jax.process_count()}. Use the same num_processes in every process."
        )


def is_primary() -> bool:
    """True on process 0, the one that writes logs and checkpoints.

    >>> is_primary()
    True
    """
    return jax.process_index() == 0


def process_batch_slice(
    global_batch_size: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """The rows of a global batch that one process feeds: a contiguous block.

    Matches the device order of :func:`fnn.distributed.data_parallel` (devices sorted by
    process), so the blocks of processes ``0, 1, ...`` make up the global batch in order.

    >>> process_batch_slice(32, process_index=1, process_count=4)
    slice(8, 16, None)
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        lower = (global_batch_size // process_count) * process_count
        options = " or ".join(str(s) for s in (lower, lower + process_count) if s > 0)
        raise ConfigError(
            f"process_batch_slice: expected a global batch size divisible by the "
            f"{process_count} processes, got {global_batch_size}. Use {options} (any "
            f"multiple of {process_count})."
        )
    size = global_batch_size // process_count
    return slice(process_index * size, (process_index + 1) * size)


def process_epoch_indices(
    num_examples: int,
    global_batch_size: int,
    *,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> np.ndarray:
    """The example indices this process reads in one epoch: ``[steps, global_batch / processes]``.

    Every process computes the same epoch order (a permutation seeded by ``seed`` and
    ``epoch``, or ``0 .. num_examples - 1`` without ``shuffle``), cuts it into global
    batches and keeps its own block of each (:func:`process_batch_slice`), so row ``i`` of
    every process together make global batch ``i`` (feed them to :func:`global_batch`) and
    all processes together read each example once per epoch. The last
    ``num_examples % global_batch_size`` examples of the order are left out (another set
    each shuffled epoch), so every step has full batches.

    >>> process_epoch_indices(10, 4, shuffle=False, process_index=1, process_count=2)
    array([[2, 3],
           [6, 7]])
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    rows = process_batch_slice(global_batch_size, process_index, process_count)
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
        raise ConfigError(
            f"process_epoch_indices: expected an integer num_examples, got {_short(num_examples)}."
        )
    steps = int(num_examples) // global_batch_size
    if steps == 0:
        raise ConfigError(
            f"process_epoch_indices: expected at least one global batch of {global_batch_size} "
            f"examples, got {num_examples} examples. Use a smaller global batch size."
        )
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(int(num_examples))
    else:
        order = np.arange(int(num_examples))
    return order[: steps * global_batch_size].reshape(steps, global_batch_size)[:, rows]


def process_local_batch(batch: PyTree) -> PyTree:
    """This process's block of every array of a global batch ``[global_batch, ...]``.

    >>> import numpy as np
    >>> process_local_batch({"x": np.zeros((8, 3))})["x"].shape  # one process: all of it
    (8, 3)
    """
    leaves = jax.tree.leaves(batch)
    if not leaves:
        return batch
    rows = process_batch_slice(int(np.shape(leaves[0])[0]))
    return jax.tree.map(lambda x: x[rows], batch)


def global_batch(local_batch: PyTree, sharding: Sharding) -> PyTree:
    """Assemble the global batch from every process's block (no data crosses processes).

    ``local_batch`` leaves ``[global_batch / processes, ...]`` become global arrays
    ``[global_batch, ...]`` placed by ``sharding`` (e.g. ``dp.batch_sharding`` of a
    sharded :func:`fnn.distributed.data_parallel` step, which does this itself).

    >>> import jax, numpy as np
    >>> from fnn.distributed.placement import data_parallel
    >>> dp = data_parallel(lambda s, b: (s, {}), devices=1)
    >>> global_batch({"x": np.ones((4, 2))}, dp.batch_sharding)["x"].shape
    (4, 2)
    """
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
