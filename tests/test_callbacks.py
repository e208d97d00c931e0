"""Callbacks driven by scripted logs (a stand-in model records what they do); the real
``fit`` paths of the same callbacks are tested in test_model.py."""

import csv
import io
import math

import numpy as np
import pytest

from fnn import callbacks as cbs
from fnn.errors import ConfigError
from fnn.shell.progress import Progress, format_logs


class FakeModel:
    """Weights are the epoch number; the learning rate is a plain float."""

    def __init__(self):
        self.stop_training = False
        self.weights = [np.zeros(2)]
        self.learning_rate = 0.1
        self.saved = []
        self.history = None

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, ws):
        self.weights = [np.asarray(w).copy() for w in ws]

    def save_weights(self, path):
        self.saved.append(path)
        with open(path, "w") as f:
            f.write("w")


def run(callbacks, values, key="val_loss", model=None):
    """A minimal fit loop: epoch e logs ``{key: values[e]}`` and sets weights to e."""
    model = model or FakeModel()
    cl = cbs.CallbackList(callbacks, model=model, epochs=len(values), steps=1, verbose=0)
    cl.on_train_begin(None)
    epochs_run = 0
    for epoch, value in enumerate(values):
        cl.on_epoch_begin(epoch, None)
        model.weights = [np.full(2, float(epoch))]
        cl.on_epoch_end(epoch, {key: value})
        epochs_run += 1
        if model.stop_training:
            break
    cl.on_train_end(None)
    return model, epochs_run


def reference_early_stop(values, patience, min_delta=0.0, mode="min"):
    """Independent re-statement of the rule: stop at the first epoch whose count of
    epochs since the last improvement reaches ``patience``."""
    sign = 1 if mode == "min" else -1
    best, best_epoch, since = math.inf, None, 0
    for epoch, v in enumerate(values):
        if sign * v < best - min_delta:
            best, best_epoch, since = sign * v, epoch, 0
        else:
            since += 1
            if since >= patience and epoch > 0:
                return epoch + 1, best_epoch
    return len(values), best_epoch


@pytest.mark.parametrize(
    "values, patience, min_delta",
    [
        ([1.0, 0.8, 0.9, 0.85, 0.95, 0.7], 2, 0.0),
        ([1.0, 0.8, 0.9, 0.85, 0.95, 0.7], 3, 0.0),
        ([1.0, 0.95, 0.93, 0.92, 0.91, 0.5], 2, 0.05),
        ([0.5, 0.6, 0.7], 0, 0.0),
        ([3.0, 2.0, 1.0, 0.5], 1, 0.0),
    ],
)
def test_early_stopping_matches_reference(values, patience, min_delta):
    es = cbs.EarlyStopping(patience=patience, min_delta=min_delta, restore_best_weights=True)
    model, epochs_run = run([es], values)
    want_epochs, best_epoch = reference_early_stop(values, patience, min_delta)
    assert epochs_run == want_epochs
    assert es.best_epoch == best_epoch
    np.testing.assert_array_equal(model.weights[0], np.full(2, float(best_epoch)))


def test_early_stopping_max_mode_baseline_and_start_epoch():
    values = [0.5, 0.6, 0.55, 0.58, 0.9]
    es = cbs.EarlyStopping(monitor="val_accuracy", patience=2)
    _, n = run([es], values, key="val_accuracy")
    assert es.monitor_op is np.greater and n == 4  # auto mode: accuracy is maximised
    # baseline: improvements that stay below it do not reset the wait (Keras: the wait
    # counts from epoch 0, an improving epoch never stops, epoch 2 is the third without
    # beating 0.8).
    es = cbs.EarlyStopping(monitor="val_accuracy", patience=2, baseline=0.8)
    _, n = run([es], values, key="val_accuracy")
    assert n == 3
    es = cbs.EarlyStopping(patience=1, start_from_epoch=3)
    _, n = run([es], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert n == 5  # epochs 0-2 ignored; epoch 3 sets best, 4 is the first without improvement


def test_model_checkpoint_saves_only_improvements(tmp_path):
    values = [1.0, 0.8, 0.9, 0.7, 0.75]
    ck = cbs.ModelCheckpoint(
        str(tmp_path / "w-{epoch:02d}-{val_loss:.2f}"),
        save_best_only=True,
        save_weights_only=True,
    )
    model, _ = run([ck], values)
    improving = [e for e, v in enumerate(values) if v < min(values[:e], default=math.inf)]
    want = [str(tmp_path / f"w-{e + 1:02d}-{values[e]:.2f}") for e in improving]
    assert model.saved == want
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.split("/")[-1] for p in want)
    ck_all = cbs.ModelCheckpoint(str(tmp_path / "all-{epoch}"), save_weights_only=True)
    model, _ = run([ck_all], values)
    assert len(model.saved) == len(values)


def test_csv_logger_rows_match_history(tmp_path):
    path = tmp_path / "log.csv"
    history = cbs.History()
    logger = cbs.CSVLogger(str(path))
    model = FakeModel()
    cl = cbs.CallbackList([history, logger], model=model, epochs=3, steps=1, verbose=0)
    cl.on_train_begin(None)
    for epoch in range(3):
        cl.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "accuracy": 0.3 * epoch})
    cl.on_train_end(None)
    rows = list(csv.DictReader(path.open()))
    assert [int(r["epoch"]) for r in rows] == history.epoch == [0, 1, 2]
    for key in ("loss", "accuracy"):
        assert [float(r[key]) for r in rows] == history.history[key]
    # append=True keeps the header once.
    logger2 = cbs.CSVLogger(str(path), append=True)
    cl = cbs.CallbackList([logger2], model=model)
    cl.on_train_begin(None)
    cl.on_epoch_end(3, {"loss": 0.1, "accuracy": 1.0})
    cl.on_train_end(None)
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and lines[0] == "epoch,accuracy,loss"


def test_reduce_lr_on_plateau_schedule():
    values = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5]
    cb = cbs.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    model = FakeModel()
    lrs = []
    lam = cbs.LambdaCallback(on_epoch_end=lambda e, logs: lrs.append(model.learning_rate))
    run([cb, lam], values, model=model)
    # Independent trace: wait counts epochs without improvement (by more than 1e-4),
    # a reduction resets it and starts one cooldown epoch that counts nothing.
    lr, best, wait, cooldown, want = 0.1, math.inf, 0, 0, []
    for v in values:
        if cooldown > 0:
            cooldown -= 1
            wait = 0
        if v < best - 1e-4:
            best, wait = v, 0
        elif cooldown <= 0:
            wait += 1
            if wait >= 2 and lr > 0.02:
                lr, cooldown, wait = max(lr * 0.5, 0.02), 1, 0
        want.append(lr)
    assert lrs == pytest.approx(want)
    assert want[-1] < 0.1  # the trace does reduce


def test_learning_rate_scheduler_sets_and_logs():
    model = FakeModel()
    sched = cbs.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5**epoch)
    history = cbs.History()
    run([sched, history], [1.0, 1.0, 1.0], model=model)
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.025])
    bad = cbs.LearningRateScheduler(lambda epoch, lr: "fast")
    with pytest.raises(ConfigError, match="schedule must return a finite float"):
        run([bad], [1.0])


def test_terminate_on_nan_and_lambda_hooks():
    model = FakeModel()
    cl = cbs.CallbackList([cbs.TerminateOnNaN()], model=model)
    cl.on_train_batch_end(0, {"loss": 1.0})
    assert not model.stop_training
    cl.on_train_batch_end(1, {"loss": float("nan")})
    assert model.stop_training
    calls = []
    lam = cbs.LambdaCallback(on_test_end=lambda logs: calls.append(logs))
    cl = cbs.CallbackList([lam], model=model)
    assert cl.wants("on_test_end") and not cl.wants("on_train_batch_end")
    cl.on_test_end({"loss": 2.0})
    assert calls == [{"loss": 2.0}]
    with pytest.raises(ConfigError, match="unknown callback hook 'on_epoch_ends'"):
        cbs.LambdaCallback(on_epoch_ends=print)


def test_batch_hooks_only_for_overriding_callbacks():
    class EpochOnly(cbs.Callback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    cl = cbs.CallbackList([EpochOnly(), cbs.History()])
    assert not cl.wants("on_train_batch_end")
    assert cl.wants("on_epoch_end")
    with pytest.raises(ConfigError, match="expected fnn.callbacks.Callback instances"):
        cbs.CallbackList([print])


def test_unknown_monitor_lists_available_keys():
    es = cbs.EarlyStopping(monitor="val_acc")
    with pytest.raises(
        ConfigError,
        match=r"EarlyStopping: monitor 'val_acc' is not logged by this fit\. Did you mean "
        r"'val_accuracy'\? Available keys: loss, accuracy, val_loss, val_accuracy\.",
    ):
        cbs.check_monitors([es], ["loss", "accuracy", "val_loss", "val_accuracy"])
    with pytest.raises(ConfigError, match="val_\\* keys need validation_data"):
        cbs.check_monitors([cbs.EarlyStopping()], ["loss"])
    with pytest.raises(ConfigError, match="expected mode 'auto', 'min' or 'max'"):
        cbs.EarlyStopping(mode="down")


def test_tensorboard_missing_is_one_line(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tbx(name, *args, **kwargs):
        if name == "tensorboardX":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tbx)
    tb = cbs.TensorBoard(log_dir="unused")
    run([tb], [1.0, 0.5])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorboardX is not installed" in err
    assert not tb.enabled


def test_progress_line_mode_and_silence():
    out = io.StringIO()
    p = Progress(10, desc="Epoch 2/5", verbose=1, file=out)
    for step in range(1, 11):
        p.update(step, None)
    p.close({"loss": 0.123456, "val_loss": 2e-5})
    text = out.getvalue()
    assert text.count("\n") == 1
    assert text.startswith("Epoch 2/5 - 10 steps - ")
    assert text.rstrip().endswith("loss: 0.1235 - val_loss: 2.0000e-05")
    silent = io.StringIO()
    p = Progress(10, verbose=0, file=silent)
    p.update(10, {"loss": 1.0})
    p.close({"loss": 1.0})
    assert silent.getvalue() == ""
    assert format_logs({"a": np.float32(1.5)}) == "a: 1.5000"


class TTY(io.StringIO):
    def isatty(self):
        return True


class CountingLogs(dict):
    reads = 0

    def items(self):
        CountingLogs.reads += 1
        return super().items()


def test_progress_bar_reads_logs_only_at_refresh():
    out = TTY()
    p = Progress(1000, desc="Epoch 1/1", verbose=1, file=out, interval=3600.0)
    logs = CountingLogs(loss=1.0)
    for step in range(1, 1001):
        p.update(step, logs)
    assert CountingLogs.reads == 0  # no refresh within the interval: no device sync
    p.close({"loss": 0.5})
    assert "1000/1000" in out.getvalue() and "loss: 0.5000" in out.getvalue()
