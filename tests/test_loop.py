"""The one host-side training loop (fnn.training.loop) under Model.fit and ``fnn train``.

References: NumPy's ``default_rng([seed, epoch])`` permutation (the documented epoch
order), a hand-written loop of the functional ``fnn.train`` step over
``fnn.datasets.batches``, an uninterrupted fit (for resuming), Keras 3 itself (the logs
its begin hooks receive) and the Python code equivalent to a config (for ``fnn train``).
"""

import csv
import os

import jax
import numpy as np
import optax
import pytest

import fnn
from fnn.cli import commands as cli
from fnn.errors import ConfigError
from fnn.layers import Dense, Dropout, Flatten
from fnn.training import loop


def small_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1).astype(np.int32)
    return x, y


def small_model(seed=0):
    model = fnn.Sequential([fnn.Input((5,)), Dense(8, activation="relu"), Dense(3)])
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optax.sgd(0.1), loss=loss, metrics=["accuracy"], seed=seed)
    return model, loss


def test_epoch_order_is_the_numpy_permutation_of_seed_and_epoch():
    for seed, epoch in ((0, 0), (3, 1), (7, 12)):
        np.testing.assert_array_equal(
            loop.epoch_order(50, seed=seed, epoch=epoch),
            np.random.default_rng([seed, epoch]).permutation(50),
        )
    assert loop.epoch_order(5, seed=1, epoch=2, shuffle=False).tolist() == [0, 1, 2, 3, 4]
    # fnn.datasets' helpers and fit's array adapter use the same order.
    x = np.arange(50)
    got = np.concatenate([b for b, _ in fnn.datasets.batches(x, x, 8, seed=3, epoch=1)])
    np.testing.assert_array_equal(got, np.random.default_rng([3, 1]).permutation(50))
    (shuffled,) = fnn.datasets.shuffle(x, seed=3, epoch=1)
    np.testing.assert_array_equal(shuffled, got)
    data = fnn.io.data_adapter.ArrayData(x[:, None], x)
    order = loop.epoch_order(data.n, seed=3, epoch=1)
    batches = data.epoch(order, 8, steps=7, on_device=False, ahead=False)
    np.testing.assert_array_equal(np.concatenate([by for _, by, _ in batches]), got)


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_fit_order_is_the_datasets_batches_order(steps_per_execution):
    """fit(shuffle=True) trains on the batches fnn.datasets.batches(seed, epoch) yields,
    through device-resident data and grouped steps alike."""
    x, y = small_data()
    model, loss = small_model(seed=5)
    model.compile(
        optimizer=optax.sgd(0.1),
        loss=loss,
        metrics=["accuracy"],
        seed=5,
        steps_per_execution=steps_per_execution,
    )
    model.fit(x, y, batch_size=16, epochs=0, verbose=0)  # creates the optimizer state
    start = jax.tree.map(lambda a: a.copy(), model.train_state)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    # The functional core by hand over fnn.datasets.batches.
    step = jax.jit(fnn.train.make_train_step(model.layer, loss, optax.sgd(0.1)))
    ts = start._replace(metric_states={})
    for epoch in range(2):
        for batch in fnn.datasets.batches(x, y, 16, seed=5, epoch=epoch):
            ts, _ = step(ts, batch)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(ts.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Another seed is another order: the comparison above can fail.
    ts = start._replace(metric_states={})
    for epoch in range(2):
        for batch in fnn.datasets.batches(x, y, 16, seed=6, epoch=epoch):
            ts, _ = step(ts, batch)
    assert not np.allclose(model.params["dense"]["kernel"], ts.params["dense"]["kernel"])


def test_backup_and_restore_resumes_bitwise(tmp_path):
    x, y = small_data()
    full, _ = small_model()
    full.fit(x, y, batch_size=16, epochs=4, validation_split=0.25, verbose=0)
    # An interrupted run: 2 of 4 epochs, with a backup after each epoch.
    part, _ = small_model()
    backup_dir = tmp_path / "backup"
    kept = fnn.callbacks.BackupAndRestore(backup_dir, max_to_keep=None, delete_checkpoint=False)
    part.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, callbacks=[kept], verbose=0)
    assert fnn.checkpoint.list_steps(backup_dir) == [3, 6]  # 48 training rows, batch 16
    resumed, _ = small_model()
    restore = fnn.callbacks.BackupAndRestore(backup_dir)
    history = resumed.fit(
        x, y, batch_size=16, epochs=4, validation_split=0.25, callbacks=[restore], verbose=0
    )
    assert history.epoch == [2, 3] and restore.restored_step == 6
    assert int(resumed.train_state.step) == int(full.train_state.step) == 12
    leaves = zip(
        jax.tree.leaves(jax.random.key_data(full.train_state.rng)),
        jax.tree.leaves(jax.random.key_data(resumed.train_state.rng)),
    )
    for a, b in [*zip(full.get_weights(), resumed.get_weights()), *leaves]:
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for key in ("loss", "val_loss", "val_accuracy"):
        assert history.history[key] == full.history.history[key][2:]
    assert not backup_dir.exists()  # delete_checkpoint=True (Keras's default) at the end
    with pytest.raises(ConfigError, match=r"BackupAndRestore: expected every_epochs >= 1"):
        fnn.callbacks.BackupAndRestore(tmp_path / "b", every_epochs=0)


def _sources(tmp_path, kind):
    """A fresh data source of ``kind`` over ``small_data(40)`` (batches of 8) and the fit
    arguments it takes: arrays, a shuffling ``.npy`` reader cut into epochs of 3 batches
    (so passes end mid-epoch), a Grain ``MapDataset`` and a one-shot Grain iterator."""
    x, y = small_data(40)
    if kind == "arrays":
        return (x, y), {"batch_size": 8}
    if kind == "npy":
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "y.npy", y)
        reader = fnn.datasets.NpyDataset(
            tmp_path / "x.npy", tmp_path / "y.npy", batch_size=8, shuffle=True, seed=3
        )
        return (reader,), {"steps_per_epoch": 3}
    grain = pytest.importorskip("grain")
    ds = grain.MapDataset.source(range(40)).shuffle(seed=5).map(lambda i: (x[i], y[i])).batch(8)
    if kind == "grain":
        return (ds,), {}
    if kind == "grain_loader":  # its iterator's state is bytes (JSON text)
        sampler = grain.samplers.IndexSampler(40, shuffle=True, num_epochs=1, seed=5)
        source = [(x[i], y[i]) for i in range(40)]
        batch = [grain.transforms.Batch(8)]
        return (grain.DataLoader(data_source=source, sampler=sampler, operations=batch),), {}
    return (iter(ds.repeat(4)),), {"steps_per_epoch": 4}  # (repeat(None) is slow in Grain)


# (source, steps before the crash, (epoch, batch) it stopped at). The reader's epochs take
# 3 batches of a 5-batch pass, then the 2 left (Keras's rule), so step 5 ends epoch 1.
RESUME_CASES = [
    ("arrays", 7, (1, 2)),
    ("npy", 5, (1, 2)),
    ("npy", 7, (2, 2)),
    ("grain", 7, (1, 2)),
    ("grain_loader", 7, (1, 2)),
    ("grain_iterator", 6, (1, 2)),
]


@pytest.mark.parametrize(("kind", "crash_at", "stopped"), RESUME_CASES)
def test_backup_mid_epoch_resumes_bitwise_from_every_source(tmp_path, kind, crash_at, stopped):
    """Stopped after ``crash_at`` steps (inside an epoch, or after the last batch of one,
    before its end-of-epoch work) with a backup every ``crash_at`` steps, a fit resumed
    on fresh data objects ends bit for bit where an uninterrupted fit does: same weights,
    step, PRNG key and per-epoch losses (the resumed epoch's metric states are restored)."""

    class Crash(fnn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.train_state.step) == crash_at:
                raise KeyboardInterrupt

    args, kwargs = _sources(tmp_path, kind)
    full, _ = small_model()
    full.fit(*args, epochs=3, verbose=0, **kwargs)
    backup = fnn.callbacks.BackupAndRestore(tmp_path / "b", save_freq=crash_at)
    args, kwargs = _sources(tmp_path, kind)
    with pytest.raises(KeyboardInterrupt):
        small_model()[0].fit(*args, epochs=3, verbose=0, callbacks=[backup, Crash()], **kwargs)
    position = backup.saved_position()
    assert (position["epoch"], position["batch"]) == stopped
    if kind.startswith("grain"):  # Grain's own checkpointable iterator state
        assert position["source"]["iterator"] is not None
    if kind == "arrays":  # another shuffle seed would give another order: refused
        with pytest.raises(ConfigError, match=r"other data settings \(seed 0 -> 1\)"):
            small_model(seed=1)[0].fit(*args, epochs=3, verbose=0, callbacks=[backup], **kwargs)
    resumed, _ = small_model()
    args, kwargs = _sources(tmp_path, kind)
    history = resumed.fit(*args, epochs=3, verbose=0, callbacks=[backup], **kwargs)
    assert int(resumed.train_state.step) == int(full.train_state.step)
    keys = [jax.random.key_data(m.train_state.rng) for m in (full, resumed)]
    for a, b in [*zip(full.get_weights(), resumed.get_weights(), strict=True), keys]:
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert history.history["loss"] == full.history.history["loss"][position["epoch"] :]


def test_model_checkpoint_rejects_single_file_names(tmp_path):
    with pytest.raises(
        ConfigError, match=r"ModelCheckpoint: cannot write '.*x\.h5': fnn saves checkpoint"
    ):
        fnn.callbacks.ModelCheckpoint(str(tmp_path / "x.h5"))
    assert not (tmp_path / "x.h5").exists()
    # A .keras path is a Keras archive that model.save writes (Sequential models).
    assert fnn.callbacks.ModelCheckpoint(str(tmp_path / "x.keras")).filepath.endswith("x.keras")


HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_test_begin")


def test_begin_hooks_get_a_dict_like_keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    def record(seen):
        def hook(name):
            def call(*args, **kwargs):  # Keras passes logs by keyword, fnn positionally
                seen.setdefault(name, type(kwargs["logs"] if "logs" in kwargs else args[-1]))

            return call

        return {name: hook(name) for name in HOOKS}

    x, y = small_data(32)
    same = {"epochs": 1, "batch_size": 16, "validation_data": (x, y), "verbose": 0}
    seen_keras = {}
    kmodel = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    kmodel.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    kmodel.fit(x, y, callbacks=[keras.callbacks.LambdaCallback(**record(seen_keras))], **same)
    seen = {}
    model, _ = small_model()
    model.fit(x, y, callbacks=[fnn.callbacks.LambdaCallback(**record(seen))], **same)
    assert seen == seen_keras == dict.fromkeys(HOOKS, dict)


def read_rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != cli.TIME_COLUMN} for r in csv.DictReader(f)]


def test_fnn_train_equals_the_python_fit_code(tmp_path, capsys):
    """``fnn train configs/digits_mlp.yaml`` and the Python code it stands for end with the
    same parameters and the same metrics.csv rows."""
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "digits_mlp.yaml")
    run = tmp_path / "run"
    sets = [f"run_dir={run}", "epochs=3", "plots=false", "tensorboard=false"]
    assert cli.main(["train", config, *(a for s in sets for a in ("--set", s))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "training digits_mlp.yaml: 50,826 params (50,826 trainable), 1437 train / 360 val"
    )
    assert [line.split("  ")[0] for line in lines[1:4]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert lines[1].split("  ")[1].startswith("loss ") and lines[-2].startswith("done in ")

    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_digits()
    model = fnn.Sequential(
        [
            fnn.Input((64,)),
            Flatten(),
            Dense(256, activation="relu"),
            Dropout(0.2),
            Dense(128, activation="relu"),
            Dense(10),
        ]
    )
    model.compile(
        optimizer=fnn.optimizers.get("adam", learning_rate=0.001),
        loss=fnn.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        seed=0,
    )
    model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=3,
        validation_data=(x_test, y_test),
        validation_batch_size=256,
        callbacks=[fnn.callbacks.CSVLogger(tmp_path / "python.csv")],
        verbose=0,
    )
    saved = fnn.load_model(run / "model")
    for a, b in zip(saved.get_weights(), model.get_weights(), strict=True):
        assert a.tobytes() == b.tobytes()
    assert read_rows(run / "metrics.csv") == read_rows(tmp_path / "python.csv")
    assert len(read_rows(run / "metrics.csv")) == 3


def test_fnn_train_non_finite_loss_is_one_line(tmp_path, capsys):
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "digits_mlp.yaml")
    run = tmp_path / "run"
    sets = [f"run_dir={run}", "epochs=2", "plots=false", "tensorboard=false"]
    sets.append("optimizer.learning_rate=1e30")
    assert cli.main(["train", config, *(a for s in sets for a in ("--set", s))]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fnn: error: training stopped: non-finite loss (nan) in epoch 1.")
    assert fnn.checkpoint.list_steps(run / "checkpoints") == []  # no backup of a NaN state


class Hooks:
    """The loop's hooks protocol without the shell: records the batch-end indices and
    stops after ``stop_after`` batch ends."""

    def __init__(self, train_state, stop_after=None):
        self.train_state = train_state
        self.stop_training = False
        self.initial_epoch = 0
        self.ends = []
        self.stop_after = stop_after

    def wants(self, hook):
        return hook == "on_train_batch_end"

    def on_train_batch_end(self, batch, logs):
        self.ends.append((batch, dict(logs)["loss"]))
        self.stop_training = len(self.ends) == self.stop_after

    def __getattr__(self, hook):  # every other hook does nothing
        return lambda *args: None


@pytest.mark.parametrize("device_rows", [True, False])
def test_loop_fit_without_the_shell_matches_the_functional_step(device_rows):
    x, y = small_data()
    model, loss = small_model()
    model.build((None, 5))
    metrics = [fnn.metrics.get("accuracy", loss=loss)]
    ts0 = fnn.train.init_train_state(
        model.layer, optax.sgd(0.1), jax.random.key(0), x[:1], metrics=metrics
    )
    trainer = loop.Trainer(model.layer, loss, optax.sgd(0.1), metrics, steps_per_execution=2)

    def epoch_data(epoch):
        order = loop.epoch_order(64, seed=1, epoch=epoch)
        if device_rows:
            return loop.DeviceRows(jax.device_put((x, y, None)), order, 16, 4)
        return [(x[order[i : i + 16]], y[order[i : i + 16]], None) for i in range(0, 64, 16)]

    copy = jax.tree.map(lambda a: a.copy(), ts0)
    hooks = Hooks(copy)
    logs = loop.fit(trainer, hooks, epoch_data, epochs=2)
    step = jax.jit(fnn.train.make_train_step(model.layer, loss, optax.sgd(0.1), metrics))
    ts = ts0
    for epoch in range(2):
        ts = fnn.train.reset_metrics(ts)
        for batch in fnn.datasets.batches(x, y, 16, seed=1, epoch=epoch):
            ts, _ = step(ts, batch)
    for a, b in zip(jax.tree.leaves(hooks.train_state.params), jax.tree.leaves(ts.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    want = fnn.train.compute_metrics(ts.metric_states, metrics)
    assert logs["loss"] == pytest.approx(float(want["loss"]), rel=1e-6)
    # Two steps per call: one batch-end hook per call, named by its last batch.
    assert [b for b, _ in hooks.ends] == [1, 3, 1, 3]
    # stop_training ends the epoch loop after the current call.
    hooks = Hooks(jax.tree.map(lambda a: a.copy(), ts0), stop_after=1)
    loop.fit(trainer, hooks, epoch_data, epochs=2)
    assert int(hooks.train_state.step) == 2 and len(hooks.ends) == 1


@pytest.mark.parametrize("spe", [1, 3])
@pytest.mark.parametrize("quiet", [False, True])
def test_device_rows_staged_in_blocks_train_as_the_host_batches(monkeypatch, spe, quiet):
    """Device-resident data is gathered a block of steps at a time (blocks of 3 steps
    here, the last one padded to the same shape, so one gather program; then a partial
    batch); the fit equals the functional step over the same batches, and each block is
    gathered once. ``quiet``: no batch hook is wanted, so the loop runs each block's steps
    in its hook-free inner loop."""
    x, y = small_data(n=118)  # 7 full batches of 16 and one of 6
    per_step = 16 * (5 * 4 + 4)  # bytes of one batch: x float32 [16, 5], y int32 [16]
    monkeypatch.setattr(loop, "STAGE_BYTES", 3 * per_step)
    model, loss = small_model()
    model.build((None, 5))
    ts0 = fnn.train.init_train_state(model.layer, optax.sgd(0.1), jax.random.key(0), x[:1])
    trainer = loop.Trainer(model.layer, loss, optax.sgd(0.1), steps_per_execution=spe)
    staged = []
    stage = trainer.stage
    trainer.stage = lambda data, idx, step: staged.append(idx.shape) or stage(data, idx, step)
    order = loop.epoch_order(118, seed=2, epoch=0)
    hooks = Hooks(jax.tree.map(lambda a: a.copy(), ts0))
    if quiet:
        hooks.wants = lambda hook: False
    blocks, quiet_block = [], loop._quiet_block
    monkeypatch.setattr(loop, "_quiet_block", lambda *a: blocks.append(a[3]) or quiet_block(*a))
    rows = loop.DeviceRows(jax.device_put((x, y, None)), order, 16, 8)
    _, counts = _count_compiles(lambda: loop.train_epoch(trainer, hooks, rows))
    assert staged == [(3, 16)] * 3 and counts["jit(gather_block)"] == 1, counts
    assert blocks == ([0, 3, 6] if quiet else [])  # the first step of each block
    step = jax.jit(fnn.train.make_train_step(model.layer, loss, optax.sgd(0.1)))
    ts = ts0
    for batch in fnn.datasets.batches(x, y, 16, seed=2, epoch=0):
        ts, _ = step(ts, batch)
    assert int(hooks.train_state.step) == int(ts.step) == 8
    for a, b in zip(jax.tree.leaves(hooks.train_state.params), jax.tree.leaves(ts.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_data_parallel_fit_needs_a_batch_size_that_divides():
    x, y = small_data()
    model, _ = small_model()
    with pytest.raises(
        ConfigError, match=r"expected batch_size to be a multiple of the 4 devices, got 10"
    ):
        model.fit(x, y, batch_size=10, devices=4, verbose=0)


def test_validation_data_is_checked_before_the_first_epoch():
    """Out-of-range or wrongly shaped validation labels fail before any training step (a
    wrong val_loss, or an error after a whole epoch, otherwise)."""
    model = fnn.Sequential([Dense(3)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = np.ones((8, 4), np.float32), np.arange(8) % 3
    epochs = []
    seen = fnn.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs.append(epoch))
    with pytest.raises(ConfigError, match=r"^sequential: validation y does not fit .*label 7"):
        model.fit(x, y, validation_data=(x, np.full(8, 7)), callbacks=[seen], verbose=0)
    with pytest.raises(fnn.ShapeError, match=r"^sequential: validation y does not fit"):
        model.fit(x, y, validation_data=(x, np.zeros((8, 5))), callbacks=[seen], verbose=0)
    assert epochs == []


def test_batch_and_step_counts_are_checked_everywhere():
    model = fnn.Sequential([Dense(3)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = np.ones((8, 4), np.float32), np.arange(8) % 3
    for call, name in (
        (lambda: model.fit(x, y, batch_size=0, verbose=0), "batch_size"),
        (lambda: model.fit(x, y, steps_per_epoch=0, verbose=0), "steps_per_epoch"),
        (lambda: model.fit(x, y, validation_batch_size=2.5, verbose=0), "validation_batch_size"),
        (lambda: model.evaluate(x, y, batch_size=0, verbose=0), "batch_size"),
        (lambda: model.evaluate(x, y, steps=True, verbose=0), "steps"),
        (lambda: model.predict(x, batch_size=-1, verbose=0), "batch_size"),
    ):
        with pytest.raises(ConfigError, match=rf"^sequential: expected {name} to be an int >= 1"):
            call()


def counting_model():
    """A model whose ``apply`` counts how often it is traced (or run eagerly)."""
    calls = []

    def fn(x):
        calls.append(1)
        return x

    return fnn.Sequential([Dense(3), fnn.Lambda(fn, name="count")]), calls


def test_train_on_batch_and_repeated_fit_trace_the_model_once():
    """Per-batch calls reuse the abstract trace and the compiled steps (no work per call
    that grows with the model), and fit(devices=) reuses its compiled data-parallel step."""
    x, y = np.ones((8, 4), np.float32), np.arange(8) % 3
    model, calls = counting_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.train_on_batch(x, y)
    first = len(calls)
    for _ in range(3):
        model.train_on_batch(x, y)
    assert len(calls) == first
    model, calls = counting_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=4, devices=2, verbose=0)
    first = len(calls)
    model.fit(x, y, batch_size=4, devices=2, verbose=0)
    assert len(calls) == first


def test_arrays_taken_before_fit_stay_valid():
    """fit donates the train state to its steps: it trains on a copy (one compiled copy),
    so params and optimizer state read before fit keep their values, and a second fit
    continues from the first one's result."""
    x, y = small_data()
    model, _ = small_model()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    held = model.params
    before = jax.tree.map(np.array, held)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, held), before)
    after = jax.tree.map(np.asarray, model.params)
    assert any(
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))
    )


@pytest.mark.parametrize("device_rows", [True, False])
def test_unrolled_execution_runs_as_calls_of_at_most_max_unrolled_steps(device_rows, monkeypatch):
    """steps_per_execution=4 unrolled (convolutions on CPU) with at most 2 unrolled steps
    per call runs as two compiled calls of 2 steps (peak memory grows with the unrolled
    steps) between one pair of batch hooks, and trains exactly as single steps do."""
    assert loop.MAX_UNROLLED_STEPS == 5
    monkeypatch.setattr(loop, "MAX_UNROLLED_STEPS", 2)
    x, y = small_data()
    model, loss = small_model()
    model.build((None, 5))
    ts0 = fnn.train.init_train_state(model.layer, optax.sgd(0.1), jax.random.key(0), x[:1])
    trainer = loop.Trainer(model.layer, loss, optax.sgd(0.1), steps_per_execution=4, unroll=True)
    assert [trainer.call_steps(k) for k in (1, 2, 3, 4, 10)] == [1, 2, 1, 2, 2]
    sizes = []
    name = "block_step" if device_rows else "multi_step"
    compiled = getattr(trainer, name)

    def counted(ts, *args):
        sizes.append(args[-1] if device_rows else len(args[0][1]))
        return compiled(ts, *args)

    setattr(trainer, name, counted)
    order = loop.epoch_order(64, seed=1, epoch=0)
    if device_rows:
        data = loop.DeviceRows(jax.device_put((x, y, None)), order, 16, 4)
    else:
        data = [(x[order[i : i + 16]], y[order[i : i + 16]], None) for i in range(0, 64, 16)]
    hooks = Hooks(jax.tree.map(lambda a: a.copy(), ts0))
    loop.train_epoch(trainer, hooks, data)
    assert sizes == [2, 2] and [b for b, _ in hooks.ends] == [3]
    step = jax.jit(fnn.train.make_train_step(model.layer, loss, optax.sgd(0.1)))
    ts = ts0
    for batch in fnn.datasets.batches(x, y, 16, seed=1, epoch=0):
        ts, _ = step(ts, batch)
    for a, b in zip(jax.tree.leaves(hooks.train_state.params), jax.tree.leaves(ts.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _count_compiles(fn):
    """``(fn(), {program name: XLA compiles})`` of everything ``fn`` compiled, on any
    thread (fit compiles its first step programs on background threads)."""
    counts: dict = {}

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            name = kwargs.get("fun_name", "?")
            counts[name] = counts.get(name, 0) + 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        out = fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return out, counts


def test_first_fit_compiles_each_program_once_and_reads_metrics_from_the_steps():
    """A first fit compiles three programs (the train state with its optimizer and metric
    states, the block gather, the step), the step once although it compiles ahead on
    another thread and the second epoch's metric reset makes new arrays; the metric values
    come out of the step (no readout program); a second fit compiles no step again. The
    logs are those of the functional step's metric states (fnn.train.compute_metrics)."""
    x, y = small_data(96, seed=4)
    model, loss = small_model(seed=2)
    model.build((None, 5))  # compiles the params' init, a jit(<lambda>)
    hist, counts = _count_compiles(
        lambda: model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    )
    ours = {k: v for k, v in counts.items() if k in ("jit(fresh)", "jit(gather_block)")}
    assert counts.get("jit(split)") == 1 and ours == {"jit(fresh)": 1, "jit(gather_block)": 1}
    assert "jit(compute)" not in counts and "jit(<lambda>)" not in counts, counts
    _, again = _count_compiles(lambda: model.fit(x, y, batch_size=16, epochs=1, verbose=0))
    assert "jit(split)" not in again and "jit(gather_block)" not in again, again
    # The reference: the functional step from the same initial params, two epochs in order.
    ref, _ = small_model(seed=2)
    ref.build((None, 5))
    metrics = fnn.metrics.get_all(["accuracy"], loss=loss)
    ts = fnn.train.init_train_state(
        ref.layer,
        optax.sgd(0.1),
        jax.random.key(0),
        x[:1],
        params=ref.params,
        state=ref.train_state.state,
        metrics=metrics,
    )
    step = jax.jit(fnn.train.make_train_step(ref.layer, loss, optax.sgd(0.1), metrics))
    for _ in range(2):
        ts = fnn.train.reset_metrics(ts)
        for i in range(0, 96, 16):
            ts, _ = step(ts, (x[i : i + 16], y[i : i + 16]))
    want = fnn.train.compute_metrics(ts.metric_states, metrics)
    np.testing.assert_allclose(hist.history["loss"][-1], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(hist.history["accuracy"][-1], want["accuracy"], rtol=1e-6)
