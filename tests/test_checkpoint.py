"""Checkpoints: bitwise round trips, crash safety, corruption, mismatch reports, retention."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import safetensors.numpy

import fnn
from fnn import checkpoint
from fnn.checkpoint import CheckpointError, CheckpointManager
from fnn.layers import Dense

ROOT = Path(__file__).resolve().parents[1]


def every_leaf_type():
    rng = np.random.default_rng(0)
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16),
        }
    }
    return {
        "params": params,
        "state": {},  # a stateless model
        "opt_state": optax.adamw(1e-3).init(params),  # NamedTuples, int32 count, empty states
        "step": jnp.asarray(12345, jnp.int32),
        "epoch": 3,
        "lr": 0.1 + 0.2,  # a float that JSON must keep exactly
        "done": False,
        "tag": "run-1",
        "rng": jax.random.key(42),  # typed threefry key
        "rbg_keys": jax.random.split(jax.random.key(7, impl="rbg"), 3),
        "raw_key": jax.random.PRNGKey(3),  # legacy uint32[2] key
        "uint32": jnp.arange(5, dtype=jnp.uint32) * np.uint32(2**31 + 1),
        "int8": jnp.asarray([-128, 0, 127], jnp.int8),
        "float16": jnp.asarray([1e-4, -6.5e4], jnp.float16),
        "bool": jnp.asarray([True, False]),
        "scalar": jnp.asarray(np.float32(np.pi)),
        "nan_inf": jnp.asarray([np.nan, np.inf, -np.inf, -0.0], jnp.float32),
        "empty_array": jnp.zeros((0, 3)),
        "numpy": np.arange(6, dtype=np.int64).reshape(2, 3),
        "seq": [jnp.ones(2), (jnp.zeros(1), None)],
        "empty_list": [],
        "none": None,
    }


def assert_bitwise_equal(a, b):
    leaves_a, def_a = jax.tree_util.tree_flatten(a)
    leaves_b, def_b = jax.tree_util.tree_flatten(b)
    assert def_a == def_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if isinstance(x, bool | int | float | str):
            assert type(x) is type(y) and x == y
            continue
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert y.dtype == x.dtype
            assert jax.random.key_impl(y) == jax.random.key_impl(x)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        # Compare the raw bits so NaNs, -0.0 and bfloat16 are checked exactly.
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("use_jit", [False, True])
def test_round_trip_every_leaf_type_bitwise(tmp_path, use_jit):
    tree = every_leaf_type()
    if use_jit:  # arrays produced by a compiled step restore the same way
        tree["params"] = jax.jit(lambda p: jax.tree.map(lambda x: x * 1, p))(tree["params"])
    path = checkpoint.save(tmp_path / "ckpt", tree, metadata={"epoch": 3, "config": {"a": [1]}})
    restored = checkpoint.restore(path, target=tree)
    assert_bitwise_equal(tree, restored)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert isinstance(restored["numpy"], np.ndarray)
    # The restored state works with the optimizer it came from.
    grads = jax.tree.map(jnp.ones_like, restored["params"])
    optax.adamw(1e-3).update(grads, restored["opt_state"], restored["params"])
    assert checkpoint.read_info(path)["metadata"] == {"epoch": 3, "config": {"a": [1]}}


def test_restore_against_abstract_target(tmp_path):
    tree = every_leaf_type()
    checkpoint.save(tmp_path / "ckpt", tree)
    # Arrays and keys as ShapeDtypeStruct (what jax.eval_shape of an init gives).
    abstract = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype) if isinstance(v, jax.Array) else v, tree
    )
    assert isinstance(abstract["rng"], jax.ShapeDtypeStruct)
    restored = checkpoint.restore(tmp_path / "ckpt", target=abstract)
    assert_bitwise_equal(tree, restored)


def test_restore_without_target_gives_plain_containers(tmp_path):
    tree = every_leaf_type()
    checkpoint.save(tmp_path / "ckpt", tree)
    plain = checkpoint.restore(tmp_path / "ckpt")
    adam = plain["opt_state"][0]
    assert isinstance(adam, dict) and sorted(adam) == ["count", "mu", "nu"]
    np.testing.assert_array_equal(adam["mu"]["dense"]["kernel"], np.zeros((3, 4)))
    assert plain["seq"][1][1] is None and plain["empty_list"] == [] and plain["state"] == {}
    assert plain["epoch"] == 3 and plain["lr"] == 0.1 + 0.2
    np.testing.assert_array_equal(
        jax.random.key_data(plain["rbg_keys"]), jax.random.key_data(tree["rbg_keys"])
    )


def test_arrays_file_is_plain_safetensors_with_readable_names(tmp_path):
    tree = every_leaf_type()
    checkpoint.save(tmp_path / "ckpt", tree)
    data = (tmp_path / "ckpt" / checkpoint.ARRAYS_FILE).read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert header["params/dense/kernel"]["dtype"] == "F32"
    assert header["params/dense/bias"]["dtype"] == "BF16"
    assert header["rng"]["dtype"] == "U32" and header["rng"]["shape"] == [2]
    bits = np.frombuffer(data, np.uint8)  # the bf16 payload is the raw bits of the array
    bias = np.asarray(tree["params"]["dense"]["bias"]).view(np.uint16).tobytes()
    assert bias in bits.tobytes()


def test_typed_key_impl_mismatch_and_key_vs_array(tmp_path):
    checkpoint.save(tmp_path / "ckpt", {"rng": jax.random.key(0)})
    with pytest.raises(CheckpointError, match=r"\['rng'\]: checkpoint has PRNG keys key<fry>"):
        checkpoint.restore(tmp_path / "ckpt", target={"rng": jax.random.key(0, impl="rbg")})
    with pytest.raises(CheckpointError, match=r"target uint32\[2\]"):
        checkpoint.restore(tmp_path / "ckpt", target={"rng": jax.random.PRNGKey(0)})


def mlp(widths):
    return fnn.serial(*[Dense(w, activation="relu") for w in widths])


def train_state(widths):
    model = mlp(widths)
    params, state = model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 5), jnp.float32))
    return {"params": params, "state": state, "opt_state": optax.adam(1e-3).init(params)}


def test_different_architecture_names_every_mismatched_path(tmp_path):
    checkpoint.save(tmp_path / "ckpt", train_state([8, 4]))
    target = train_state([16, 4, 2])
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(tmp_path / "ckpt", target=target)
    message = str(info.value)
    expected = [
        "['params']['dense']['kernel']: checkpoint has float32[5, 8], target float32[5, 16]",
        "['params']['dense']['bias']: checkpoint has float32[8], target float32[16]",
        "['params']['dense_1']['kernel']: checkpoint has float32[8, 4], target float32[16, 4]",
        "['params']['dense_2']: missing from the checkpoint",
        "['opt_state'][0].mu['dense']['kernel']: checkpoint has float32[5, 8]",
        "['opt_state'][0].nu['dense_2']: missing from the checkpoint",
    ]
    for line in expected:
        assert line in message
    # Every mismatch is listed: 4 in params, 4 in each Adam moment.
    assert "(12 mismatches)" in message
    # The reverse direction reports what the checkpoint has in excess.
    checkpoint.save(tmp_path / "big", target)
    with pytest.raises(CheckpointError, match=r"\['params'\]\['dense_2'\]: in the checkpoint but"):
        checkpoint.restore(tmp_path / "big", target=train_state([8, 4]))


def test_structure_and_dtype_mismatches(tmp_path):
    params = {"w": jnp.ones(2)}
    checkpoint.save(tmp_path / "ckpt", {"opt": optax.adam(1.0).init(params), "w": jnp.ones(2)})
    target = {"opt": optax.sgd(1.0, momentum=0.9).init(params), "w": jnp.ones(2, jnp.bfloat16)}
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(tmp_path / "ckpt", target=target)
    assert "['opt'][0]: checkpoint has a ScaleByAdamState, target a TraceState" in str(info.value)
    assert "['w']: checkpoint has float32[2], target bfloat16[2]" in str(info.value)


@pytest.fixture
def saved(tmp_path):
    path = checkpoint.save(tmp_path / "ckpt", train_state([8, 4]))
    return path, train_state([8, 4])


def test_truncated_arrays_file(saved):
    path, target = saved
    arrays = path / checkpoint.ARRAYS_FILE
    arrays.write_bytes(arrays.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"arrays.safetensors is truncated or corrupted"):
        checkpoint.restore(path, target=target)


def test_flipped_byte_in_arrays_file(saved):
    path, target = saved
    arrays = path / checkpoint.ARRAYS_FILE
    data = bytearray(arrays.read_bytes())
    data[-3] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is corrupted: its SHA-256 does not match"):
        checkpoint.restore(path, target=target)


def test_corrupted_safetensors_header_without_checksum(saved):
    path, target = saved
    arrays = path / checkpoint.ARRAYS_FILE
    data = bytearray(arrays.read_bytes())
    data[0:8] = (10**9).to_bytes(8, "little")  # header length beyond the file
    arrays.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"arrays.safetensors is corrupted: .*header"):
        checkpoint.restore(path, target=target, verify=False)


def test_truncated_or_missing_index(saved):
    path, target = saved
    index = path / checkpoint.INDEX_FILE
    index.write_text(index.read_text()[:100])
    with pytest.raises(CheckpointError, match=r"checkpoint.json is corrupted or truncated"):
        checkpoint.restore(path, target=target)
    index.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match=r"is not an fnn checkpoint index"):
        checkpoint.restore(path)
    index.unlink()
    with pytest.raises(CheckpointError, match=r"not an fnn checkpoint: checkpoint.json is missing"):
        checkpoint.restore(path)
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nowhere"):
        checkpoint.restore(path.parent / "nowhere")


def test_tensor_missing_from_arrays_file(saved):
    path, target = saved
    safetensors.numpy.save_file({"x": np.zeros(1, np.float32)}, path / checkpoint.ARRAYS_FILE)
    info = json.loads((path / checkpoint.INDEX_FILE).read_text())
    data = (path / checkpoint.ARRAYS_FILE).read_bytes()
    info["arrays_bytes"] = len(data)
    info["arrays_sha256"] = checkpoint._sha256(data)
    info["index_sha256"] = checkpoint._index_sha256(info)
    (path / checkpoint.INDEX_FILE).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"tensor 'opt_state/0/count' for .* missing"):
        checkpoint.restore(path, target=target)


def test_save_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot save leaf \['bad'\] of type object"):
        checkpoint.save(tmp_path / "a", {"bad": object()})
    with pytest.raises(CheckpointError, match=r"cannot save metadata"):
        checkpoint.save(tmp_path / "b", {}, metadata={"f": print})
    checkpoint.save(tmp_path / "c", {"x": jnp.ones(1)})
    with pytest.raises(CheckpointError, match=r"already exists; pass overwrite=True"):
        checkpoint.save(tmp_path / "c", {"x": jnp.zeros(1)})
    checkpoint.save(tmp_path / "c", {"x": jnp.zeros(1)}, overwrite=True)
    assert float(checkpoint.restore(tmp_path / "c")["x"][0]) == 0.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import jax.numpy as jnp
    from fnn import checkpoint

    mode, stage, directory = sys.argv[1:]

    def hook(at, tmp):
        if at == stage:
            print("paused", flush=True)
            time.sleep(60)

    if mode == "manager":
        manager = checkpoint.CheckpointManager(directory, max_to_keep=1)
        manager.save(1, {"w": jnp.full(1000, 1.0)})
        checkpoint._TEST_HOOK = hook
        manager.save(2, {"w": jnp.full(1000, 2.0)})
    else:
        checkpoint.save(directory + "/ckpt", {"w": jnp.full(1000, 1.0)})
        checkpoint._TEST_HOOK = hook
        checkpoint.save(directory + "/ckpt", {"w": jnp.full(1000, 2.0)}, overwrite=True)
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize(
    "mode,stage",
    [("manager", "arrays_written"), ("manager", "before_rename"), ("overwrite", "before_rename")],
)
def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path, mode, stage):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, mode, stage, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line == "paused\n", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # The half-written save left a hidden temporary directory and nothing else.
    assert any(p.name.startswith(".") and ".tmp-" in p.name for p in tmp_path.iterdir())
    target = {"w": jnp.zeros(1000)}
    if mode == "manager":
        manager = CheckpointManager(tmp_path, max_to_keep=1)
        assert manager.steps() == [1]
        restored = manager.restore(target=target)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # cleaned up
    else:
        restored = checkpoint.restore(tmp_path / "ckpt", target=target)
    np.testing.assert_array_equal(restored["w"], np.full(1000, 1.0))


def test_manager_keeps_last_n_plus_best(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=2, best_metric="val_accuracy", mode="max")
    accuracies = [0.5, 0.9, 0.7, 0.6, 0.8]
    for step, acc in enumerate(accuracies, start=1):
        manager.save(step, {"w": jnp.full(2, float(step))}, metrics={"val_accuracy": acc})
    # Last 2 (4, 5) plus the best (2).
    assert manager.steps() == [2, 4, 5]
    assert manager.best_step() == 2 and manager.latest_step() == 5
    assert float(manager.restore_best(target={"w": jnp.zeros(2)})["w"][0]) == 2.0
    assert float(manager.restore(target={"w": jnp.zeros(2)})["w"][0]) == 5.0
    assert manager.metrics(4) == {"val_accuracy": 0.6}
    # A new manager over the same directory sees the same checkpoints (metrics are on disk).
    again = CheckpointManager(tmp_path, max_to_keep=2, best_metric="val_accuracy", mode="max")
    again.save(6, {"w": jnp.full(2, 6.0)}, metrics={"val_accuracy": 0.95})
    assert again.steps() == [5, 6] and again.best_step() == 6


def test_manager_without_best_and_errors(tmp_path):
    manager = CheckpointManager(tmp_path / "run", max_to_keep=1, keep_best=False)
    with pytest.raises(CheckpointError, match=r"no checkpoints in"):
        manager.restore()
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* has metric 'val_loss'"):
        manager.restore_best()
    manager.save(1, {"w": jnp.ones(1)}, metrics={"val_loss": 0.1})
    manager.save(2, {"w": jnp.ones(1)}, metrics={"val_loss": 0.5})
    assert manager.steps() == [2]
    with pytest.raises(fnn.ConfigError, match=r"expected mode 'min' or 'max', got 'best'"):
        CheckpointManager(tmp_path, mode="best")
    with pytest.raises(fnn.ConfigError, match=r"expected max_to_keep >= 1 or None, got 0"):
        CheckpointManager(tmp_path, max_to_keep=0)


def test_restore_onto_any_device_count(tmp_path):
    devices = np.array(jax.devices())
    assert len(devices) == 8  # conftest
    mesh = jax.sharding.Mesh(devices, ("data",))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x = jax.device_put(jnp.arange(16.0).reshape(8, 2), sharded)
    checkpoint.save(tmp_path / "ckpt", {"x": x, "rng": jax.random.key(1)})
    # Saved from 8 shards, restored onto one device ...
    single = checkpoint.restore(
        tmp_path / "ckpt", target={"x": jnp.zeros((8, 2)), "rng": jax.random.key(0)}
    )
    assert len(single["x"].sharding.device_set) == 1
    np.testing.assert_array_equal(single["x"], np.arange(16.0).reshape(8, 2))
    # ... or onto the 8-device sharding of the target.
    target = {
        "x": jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=sharded),
        "rng": jax.random.key(0),
    }
    restored = checkpoint.restore(tmp_path / "ckpt", target=target)
    assert restored["x"].sharding == sharded
    np.testing.assert_array_equal(restored["x"], np.arange(16.0).reshape(8, 2))
    assert restored["x"].addressable_shards[3].data.shape == (1, 2)


def test_bfloat16_stored_as_bf16_readable_by_ml_dtypes(tmp_path):
    x = jnp.asarray([1.5, -2.25, 3e38], jnp.bfloat16)
    checkpoint.save(tmp_path / "ckpt", {"x": x})
    restored = checkpoint.restore(tmp_path / "ckpt")["x"]
    assert restored.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(restored).view(np.uint16),
        np.asarray(x).astype(ml_dtypes.bfloat16).view(np.uint16),
    )


TWO_PROCESS_WORKER = textwrap.dedent(
    """
    import os, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from fnn import checkpoint

    process_id, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id, initialization_timeout=60)
    assert jax.process_count() == 2 and jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    full = np.arange(24, dtype=np.float32).reshape(8, 3)
    x = jax.make_array_from_callback(full.shape, sharding, lambda index: full[index])
    assert not x.is_fully_addressable  # half of it lives in the other process
    writes = []
    checkpoint._TEST_HOOK = lambda stage, tmp: writes.append(stage)
    checkpoint.save(directory + "/ckpt", {"x": x, "step": 3, "rng": jax.random.key(5)})
    target = {"x": jax.ShapeDtypeStruct(full.shape, jnp.float32, sharding=sharding),
              "step": 0, "rng": jax.random.key(0)}
    restored = checkpoint.restore(directory + "/ckpt", target=target)
    assert restored["x"].sharding == sharding and restored["step"] == 3
    for shard in restored["x"].addressable_shards:
        np.testing.assert_array_equal(shard.data, full[shard.index])
    print(f"process {process_id} wrote {','.join(writes)}.", flush=True)
    jax.distributed.shutdown()
    """
)


def test_two_processes_only_process_0_writes_and_both_restore(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESS_WORKER, str(i), str(port), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            outputs.append(out)
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    # Each process writes its own half of x (no gather); only process 0 the rest.
    assert "process 0 wrote shards_written,arrays_written,before_rename." in outputs[0]
    assert "process 1 wrote shards_written." in outputs[1]
    for i in range(2):
        shards = safetensors.numpy.load_file(tmp_path / "ckpt" / f"shards_0000{i}.safetensors")
        rows = [(4 * i, 4 * i + 2), (4 * i + 2, 4 * i + 4)]  # one shard per local device
        assert {k: v.shape for k, v in shards.items()} == {
            f"x[{a}:{b},0:3]": (2, 3) for a, b in rows
        }
    # One process, one device: the whole array, assembled from both processes' shards.
    restored = checkpoint.restore(tmp_path / "ckpt")
    np.testing.assert_array_equal(restored["x"], np.arange(24, dtype=np.float32).reshape(8, 3))


def test_check_directory_path_rejects_single_file_names_for_writing_and_reading(tmp_path):
    for name in ("best.keras", "model.weights.h5", "w.hdf5", "w.npz", "w.pkl", "m.PT"):
        with pytest.raises(fnn.ConfigError, match=r"^who: cannot write .* Use a path without that"):
            checkpoint.check_directory_path(tmp_path / name, "who")
        with pytest.raises(fnn.ConfigError, match=r"^who: cannot read .*written by save_weights"):
            checkpoint.check_directory_path(tmp_path / name, "who", action="read")
    assert checkpoint.check_directory_path(tmp_path / "run.v2", "who") == tmp_path / "run.v2"
    with pytest.raises(fnn.ConfigError, match=r"expected action 'write' or 'read', got 'delete'"):
        checkpoint.check_directory_path(tmp_path / "w", "who", action="delete")
