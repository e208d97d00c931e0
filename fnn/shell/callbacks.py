"""Keras-style callbacks for ``Model.fit``/``evaluate``/``predict``.

A callback is an object with hook methods named as in Keras (``on_train_begin``,
``on_epoch_end``, ``on_train_batch_end``, ...). ``fit`` calls only the batch hooks a
callback overrides, and the batch ``logs`` it passes are lazy: the device is synchronised
only when a callback reads them, so callbacks that act per epoch cost nothing per step.

>>> import fnn
>>> seen = []
>>> cb = fnn.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
>>> cb.on_epoch_end(0, {"loss": 1.0})
>>> seen
[0]
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from fnn.core.errors import ConfigError

__all__ = [
    "BackupAndRestore",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ProgbarLogger",
    "ReduceLROnPlateau",
    "TensorBoard",
    "TerminateOnNaN",
]

_BATCH_HOOKS = (
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
)
_HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_test_begin",
    "on_test_end",
    "on_predict_begin",
    "on_predict_end",
    *_BATCH_HOOKS,
)


class Callback:
    """Base class: override any hook. ``self.model`` is the ``fnn.Model`` being trained and
    ``self.params`` holds ``epochs``, ``steps`` and ``verbose`` (as in Keras). Every hook
    gets a dict as ``logs`` (``{}`` when there is nothing to log, never ``None``).

    Batch ``logs`` are lazy mappings: read them inside the hook (reading synchronises with
    the device); keep ``dict(logs)`` if you need them later. As in Keras,
    ``on_batch_begin``/``on_batch_end`` are the training batch hooks under older names.
    """

    def __init__(self):
        self.model = None
        self.params: dict[str, Any] = {}

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_predict_begin(self, logs=None): ...
    def on_predict_end(self, logs=None): ...
    def on_batch_begin(self, batch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_test_batch_begin(self, batch, logs=None): ...
    def on_test_batch_end(self, batch, logs=None): ...
    def on_predict_batch_begin(self, batch, logs=None): ...
    def on_predict_batch_end(self, batch, logs=None): ...

    def monitored_keys(self) -> tuple[str, ...]:
        """Log keys this callback needs (checked by ``fit`` before anything compiles)."""
        monitor = getattr(self, "monitor", None)
        return (monitor,) if isinstance(monitor, str) else ()


_ALIASES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


def _overrides(callback: Callback, hook: str) -> bool:
    names = (hook, _ALIASES[hook]) if hook in _ALIASES else (hook,)
    given = getattr(callback, "_given", None)  # LambdaCallback: hooks set per instance
    if given is not None:
        return any(name in given for name in names)
    return any(getattr(type(callback), n, None) is not getattr(Callback, n) for n in names)


class CallbackList:
    """Calls a hook on every callback; batch hooks only on callbacks that override them."""

    def __init__(self, callbacks: Iterable[Callback] = (), *, model=None, **params):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise ConfigError(
                    f"callbacks: expected fnn.callbacks.Callback instances, got "
                    f"{type(cb).__name__} ({cb!r})."
                )
        self._users = {hook: [c for c in self.callbacks if _overrides(c, hook)] for hook in _HOOKS}
        if model is not None:
            self.set_model(model)
        self.set_params(params)

    def set_model(self, model) -> None:
        for cb in self.callbacks:
            cb.set_model(model)

    def set_params(self, params: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.set_params(params)

    def wants(self, hook: str) -> bool:
        """Whether any callback overrides ``hook`` (lets the loop skip building logs)."""
        return bool(self._users[hook])

    def call(self, hook: str, *args) -> None:
        """Call ``hook`` on the callbacks that override it; missing or ``None`` logs become
        one shared ``{}`` (as Keras), so callbacks may add keys for the ones after them."""
        n = 1 if hook.startswith("on_epoch_") or "_batch_" in hook else 0  # (index, logs)
        if len(args) <= n or args[n] is None:
            args = (*args[:n], {})
        for cb in self._users[hook]:
            getattr(cb, hook)(*args)

    def __getattr__(self, hook: str):
        if hook in _HOOKS:
            return lambda *args: self.call(hook, *args)
        raise AttributeError(hook)


def check_monitors(callbacks: Iterable[Callback], available: Iterable[str]) -> None:
    """Raise ``ConfigError`` if a callback monitors a key that ``fit`` will not log."""
    available = list(available)
    for cb in callbacks:
        for key in cb.monitored_keys():
            if key not in available:
                from fnn.core.errors import closest

                hint = closest(key, available)
                val = (
                    ""
                    if any(k.startswith("val_") for k in available)
                    else (" (val_* keys need validation_data or validation_split)")
                )
                raise ConfigError(
                    f"{type(cb).__name__}: monitor {key!r} is not logged by this fit.{hint} "
                    f"Available keys: {', '.join(available)}{val}."
                )


def _to_float(value) -> float:
    return float(np.asarray(value))


class History(Callback):
    """Records the epoch logs: ``history.history["loss"]`` is one float per epoch.

    ``fit`` returns it (and sets ``model.history``).
    """

    def __init__(self):
        super().__init__()
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {}

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            self.model.history = self


# Metrics Keras maximises (those with ``_direction = "up"``); every other key is minimised.
_HIGHER_IS_BETTER = (
    "acc",
    "accuracy",
    "auc",
    "precision",
    "recall",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "precision_at_recall",
    "recall_at_precision",
    "f1_score",
    "fbeta_score",
    "iou",
    "io_u",  # Keras's default names of BinaryIoU, MeanIoU, ...
    "pearson_correlation",
    "concordance_correlation",
    "cosine_similarity",
    "r2_score",
)


def _mode_op(name: str, monitor: str, mode: str):
    """``np.less`` or ``np.greater`` for a monitored key. ``"auto"`` maximises the metrics
    Keras maximises (accuracies, AUC, precision, recall, F-scores, IoU, R², correlations;
    also with a ``val_`` prefix or a ``_1``-style suffix) and minimises everything else.

    >>> _mode_op("EarlyStopping", "val_accuracy", "auto") is np.greater
    True
    >>> _mode_op("EarlyStopping", "val_loss", "auto") is np.less
    True
    """
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"{name}: expected mode 'auto', 'min' or 'max', got {mode!r}.")
    if mode == "auto":
        base = monitor.removeprefix("val_").rstrip("0123456789").rstrip("_")
        mode = "max" if base.endswith(_HIGHER_IS_BETTER) else "min"
    return np.greater if mode == "max" else np.less


class EarlyStopping(Callback):
    """Stop training when ``monitor`` stopped improving for ``patience`` epochs.

    Keras semantics: an improvement beats the best value by more than ``min_delta``;
    epochs before ``start_from_epoch`` are ignored; with ``baseline`` the wait only resets
    on values better than the baseline; with ``restore_best_weights`` the weights of the
    best epoch are set back when training ends.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        super().__init__()
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.monitor_op = _mode_op("EarlyStopping", monitor, mode)
        self.min_delta = abs(min_delta) if self.monitor_op is np.greater else -abs(min_delta)
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value, reference) -> bool:
        if reference is None:
            return True
        return bool(self.monitor_op(value - self.min_delta, reference))

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or epoch < self.start_from_epoch:
            return
        current = _to_float(current)
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(
                    f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)


def _count_batches(callback, batch: int) -> bool:
    """Keras's batch counter of ``save_freq=N``: add the batches run since the last call
    (a compiled call of ``steps_per_execution`` steps reports its last batch) and say
    whether ``N`` were reached, then restart the count."""
    last = callback._last_batch_seen
    added = batch + 1 if last is None or batch <= last else batch - last
    callback._batches_seen += added
    callback._last_batch_seen = batch
    if callback._batches_seen >= callback.save_freq:
        callback._batches_seen = 0
        return True
    return False


def _check_save_freq(name: str, save_freq) -> None:
    if save_freq != "epoch" and (
        not isinstance(save_freq, int) or isinstance(save_freq, bool) or save_freq < 1
    ):
        raise ConfigError(
            f"{name}: expected save_freq 'epoch' or a number of batches >= 1, got {save_freq!r}."
        )


class ModelCheckpoint(Callback):
    """Save the model (or only its weights) every epoch, every ``save_freq`` batches, or
    only when ``monitor`` improved (``save_best_only``), with Keras's arguments, rules and
    messages.

    ``filepath`` may hold format fields filled from the logs, e.g.
    ``"ckpt/weights.{epoch:02d}-{val_loss:.3f}"`` (``epoch`` counts from 1, as in Keras;
    with an integer ``save_freq`` also ``{batch}``, from 1). Each save is an fnn directory
    (``model.save_weights`` with ``save_weights_only``, else ``model.save``); a suffix of
    another library's single-file format (``.keras``, ``.h5``, ``.npz``) is a
    ``ConfigError``. ``mode="auto"`` maximises accuracy-like metrics and minimises the
    rest; the best value starts at ``initial_value_threshold`` (``None``: the first value
    is an improvement; Keras then prints "improved from None"). As in Keras, the best value
    is kept across calls of ``fit``. To resume an interrupted fit use ``BackupAndRestore``.
    """

    def __init__(
        self,
        filepath: str | os.PathLike,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
    ):
        super().__init__()
        _check_save_freq("ModelCheckpoint", save_freq)
        from fnn.io.checkpoint import check_directory_path

        if str(filepath).lower().endswith(".keras") and not save_weights_only:
            self.filepath = os.fspath(filepath)  # model.save writes a Keras archive there
        else:
            self.filepath = os.fspath(check_directory_path(filepath, "ModelCheckpoint"))
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.monitor_op = _mode_op("ModelCheckpoint", monitor, mode)
        self.save_freq = save_freq
        self.initial_value_threshold = initial_value_threshold
        self.best = initial_value_threshold
        self.saved: list[str] = []
        self._current_epoch = 0
        self._batches_seen = 0
        self._last_batch_seen: int | None = None

    def monitored_keys(self):
        return (self.monitor,) if self.save_best_only else ()

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch" and _count_batches(self, batch):
            self._save(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _path(self, epoch: int, batch: int | None, logs: dict) -> str:
        fields = {"epoch": epoch + 1, **logs}
        if batch is not None and "batch" not in logs:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except KeyError as e:
            raise ConfigError(
                f"ModelCheckpoint: expected filepath fields among the logged keys "
                f"({', '.join(fields)}), got {{{e.args[0]}}} in {self.filepath!r}."
            ) from None

    def _should_save(self, epoch: int, logs: dict, path: str) -> bool:
        if not self.save_best_only:
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: saving model to {path}")
            return True
        current = logs.get(self.monitor)
        if current is None:
            import warnings

            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=3)
            return True
        current = _to_float(current)
        best = "None" if self.best is None else f"{self.best:.5f}"
        if self.best is None or self.monitor_op(current, self.best):
            if self.verbose > 0:
                print(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to "
                    f"{current:.5f}, saving model to {path}"
                )
            self.best = current
            return True
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best}")
        return False

    def _save(self, epoch: int, batch: int | None, logs) -> None:
        logs = dict(logs or {})
        path = self._path(epoch, batch, logs)
        if not self._should_save(epoch, logs, path):
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if self.save_weights_only or not hasattr(self.model, "save"):
            self.model.save_weights(path)
        else:
            self.model.save(path)
        self.saved.append(path)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: finished saving model to {path}")


class BackupAndRestore(Callback):
    """Back up the whole ``TrainState`` (params, state, optimizer state, PRNG key, step)
    at the end of every epoch (``save_freq="epoch"``) or every ``save_freq`` batches, and
    after the last epoch, with ``fnn.checkpoint.CheckpointManager`` in ``backup_dir``
    (``step_*`` directories); when a fit begins and a backup exists, restore the latest
    and continue where it was made: after the last epoch it completed or, for a backup
    made inside an epoch, at the next batch of that epoch (Keras reruns that epoch from
    the backed-up weights instead). Each backup stores ``fit``'s data position (epoch,
    batch, shuffle seed and the source's own state: a ``PyDataset``'s pass, a Grain
    iterator's ``get_state()``) in its metadata as ``data_position``.

    The epoch order depends on ``(seed, epoch)`` only, so on CPU a resumed fit ends bit
    for bit where an uninterrupted one does, from array data, ``fnn.datasets`` readers,
    ``PyDataset``s, re-iterables and Grain datasets alike (a plain one-shot iterator
    cannot be moved back: it continues from where it is, with a warning). Keras's arguments come first:
    ``double_checkpoint`` keeps the previous backup too (so a corrupt latest one can be
    skipped); ``delete_checkpoint`` removes ``backup_dir`` when training ends (an
    interrupted fit never gets there, so its backup stays). fnn's keyword-only extras:
    ``every_epochs`` (default 1 with ``save_freq="epoch"``; with a number of batches,
    epoch-end backups too, besides the last), ``max_to_keep``/``keep_best``/
    ``monitor``/``mode`` prune as ``CheckpointManager`` does, ``metadata`` is stored with
    each backup.
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        *,
        every_epochs: int | None = None,
        max_to_keep: int | None = 1,
        keep_best: bool = False,
        monitor: str = "val_loss",
        mode: str = "auto",
        metadata: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        from fnn.io.checkpoint import CheckpointManager, check_directory_path

        _check_save_freq("BackupAndRestore", save_freq)
        if every_epochs is not None and (not isinstance(every_epochs, int) or every_epochs < 1):
            raise ConfigError(
                f"BackupAndRestore: expected every_epochs >= 1, got {every_epochs!r}."
            )
        self.backup_dir = check_directory_path(backup_dir, "BackupAndRestore")
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.every_epochs = every_epochs
        self.monitor = monitor if keep_best else None
        op = _mode_op("BackupAndRestore", monitor, mode)
        if double_checkpoint and max_to_keep is not None:
            max_to_keep = max(max_to_keep, 2)
        self.manager = CheckpointManager(
            self.backup_dir,
            max_to_keep,
            keep_best,
            best_metric=monitor,
            mode="max" if op is np.greater else "min",
        )
        self.delete_checkpoint = delete_checkpoint
        self.metadata = dict(metadata or {})
        self.restored_step: int | None = None
        self._current_epoch = 0
        self._batches_seen = 0
        self._last_batch_seen: int | None = None

    def latest_epoch(self) -> int | None:
        """Epochs completed by the latest backup (``None`` without one)."""
        step = self.manager.latest_step()
        return None if step is None else int(self.manager.metrics(step)["epoch"])

    def saved_position(self) -> dict | None:
        """The data position the latest backup was made at (``fit`` resumes there), or
        ``None`` (no backup, or one without a position: it resumes at an epoch start)."""
        from fnn.io.checkpoint import read_info

        step = self.manager.latest_step()
        if step is None:
            return None
        return read_info(self.manager.path(step))["metadata"].get("data_position")

    def on_train_begin(self, logs=None):
        self.restored_step = self.manager.latest_step()
        if self.restored_step is None:
            return
        self.model.train_state = self.manager.restore(
            self.restored_step, target=self.model.train_state
        )
        position = self.saved_position()
        if position is None:  # a backup of an older fnn: rerun its epoch from the start
            self.model._initial_epoch = self.latest_epoch()
        else:
            self.model._initial_epoch = position["epoch"]
            self.model._initial_batch = position["batch"]
            # Count save_freq batches from where the backed-up fit was.
            self._last_batch_seen = position["batch"] - 1 if position["batch"] else None

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch" and _count_batches(self, batch):
            self._backup(self._current_epoch, {}, batches=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._last_batch_seen = None
        last = epoch + 1 == self.params.get("epochs")
        every = self.every_epochs or (1 if self.save_freq == "epoch" else None)
        if not last and (every is None or (epoch + 1) % every):
            return
        self._backup(epoch + 1, logs or {})

    def _backup(self, epochs_done: int, logs, batches: int | None = None) -> None:
        if not math.isfinite(_to_float(logs.get("loss", 0.0))):
            return  # resuming from a non-finite state could not recover
        ts = self.model.train_state
        metrics = {"epoch": epochs_done}
        for key, value in logs.items():
            if np.ndim(value) == 0 and not isinstance(value, str):
                metrics[key] = _to_float(value)
        metadata = self.metadata
        position = getattr(self.model, "_fit_position", None)
        if position is not None:  # where the data stands, so a resumed fit continues there
            metadata = {**metadata, "data_position": position(epochs_done, batches)}
        self.manager.save(int(ts.step), ts, metrics=metrics, metadata=metadata)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint:
            import shutil

            shutil.rmtree(self.backup_dir, ignore_errors=True)


def _get_lr(model) -> float:
    return float(model.learning_rate)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)`` (or
    ``schedule(epoch)``, Keras's older form, when the schedule takes one argument), and
    log it as ``learning_rate`` at each epoch end.

    The learning rate lives in ``model.opt_state`` (the optimizer is built with
    ``optax.inject_hyperparams``) and is set through ``model.learning_rate``, so changing
    it recompiles nothing.
    """

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        try:
            lr = self.schedule(epoch, _get_lr(self.model))
        except TypeError:  # schedule(epoch), as Keras still accepts
            lr = self.schedule(epoch)
        if not isinstance(lr, float | np.floating) or not math.isfinite(float(lr)):
            raise ConfigError(
                f"LearningRateScheduler: the schedule must return a finite float, got {lr!r}. "
                "Return float(...) of the new rate."
            )
        self.model.learning_rate = float(lr)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _get_lr(self.model)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stopped improving for
    ``patience`` epochs (Keras semantics, with ``cooldown`` and ``min_lr``)."""

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ):
        super().__init__()
        if factor >= 1.0:
            raise ConfigError(f"ReduceLROnPlateau: expected factor < 1.0, got {factor!r}.")
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.verbose = verbose
        self.min_delta = min_delta
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.monitor_op = _mode_op("ReduceLROnPlateau", monitor, mode)
        self._reset()

    def _reset(self):
        self.best = None  # the first value is an improvement (Keras)
        self.wait = 0
        self.cooldown_counter = 0

    def _is_improvement(self, value, reference) -> bool:
        if reference is None:
            return True
        delta = self.min_delta if self.monitor_op is np.greater else -self.min_delta
        return bool(self.monitor_op(value - delta, reference))

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = _get_lr(self.model)
        current = logs.get(self.monitor)
        if current is None:
            return
        current = _to_float(current)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = _get_lr(self.model)
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    self.model.learning_rate = new
                    if self.verbose > 0:
                        print(
                            f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}."
                        )
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class CSVLogger(Callback):
    """Write one row per epoch (``epoch`` then the log keys in sorted order) to a CSV file."""

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = append
        self.keys: list[str] | None = None
        self._file = None
        self._writer = None

    def on_train_begin(self, logs=None):
        has_rows = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename)
        self._file = open(self.filename, "a" if self.append else "w", newline="")  # noqa: SIM115
        self._has_header = bool(has_rows)
        self.keys = None
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.keys is None:
            self.keys = sorted(logs)
        if self._writer is None:
            self._writer = csv.DictWriter(
                self._file, fieldnames=["epoch", *self.keys], delimiter=self.sep
            )
            if not self._has_header:
                self._writer.writeheader()
        row = {"epoch": epoch}
        row.update({k: _format_csv(logs.get(k, "NA")) for k in self.keys})
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


def _format_csv(value):
    if isinstance(value, str):
        return value
    value = np.asarray(value)
    return repr(float(value)) if value.ndim == 0 else " ".join(map(str, value.ravel()))


class TensorBoard(Callback):
    """Write TensorBoard event files with tensorboardX, laid out and tagged as Keras does.

    - every epoch: the epoch logs as scalars ``epoch_<name>`` at step ``epoch``, in
      ``log_dir/train`` (with ``epoch_learning_rate`` when the optimizer has one) and, for
      the ``val_*`` keys, in ``log_dir/validation``; after each validation or
      ``evaluate``, ``evaluation_<name>_vs_iterations`` at the optimizer step;
    - ``update_freq="batch"`` or ``N``: also ``batch_<name>`` every ``N`` training batches
      at the global batch number (from 1; with ``steps_per_execution`` only the last
      batch of each compiled call is seen);
    - ``histogram_freq=N``: histograms ``<layer>/<weight>/histogram`` of every weight
      every ``N`` epochs (epochs 0, N, 2N, ...);
    - ``write_steps_per_second``: ``epoch_steps_per_second``.

    Accepted for Keras compatibility and not applicable (they write nothing):
    ``write_graph`` (there is no TensorFlow graph: an fnn model is a jitted JAX function;
    use ``model.summary()``), ``write_images``, ``profile_batch`` (use
    ``jax.profiler.trace``), ``embeddings_freq``/``embeddings_metadata`` (no projector);
    a non-default ``profile_batch`` or ``embeddings_freq`` warns once.

    tensorboardX is an optional extra (``pip install 'fnn[tensorboard]'``); without it
    this callback prints one line saying it skipped and does nothing. The writers are
    opened at the first write (as Keras opens them lazily), so a fit that fails before
    any step leaves no files and prints nothing.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "logs",
        histogram_freq: int = 0,
        write_graph: bool = True,
        write_images: bool = False,
        write_steps_per_second: bool = False,
        update_freq: str | int = "epoch",
        profile_batch: int | tuple[int, int] = 0,
        embeddings_freq: int = 0,
        embeddings_metadata=None,
    ):
        super().__init__()
        if not isinstance(histogram_freq, int) or histogram_freq < 0:
            raise ConfigError(
                f"TensorBoard: expected histogram_freq an integer >= 0, got {histogram_freq!r}."
            )
        freq = 1 if update_freq == "batch" else update_freq
        if freq != "epoch" and (not isinstance(freq, int) or isinstance(freq, bool) or freq < 1):
            raise ConfigError(
                f"TensorBoard: expected update_freq 'epoch', 'batch' or a number of batches "
                f">= 1, got {update_freq!r}."
            )
        if profile_batch or embeddings_freq:
            import warnings

            warnings.warn(
                "TensorBoard: profile_batch and embeddings_freq do not apply in fnn and write "
                "nothing (profile with jax.profiler.trace).",
                stacklevel=2,
            )
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = histogram_freq
        self.write_graph = write_graph
        self.write_images = write_images
        self.write_steps_per_second = write_steps_per_second
        self.update_freq = freq
        self.profile_batch = profile_batch
        self.embeddings_freq = embeddings_freq
        self.embeddings_metadata = embeddings_metadata
        self._writers: dict[str, Any] = {}
        self.enabled = True
        self._global_train_batch = 0
        self._epoch_base = 0
        self._epoch_start = 0.0

    def _writer(self, split: str):
        """The ``"train"`` or ``"validation"`` writer (``None`` without tensorboardX)."""
        if split not in self._writers and self.enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                self.enabled = False
                print(
                    "TensorBoard: tensorboardX is not installed (pip install 'fnn[tensorboard]'); "
                    "skipped writing event files.",
                    file=sys.stderr,
                )
                return None
            self._writers[split] = SummaryWriter(os.path.join(self.log_dir, split))
        return self._writers.get(split)

    def _scalars(self, split: str, logs: Mapping, prefix: str, step: int, suffix=""):
        items = [(k, v) for k, v in logs.items() if np.ndim(v) == 0 and not isinstance(v, str)]
        writer = self._writer(split) if items else None
        if writer is None:
            return
        for key, value in items:
            writer.add_scalar(f"{prefix}{key}{suffix}", _to_float(value), step)

    def on_train_begin(self, logs=None):
        self._global_train_batch = 0
        self._epoch_base = 0

    def on_epoch_begin(self, epoch, logs=None):
        import time

        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._global_train_batch = self._epoch_base + batch + 1
        if self.update_freq != "epoch" and self._global_train_batch % self.update_freq == 0:
            self._scalars("train", logs or {}, "batch_", self._global_train_batch)

    def on_test_end(self, logs=None):
        ts = getattr(self.model, "train_state", None)
        if ts is not None and getattr(ts, "step", None) is not None:
            self._scalars("validation", logs or {}, "evaluation_", int(ts.step), "_vs_iterations")
        self._flush()

    def on_epoch_end(self, epoch, logs=None):
        import time

        self._epoch_base = self._global_train_batch
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        if "learning_rate" not in train:
            with contextlib.suppress(ConfigError, AttributeError, TypeError):
                train["learning_rate"] = _get_lr(self.model)
        if self.write_steps_per_second and self.params.get("steps"):
            elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
            train["steps_per_second"] = self.params["steps"] / elapsed
        self._scalars("train", train, "epoch_", epoch)
        self._scalars("validation", val, "epoch_", epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._histograms(epoch)
        self._flush()

    def _histograms(self, epoch: int) -> None:
        writer = self._writer("train")
        if writer is None:
            return
        for name, weight in zip(self.model.weight_names(), self.model.get_weights()):
            writer.add_histogram(f"{name}/histogram", np.asarray(weight), epoch)

    def _flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class TerminateOnNaN(Callback):
    """Stop training when the batch loss is NaN or infinite (Keras's callback).

    ``raise_error=False``: print ``"Batch <i>: Invalid loss, terminating training"`` and
    set ``model.stop_training`` (the other callbacks' ``on_train_end`` still run);
    ``raise_error=True``: raise ``RuntimeError`` at once. It reads the loss after every
    compiled call, which synchronises with the device each step (so it is not on by
    default; ``fit`` itself warns once when an epoch's loss is not finite).
    ``invalid_loss`` is ``(batch, loss)`` of the batch that stopped training (``None``
    while every loss was finite).
    """

    def __init__(self, raise_error: bool = False):
        super().__init__()
        self.raise_error = raise_error
        self.invalid_loss: tuple[int, float] | None = None

    def on_train_begin(self, logs=None):
        self.invalid_loss = None

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(_to_float(loss)):
            return
        loss = _to_float(loss)
        self.invalid_loss = (batch, loss)
        if self.raise_error:
            raise RuntimeError(
                f"NaN or Inf loss encountered at batch {batch}. "
                f"Loss value: {loss}. Terminating training immediately."
            )
        print(f"Batch {batch}: Invalid loss, terminating training")
        self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback from plain functions, e.g. ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``.

    Any hook name is accepted as a keyword; misspelled names raise ``ConfigError``.
    """

    def __init__(
        self,
        on_epoch_begin=None,
        on_epoch_end=None,
        on_train_begin=None,
        on_train_end=None,
        on_train_batch_begin=None,
        on_train_batch_end=None,
        **kwargs,
    ):
        super().__init__()
        hooks = {
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
            **kwargs,
        }
        for hook, fn in hooks.items():
            if hook not in _HOOKS and hook not in _ALIASES.values():
                from fnn.core.errors import unknown_name

                raise unknown_name("callback hook", hook, (*_HOOKS, *_ALIASES.values()))
            if fn is not None:
                setattr(self, hook, fn)
        self._given = {h for h, fn in hooks.items() if fn is not None}


class ProgbarLogger(Callback):
    """The progress display of ``fit``/``evaluate``/``predict`` (added automatically when
    ``verbose`` is not 0): a tqdm bar with live loss/metrics and steps/s on a terminal,
    one line per epoch otherwise. The bar reads the logs at most every ``interval``
    seconds, so it adds no per-step device synchronisation. ``ProgbarLogger()`` takes no
    positional arguments, as Keras's; ``interval`` and ``file`` are fnn's keyword extras.
    """

    def __init__(self, *, interval: float = 0.2, file=None):
        super().__init__()
        self.interval = interval
        self.file = file
        self._progress = None
        self._in_fit = False

    def _make(self, total, desc, *, final_line: bool):
        from fnn.shell.progress import Progress

        verbose = self.params.get("verbose", 1)
        return Progress(
            total,
            desc=desc,
            verbose=verbose,
            interval=self.interval,
            file=self.file,
            final_line=final_line,
        )

    def on_train_begin(self, logs=None):
        self._in_fit = True

    def on_train_end(self, logs=None):
        self._in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        epochs = self.params.get("epochs", 1)
        self._progress = self._make(
            self.params.get("steps"), f"Epoch {epoch + 1}/{epochs}", final_line=True
        )

    def on_train_batch_end(self, batch, logs=None):
        if self._progress is not None:
            self._progress.update(batch + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self._progress is not None:
            self._progress.close(logs)
            self._progress = None

    def on_test_begin(self, logs=None):
        if not self._in_fit:
            self._progress = self._make(self.params.get("steps"), "Evaluate", final_line=True)

    def on_test_batch_end(self, batch, logs=None):
        if not self._in_fit and self._progress is not None:
            self._progress.update(batch + 1, logs)

    def on_test_end(self, logs=None):
        if not self._in_fit and self._progress is not None:
            self._progress.close(logs)
            self._progress = None

    def on_predict_begin(self, logs=None):
        self._progress = self._make(self.params.get("steps"), "Predict", final_line=False)

    def on_predict_batch_end(self, batch, logs=None):
        if self._progress is not None:
            self._progress.update(batch + 1, None)

    def on_predict_end(self, logs=None):
        if self._progress is not None:
            self._progress.close(None)
            self._progress = None
