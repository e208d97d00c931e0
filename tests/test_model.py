"""The Keras-style Model: the tf.keras snippet on digits, logs, callbacks through fit,
predict compiling once, Keras weight order, errors before compiling.

References: scikit-learn's digits labels, plain-numpy forward passes and losses, the
functional ``fnn.train`` eval step, and Keras's documented ``get_weights`` order.
Compiles are the cost here, so most tests reuse one trained model (same batch shapes).
"""

import csv
import io
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import fnn
from fnn import train as train_lib
from fnn.errors import ConfigError, ShapeError
from fnn.layers import BatchNormalization, Conv2D, Dense, Flatten, MaxPooling2D

BATCH = 32


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x = (data.images[order] / 16.0).astype(np.float32)[..., None]  # [n, 8, 8, 1]
    y = data.target[order].astype(np.int32)
    # 1440 = 45 * 32 samples to train on (a fifth of them validates), 357 to test.
    return x[:1440], y[:1440], x[1440:], y[1440:]


@pytest.fixture(scope="module")
def trained(digits):
    """The tf.keras snippet with ``tf.keras`` replaced by ``fnn``."""
    x_train, y_train, x_test, y_test = digits
    model = fnn.Sequential()
    model.add(Conv2D(32, (3, 3), activation="relu"))
    model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(64, activation="relu"))
    model.add(Dense(10, activation="softmax"))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(
        x_train, y_train, epochs=25, batch_size=BATCH, validation_split=0.2, verbose=0
    )
    probs = model.predict(x_test, verbose=0)
    return {"model": model, "history": history, "probs": probs}


def test_keras_snippet_reaches_95_percent_on_digits(trained, digits):
    *_, y_test = digits
    probs = trained["probs"]
    assert probs.shape == (len(y_test), 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    accuracy = np.mean(np.argmax(probs, -1) == y_test)
    assert accuracy >= 0.95, accuracy
    history = trained["history"]
    assert list(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert history.epoch == list(range(25))
    assert all(len(v) == 25 for v in history.history.values())
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert trained["model"].history is history


def test_evaluate_agrees_with_numpy_and_functional_eval_step(trained, digits):
    model = trained["model"]
    *_, x_test, y_test = digits
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    probs = model.predict(x_test, verbose=0).astype(np.float64)
    ref_loss = np.mean(-np.log(np.clip(probs[np.arange(len(y_test)), y_test], 1e-7, 1)))
    ref_acc = np.mean(np.argmax(probs, -1) == y_test)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
    assert acc == pytest.approx(ref_acc)
    # The functional core on the model's public state: one eval step over all samples.
    metrics = [fnn.metrics.get("accuracy", loss="sparse_categorical_crossentropy")]
    step = train_lib.make_eval_step(model.layer, "sparse_categorical_crossentropy", metrics)
    states = step(
        train_lib.init_metric_states(metrics), model.params, model.state, (x_test, y_test)
    )
    ref = train_lib.compute_metrics(states, metrics)
    np.testing.assert_allclose(loss, float(ref["loss"]), rtol=1e-5)
    assert acc == pytest.approx(float(ref["accuracy"]))
    logs = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert logs == {"accuracy": acc, "loss": loss}


def test_validation_data_logs_keras_keys(trained, digits):
    model = trained["model"]
    x_train, y_train, x_test, y_test = digits
    tested = []
    hook = fnn.callbacks.LambdaCallback(on_test_end=lambda logs: tested.append(dict(logs)))
    history = model.fit(
        x_train[:1152],
        y_train[:1152],
        epochs=1,
        validation_data=(x_test, y_test),
        callbacks=[hook],
        verbose=0,
    )
    assert sorted(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(loss)
    assert history.history["val_accuracy"][0] == pytest.approx(acc)
    assert tested == [{"accuracy": pytest.approx(acc), "loss": pytest.approx(loss)}]


def test_functional_state_is_public_and_assignable(trained, digits):
    model = trained["model"]
    *_, x_test, _ = digits
    params = model.params
    p = jax.tree.map(np.asarray, params)
    x = x_test[:5, :, :, 0]
    # Plain-numpy forward pass: valid 3x3 convolution loop, 2x2 max pool, flatten, dense.
    conv = np.zeros((5, 6, 6, 32))
    for i in range(6):
        for j in range(6):
            patch = x[:, i : i + 3, j : j + 3]
            conv[:, i, j] = np.einsum("bhw,hwo->bo", patch, p["conv2d"]["kernel"][:, :, 0])
    conv = np.maximum(conv + p["conv2d"]["bias"], 0)
    pooled = conv.reshape(5, 3, 2, 3, 2, 32).max(axis=(2, 4)).reshape(5, -1)
    hidden = np.maximum(pooled @ p["dense"]["kernel"] + p["dense"]["bias"], 0)
    logits = hidden @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]
    ref = np.exp(logits - logits.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(model.predict_on_batch(x_test[:5]), ref, rtol=1e-4, atol=1e-6)
    out, _ = model.layer.apply(model.params, model.state, x_test[:5])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)
    # Leave the shell and come back: zero the last layer -> uniform predictions.
    new = {**params, "dense_1": jax.tree.map(jnp.zeros_like, params["dense_1"])}
    model.params = new
    np.testing.assert_allclose(model.predict_on_batch(x_test[:3]), np.full((3, 10), 0.1), rtol=1e-6)
    model.params = params
    assert model.opt_state is not None and model.state == {}
    with pytest.raises(ShapeError, match="expected new params with the same structure"):
        model.params = {"dense": params["dense"]}


class Counter:
    """A Lambda body that counts how often JAX traces it."""

    def __init__(self):
        self.shapes = []

    def __call__(self, x):
        self.shapes.append(tuple(x.shape))
        return x


def test_predict_pads_last_batch_and_compiles_once():
    counter = Counter()
    model = fnn.Sequential([fnn.Lambda(counter, name="count"), Dense(3)])
    x = np.random.default_rng(1).normal(size=(2 * BATCH + 1, 4)).astype(np.float32)
    outs = [model.predict(x[:n], batch_size=BATCH, verbose=0) for n in (1, BATCH - 1, BATCH + 1)]
    # No compile() needed; 1, 31 and 33 rows run one program (the first trace is the
    # abstract shape inference of build, on one row).
    assert counter.shapes == [(1, 4), (BATCH, 4)]
    kernel, bias = (np.asarray(model.params["dense"][k]) for k in ("kernel", "bias"))
    for out, n in zip(outs, (1, BATCH - 1, BATCH + 1)):
        assert out.shape == (n, 3)
        np.testing.assert_allclose(out, x[:n] @ kernel + bias, rtol=1e-5, atol=1e-6)
    # Generators of batches work too, with the same padding.
    gen = (x[i : min(i + 10, 25)] for i in range(0, 25, 10))
    np.testing.assert_allclose(
        model.predict(gen, batch_size=BATCH, verbose=0),
        x[:25] @ kernel + bias,
        rtol=1e-5,
        atol=1e-6,
    )
    assert counter.shapes == [(1, 4), (BATCH, 4)]


def test_get_set_weights_follow_keras_order():
    """Keras's documented order, by construction: layer by layer in call order; Dense
    [kernel, bias]; BatchNormalization [gamma, beta, moving_mean, moving_variance]."""
    layers = [Dense(3), BatchNormalization()] + [Dense(2) for _ in range(10)]
    model = fnn.Sequential([fnn.Input((4,)), *layers])
    names = model.weight_names()
    want = ["dense/kernel", "dense/bias"]
    want += [
        f"batch_normalization/{k}" for k in ("gamma", "beta", "moving_mean", "moving_variance")
    ]
    want += [f"dense_{i}/{k}" for i in range(1, 11) for k in ("kernel", "bias")]
    assert names == want  # dense_2 before dense_10: call order, not key order
    weights = model.get_weights()
    assert [w.shape for w in weights[:6]] == [(4, 3), (3,), (3,), (3,), (3,), (3,)]
    rng = np.random.default_rng(0)
    new = [rng.normal(size=w.shape).astype(np.float32) for w in weights]
    new[5] = np.abs(new[5]) + 0.5  # a valid moving variance
    model.set_weights(new)
    for got, ref in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, ref)
    assert np.asarray(model.state["batch_normalization"]["moving_mean"]).tolist() == new[4].tolist()
    # Inference with the set weights equals a numpy forward pass in that layout.
    x = rng.normal(size=(5, 4)).astype(np.float32)
    h = x @ new[0] + new[1]
    h = (h - new[4]) / np.sqrt(new[5] + 1e-3) * new[2] + new[3]
    for i in range(10):
        h = h @ new[6 + 2 * i] + new[7 + 2 * i]
    np.testing.assert_allclose(model.predict_on_batch(x), h, rtol=1e-4, atol=1e-5)
    with pytest.raises(ShapeError, match=r"set_weights expected 26 arrays \(dense/kernel, "):
        model.set_weights(new[:-1])
    with pytest.raises(ShapeError, match=r"set_weights expected dense/kernel of shape \(4, 3\)"):
        model.set_weights([np.zeros((3, 3))] + new[1:])


def test_weight_order_inside_a_layer_is_the_declared_keras_order():
    """A layer that stores its arrays in another key order (an LSTM-like and a BN-like
    layer) lists them in the Keras order it declares (``Layer.weight_order``); without a
    declaration it keeps its stored order."""

    def init(key, x):
        del key
        n = x.shape[-1]
        params = {
            "bias": jnp.zeros(4),
            "recurrent_kernel": jnp.ones((1, 4)),
            "kernel": jnp.ones((n, 4)),
        }
        return params, {}

    def norm_init(key, x):
        del key
        return {"beta": jnp.zeros(4), "gamma": jnp.ones(4)}, {
            "moving_variance": jnp.ones(4),
            "moving_mean": jnp.zeros(4),
        }

    def apply(params, state, x, *, rng=None, train=False):
        return x @ params["kernel"], state

    def norm_apply(params, state, x, *, rng=None, train=False):
        return x, state

    lstm = fnn.Layer(init, apply, "lstm", weight_order=("kernel", "recurrent_kernel", "bias"))
    norm_order = ("gamma", "beta", "moving_mean", "moving_variance")
    norm = fnn.Layer(norm_init, norm_apply, "norm", weight_order=norm_order)
    model = fnn.Model(fnn.serial(lstm, norm))
    model.build((None, 2))
    assert model.weight_names() == [
        "lstm/kernel",
        "lstm/recurrent_kernel",
        "lstm/bias",
        "norm/gamma",
        "norm/beta",
        "norm/moving_mean",
        "norm/moving_variance",
    ]
    plain = fnn.Model(
        fnn.serial(fnn.Layer(init, apply, "lstm"), fnn.Layer(norm_init, norm_apply, "norm"))
    )
    plain.build((None, 2))
    stored = [f"lstm/{k}" for k in plain.params["lstm"]]
    stored += [f"norm/{k}" for k in plain.params["norm"]] + [
        f"norm/{k}" for k in plain.state["norm"]
    ]
    assert plain.weight_names() == stored
    with pytest.raises(ConfigError, match=r"lstm: expected weight_order to be a tuple of "):
        fnn.Layer(init, apply, "lstm", weight_order="kernel")
    with pytest.raises(
        ConfigError, match=r"Odd: expected weight_order to be a tuple .* got \(1,\)"
    ):
        fnn.register_layer(lambda: lstm, name="Odd", weight_order=(1,))


def scripted(values, key="loss"):
    """A callback that overwrites ``logs[key]`` with a scripted sequence."""

    def on_epoch_end(epoch, logs):
        logs[key] = values[epoch]

    return fnn.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def snapshots(model, store):
    return fnn.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: store.append(model.get_weights())
    )


def test_early_stopping_in_fit_stops_and_restores_best(trained, digits):
    model = trained["model"]
    x_train, y_train, *_ = digits
    values = [1.0, 0.5, 0.7, 0.6, 0.8, 0.1]
    weights = []
    es = fnn.callbacks.EarlyStopping(monitor="loss", patience=3, restore_best_weights=True)
    history = model.fit(
        x_train[:1152],
        y_train[:1152],
        epochs=len(values),
        callbacks=[scripted(values), snapshots(model, weights), es],
        verbose=0,
    )
    # Best at epoch 1; epochs 2, 3, 4 do not improve -> stop after epoch 4 (5 epochs run).
    assert history.epoch == [0, 1, 2, 3, 4]
    assert history.history["loss"] == values[:5]
    assert es.stopped_epoch == 4 and es.best_epoch == 1
    for got, best in zip(model.get_weights(), weights[1]):
        np.testing.assert_array_equal(got, best)
    assert not np.array_equal(weights[1][0], weights[4][0])


def test_model_checkpoint_writes_only_improving(trained, digits, tmp_path):
    model = trained["model"]
    x_train, y_train, *_ = digits
    values = [1.0, 1.2, 0.9, 0.95, 0.3]
    weights = []
    path = tmp_path / "best-{epoch:02d}"
    ck = fnn.callbacks.ModelCheckpoint(
        str(path), monitor="loss", save_best_only=True, save_weights_only=True
    )
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        x_train[:1152],
        y_train[:1152],
        epochs=len(values),
        callbacks=[
            scripted(values),
            snapshots(model, weights),
            ck,
            fnn.callbacks.CSVLogger(str(csv_path)),
        ],
        verbose=0,
    )
    assert sorted(p.name for p in tmp_path.glob("best-*")) == [
        "best-01",
        "best-03",
        "best-05",
    ]
    current = model.get_weights()
    model.load_weights(tmp_path / "best-03")
    for got, ref in zip(model.get_weights(), weights[2]):
        np.testing.assert_array_equal(got, ref)
    model.set_weights(current)
    # A checkpoint directory whose arrays are named by their path, not their position.
    saved = fnn.checkpoint.restore(tmp_path / "best-03")
    assert model.weight_names()[0] == "conv2d/kernel"
    np.testing.assert_array_equal(saved["params"]["conv2d"]["kernel"], weights[2][0])
    # CSVLogger: one row per epoch, equal to History.
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["epoch"]) for r in rows] == history.epoch
    for key, values_ in history.history.items():
        assert [float(r[key]) for r in rows] == pytest.approx(values_, rel=1e-12)


def test_learning_rate_scheduler_changes_lr_without_recompiling(trained, digits):
    model = trained["model"]
    x_train, y_train, *_ = digits
    lrs = []
    sched = fnn.callbacks.LearningRateScheduler(lambda epoch, lr: 1e-3 * 0.5**epoch)
    record = fnn.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: lrs.append(model.learning_rate)
    )
    step = model._trainer.block_step.compiled
    before = step._cache_size()
    history = model.fit(
        x_train[:1152], y_train[:1152], epochs=3, callbacks=[sched, record], verbose=0
    )
    assert step._cache_size() == before  # the lr lives in opt_state: no new program
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert history.history["learning_rate"] == pytest.approx(lrs)
    model.learning_rate = 1e-3


def test_fit_verbose_modes(trained, digits, capsys):
    model = trained["model"]
    x_train, y_train, *_ = digits
    model.fit(x_train[:1152], y_train[:1152], epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    model.fit(x_train[:1152], y_train[:1152], epochs=2, verbose=1)  # not a TTY: one line/epoch
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Epoch 1/2 - 36 steps - ")
    assert "accuracy: " in lines[1] and "loss: " in lines[1]


def small_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1).astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def small():
    model = fnn.Sequential([Dense(8, activation="relu"), Dense(3)])
    model.compile(
        optimizer="sgd",
        loss=fnn.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = small_data()
    model.build((None, 5))
    return model, x, y


def restart(model, start):
    model.train_state = jax.tree.map(lambda a: a.copy(), start)


def test_generators_lists_and_arrays_train_identically(small):
    model, x, y = small
    model.fit(x, y, batch_size=16, epochs=0, verbose=0)  # creates the optimizer state
    # The same two epochs from the same state: arrays, a list of batches, a generator.
    base = jax.tree.map(lambda a: a.copy(), model.train_state)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    want = model.get_weights()
    restart(model, base)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    model.fit(batches, epochs=2, verbose=0)
    for a, b in zip(model.get_weights(), want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    restart(model, base)

    def gen():
        while True:
            for i in range(0, 64, 16):
                yield x[i : i + 16], y[i : i + 16], np.ones(16, np.float32)

    model.fit(gen(), epochs=2, steps_per_epoch=4, verbose=0)
    for a, b in zip(model.get_weights(), want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_steps_per_execution_equals_single_steps(small):
    model, x, y = small
    model.fit(x, y, batch_size=16, epochs=0, verbose=0)
    base = jax.tree.map(lambda a: a.copy(), model.train_state)
    h1 = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    want = model.get_weights()
    restart(model, base)
    model._trainer.steps_per_execution = 4  # as compile(steps_per_execution=4)
    h4 = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    model._trainer.steps_per_execution = 1
    for a, b in zip(model.get_weights(), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert h4.history["loss"] == pytest.approx(h1.history["loss"], rel=1e-5)


def test_class_weight_is_sample_weight_by_class_and_shuffle_is_seeded(small):
    model, x, y = small
    model.fit(x, y, batch_size=16, epochs=0, verbose=0)
    base = jax.tree.map(lambda a: a.copy(), model.train_state)
    cw = {0: 1.0, 1: 2.5, 2: 0.5}
    model.fit(x, y, batch_size=16, epochs=1, class_weight=cw, verbose=0)
    want = model.get_weights()
    restart(model, base)
    sw = np.array([cw[int(c)] for c in y], np.float32)
    model.fit(x, y, batch_size=16, epochs=1, sample_weight=sw, verbose=0)
    for a, b in zip(model.get_weights(), want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Shuffling is a permutation seeded by compile(seed=...) and the epoch: reproducible.
    runs = []
    for shuffle in (True, True, False):
        restart(model, base)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=shuffle, verbose=0)
        runs.append(model.get_weights()[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])
    with pytest.raises(ConfigError, match=r"class_weight has no entry for classes \[2\]"):
        model.fit(x, y, class_weight={0: 1.0, 1: 1.0}, verbose=0)


def test_on_batch_methods_match_numpy(small):
    model, x, y = small
    model.fit(x, y, batch_size=16, epochs=0, verbose=0)
    logits = x[:16] @ np.asarray(model.params["dense"]["kernel"]) + np.asarray(
        model.params["dense"]["bias"]
    )
    logits = np.maximum(logits, 0) @ np.asarray(model.params["dense_1"]["kernel"]) + np.asarray(
        model.params["dense_1"]["bias"]
    )
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref_loss = -np.mean(logp[np.arange(16), y[:16]])
    ref_acc = np.mean(np.argmax(logits, -1) == y[:16])
    loss, acc = model.test_on_batch(x[:16], y[:16])
    assert loss == pytest.approx(ref_loss, rel=1e-5) and acc == pytest.approx(ref_acc)
    np.testing.assert_allclose(model.predict_on_batch(x[:16]), logits, rtol=1e-5, atol=1e-5)
    model.reset_metrics()
    out = model.train_on_batch(x[:16], y[:16], return_dict=True)
    assert out["loss"] == pytest.approx(ref_loss, rel=1e-5)
    assert not np.allclose(model.predict_on_batch(x[:16]), logits)


def test_multi_input_and_multi_output_models():
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(32, 3)).astype(np.float32)
    x2 = rng.normal(size=(32, 2)).astype(np.float32)
    y = (x1[:, 0] > 0).astype(np.int32)
    body = fnn.serial(
        fnn.parallel(Dense(4, name="a"), Dense(4, name="b")),
        fnn.layers.Concatenate(),
        fnn.fan_out(Dense(2, name="cls"), Dense(1, name="reg")),
    )
    model = fnn.Model(body)
    model.compile(
        optimizer="adam",
        loss=[fnn.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"],
        loss_weights=[1.0, 0.5],
        metrics=["accuracy"],
    )
    history = model.fit((x1, x2), (y, x2[:, :1]), batch_size=16, epochs=2, verbose=0)
    assert sorted(history.history) == [
        "loss",
        "output_0_accuracy",
        "output_0_loss",
        "output_1_accuracy",
        "output_1_loss",
    ]
    cls, reg = model.predict((x1, x2), verbose=0)
    assert cls.shape == (32, 2) and reg.shape == (32, 1)
    a, b = model.params["parallel"]["a"], model.params["parallel"]["b"]
    h = np.concatenate(
        [
            x1 @ np.asarray(a["kernel"]) + np.asarray(a["bias"]),
            x2 @ np.asarray(b["kernel"]) + np.asarray(b["bias"]),
        ],
        -1,
    )
    ref_reg = h @ np.asarray(model.params["fan_out"]["reg"]["kernel"]) + np.asarray(
        model.params["fan_out"]["reg"]["bias"]
    )
    np.testing.assert_allclose(reg, ref_reg, rtol=1e-5, atol=1e-5)
    # Total loss = CE + 0.5 * MSE, as Keras weighs outputs.
    ref_ce = np.mean(-(cls - np.log(np.exp(cls).sum(-1, keepdims=True)))[np.arange(32), y])
    ref_mse = np.mean((reg[:, 0] - x2[:, 0]) ** 2)
    logs = model.evaluate((x1, x2), (y, x2[:, :1]), verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(ref_ce + 0.5 * ref_mse, rel=1e-5)
    assert logs["output_0_loss"] == pytest.approx(ref_ce, rel=1e-5)
    assert logs["output_1_loss"] == pytest.approx(ref_mse, rel=1e-5)


def compiled_programs(caplog):
    return [r.getMessage() for r in caplog.records if "Compiling jit(step)" in r.getMessage()]


def test_errors_are_raised_before_compiling(caplog, small):
    x, y = small_data()
    model = fnn.Sequential([Dense(3)])
    with pytest.raises(ConfigError, match=r"fit needs a compiled model; call model\.compile"):
        model.fit(x, y)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["acc"])
    caplog.set_level(logging.WARNING)
    with jax.log_compiles(True):
        with pytest.raises(
            ShapeError, match=r"fit: expected the same number of samples .* x has 64 .* y has 63"
        ):
            model.fit(x, y[:-1])
        with pytest.raises(ConfigError, match=r"expected validation_split in \[0, 1\), got 1\.0"):
            model.fit(x, y, validation_split=1.0)
        with pytest.raises(
            ShapeError,
            match=r"y does not fit the loss .* One-hot labels need 'categorical_crossentropy'",
        ):
            model.fit(x, np.eye(3, dtype=np.float32)[y])
        with pytest.raises(ConfigError, match=r"labels in \[0, 3\)"):
            model.fit(x, y + 1)
        with pytest.raises(
            ConfigError,
            match=r"monitor 'val_loss' is not logged .* Available keys: loss, acc \(val_\*",
        ):
            model.fit(x, y, callbacks=[fnn.callbacks.EarlyStopping()])
        with pytest.raises(
            ConfigError,
            match=r"monitor 'val_acc ' is not logged by this fit\. Did you mean 'val_acc'\?",
        ):
            model.fit(
                x, y, validation_split=0.25, callbacks=[fnn.callbacks.EarlyStopping("val_acc ")]
            )
    assert compiled_programs(caplog) == []
    with pytest.raises(ConfigError, match="unknown optimizer 'adamm'"):
        model.compile(optimizer="adamm", loss="mse")
    with pytest.raises(
        ConfigError, match="expected steps_per_execution to be an int >= 1 or 'auto'"
    ):
        model.compile(loss="mse", steps_per_execution=0)
    with pytest.raises(ConfigError, match="needs built parameters"):
        fnn.Sequential([Dense(2)]).get_weights()


def test_data_parallel_fit_equals_single_device(small):
    model, x, y = small
    model.fit(x, y, batch_size=16, epochs=0, verbose=0)
    base = jax.tree.map(lambda a: a.copy(), model.train_state)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    want = model.get_weights()
    restart(model, base)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, devices=jax.devices()[:4])
    for a, b in zip(model.get_weights(), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 reduction order
    assert len(model.params["dense"]["kernel"].sharding.device_set) == 1  # single copy again
    assert sorted(history.history) == ["accuracy", "loss"]


def test_batch_norm_state_updates_through_fit_and_auto_steps():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 4)).astype(np.float32) * 3 + 1
    y = rng.integers(0, 2, 16).astype(np.int32)
    model = fnn.Sequential([Dense(5), BatchNormalization(), Dense(2)])
    model.compile(
        optimizer="sgd",
        loss=fnn.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution="auto",
    )
    model.fit(x, y, batch_size=16, epochs=0, verbose=0)
    assert model.steps_per_execution == 8  # dense model: a rolled 8-step scan
    kernel, bias = model.get_weights()[:2]
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    # One step: moving_mean = 0.99 * 0 + 0.01 * batch mean of the Dense outputs (Keras rule).
    h = x.astype(np.float64) @ kernel + bias
    bn = model.state["batch_normalization"]
    np.testing.assert_allclose(bn["moving_mean"], 0.01 * h.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn["moving_variance"], 0.99 + 0.01 * h.var(0), rtol=1e-4)
    # Inference uses the moving statistics (train=False), as Keras's predict.
    w = model.get_weights()
    z = (x @ w[0] + w[1] - w[4]) / np.sqrt(w[5] + 1e-3) * w[2] + w[3]
    np.testing.assert_allclose(model.predict(x, verbose=0), z @ w[6] + w[7], rtol=1e-4, atol=1e-5)
    conv = fnn.Sequential([fnn.Input((6, 6, 1)), Conv2D(2, 3), Flatten(), Dense(2)])
    conv.compile(loss="mse", steps_per_execution="auto")
    conv.fit(np.zeros((4, 6, 6, 1), np.float32), np.zeros((4, 2), np.float32), epochs=0, verbose=0)
    assert conv.steps_per_execution == 4 and conv._trainer.unroll is True  # unrolled on CPU


class TTY(io.StringIO):
    def isatty(self):
        return True


def test_fit_progress_bar_on_a_terminal(trained, digits):
    model = trained["model"]
    x_train, y_train, *_ = digits
    out = TTY()
    model.fit(
        x_train[:1152],
        y_train[:1152],
        epochs=1,
        verbose=1,
        callbacks=[fnn.callbacks.ProgbarLogger(file=out)],
    )
    text = out.getvalue()
    assert "Epoch 1/1" in text and "36/36" in text and "step/s" in text
    assert "accuracy: " in text and "loss: " in text


def test_dict_inputs_and_lists_of_batches():
    """A dict of arrays is one pytree input; a list of (x, y) tuples is a list of batches
    (for fit, validation_data and evaluate) and gives the same numbers as the arrays."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    dense = Dense(2)

    def init(key, d):
        return dense.init(key, d["a"])

    def apply(params, state, d, *, rng=None, train=False):
        return dense.apply(params, state, d["a"] + d["b"])

    model = fnn.Model(fnn.Layer(init, apply, "dict_net"))
    model.compile(
        optimizer="adam",
        loss=fnn.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    inputs = {"a": x, "b": 2 * x}
    batches = [({"a": x[i : i + 8], "b": 2 * x[i : i + 8]}, y[i : i + 8]) for i in range(0, 40, 8)]
    history = model.fit(inputs, y, batch_size=8, epochs=1, validation_data=batches, verbose=0)
    from_list = model.evaluate(batches, verbose=0)
    from_arrays = model.evaluate(inputs, y, batch_size=8, verbose=0)
    assert from_list == pytest.approx(from_arrays, rel=1e-6)
    assert history.history["val_loss"] == pytest.approx([from_arrays[0]], rel=1e-6)
    k, b = (np.asarray(model.params[n]) for n in ("kernel", "bias"))
    np.testing.assert_allclose(
        model.predict(inputs, verbose=0), 3 * x @ k + b, rtol=1e-5, atol=1e-5
    )


def test_terminate_on_nan_stops_mid_epoch(small):
    model, x, y = small
    model.fit(x, y, batch_size=16, epochs=0, verbose=0)
    base = jax.tree.map(lambda a: a.copy(), model.train_state)
    held = model.params  # fit donates a private copy of the state, not these arrays
    bad = x.copy()
    bad[:16] = np.nan
    seen = []
    record = fnn.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))
    history = model.fit(
        bad,
        y,
        batch_size=16,
        epochs=3,
        shuffle=False,
        callbacks=[fnn.callbacks.TerminateOnNaN(), record],
        verbose=0,
    )
    assert seen == [0]  # stopped after the first batch of the first epoch
    assert history.epoch == [0] and np.isnan(history.history["loss"][0])
    assert np.isfinite(np.asarray(held["dense"]["kernel"])).all()  # still readable
    assert np.isnan(np.asarray(model.params["dense"]["kernel"])).any()
    restart(model, base)


def test_prefetch_reraises_errors_and_stops_with_the_consumer():
    import threading
    import time

    from fnn.io import data_adapter

    def broken():
        yield np.ones(2, np.float32)
        raise ValueError("broken generator")

    it = data_adapter.prefetch(broken())
    assert np.asarray(next(it)).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="broken generator"):
        next(it)
    it = data_adapter.prefetch(np.full(3, i, np.float32) for i in range(1000))
    assert np.asarray(next(it)).tolist() == [0.0, 0.0, 0.0]
    it.close()  # the consumer leaves early: the worker thread ends too
    deadline = time.monotonic() + 5
    while any(t.name == "fnn-prefetch" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "prefetch thread still running"
        time.sleep(0.05)


def test_model_checkpoint_whole_model_reloads(small, tmp_path):
    """save_weights_only=False writes model.save directories that fnn.load_model rebuilds."""
    model, x, y = small
    ck = fnn.callbacks.ModelCheckpoint(str(tmp_path / "model-{epoch}"), monitor="loss")
    model.fit(x, y, batch_size=16, epochs=2, callbacks=[ck], verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-1", "model-2"]
    loaded = fnn.load_model(tmp_path / "model-2")
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
