"""Sharded checkpoints on 8 fake CPU devices: saved shard by shard, restored onto another mesh.

Reference: the host values the tree was built from; every restore must give them back bit
for bit (compared as raw bytes, dtypes and shapes), whatever the saving and the restoring
layouts. The shard files are read back with ``safetensors`` to check that each distinct
shard is written once and nothing is gathered.
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from fnn import checkpoint
from fnn.core.errors import ConfigError
from fnn.distributed import Distribution, make_mesh, state_shardings
from fnn.io.checkpoint import CheckpointError

RULES = {"*/kernel": ("fsdp", None), "embedding/embeddings": ("fsdp", "tensor")}


def host_tree():
    rng = np.random.default_rng(0)
    params = {
        "dense": {
            "kernel": rng.normal(size=(16, 8)).astype(np.float32),
            "bias": rng.normal(size=8).astype(np.float32),
        },
        "embedding": {"embeddings": rng.normal(size=(32, 16)).astype(ml_dtypes.bfloat16)},
    }
    moments = jax.tree.map(lambda a: (a * 3).astype(a.dtype), params)
    return {"params": params, "opt": {"mu": moments}, "step": 7, "rng": jax.random.key(3)}


def place(tree, mesh, rules=RULES):
    shardings = state_shardings(tree, rules, mesh)
    return jax.tree.map(
        lambda x, s: x if isinstance(x, int) else jax.device_put(x, s), tree, shardings
    )


def bits(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = np.asarray(x)
    return x.dtype, x.shape, x.tobytes()


def assert_same_bits(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        assert bits(a) == bits(b), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tree saved under fsdp=8 and under fsdp=4 x tensor=2."""
    root = tmp_path_factory.mktemp("sharded")
    out = {}
    for name, axes in (("fsdp8", {"fsdp": 8}), ("fsdp4_tensor2", {"fsdp": 4, "tensor": 2})):
        out[name] = checkpoint.save(root / name, place(host_tree(), make_mesh(**axes)))
    return out


def test_each_distinct_shard_is_written_once(saved):
    directory = saved["fsdp4_tensor2"]
    index = json.loads((directory / checkpoint.INDEX_FILE).read_text())
    assert index["version"] == 3
    shards = safetensors.numpy.load_file(directory / "shards_00000.safetensors")
    # kernel [16, 8] over fsdp=4 (replicated over tensor=2): 4 row blocks, not 8 copies.
    kernel = {k for k in shards if k.startswith("params/dense/kernel")}
    assert kernel == {f"params/dense/kernel[{4 * i}:{4 * i + 4},0:8]" for i in range(4)}
    # embeddings [32, 16] over fsdp=4 x tensor=2: 8 blocks of [8, 8] in bfloat16.
    emb = [v for k, v in shards.items() if k.startswith("params/embedding/")]
    assert len(emb) == 8 and {v.shape for v in emb} == {(8, 8)}
    # One copy of every sharded byte in the shard file, replicated leaves in arrays.
    params, mu = host_tree()["params"], host_tree()["opt"]["mu"]
    sharded_bytes = sum(
        t["dense"]["kernel"].nbytes + t["embedding"]["embeddings"].nbytes for t in (params, mu)
    )
    assert sum(v.nbytes for v in shards.values()) == sharded_bytes
    replicated = safetensors.numpy.load_file(directory / checkpoint.ARRAYS_FILE)
    assert set(replicated) == {"params/dense/bias", "opt/mu/dense/bias", "rng"}


@pytest.mark.parametrize("source", ["fsdp8", "fsdp4_tensor2"])
def test_restore_onto_other_meshes_is_bit_identical(saved, source):
    target = {**jax.eval_shape(host_tree), "step": 0}
    four = make_mesh(jax.devices()[:4], fsdp=4)
    # Other rules on another mesh: each new shard spans several saved ones.
    other = make_mesh(jax.devices()[4:], fsdp=2, tensor=2)
    layouts = [
        Distribution(four, RULES),
        Distribution(other, {"*/kernel": ("tensor", "fsdp"), "*/embeddings": (None, "fsdp")}),
        SingleDeviceSharding(jax.devices()[5]),
    ]
    for layout in layouts:
        restored = checkpoint.restore(saved[source], target, shardings=layout)
        assert_same_bits(restored, host_tree())
        if isinstance(layout, Distribution):
            want = state_shardings(target, dict(layout.rules), layout.mesh)
            got = restored["opt"]["mu"]["dense"]["kernel"].sharding
            assert got == want["opt"]["mu"]["dense"]["kernel"]
            assert got.spec in (P("fsdp"), P("tensor", "fsdp"))
        else:
            assert restored["params"]["dense"]["kernel"].devices() == {jax.devices()[5]}
    # No target: host values on the default device, containers as dicts.
    assert_same_bits(checkpoint.restore(saved[source]), host_tree())


def test_restore_with_target_shardings(saved):
    mesh = make_mesh(jax.devices()[:2], fsdp=2)
    sharding = NamedSharding(mesh, P("fsdp"))
    target = jax.tree.map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
            if getattr(x, "ndim", 0) == 2
            else x
        ),
        {**jax.eval_shape(host_tree), "step": 0},
    )
    restored = checkpoint.restore(saved["fsdp8"], target)
    assert restored["params"]["dense"]["kernel"].sharding == sharding
    assert_same_bits(restored, host_tree())
    with pytest.raises(ConfigError, match=r"expected shardings with the target's structure"):
        checkpoint.restore(saved["fsdp8"], target, shardings={"params": sharding})


def test_replicated_trees_keep_the_version_2_layout(tmp_path):
    tree = place(host_tree(), make_mesh(data=8), rules={})
    path = checkpoint.save(tmp_path / "dp", tree)
    assert sorted(p.name for p in path.iterdir()) == [checkpoint.ARRAYS_FILE, checkpoint.INDEX_FILE]
    assert checkpoint.read_info(path)["version"] == 2
    assert_same_bits(checkpoint.restore(path, tree), host_tree())


def corrupt(saved, tmp_path, edit):
    path = tmp_path / "copy"
    shutil.copytree(saved["fsdp8"], path)
    edit(path)
    return path


def flip_byte(path):
    file = path / "shards_00000.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF
    file.write_bytes(bytes(data))


def resign(path, change):
    index = json.loads((path / checkpoint.INDEX_FILE).read_text())
    change(index)
    del index["index_sha256"]
    index["index_sha256"] = checkpoint._index_sha256(index)
    (path / checkpoint.INDEX_FILE).write_text(json.dumps(index))


def overlap(index):
    shards = next(r for r in index["leaves"] if "shards" in r)["shards"]
    shards[1]["start"][0] -= 1


def traversal(index):
    index["shard_files"]["../shards_00000.safetensors"] = index["shard_files"].popitem()[1]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (flip_byte, r"shards_00000\.safetensors is corrupted: its SHA-256 does not match"),
        (
            lambda p: (p / "shards_00000.safetensors").write_bytes(b"x" * 10),
            r"shards_00000\.safetensors is truncated or corrupted: 10 bytes",
        ),
        (lambda p: (p / "shards_00000.safetensors").unlink(), r"cannot read .*shards_00000"),
        (lambda p: resign(p, overlap), r"the shards of \S+ do not tile its shape \(16, 8\)"),
        (lambda p: resign(p, traversal), r"'shard_files' is malformed"),
    ],
    ids=["flipped-byte", "truncated", "missing", "overlapping", "path-in-name"],
)
def test_a_damaged_shard_file_or_index_raises(saved, tmp_path, edit, match):
    path = corrupt(saved, tmp_path, edit)
    with pytest.raises(CheckpointError, match=match):
        checkpoint.restore(path)
