"""Data parallelism: N devices (pmap, sharded jit) must give the 1-device result.

Reference: the same step run with plain ``jax.jit`` on one device over the same global
batches, for a hand-written step (1 vs 2/4/8 devices) and for ``fnn.train.make_train_step``
(BatchNormalization statistics, metrics, running loss, dropout). Tolerance: float32,
``atol=rtol=2e-5`` on every leaf of the train state and on the logs after 3 Adam steps
(the only difference is the order of the floating-point reductions over the batch;
measured max parameter difference ~3e-8).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import fnn
from fnn.distributed import data_parallel, replicate, shard_batch, unreplicate
from fnn.errors import ConfigError, ShapeError
from fnn.layers import BatchNormalization, Dense, Dropout

TOL = {"atol": 2e-5, "rtol": 2e-5}
STEPS = 3
BATCH = 16


def make_step(model, optimizer, axis_name=None):
    """A hand-written train step (stand-in for fnn.train.make_train_step)."""

    def loss_fn(params, state, x, y):
        logits, state = model.apply(params, state, x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (state, logits)

    def step(ts, batch):
        (loss, (state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            ts["params"], ts["state"], batch["x"], batch["y"]
        )
        correct = jnp.sum(jnp.argmax(logits, -1) == batch["y"])
        count = jnp.asarray(batch["y"].shape[0])
        if axis_name is not None:
            grads, loss = jax.lax.pmean((grads, loss), axis_name)
            correct, count = jax.lax.psum((correct, count), axis_name)
        updates, opt_state = optimizer.update(grads, ts["opt_state"], ts["params"])
        params = optax.apply_updates(ts["params"], updates)
        new = {"step": ts["step"] + 1, "params": params, "state": state, "opt_state": opt_state}
        return new, {"loss": loss, "accuracy": correct / count}

    return step


@pytest.fixture(scope="module")
def problem():
    model = fnn.serial(Dense(16, activation="tanh"), Dense(3))
    optimizer = optax.adam(1e-2)
    rng = np.random.default_rng(0)
    batches = [
        {
            "x": rng.normal(size=(BATCH, 5)).astype(np.float32),
            "y": rng.integers(0, 3, size=BATCH).astype(np.int32),
        }
        for _ in range(STEPS)
    ]
    params, state = model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 5), jnp.float32))
    ts = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "state": state,
        "opt_state": optimizer.init(params),
    }
    return model, optimizer, ts, batches


def run(step, ts, batches):
    logs = []
    for batch in batches:
        ts, log = step(ts, batch)
        logs.append(log)
    return ts, logs


@pytest.fixture(scope="module")
def reference(problem):
    model, optimizer, ts, batches = problem
    return run(jax.jit(make_step(model, optimizer)), ts, batches)


def assert_same(result, reference):
    (ts, logs), (ref_ts, ref_logs) = result, reference
    ts = jax.tree.map(np.asarray, ts)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), ts, ref_ts)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), logs, ref_logs)
    return max(
        float(np.max(np.abs(a - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(ts["params"]), jax.tree.leaves(ref_ts["params"]))
    )


@pytest.mark.parametrize(
    "method,per_device,n",
    [("pmap", True, n) for n in (1, 2, 4, 8)]
    + [("sharded", False, n) for n in (1, 2, 4, 8)]
    + [("sharded", True, 8)],  # the per-device view under shard_map (also at 4 below)
)
def test_n_devices_match_one_device(problem, reference, n, method, per_device):
    model, optimizer, ts, batches = problem
    step = make_step(model, optimizer, axis_name="batch" if per_device else None)
    dp = data_parallel(step, devices=n, method=method)
    placed, logs = run(dp, dp.put_state(ts), batches)
    assert dp.num_devices == n
    if method == "pmap":
        assert jax.tree.leaves(placed)[0].shape[0] == n
    else:
        assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(placed))
        assert len(jax.tree.leaves(placed)[0].sharding.device_set) == n
    diff = assert_same((dp.get_state(placed), logs), reference)
    print(f"{method} per_device={per_device} n={n}: max |param diff| = {diff:.2e}")


def test_prefetched_batches_and_explicit_mesh(problem, reference):
    model, optimizer, ts, batches = problem
    # jax.make_mesh defaults to Explicit axes; data_parallel turns them into Auto.
    mesh = jax.make_mesh(
        (4,), ("batch",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:4]
    )
    dp = data_parallel(make_step(model, optimizer), devices=mesh)
    assert dp.mesh.axis_types == (AxisType.Auto,)
    placed = [dp.put_batch(b) for b in batches]
    assert placed[0]["x"].sharding == NamedSharding(dp.mesh, P("batch"))
    ts_out, logs = run(dp, dp.put_state(ts), placed)
    assert_same((dp.get_state(ts_out), logs), reference)

    dp = data_parallel(make_step(model, optimizer, "batch"), devices=4, method="pmap")
    placed = [dp.put_batch(b) for b in batches]
    assert placed[0]["x"].shape == (4, BATCH // 4, 5)
    ts_out, logs = run(dp, dp.put_state(ts), placed)
    assert_same((dp.get_state(ts_out), logs), reference)


def test_donated_state(problem, reference):
    model, optimizer, ts, batches = problem
    dp = data_parallel(make_step(model, optimizer), devices=2, donate=True)
    ts_out, logs = run(dp, dp.put_state(ts), batches)
    assert_same((dp.get_state(ts_out), logs), reference)


def test_shard_batch_and_replicate_round_trip():
    batch = {"x": np.arange(24.0).reshape(8, 3), "y": np.arange(8)}
    split = shard_batch(batch, 4)
    assert split["x"].shape == (4, 2, 3) and split["y"].shape == (4, 2)
    np.testing.assert_array_equal(split["x"].reshape(8, 3), batch["x"])
    np.testing.assert_array_equal(split["y"][1], [2, 3])

    tree = {"w": np.arange(6.0).reshape(2, 3), "rng": jax.random.key(3)}
    rep = replicate(tree, jax.devices()[:4])
    assert rep["w"].shape == (4, 2, 3) and rep["rng"].shape == (4,)
    assert {s.device for s in rep["w"].addressable_shards} == set(jax.devices()[:4])
    for shard in rep["w"].addressable_shards:
        np.testing.assert_array_equal(shard.data[0], tree["w"])
    back = unreplicate(rep)
    np.testing.assert_array_equal(back["w"], tree["w"])
    np.testing.assert_array_equal(
        jax.random.key_data(back["rng"]), jax.random.key_data(tree["rng"])
    )


def test_parallel_is_only_the_combinator():
    """``fnn.parallel`` is the layer combinator; data parallelism lives in fnn.distributed."""
    import fnn.distributed.placement as module

    assert fnn.parallel is fnn.core.combinators.parallel
    assert fnn.data_parallel is module.data_parallel is fnn.distributed.data_parallel
    layer = fnn.parallel(Dense(2), Dense(3))
    params, _ = layer.init(jax.random.key(0), jnp.ones((1, 4)), jnp.ones((1, 5)))
    assert params["dense_1"]["kernel"].shape == (5, 3)


# ----------------------------------------------------------------------------- errors


def test_error_batch_not_divisible(problem):
    model, optimizer, ts, batches = problem
    with pytest.raises(
        ShapeError,
        match=r"shard_batch: expected a batch size divisible by the 3 devices, got batch size 16\. Use a batch size of 15 or 18 \(any multiple of 3\)",
    ):
        shard_batch(batches[0], 3)
    with pytest.raises(ShapeError, match=r"same batch size, got 8 at \['x'\] and 7 at \['y'\]"):
        shard_batch({"x": np.ones((8, 2)), "y": np.ones(7)}, 2)
    with pytest.raises(ShapeError, match=r"leading batch axis, got a scalar at \['y'\]"):
        shard_batch({"x": np.ones((8, 2)), "y": np.float32(1)}, 2)
    for method, axis in (("sharded", None), ("pmap", "batch")):
        dp = data_parallel(make_step(model, optimizer, axis), devices=8, method=method)
        bad = {k: v[:12] for k, v in batches[0].items()}
        with pytest.raises(
            ShapeError,
            match=rf"data_parallel\(method='{method}'\): expected a batch size divisible by the 8 local devices, got batch size 12\. Use a batch size of 8 or 16",
        ):
            dp(dp.put_state(ts), bad)


def test_error_state_not_replicated(problem):
    model, optimizer, ts, batches = problem
    dp = data_parallel(make_step(model, optimizer, "batch"), devices=4, method="pmap")
    with pytest.raises(
        ConfigError,
        match=r"data_parallel\(method='pmap'\): expected a train state replicated over 4 devices \(every array with a leading axis of 4\), got shape \(\) at \['opt_state'\]\[0\]\.count\. Place it once with step\.put_state\(state\)",
    ):
        dp(ts, batches[0])
    dp2 = data_parallel(make_step(model, optimizer, "batch"), devices=2, method="pmap")
    with pytest.raises(ConfigError, match=r"replicated over 4 devices .* got shape \(2,\)"):
        dp(dp2.put_state(ts), batches[0])

    dp = data_parallel(make_step(model, optimizer), devices=4)
    on_one = jax.device_put(ts, jax.devices()[0])
    with pytest.raises(
        ConfigError,
        match=r"data_parallel\(method='sharded'\): expected a train state replicated over the 4 mesh devices, got an array on one device \(.*\) at \['opt_state'\]",
    ):
        dp(on_one, batches[0])


def test_error_step_and_axis_mismatch(problem):
    model, optimizer, ts, batches = problem
    dp = data_parallel(make_step(model, optimizer, None), devices=2, method="pmap")
    with pytest.raises(
        ConfigError,
        match=r"the step never reduces over axis 'batch', so each device would train its own copy.*make_train_step\(\.\.\., axis_name='batch'\)",
    ):
        dp(dp.put_state(ts), batches[0])
    for method in ("pmap", "sharded"):
        dp = data_parallel(make_step(model, optimizer, "devices"), devices=2, method=method)
        with pytest.raises(
            ConfigError,
            match=r"the step communicates over an axis data_parallel does not provide .*devices.*Build the step with axis_name='batch'",
        ):
            dp(dp.put_state(ts), batches[0])


def test_error_configuration():
    step = make_step(fnn.serial(Dense(2)), optax.sgd(0.1))
    with pytest.raises(ConfigError, match=r"unknown method 'pjit'\. Valid methods: sharded, pmap"):
        data_parallel(step, method="pjit")
    with pytest.raises(ConfigError, match=r"expected between 1 and 8 devices, got devices=9"):
        data_parallel(step, devices=9)
    with pytest.raises(ConfigError, match=r"expected a step function"):
        data_parallel(None)
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    with pytest.raises(
        ConfigError, match=r"expected a mesh with an axis named 'batch', got axes \('data',\)"
    ):
        data_parallel(step, devices=mesh)
    with pytest.raises(ConfigError, match=r"shard_batch: expected num_devices >= 1, got 0"):
        shard_batch(np.ones(4), 0)


# ----------------------------------------------------------------------------- fnn.train


@pytest.fixture(scope="module")
def keras_problem():
    from fnn.train import init_train_state

    rng = np.random.default_rng(1)
    batches = [
        (
            rng.normal(size=(BATCH, 5)).astype(np.float32),
            rng.integers(0, 3, size=BATCH).astype(np.int32),
        )
        for _ in range(STEPS)
    ]
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [fnn.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def model(axis_name=None, dropout=0.0):
        return fnn.serial(
            Dense(16, use_bias=False),
            BatchNormalization(axis_name=axis_name),
            Dense(16, activation="tanh"),
            Dropout(dropout),
            Dense(3),
        )

    ts = init_train_state(model(), "adam", jax.random.key(2), jnp.ones((1, 5)), metrics=metrics)
    return model, loss, metrics, ts, batches


_REFERENCES = {}


def train_reference(keras_problem, dropout=0.0):
    """One device, plain jit (computed once per dropout rate)."""
    from fnn.train import make_train_step

    if dropout not in _REFERENCES:
        model, loss, metrics, ts, batches = keras_problem
        step = jax.jit(make_train_step(model(None, dropout), loss, "adam", metrics))
        _REFERENCES[dropout] = run(step, ts, batches)
    return _REFERENCES[dropout]


@pytest.mark.parametrize(
    "method,per_device", [("pmap", True), ("sharded", False), ("sharded", True)]
)
def test_make_train_step_matches_one_device(keras_problem, method, per_device):
    """fnn.train's step (BatchNormalization, metrics, running loss) on 4 devices."""
    from fnn.train import compute_metrics, make_train_step

    model, loss, metrics, ts, batches = keras_problem
    axis = "batch" if per_device else None
    step = make_train_step(model(axis), loss, "adam", metrics, axis_name=axis)
    dp = data_parallel(step, devices=4, method=method)
    out, logs = run(dp, dp.put_state(ts), batches)
    out = dp.get_state(out)
    ref, ref_logs = train_reference(keras_problem)
    diff = assert_same_trees((out, logs), (ref, ref_logs))
    values, ref_values = (compute_metrics(s.metric_states, metrics) for s in (out, ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), values, ref_values)
    assert int(out.step) == STEPS
    print(f"make_train_step {method} per_device={per_device}: max |param diff| = {diff:.2e}")


def test_sharded_dropout_matches_one_device(keras_problem):
    """Global-view sharding draws the same dropout masks as one device (not so pmap,
    whose devices fold their index into the key)."""
    from fnn.train import make_train_step

    model, loss, metrics, ts, batches = keras_problem
    dp = data_parallel(make_train_step(model(None, 0.5), loss, "adam", metrics), devices=4)
    out, logs = run(dp, dp.put_state(ts), batches)
    reference = train_reference(keras_problem, dropout=0.5)
    assert_same_trees((dp.get_state(out), logs), reference)
    no_dropout = train_reference(keras_problem)
    assert not np.allclose(reference[1][-1]["loss"], no_dropout[1][-1]["loss"])


def assert_same_trees(result, reference):
    (ts, logs), (ref_ts, ref_logs) = result, reference
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)  # noqa: E731
    jax.tree.map(close, jax.random.key_data(ts.rng), jax.random.key_data(ref_ts.rng))
    jax.tree.map(close, ts._replace(rng=None), ref_ts._replace(rng=None))
    jax.tree.map(close, logs, ref_logs)
    return max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(ts.params), jax.tree.leaves(ref_ts.params))
    )


@pytest.mark.parametrize("method,axis", [("pmap", "batch"), ("sharded", None)])
def test_eval_step_through_data_parallel(keras_problem, method, axis):
    """make_eval_step fits the (carry, batch) contract by carrying the train state."""
    from fnn.train import compute_metrics, init_metric_states, make_eval_step

    model, loss, metrics, ts, batches = keras_problem
    ts = ts._replace(metric_states=init_metric_states(metrics))
    ref = make_eval_step(model(), loss, metrics)
    ref_states = ts.metric_states
    for batch in batches:
        ref_states = ref(ref_states, ts.params, ts.state, batch)
    evaluate = make_eval_step(model(axis), loss, metrics, axis_name=axis)

    def step(train_state, batch):
        new = evaluate(train_state.metric_states, train_state.params, train_state.state, batch)
        return train_state._replace(metric_states=new), {}

    dp = data_parallel(step, devices=4, method=method)
    out, _ = run(dp, dp.put_state(ts), batches)
    values = compute_metrics(dp.get_state(out).metric_states, metrics)
    ref_values = compute_metrics(ref_states, metrics)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), values, ref_values)
