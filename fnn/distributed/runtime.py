"""Multi-process training on JAX's own runtime (``jax.distributed``).

Every process runs the same script; they meet at a coordinator (process 0's address):

>>> import fnn.distributed as dist
>>> dist.initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # doctest: +SKIP

On a cluster JAX finds the three values itself (SLURM, Open MPI, TPU pods, Kubernetes
jobs, ...), so ``dist.initialize()`` with no arguments is enough; the environment
variables ``FNN_COORDINATOR_ADDRESS``, ``FNN_NUM_PROCESSES``, ``FNN_PROCESS_ID`` and
``FNN_LOCAL_DEVICE_IDS`` fill in missing arguments. Then ``jax.devices()`` lists every
process's devices, :func:`fnn.distributed.data_parallel` spans all of them, each process feeds
only its own slice of the global batch (:func:`process_batch_slice`) and only the primary
process (:func:`is_primary`) writes logs and checkpoints.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Sharding

from fnn.core.errors import ConfigError, FnnError

__all__ = [
    "DistributedError",
    "global_batch",
    "initialize",
    "is_primary",
    "process_batch_slice",
    "process_local_batch",
]

PyTree = Any

ENV_COORDINATOR_ADDRESS = "FNN_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "FNN_NUM_PROCESSES"
ENV_PROCESS_ID = "FNN_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "FNN_LOCAL_DEVICE_IDS"


class DistributedError(FnnError):
    """The processes could not meet (unreachable coordinator, mismatched set-up)."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"fnn.distributed.initialize: expected an integer in ${name}, got {value!r}."
        ) from None


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"fnn.distributed.initialize: expected coordinator_address 'host:port', got "
            f"{address!r}."
        )
    return host.strip("[]"), int(port)


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
    timeout_s: float = 300.0,
    heartbeat_timeout_s: int = 100,
) -> None:
    """Join the processes of a multi-process run (call it first, before any JAX work).

    Args:
      coordinator_address: ``"host:port"`` of process 0 (``$FNN_COORDINATOR_ADDRESS``).
      num_processes: how many processes take part (``$FNN_NUM_PROCESSES``).
      process_id: this process's rank, ``0 .. num_processes - 1`` (``$FNN_PROCESS_ID``).
      local_device_ids: the accelerators this process uses (``$FNN_LOCAL_DEVICE_IDS``,
        comma separated); ``None`` uses all it sees.
      timeout_s: how long to wait for the coordinator and for every process to join.
        An unreachable coordinator raises :class:`DistributedError`; when it is reachable
        but a peer never joins, JAX terminates the process at the deadline (a message
        explaining it is printed first).
      heartbeat_timeout_s: after this long without a heartbeat from a peer, the others
        stop instead of waiting forever in a collective.

    Arguments left ``None`` (and unset in the environment) are found by JAX's cluster
    detection (SLURM, Open MPI, TPU pods, ...). On CPU the cross-process collectives use
    gloo unless ``jax_cpu_collectives_implementation`` says otherwise. Calling it again with the same set-up does nothing; a different process count
    raises :class:`DistributedError`.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR_ADDRESS) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    if local_device_ids is None and os.environ.get(ENV_LOCAL_DEVICE_IDS):
        text = os.environ[ENV_LOCAL_DEVICE_IDS]
        try:
            local_device_ids = [int(part) for part in text.split(",")]
        except ValueError:
            raise ConfigError(
                f"fnn.distributed.initialize: expected comma-separated integers in "
                f"${ENV_LOCAL_DEVICE_IDS}, got {text!r}."
            ) from None

    if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 1):
        raise ConfigError(
            f"fnn.distributed.initialize: expected num_processes >= 1, got {num_processes!r}."
        )
    if process_id is not None and (
        not isinstance(process_id, int)
        or process_id < 0
        or (num_processes is not None and process_id >= num_processes)
    ):
        limit = f"0 .. {num_processes - 1}" if num_processes else "an integer >= 0"
        raise ConfigError(
            f"fnn.distributed.initialize: expected process_id in {limit}, got {process_id!r}."
        )
    if not timeout_s > 0:
        raise ConfigError(f"fnn.distributed.initialize: expected timeout_s > 0, got {timeout_s!r}.")
    if coordinator_address is not None:
        _split_address(coordinator_address)

    if jax.distributed.is_initialized():
        _check_process_count(num_processes, "already initialized with")
        return
    from jax._src import xla_bridge  # the public API has no "is the backend up?" query

    if xla_bridge.backends_are_initialized():
        raise DistributedError(
            "fnn.distributed.initialize: JAX is already running on this process's devices "
            "alone; call initialize() first, before any JAX computation, jax.devices() or "
            "jax.device_put (e.g. at the top of your script's main)."
        )

    who = (
        f"process {process_id} of {num_processes}"
        if process_id is not None and num_processes is not None
        else "this process"
    )
    deadline = time.monotonic() + timeout_s
    if coordinator_address is not None and process_id not in (None, 0):
        _wait_for_coordinator(coordinator_address, timeout_s, who)
    left = max(1, math.ceil(deadline - time.monotonic()))

    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # older JAX: none
    watchdog = threading.Timer(
        max(0.0, left - 0.5),
        lambda: print(
            f"fnn.distributed.initialize: {who} has waited {timeout_s:g} s for all "
            f"{num_processes or 'the'} processes to join the coordinator at "
            f"{coordinator_address or '(auto-detected)'}; JAX will now stop this process. "
            "Check that every process was started with the same coordinator address and "
            "num_processes, and distinct process ids.",
            file=sys.stderr,
            flush=True,
        ),
    )
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            local_device_ids,
            initialization_timeout=left,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
        )
    except (ValueError, RuntimeError) as err:
        raise DistributedError(
            f"fnn.distributed.initialize: JAX could not set up {who}: {err} Pass "
            "coordinator_address, num_processes and process_id (or set "
            f"${ENV_COORDINATOR_ADDRESS}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})."
        ) from err
    finally:
        watchdog.cancel()
    _check_process_count(num_processes, "joined")


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
