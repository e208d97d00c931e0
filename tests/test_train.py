"""Train/eval steps against hand-written JAX, and the training techniques."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import train
from fnn.layers import Dense, Dropout

RNG = np.random.default_rng(0)


def _mlp(dropout=0.0):
    layers = [Dense(16, activation="relu", name="body")]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(3, name="head"))
    return fnn.serial(*layers)


def _data(n=32, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, c, size=n).astype(np.int32)
    return x, y


def _assert_trees_close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


@pytest.mark.parametrize("jit", [False, True])
def test_train_step_matches_hand_written_step(jit):
    model = _mlp()
    x, y = _data()
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = optax.adam(1e-2)
    ts = train.init_train_state(model, opt, jax.random.key(0), x)
    step = train.make_train_step(model, loss, opt)
    step = jax.jit(step) if jit else step
    params, opt_state = ts.params, ts.opt_state

    def hand_loss(p):
        logits, _ = model.apply(p, {}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    for _ in range(2):
        ts, logs = step(ts, (x, y))
        value, grads = jax.value_and_grad(hand_loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(logs["loss"], value, rtol=1e-5)
    _assert_trees_close(ts.params, params, rtol=1e-5, atol=1e-6)
    assert int(ts.step) == 2


def test_metric_states_accumulate_running_loss_and_accuracy():
    model = _mlp()
    x, y = _data(30)
    loss = "sparse_categorical_crossentropy"
    model_loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [fnn.metrics.get("accuracy", loss=loss)]
    opt = optax.sgd(0.0)  # params stay fixed, so batch values can be recomputed
    ts = train.init_train_state(model, opt, jax.random.key(0), x, metrics=metrics)
    step = jax.jit(train.make_train_step(model, model_loss, opt, metrics))
    batches = [(x[:10], y[:10]), (x[10:16], y[10:16]), (x[16:], y[16:])]
    losses_, sizes = [], []
    for b in batches:
        ts, logs = step(ts, b)
        losses_.append(float(logs["loss"]))
        sizes.append(len(b[1]))
    values = train.compute_metrics(ts.metric_states, metrics)
    np.testing.assert_allclose(values["loss"], np.average(losses_, weights=sizes), rtol=1e-5)
    logits, _ = model.apply(ts.params, ts.state, x)
    np.testing.assert_allclose(values["accuracy"], np.mean(np.argmax(logits, -1) == y), rtol=1e-6)
    ts = train.reset_metrics(ts)
    assert float(train.compute_metrics(ts.metric_states, metrics)["loss"]) == 0.0


def test_sample_weights_and_multi_input():
    a = Dense(4, name="a")
    model = fnn.serial(fnn.parallel(a, Dense(4, name="b")), fnn.layers.Add(), Dense(1, name="out"))
    x1, x2 = RNG.normal(size=(8, 3)).astype(np.float32), RNG.normal(size=(8, 2)).astype(np.float32)
    y = RNG.normal(size=(8, 1)).astype(np.float32)
    w = RNG.uniform(size=8).astype(np.float32)
    ts = train.init_train_state(model, optax.sgd(0.1), jax.random.key(0), x1, x2)
    step = train.make_train_step(model, "mse", optax.sgd(0.1))
    new_ts, logs = step(ts, ((x1, x2), y, w))
    pred, _ = model.apply(ts.params, ts.state, x1, x2)
    expected = np.sum(w * (np.asarray(pred) - y)[:, 0] ** 2) / 8
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)


def test_step_key_comes_from_rng_and_step_so_dropout_masks_differ():
    model = _mlp(dropout=0.5)
    x, y = _data()
    ts = train.init_train_state(model, optax.sgd(0.0), jax.random.key(0), x)
    step = jax.jit(
        train.make_train_step(
            model, fnn.losses.SparseCategoricalCrossentropy(from_logits=True), optax.sgd(0.0)
        )
    )
    ts1, l1 = step(ts, (x, y))
    ts2, l2 = step(ts1, (x, y))
    assert float(l1["loss"]) != float(l2["loss"])
    ts1b, l1b = step(ts, (x, y))
    assert float(l1["loss"]) == float(l1b["loss"])  # deterministic given the state
    # The base key stays; each step folds in its step number.
    assert np.array_equal(jax.random.key_data(ts2.rng), jax.random.key_data(ts.rng))
    assert int(ts2.step) == 2


def test_multi_step_scan_equals_single_steps():
    model = _mlp(dropout=0.2)
    x, y = _data(48)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [fnn.metrics.SparseCategoricalAccuracy()]
    opt = optax.adam(1e-2)
    ts0 = train.init_train_state(model, opt, jax.random.key(1), x, metrics=metrics)
    step = train.make_train_step(model, loss, opt, metrics)
    ts = ts0
    single_losses = []
    for k in range(4):
        ts, logs = jax.jit(step)(ts, (x[k * 12 : (k + 1) * 12], y[k * 12 : (k + 1) * 12]))
        single_losses.append(logs["loss"])
    stacked = (x.reshape(4, 12, 5), y.reshape(4, 12))
    for unroll in (1, True):
        multi = jax.jit(train.make_multi_step(step, unroll=unroll), donate_argnums=0)
        ts_m, logs_m = multi(jax.tree.map(jnp.copy, ts0), stacked)
        assert logs_m["loss"].shape == (4,)
        np.testing.assert_allclose(logs_m["loss"], single_losses, rtol=1e-5)
        _assert_trees_close(ts_m.params, ts.params, rtol=1e-5, atol=1e-6)
        _assert_trees_close(ts_m.metric_states, ts.metric_states, rtol=1e-5)
        assert int(ts_m.step) == 4


def test_eval_step_and_predict_step():
    model = _mlp(dropout=0.5)
    x, y = _data(20)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [fnn.metrics.SparseCategoricalAccuracy(name="acc")]
    ts = train.init_train_state(model, "adam", jax.random.key(0), x)
    eval_step = jax.jit(train.make_eval_step(model, loss, metrics))
    ms = train.init_metric_states(metrics)
    ms = eval_step(ms, ts.params, ts.state, (x[:7], y[:7]))
    ms = eval_step(ms, ts.params, ts.state, (x[7:], y[7:]))
    values = train.compute_metrics(ms, metrics)
    logits = jax.jit(train.make_predict_step(model))(ts.params, ts.state, x)
    ref_logits, _ = model.apply(ts.params, ts.state, x)  # train=False: no dropout
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-6)
    np.testing.assert_allclose(values["acc"], np.mean(np.argmax(ref_logits, -1) == y), rtol=1e-6)
    np.testing.assert_allclose(values["loss"], np.mean(np.asarray(loss(y, ref_logits))), rtol=1e-5)
    multi = jax.jit(train.make_multi_eval_step(train.make_eval_step(model, loss, metrics)))
    ms_multi = multi(
        train.init_metric_states(metrics),
        ts.params,
        ts.state,
        (x.reshape(4, 5, 5), y.reshape(4, 5)),
    )
    _assert_trees_close(ms_multi, ms, rtol=1e-5)


def test_frozen_params_bit_identical_and_no_optimizer_state():
    model = _mlp()
    x, y = _data()
    opt = train.freeze(optax.adam(1e-2), "body")
    ts = train.init_train_state(model, opt, jax.random.key(0), x)
    before = jax.tree.map(np.asarray, ts.params)
    step = jax.jit(
        train.make_train_step(
            model, fnn.losses.SparseCategoricalCrossentropy(from_logits=True), opt
        )
    )
    for _ in range(3):
        ts, _ = step(ts, (x, y))
    for name in ("kernel", "bias"):
        assert np.array_equal(np.asarray(ts.params["body"][name]), before["body"][name])
        assert not np.array_equal(np.asarray(ts.params["head"][name]), before["head"][name])
    # Adam's mu and nu exist for the head only.
    sizes = sorted(leaf.size for leaf in jax.tree.leaves(ts.opt_state) if leaf.ndim > 0)
    head = sorted([16 * 3, 3] * 2)
    assert sizes == head


def test_freeze_by_predicate_and_errors():
    model = _mlp()
    x, y = _data()
    opt = train.freeze(optax.sgd(0.1), lambda path, leaf: path.endswith("bias"))
    ts = train.init_train_state(model, opt, jax.random.key(0), x)
    ts2, _ = train.make_train_step(
        model, fnn.losses.SparseCategoricalCrossentropy(from_logits=True), opt
    )(ts, (x, y))
    assert np.array_equal(ts2.params["head"]["bias"], ts.params["head"]["bias"])
    assert not np.array_equal(ts2.params["head"]["kernel"], ts.params["head"]["kernel"])
    with pytest.raises(
        fnn.ConfigError,
        match=r"freeze: pattern 'encoder' matches no parameter\. Parameter paths: body, body/bias, body/kernel, head, head/bias, head/kernel\.",
    ):
        train.init_train_state(
            model, train.freeze("adam", ["body", "encoder"]), jax.random.key(0), x
        )


def test_gradient_accumulation_equals_one_large_batch():
    model = _mlp()
    x, y = _data(32)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    k = 4
    acc_opt = fnn.optimizers.accumulate_gradients(optax.adam(1e-2), k)
    big_opt = optax.adam(1e-2)
    ts_acc = train.init_train_state(model, acc_opt, jax.random.key(0), x)
    ts_big = train.init_train_state(model, big_opt, jax.random.key(0), x)
    step_acc = jax.jit(train.make_train_step(model, loss, acc_opt))
    step_big = jax.jit(train.make_train_step(model, loss, big_opt))
    for _ in range(2):
        for i in range(k):
            before = ts_acc.params
            ts_acc, _ = step_acc(ts_acc, (x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]))
            if i < k - 1:
                _assert_trees_close(ts_acc.params, before, rtol=0, atol=0)
        ts_big, _ = step_big(ts_big, (x, y))
        _assert_trees_close(ts_acc.params, ts_big.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mapper", ["shard_map", "pmap"])
def test_axis_name_data_parallel_equals_one_device_on_the_full_batch(mapper):
    n_dev = 4
    model = _mlp(dropout=0.1)
    x, y = _data(32)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [fnn.metrics.SparseCategoricalAccuracy()]
    opt = optax.adam(1e-2)
    ts = train.init_train_state(model, opt, jax.random.key(0), x, metrics=metrics)
    # Dropout masks differ per device, so compare against the deterministic model.
    det_model = _mlp()
    single = jax.jit(train.make_train_step(det_model, loss, opt, metrics))
    step = train.make_train_step(det_model, loss, opt, metrics, axis_name="d")
    devices = jax.devices()[:n_dev]
    if mapper == "shard_map":
        mesh = jax.sharding.Mesh(np.array(devices), ("d",))
        P = jax.sharding.PartitionSpec
        par = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("d")), out_specs=(P(), P())))
        ts_par, batch = ts, (x, y)
    else:
        par = jax.pmap(step, axis_name="d", devices=devices)
        ts_par = jax.tree.map(lambda a: jnp.stack([a] * n_dev), ts)
        batch = (x.reshape(n_dev, 8, 5), y.reshape(n_dev, 8))
    ts_single = ts
    for _ in range(2):
        ts_par, logs_p = par(ts_par, batch)
        ts_single, logs_s = single(ts_single, (x, y))
        np.testing.assert_allclose(np.ravel(logs_p["loss"])[0], logs_s["loss"], rtol=1e-5)
    copies = (
        [ts_par]
        if mapper == "shard_map"
        else [jax.tree.map(lambda a: a[i], ts_par) for i in range(n_dev)]
    )
    for copy in copies:
        _assert_trees_close(copy.params, ts_single.params, rtol=1e-5, atol=1e-6)
        _assert_trees_close(copy.metric_states, ts_single.metric_states, rtol=1e-5)


def test_axis_name_folds_device_index_into_dropout_rng():
    n_dev = 2
    model = fnn.serial(Dropout(0.5))
    x = np.ones((4, 6), np.float32)
    ts = train.init_train_state(model, optax.sgd(0.0), jax.random.key(0), x)
    y = np.zeros_like(x)  # loss = 4 * (fraction of entries kept)
    _, single_logs = train.make_train_step(model, "mse", optax.sgd(0.0))(ts, (x, y))
    step = train.make_train_step(model, "mse", optax.sgd(0.0), axis_name="d")
    ts_rep = jax.tree.map(lambda a: jnp.stack([a] * n_dev), ts)
    _, logs = jax.pmap(step, axis_name="d", devices=jax.devices()[:n_dev])(
        ts_rep, (np.stack([x, x]), np.stack([y, y]))
    )
    # Same inputs and rng on both devices: identical masks would reproduce the one-device loss.
    assert float(logs["loss"][0]) != float(single_logs["loss"])


# --------------------------------------------------------------------------- real data


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)


def _fit(model, loss, opt, x, y, *, epochs, batch_size=64, seed=0, metrics=(), unroll=1):
    """Epochs of shuffled batches, one compiled multi-step call per epoch."""
    ts = train.init_train_state(model, opt, jax.random.key(seed), x[:1], metrics=metrics)
    multi = jax.jit(
        train.make_multi_step(train.make_train_step(model, loss, opt, metrics), unroll=unroll),
        donate_argnums=0,
    )
    order_rng = np.random.default_rng(seed)
    steps = len(x) // batch_size
    for _ in range(epochs):
        idx = order_rng.permutation(len(x))[: steps * batch_size].reshape(steps, batch_size)
        start = ts.step
        ts, logs = multi(ts, (x[idx], y[idx]))
        train.check_finite(logs, start)
    return ts


def _accuracy(model, ts, x, y):
    logits = jax.jit(train.make_predict_step(model))(ts.params, ts.state, x)
    return float(np.mean(np.argmax(logits, -1) == y))


def test_mlp_on_digits_reaches_97_percent():
    x_train, x_test, y_train, y_test = _digits()
    model = fnn.serial(
        Dense(128, activation="relu"), Dropout(0.1), Dense(64, activation="relu"), Dense(10)
    )
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [fnn.metrics.get("accuracy", loss=loss)]
    ts = _fit(model, loss, "adam", x_train, y_train, epochs=30, metrics=metrics)
    assert _accuracy(model, ts, x_test, y_test) >= 0.97
    eval_step = jax.jit(train.make_eval_step(model, loss, metrics))
    values = train.compute_metrics(
        eval_step(train.init_metric_states(metrics), ts.params, ts.state, (x_test, y_test)),
        metrics,
    )
    assert values["accuracy"] == pytest.approx(_accuracy(model, ts, x_test, y_test))


def test_transfer_learning_digits_0_4_to_5_9():
    x_train, x_test, y_train, y_test = _digits()
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    body = [
        Dense(128, activation="relu", name="hidden1"),
        Dense(64, activation="relu", name="hidden2"),
    ]
    low, high = y_train < 5, y_train >= 5
    source_model = fnn.serial(*body, Dense(5, name="head"))
    source = _fit(source_model, loss, "adam", x_train[low], y_train[low], epochs=15)
    # New head for 5-9: reuse the body, freeze it.
    target_model = fnn.serial(*body, Dense(5, name="new_head"))
    fresh = train.init_train_state(target_model, "adam", jax.random.key(1), x_train[:1])
    params = train.transfer_params(fresh.params, source.params, where=["hidden1", "hidden2"])
    opt = train.freeze(fnn.optimizers.get("adam", learning_rate=1e-2), ["hidden1", "hidden2"])
    ts = train.init_train_state(target_model, opt, jax.random.key(2), x_train[:1], params=params)
    step = jax.jit(train.make_multi_step(train.make_train_step(target_model, loss, opt)))
    xs, ys = x_train[high], y_train[high] - 5
    n = len(xs) // 32 * 32
    for _ in range(30):
        ts, _ = step(ts, (xs[:n].reshape(-1, 32, 64), ys[:n].reshape(-1, 32)))
    for name in ("hidden1", "hidden2"):
        for leaf in ("kernel", "bias"):
            assert np.array_equal(ts.params[name][leaf], source.params[name][leaf])
    test_high = y_test >= 5
    assert _accuracy(target_model, ts, x_test[test_high], y_test[test_high] - 5) >= 0.9


# --------------------------------------------------------------------------- techniques


def test_transfer_params_errors_name_paths():
    small = _mlp()
    params, _ = small.init(jax.random.key(0), np.zeros((1, 5), np.float32))
    wide = fnn.serial(Dense(8, name="body"), Dense(3, name="head"))
    wide_params, _ = wide.init(jax.random.key(0), np.zeros((1, 5), np.float32))
    with pytest.raises(
        fnn.ShapeError,
        match=r"transfer_params: expected 'body/bias' of shape \(16,\) \(the new model's\), got shape \(8,\) in the source",
    ):
        train.transfer_params(params, wide_params)
    copied = train.transfer_params(params, wide_params, where="head/bias")
    assert np.array_equal(copied["head"]["bias"], wide_params["head"]["bias"])
    assert np.array_equal(copied["body"]["kernel"], params["body"]["kernel"])
    with pytest.raises(
        fnn.ConfigError, match=r"transfer_params: pattern 'encoder' matches no parameter"
    ):
        train.transfer_params(params, wide_params, where="encoder")
    with pytest.raises(
        fnn.ConfigError, match=r"transfer_params: expected 'head/bias' in the source params"
    ):
        train.transfer_params(params, {"body": wide_params["body"]}, where="head")


def test_regularizers_are_added_to_the_loss():
    model = _mlp()
    x, y = _data()
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    ts = train.init_train_state(model, optax.sgd(0.0), jax.random.key(0), x)
    regs = [train.L2(0.01), train.L1L2(l1=0.001, where="head/bias")]
    _, logs = train.make_train_step(model, loss, optax.sgd(0.0), regularizers=regs)(ts, (x, y))
    p = jax.tree.map(np.asarray, ts.params)
    logits, _ = model.apply(ts.params, ts.state, x)
    expected = (
        float(np.mean(loss(y, logits)))
        + 0.01 * (np.sum(p["body"]["kernel"] ** 2) + np.sum(p["head"]["kernel"] ** 2))
        + 0.001 * np.sum(np.abs(p["head"]["bias"]))
    )
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)


def test_check_finite_names_the_step():
    model = _mlp()
    x, y = _data()
    x[3, 0] = np.nan
    ts = train.init_train_state(model, "sgd", jax.random.key(0), x)
    step = jax.jit(
        train.make_train_step(
            model, fnn.losses.SparseCategoricalCrossentropy(from_logits=True), "sgd"
        )
    )
    ts = ts._replace(step=jnp.asarray(7, jnp.int32))
    start = ts.step
    _, logs = step(ts, (x, y))
    with pytest.raises(
        train.NonFiniteLossError,
        match=r"training stopped: non-finite loss \(nan\) at step 7 \(counting from 0\)",
    ):
        train.check_finite(logs, start)
    with pytest.raises(FloatingPointError, match=r"at step 12 "):
        train.check_finite({"loss": np.array([1.0, 2.0, np.inf, np.nan])}, 10)
    train.check_finite({"loss": np.array([1.0, 2.0])}, 0)


def test_check_batch_catches_bad_labels_before_jit():
    model = _mlp()
    x, y = _data()
    ts = train.init_train_state(model, "sgd", jax.random.key(0), x)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    train.check_batch(model, loss, ts.params, ts.state, (x, y))
    bad = y.copy()
    bad[5] = 3
    with pytest.raises(
        fnn.ConfigError,
        match=r"sparse_categorical_crossentropy: expected labels in \[0, 3\) for predictions with 3 classes, got label 3",
    ):
        train.check_batch(model, loss, ts.params, ts.state, (x, bad))
    # A passed check is remembered by the labels' bytes: the same labels pass again without
    # a trace, labels changed in place after passing are checked again.
    train.check_batch(model, loss, ts.params, ts.state, (x, y))
    y[5] = 3
    with pytest.raises(fnn.ConfigError, match=r"got label 3"):
        train.check_batch(model, loss, ts.params, ts.state, (x, y))
    y[5] = 0
    with pytest.raises(
        fnn.ShapeError,
        match=r"expected integer labels of shape \(32,\) for predictions of shape \(32, 3\)",
    ):
        train.check_batch(model, loss, ts.params, ts.state, (x, y[:16]))
    with pytest.raises(
        fnn.ConfigError, match=r"expected a batch \(x, y\) or \(x, y, sample_weight\)"
    ):
        train.make_train_step(model, loss, "sgd")(ts, (x,))


def test_metric_names_resolve_with_the_loss():
    model = _mlp()
    x, y = _data()
    loss = "sparse_categorical_crossentropy"
    ts = train.init_train_state(model, "sgd", jax.random.key(0), x, metrics=["acc"], loss=loss)
    step = jax.jit(train.make_train_step(model, loss, "sgd", ["acc"]))
    new_ts, _ = step(ts, (x, y))
    probs, _ = model.apply(ts.params, ts.state, x)
    value = train.compute_metrics(new_ts.metric_states, ["acc"])["acc"]
    np.testing.assert_allclose(value, np.mean(np.argmax(probs, -1) == y), rtol=1e-6)


def test_cnn_on_digits_reaches_98_percent():
    from fnn.layers import Activation, BatchNormalization, Conv2D, Flatten, MaxPooling2D

    x_train, x_test, y_train, y_test = _digits()
    x_train, x_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
    model = fnn.serial(
        Conv2D(32, 3, padding="same"),
        BatchNormalization(momentum=0.9),
        Activation("relu"),
        MaxPooling2D(),
        Conv2D(64, 3, padding="same", activation="relu"),
        MaxPooling2D(),
        Flatten(),
        Dropout(0.3),
        Dense(10),
    )
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    epochs, steps = 20, len(x_train) // 32
    schedule = optax.cosine_decay_schedule(2e-3, epochs * steps)
    opt = fnn.optimizers.get("adam", learning_rate=schedule)
    ts = train.init_train_state(model, opt, jax.random.key(0), x_train[:1])
    # One compiled call per step: on XLA:CPU a convolution inside lax.scan runs slower.
    step = jax.jit(train.make_train_step(model, loss, opt), donate_argnums=0)
    order_rng = np.random.default_rng(0)
    for _ in range(epochs):
        order = order_rng.permutation(len(x_train))
        for i in range(steps):
            idx = order[i * 32 : (i + 1) * 32]
            ts, _ = step(ts, (x_train[idx], y_train[idx]))
    assert _accuracy(model, ts, x_test, y_test) >= 0.98
