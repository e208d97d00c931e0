"""Sharded parameters (FSDP, tensor parallel) on 8 fake CPU devices, remat and repeat.

Reference: the same ``fnn.train.make_train_step`` compiled with plain ``jax.jit`` on one
device over the same batches. A small Transformer (embedding, attention, MLP block, head)
is trained 5 Adam steps under data=8, fsdp=8, data=4 x tensor=2 and fsdp=4 x tensor=2.
Tolerance: float32, ``atol=rtol=2e-5`` on every parameter and optimizer moment, 1e-5 on
the losses (only the order of the floating-point reductions differs; measured max
parameter difference 3.2e-7, loss 2.4e-7). Expected shardings and bytes are written out
by hand below.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import fnn
from fnn.core.errors import ConfigError, ShapeError
from fnn.distributed import (
    Distribution,
    data_parallel,
    make_mesh,
    parse_mesh,
    resolve_rules,
    sharding_table,
)
from fnn.layers import Dense, Dropout, Embedding, GlobalAveragePooling1D, TransformerEncoderBlock

VOCAB, TIME, DIM, CLASSES, BATCH, STEPS = 32, 8, 16, 8, 16, 5
TOL = {"atol": 2e-5, "rtol": 2e-5}

RULES = {
    "embedding/embeddings": ("fsdp", "tensor"),
    "*/attention_output/kernel": ("tensor", None, "fsdp"),
    "*/attention_output/bias": (),
    "*/attention/*/kernel": ("fsdp", "tensor", None),
    "*/attention/*/bias": ("tensor", None),
    "*/ffn/dense/kernel": ("fsdp", "tensor"),
    "*/ffn/dense/bias": ("tensor",),
    "*/ffn/dense_1/kernel": ("tensor", "fsdp"),
    "dense/kernel": ("fsdp", None),
}
BLOCK = "transformer_encoder_block"
# Every parameter's expected spec, written out (not computed from RULES).
EXPECTED = {
    "embedding/embeddings": P("fsdp", "tensor"),
    f"{BLOCK}/attention/query/kernel": P("fsdp", "tensor"),
    f"{BLOCK}/attention/key/kernel": P("fsdp", "tensor"),
    f"{BLOCK}/attention/value/kernel": P("fsdp", "tensor"),
    f"{BLOCK}/attention/query/bias": P("tensor"),
    f"{BLOCK}/attention/key/bias": P("tensor"),
    f"{BLOCK}/attention/value/bias": P("tensor"),
    f"{BLOCK}/attention/attention_output/kernel": P("tensor", None, "fsdp"),
    f"{BLOCK}/attention/attention_output/bias": P(),
    f"{BLOCK}/ffn/dense/kernel": P("fsdp", "tensor"),
    f"{BLOCK}/ffn/dense/bias": P("tensor"),
    f"{BLOCK}/ffn/dense_1/kernel": P("tensor", "fsdp"),
    f"{BLOCK}/ffn/dense_1/bias": P(),
    f"{BLOCK}/norm1/gamma": P(),
    f"{BLOCK}/norm1/beta": P(),
    f"{BLOCK}/norm2/gamma": P(),
    f"{BLOCK}/norm2/beta": P(),
    "dense/kernel": P("fsdp"),
    "dense/bias": P(),
}
MESHES = {
    "data8": {"data": 8},
    "fsdp8": {"fsdp": 8},
    "data4_tensor2": {"data": 4, "tensor": 2},
    "fsdp4_tensor2": {"fsdp": 4, "tensor": 2},
}


def paths_and_leaves(tree):
    return dict(zip(fnn.train.tree_paths(tree), jax.tree.leaves(tree), strict=True))


@pytest.fixture(scope="module")
def problem():
    model = fnn.serial(
        Embedding(VOCAB, DIM),
        TransformerEncoderBlock(num_heads=2, key_dim=8, ff_dim=32),
        GlobalAveragePooling1D(),
        Dense(CLASSES),
    )
    rng = np.random.default_rng(0)
    batches = [
        (
            rng.integers(0, VOCAB, (BATCH, TIME)).astype(np.int32),
            rng.integers(0, CLASSES, BATCH).astype(np.int32),
        )
        for _ in range(STEPS)
    ]
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = "adam"
    step = fnn.train.make_train_step(model, loss, opt)

    def init():
        x = jax.ShapeDtypeStruct((BATCH, TIME), jnp.int32)
        return fnn.train.init_train_state(model, opt, jax.random.key(0), x)

    ts = ts0 = jax.jit(init)()
    single = jax.jit(step)
    losses = []
    for batch in batches:
        ts, logs = single(ts, batch)
        losses.append(float(logs["loss"]))
    return {"step": step, "init": init, "ts0": ts0, "batches": batches, "ref": ts, "losses": losses}


@pytest.fixture(scope="module")
def runs(problem):
    out = {}
    for name, axes in MESHES.items():
        dp = data_parallel(problem["step"], devices=make_mesh(**axes), rules=RULES)
        # init_state compiles init with out_shardings (each device builds only its shards);
        # two meshes place the reference's initial state instead (same values, less compiling).
        if "fsdp" in axes:
            ts = dp.init_state(problem["init"])
        else:
            ts = dp.put_state(problem["ts0"])
        first = ts
        losses = []
        for batch in problem["batches"]:
            ts, logs = dp(ts, batch)
            losses.append(float(logs["loss"]))
        out[name] = {"dp": dp, "ts": ts, "first": first, "losses": losses}
    return out


@pytest.mark.parametrize("mesh", list(MESHES))
def test_sharded_training_equals_single_device(problem, runs, mesh):
    run, ref = runs[mesh], problem["ref"]
    np.testing.assert_allclose(run["losses"], problem["losses"], atol=1e-5, rtol=1e-5)
    for tree, want in ((run["ts"].params, ref.params), (run["ts"].opt_state, ref.opt_state)):
        for got, expected in zip(jax.tree.leaves(tree), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(expected), **TOL)
    assert int(run["ts"].step) == STEPS


@pytest.mark.parametrize("mesh", ["fsdp8", "fsdp4_tensor2"])
def test_each_param_and_moment_is_placed_by_its_rule(runs, mesh):
    run = runs[mesh]
    for ts in (run["first"], run["ts"]):  # created by init_state, and after 5 steps
        params = paths_and_leaves(ts.params)
        assert set(params) == set(EXPECTED)
        adam = ts.opt_state[0]
        moments = [paths_and_leaves(adam.mu), paths_and_leaves(adam.nu)]
        for path, leaf in params.items():
            want = jax.sharding.NamedSharding(run["dp"].mesh, EXPECTED[path])
            assert leaf.sharding.is_equivalent_to(want, leaf.ndim), path
            for moment in moments:
                assert moment[path].sharding.is_equivalent_to(want, leaf.ndim), path
        assert ts.step.sharding.is_fully_replicated


def test_fsdp8_holds_one_eighth_per_device(runs):
    params = paths_and_leaves(runs["fsdp8"]["ts"].params)
    per_device: dict = {}
    for leaf in params.values():
        for shard in leaf.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    sharded = sum(x.nbytes for p, x in params.items() if "fsdp" in EXPECTED[p])
    replicated = sum(x.nbytes for p, x in params.items() if "fsdp" not in EXPECTED[p])
    assert len(per_device) == 8
    assert set(per_device.values()) == {sharded // 8 + replicated}
    assert replicated < 0.1 * (sharded + replicated)  # only norms and a few biases (6%)
    assert fnn.distributed.per_device_bytes(runs["fsdp8"]["ts"].params) == sharded // 8 + replicated


def test_sharding_table_lists_specs_and_bytes(runs):
    table = sharding_table(runs["fsdp4_tensor2"]["ts"].params)
    rows = {line.split()[0]: line for line in table.splitlines()[1:-1]}
    # [32, 16] float32 over fsdp=4 x tensor=2: 32 * 16 * 4 / 8 bytes on each device.
    assert rows["embedding/embeddings"].split()[-1] == str(32 * 16 * 4 // 8)
    assert "(fsdp, tensor)" in rows["embedding/embeddings"]
    assert "replicated" in rows[f"{BLOCK}/norm1/gamma"]
    total = sum(math.prod(s) * 4 for s in [(32, 16), (16, 8), (8,)])
    assert total < int(table.splitlines()[-1].split()[-1])  # the whole model's bytes


def test_empty_rules_is_data_parallel(problem):
    dp = data_parallel(problem["step"], devices=make_mesh(data=8), rules={})
    ts = dp.put_state(problem["ts0"])
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(ts))
    assert dp.batch_sharding.spec == P(("data", "fsdp"))


def test_model_fit_with_distribution_equals_plain_fit():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 4, 64)

    def fitted(**kw):
        model = fnn.Sequential([fnn.Input((8,)), Dense(16, activation="tanh"), Dense(4)])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", seed=3)
        hist = model.fit(x, y, batch_size=16, epochs=1, verbose=0, **kw)
        return model, hist.history["loss"]

    dist = {"mesh": "fsdp=4,tensor=2", "rules": {"*/kernel": ("fsdp", "tensor")}}
    sharded, losses = fitted(distribution=dist)
    plain, ref = fitted()
    np.testing.assert_allclose(losses, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)
    kernel = sharded._train_state.params["dense"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    with pytest.raises(ConfigError, match=r"multiple of the 4 batch shards \(data x fsdp\), got 6"):
        model = fnn.Sequential([fnn.Input((8,)), Dense(4)])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=6, verbose=0, distribution=dist)


def test_model_fit_with_distribution_creates_the_state_sharded(monkeypatch):
    """A new model's params and Adam moments are built on their devices by the jitted
    init (out_shardings), never as one full copy that is moved afterwards."""
    kernels = {(8, 16), (16, 4)}
    moved = []
    device_put = jax.device_put

    def spy(x, *args, **kwargs):  # a whole kernel on one device moved to the mesh
        moved.extend(
            leaf.shape
            for leaf in jax.tree.leaves(x)
            if isinstance(leaf, jax.Array) and leaf.shape in kernels and len(leaf.devices()) == 1
        )
        return device_put(x, *args, **kwargs)

    monkeypatch.setattr(jax, "device_put", spy)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 8)).astype(np.float32), rng.integers(0, 4, 32)
    model = fnn.Sequential([fnn.Input((8,)), Dense(16, activation="tanh"), Dense(4)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", seed=3)
    dist = {"mesh": "fsdp=4,tensor=2", "rules": {"*/kernel": ("fsdp", "tensor")}}
    model.fit(x, y, batch_size=16, epochs=0, verbose=0, distribution=dist)  # build only
    leaves = {**paths_and_leaves(model._train_state.opt_state), **paths_and_leaves(model.params)}
    found = [path for path in leaves if path.endswith("kernel")]
    assert len(found) == 6  # 2 kernels, their 2 Adam moments each
    for path in found:
        kernel = leaves[path]
        assert kernel.sharding.spec == P("fsdp", "tensor"), path
        rows, cols = kernel.shape
        assert {s.data.shape for s in kernel.addressable_shards} == {(rows // 4, cols // 2)}
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, distribution=dist)
    assert moved == []
    # (Equal values to an unsharded build: test_model_fit_with_distribution_equals_plain_fit.)


# ----------------------------------------------------------------------------- errors


SHAPES = {
    "dense": {
        "kernel": jax.ShapeDtypeStruct((12, 6), jnp.float32),
        "bias": jax.ShapeDtypeStruct((6,), jnp.float32),
    }
}


@pytest.mark.parametrize(
    ("rules", "error", "match"),
    [
        ({"*/kernal": ("fsdp",)}, ConfigError, r"'\*/kernal' match no parameter.*dense/kernel"),
        (
            {"*/kernel": ("fsdp",), "dense/kernel": ("tensor",)},
            ConfigError,
            r"'dense/kernel' match no parameter \(rules are tried in order",
        ),
        ({"*/kernel": ("model",)}, ConfigError, r"axis 'model' \(for dense/kernel\) is not in"),
        (
            {"*/bias": ("fsdp",)},
            ShapeError,
            r"dimension 0 of dense/bias \(shape \(6,\)\) has size 6, not divisible by mesh "
            r"axes \('fsdp',\) of size 4",
        ),
        ({"*/bias": ("tensor", None)}, ShapeError, r"has 2 entries but dense/bias has shape"),
        ({"*/kernel": ("fsdp", "fsdp")}, ConfigError, r"axis 'fsdp' is used twice"),
    ],
)
def test_bad_rules_raise_clear_errors(rules, error, match):
    with pytest.raises(error, match=match):
        resolve_rules(rules, SHAPES, make_mesh(fsdp=4, tensor=2))


def test_mesh_errors_and_parsing():
    assert parse_mesh("fsdp=4,tensor=2") == {"fsdp": 4, "tensor": 2}
    assert dict(make_mesh(fsdp=-1, tensor=2).shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    with pytest.raises(ConfigError, match=r"multiply to the 8 devices, got .*product 6"):
        make_mesh(fsdp=3, tensor=2)
    with pytest.raises(ConfigError, match=r"expected 'axis=size' entries .* got 'fsdp4'"):
        parse_mesh("fsdp4")
    with pytest.raises(ConfigError, match=r"distribution: expected \{'mesh'"):
        Distribution.get({"mesh": "fsdp=8", "rule": {}})


def test_stacked_params_align_right():
    stacked = {"kernel": jax.ShapeDtypeStruct((3, 12, 6), jnp.float32)}
    specs = resolve_rules(
        {"kernel": ("...", "fsdp", "tensor")}, stacked, make_mesh(fsdp=4, tensor=2)
    )
    assert specs["kernel"].spec == P(None, "fsdp", "tensor")


# ----------------------------------------------------------------------------- remat / repeat


def test_remat_gives_the_same_loss_and_grads():
    block = fnn.serial(Dense(16, activation="tanh"), Dense(8, activation="tanh"), Dense(1))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8)), jnp.float32)
    params, state = block.init(jax.random.key(1), x)

    def loss(layer):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(layer.apply(p, state, x)[0] ** 2)))(
            params
        )

    wrapped = fnn.remat(block, policy="dots_saveable")
    (lv, g), (lv_ref, g_ref) = loss(wrapped), loss(block)
    np.testing.assert_allclose(lv, lv_ref, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    grad_jaxpr = str(
        jax.make_jaxpr(jax.grad(lambda p: wrapped.apply(p, state, x)[0].sum()))(params)
    )
    assert "checkpoint" in grad_jaxpr or "remat" in grad_jaxpr
    with pytest.raises(ConfigError, match=r"unknown remat policy 'dots'. Valid policies"):
        fnn.remat(block, policy="dots")


def test_repeat_equals_unrolled_blocks_with_dropout():
    def block():
        return fnn.residual(Dense(8, activation="tanh"), Dropout(0.3), name="res")

    n = 3
    deep = fnn.repeat(block(), n)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 8)), jnp.float32)
    params, state = deep.init(jax.random.key(0), x)
    assert params["dense"]["kernel"].shape == (n, 8, 8)
    # Unrolled reference: n separate blocks, copy i holding slice i of the stacked params.
    unrolled = fnn.serial(*[block().renamed(f"b{i}") for i in range(n)])
    per_block = {f"b{i}": jax.tree.map(lambda a, i=i: a[i], params) for i in range(n)}
    rng = jax.random.key(7)

    def loss(layer, p):
        return jnp.sum(layer.apply(p, {}, x, rng=rng, train=True)[0] ** 2)

    lv, g = jax.jit(jax.value_and_grad(lambda p: loss(deep, p)))(params)
    lv_ref, g_ref = jax.jit(jax.value_and_grad(lambda p: loss(unrolled, p)))(per_block)
    np.testing.assert_allclose(lv, lv_ref, rtol=1e-6)
    stacked_ref = jax.tree.map(lambda *a: jnp.stack(a), *[g_ref[f"b{i}"] for i in range(n)])
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(stacked_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Abstract init, and the spec round trip (remat/repeat are savable layers).
    shapes = jax.eval_shape(deep.init, jax.random.key(0), x)[0]
    assert shapes["dense"]["kernel"].shape == (n, 8, 8)
    from fnn.io.saving import layer_from_config, layer_to_config

    rebuilt = layer_from_config(layer_to_config(fnn.remat(deep, policy="nothing_saveable")))
    outputs = jax.jit(lambda p: (rebuilt.apply(p, {}, x)[0], deep.apply(p, {}, x)[0]))(params)
    np.testing.assert_allclose(*outputs, rtol=1e-6)
    with pytest.raises(ShapeError, match=r"repeat: expected the repeated block 'dense'"):
        fnn.repeat(Dense(3), 2).init(jax.random.key(0), x)


def test_cli_sharded_strategy_prints_its_table_and_learns(tmp_path, capsys):
    # Equality with one device is Model.fit's (above); the CLI only maps distribute: onto it.
    from pathlib import Path

    from fnn.cli import commands as cli

    config = str(Path(__file__).resolve().parents[1] / "configs" / "digits_mlp.yaml")
    args = [
        "train", config, "--set", f"run_dir={tmp_path}", "--set", "epochs=1",
        "--set", "batch_size=128", "--set", "plots=false", "--set", "tensorboard=false",
        "--set", "model.layers[1].Dense.units=32", "--set", "model.layers[3].Dense.units=16",
        "--set", "optimizer.learning_rate=0.01",
        "--set", "distribute.strategy=sharded", "--set", "distribute.mesh=fsdp=4,tensor=2",
        "--set", 'distribute.rules={"*kernel": [fsdp, tensor]}',
    ]  # fmt: skip
    assert cli.main(args) == 0
    out = capsys.readouterr()
    rows = {line.split()[0]: line for line in (out.out + out.err).splitlines() if "/" in line}
    # dense_1/kernel [32, 16] float32 over fsdp=4 x tensor=2.
    assert "(fsdp, tensor)" in rows["dense_1/kernel"]
    assert rows["dense_1/kernel"].split()[-1] == str(32 * 16 * 4 // 8)
    assert "replicated" in rows["dense_1/bias"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test"]["accuracy"] > 0.5  # 10 classes: chance is 0.1


def test_cli_config_rejects_bad_sharded_settings():
    from fnn.cli.config import load_config_text

    base = "model: {layers: [Flatten, {Dense: {units: 4}}]}\ndataset: {name: digits}\n"
    with pytest.raises(ConfigError, match=r"distribute.mesh: expected axis sizes"):
        load_config_text(base + "distribute: {strategy: sharded}\n")
    with pytest.raises(ConfigError, match=r"expected 'axis=size' entries"):
        load_config_text(base + "distribute: {strategy: sharded, mesh: fsdp}\n")
    cfg = load_config_text(base + "distribute: {strategy: sharded, mesh: 'fsdp=8'}\n")
    assert cfg["distribute"]["rules"] == {}
