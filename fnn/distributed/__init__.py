"""Placement on devices and processes: the one data-parallel mechanism
(:func:`data_parallel`, with sharding rules for FSDP / tensor parallel parameters) and
multi-process start-up on ``jax.distributed`` (:func:`initialize`).
Imports only ``fnn.core`` and ``fnn.training``."""

from fnn.distributed.placement import (
    DataParallelStep,
    batch_mesh,
    data_parallel,
    replicate,
    shard_batch,
    unreplicate,
)
from fnn.distributed.runtime import (
    ENV_COORDINATOR_ADDRESS,
    ENV_HEARTBEAT_TIMEOUT,
    ENV_LOCAL_DEVICE_IDS,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    ENV_TIMEOUT,
    EXIT_CODE,
    DistributedConfig,
    DistributedError,
    global_batch,
    initialize,
    is_primary,
    process_batch_slice,
    process_epoch_indices,
    process_local_batch,
    resolve_config,
)
from fnn.distributed.sharding import (
    TRANSFORMER_RULES,
    Distribution,
    make_mesh,
    parse_mesh,
    per_device_bytes,
    resolve_rules,
    sharding_table,
    state_shardings,
)

__all__ = [
    "ENV_COORDINATOR_ADDRESS",
    "ENV_HEARTBEAT_TIMEOUT",
    "ENV_LOCAL_DEVICE_IDS",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "ENV_TIMEOUT",
    "EXIT_CODE",
    "TRANSFORMER_RULES",
    "DataParallelStep",
    "DistributedConfig",
    "DistributedError",
    "Distribution",
    "batch_mesh",
    "data_parallel",
    "global_batch",
    "initialize",
    "is_primary",
    "make_mesh",
    "parse_mesh",
    "per_device_bytes",
    "process_batch_slice",
    "process_epoch_indices",
    "process_local_batch",
    "replicate",
    "resolve_config",
    "resolve_rules",
    "shard_batch",
    "sharding_table",
    "state_shardings",
    "unreplicate",
]
