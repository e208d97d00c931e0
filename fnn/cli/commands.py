"""The ``fnn`` command line: train, evaluate, predict and summarise models from YAML configs.

::

    fnn train CONFIG [--set key=value ...] [--resume | --overwrite]
    fnn evaluate CONFIG --checkpoint DIR
    fnn predict CONFIG --checkpoint DIR --input FILE [--output FILE]
    fnn summary CONFIG
    fnn tune CONFIG [--workers N] [--resume | --overwrite]   (see fnn.cli.tune)

A training run writes to ``run_dir`` (default ``runs/<config name>``): ``config.yaml``
(the resolved config), ``checkpoints/step_*`` (:mod:`fnn.checkpoint`), ``metrics.csv``
(one row per epoch), ``tensorboard/`` (if tensorboardX is installed), ``curves.png``
and, for classifiers, ``confusion_matrix.png``, ``model/`` (architecture + weights,
:func:`fnn.load_model`) and ``results.json`` (the final model's test metrics; ``final``
and ``best``: the epoch, checkpoint and logged metrics of the last and of the best epoch).
A config with ``sweep:`` trains its values as members of one program instead
(:mod:`fnn.cli.sweep`).

Training is deterministic: the data order of each epoch comes from ``(seed, epoch)`` and
every other changing value (params, optimizer state, PRNG key, step, the data position)
is in the checkpoint, so ``--resume`` continues bit for bit where an interrupted run
stopped (on CPU), inside an epoch too with ``checkpoint.every_steps``. Config errors
print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fnn.core.errors import ConfigError, FnnError, ShapeError
from fnn.shell.callbacks import (
    BackupAndRestore,
    Callback,
    CSVLogger,
    TensorBoard,
)
from fnn.shell.model import Input, Sequential

CLASSIFICATION_LOSSES = (
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
)
TIME_COLUMN = "time_s"


class _UsageError(ConfigError):
    """A command-line usage problem (exit code 2 like config errors)."""


def _say(*parts: Any) -> None:
    """Print a line (on process 0 only, in a multi-process run)."""
    from fnn.distributed import is_primary

    if is_primary():
        print(*parts, flush=True)


def _join_processes() -> None:
    """``fnn train`` started as several processes (``$FNN_NUM_PROCESSES``,
    ``$FNN_PROCESS_ID``, ``$FNN_COORDINATOR_ADDRESS``, or by a cluster launcher:
    ``srun``, ``mpirun``, an indexed Kubernetes Job, a TPU slice), or with
    ``$FNN_DISTRIBUTED=1`` (JAX's own detection, e.g. on a TPU VM that lists its workers
    only in its metadata): join them before any JAX work. A plain run starts nothing."""
    from fnn import distributed

    forced = os.environ.get("FNN_DISTRIBUTED", "").strip() == "1"
    if forced or os.environ.get(distributed.ENV_NUM_PROCESSES) or distributed.detected_cluster():
        distributed.initialize()


def _barrier(name: str) -> None:
    """Wait for every process (no-op in a single-process run)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------------------
# Building blocks shared by the commands


class Run:
    """Everything a command needs from a validated config: the data splits, the checked
    ``layer``, loss and metrics, and ``model``: an ``fnn.Sequential`` of the config's
    layers, compiled with the config's optimizer (and schedule), loss, metrics and seed."""

    def __init__(self, cfg: dict, config_path: str):
        import jax
        import jax.numpy as jnp

        from fnn.cli import config as config_lib
        from fnn.io import datasets
        from fnn.training import losses
        from fnn.training import step as train

        self.cfg = cfg
        self.config_path = config_path
        # data: readers stream batches from disk (x_* and y_* stay None); dataset: arrays.
        self.stream = cfg["data"] is not None
        self.train = self.val = self.test = None
        if self.stream:
            self.train, self.val, self.test = config_lib.build_readers(cfg)
            x_train, y_train = self.train[0]  # one batch: shapes, dtypes, first labels
            x_val = y_val = x_test = y_test = None
            samples = (x_train, y_train)
        else:
            data = cfg["dataset"]
            try:
                (x_train, y_train), (x_test, y_test) = datasets.load(
                    data["name"], **data["options"]
                )
            except ConfigError as err:
                raise ConfigError(f"dataset: {err}") from None
            if data["validation_split"] > 0:
                (x_train, y_train), (x_val, y_val) = datasets.split(
                    x_train, y_train, data["validation_split"], seed=cfg["seed"]
                )
            else:  # like Keras's validation_data=(x_test, y_test)
                x_val, y_val = x_test, y_test
            samples = (x_train[: cfg["batch_size"]], y_train[: cfg["batch_size"]])
        self.x_train, self.y_train = (None, None) if self.stream else (x_train, y_train)
        self.x_val, self.y_val = x_val, y_val
        self.x_test, self.y_test = x_test, y_test
        self.layer = config_lib.build_model(cfg)
        shape = cfg["model"]["input_shape"] or list(x_train.shape[1:])
        if cfg["model"]["input_shape"] and list(x_train.shape[1:]) != shape:
            raise ConfigError(
                f"model.input_shape: expected the dataset's example shape "
                f"{list(x_train.shape[1:])}, got {shape}."
            )
        self.input_shape = tuple(shape)
        self.input_dtype = x_train.dtype
        self.input_spec = jax.ShapeDtypeStruct(
            (cfg["batch_size"], *self.input_shape), jnp.dtype(x_train.dtype)
        )
        self.loss = config_lib.build_loss(cfg["loss"])
        self.loss_name = losses.get(self.loss).class_name or ""
        self.classifier = _snake(self.loss_name) in CLASSIFICATION_LOSSES
        self.from_logits = bool(cfg["loss"].get("from_logits", False))
        self.num_classes = None
        if self.classifier and not self.stream:
            self.num_classes = int(np.max(y_train)) + 1
        # Shape checks before anything is compiled (ShapeError names the layer).
        try:
            abstract = jax.eval_shape(self.layer.init, jax.random.key(0), self.input_spec)
            out = _output_shape(self.layer, abstract, self.input_spec)
            train.check_batch(self.layer, self.loss, *abstract, samples)
            if "sparse" in _snake(self.loss_name):
                # check_batch sees one batch; an out-of-range label later would be silently
                # dropped under jit, so every split is checked once on the host (streamed
                # data: the first batch only, reading everything would defeat streaming).
                splits = (("train", y_train), ("val", y_val), ("test", y_test))
                for split_name, labels in splits if not self.stream else splits[:1]:
                    losses.check_sparse_labels(f"{split_name} labels", labels, out[-1])
        except FnnError as err:
            raise ConfigError(f"model: {_first_line(err)}") from None
        from fnn.training import metrics as metrics_lib

        if self.classifier and self.stream:  # the model's output width: no pass over labels
            self.num_classes = max(int(out[-1]), 2)
        self.metrics = metrics_lib.get_all(
            cfg["metrics"],
            loss=self.loss,
            num_classes=self.num_classes,
            y_true_shape=y_train[:1].shape,
            y_pred_shape=tuple(out),
        )
        self.metric_names = [m.name for m in self.metrics]
        self.model = Sequential(
            [Input(self.input_shape, dtype=x_train.dtype), *self.layer.spec.config["layers"]]
        )
        self.model.compile(
            optimizer=self.optimizer(), loss=self.loss, metrics=self.metrics, seed=cfg["seed"]
        )

    # Optimizer with its schedule (the number of steps depends on the data).
    def sizes(self) -> tuple[int, int, int]:
        """The number of train, validation and test examples."""
        if self.stream:
            return tuple(d.num_examples for d in (self.train, self.val, self.test))
        return len(self.x_train), len(self.x_val), len(self.x_test)

    def first_examples(self, k: int = 1):
        """``(x [k, ...], y [k])``: the first ``k`` training examples (``k`` <= batch_size
        when streamed), e.g. to build states or trace an export."""
        if self.stream:
            x, y = self.train[0]
            return x[:k], y[:k]
        return self.x_train[:k], self.y_train[:k]

    def require_arrays(self, what: str) -> None:
        """``ConfigError`` if the config streams its data (``what`` needs arrays)."""
        if self.stream:
            raise ConfigError(
                f"data: {what} needs the data in memory; use a dataset: section for it "
                "(data: streams files for fnn train)."
            )

    def steps_per_epoch(self) -> int:
        n, b = self.sizes()[0], self.cfg["batch_size"]
        return n // b if self._drop_remainder() else math.ceil(n / b)

    def _drop_remainder(self) -> bool:
        return self.cfg["distribute"]["strategy"] in ("data_parallel", "sharded")

    def optimizer(self, **hyperparams):
        """The config's optimizer; ``hyperparams`` (``learning_rate``, an option such as
        ``weight_decay``; floats or, for a sweep, arrays) replace the config's values."""
        import optax

        from fnn.training import optimizers

        opt = self.cfg["optimizer"]
        lr = hyperparams.pop("learning_rate", opt["learning_rate"])
        total = self.cfg["epochs"] * self.steps_per_epoch()
        warmup = opt["warmup_epochs"] * self.steps_per_epoch()
        if opt["schedule"] == "cosine":
            if warmup:
                # optax.warmup_cosine_decay_schedule spelled out: it tests the peak with a
                # Python `if`, which a swept (traced) peak cannot pass.
                decay = optax.cosine_decay_schedule(lr, max(total, warmup + 1) - warmup)
                lr = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
            else:
                lr = optax.cosine_decay_schedule(lr, max(total, 1))
        elif warmup:
            lr = optax.linear_schedule(0.0, lr, warmup)
        return optimizers.get(opt["name"], learning_rate=lr, **{**opt["options"], **hyperparams})

    def eval_batch_size(self) -> int:
        return max(self.cfg["batch_size"], 256)

    def evaluate(self, x, y=None) -> dict[str, float]:
        """Loss and metrics of the model on ``(x, y)`` (or a reader ``x``), ``loss`` first."""
        logs = self.model.evaluate(
            x, y, batch_size=self.eval_batch_size(), verbose=0, return_dict=True
        )
        return _ordered(logs, self.metric_names)

    def predict(self, x) -> np.ndarray:
        return self.model.predict(x, batch_size=256, verbose=0)


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out


# The longest error line the CLI prints (a message listing many mismatches is cut).
_MAX_LINE = 600


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines()]
    line = lines[0] if len(lines) == 1 else f"{lines[0]} {'; '.join(lines[1:])}"
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 3] + "..."


def _output_shape(model, abstract, spec):
    from fnn.core.layer import output_shapes

    out = output_shapes(model, *abstract, spec)
    return tuple(out.shape)


def _ordered(logs: dict, names: list[str]) -> dict[str, float]:
    """``loss`` first, then the metrics in config order, then their ``val_*`` (jit returns
    dicts key-sorted), then any other keys."""
    keys = ["loss", *names]
    keys += [f"val_{k}" for k in keys]
    return {k: logs[k] for k in keys if k in logs} | {
        k: v for k, v in logs.items() if k not in keys
    }


# ---------------------------------------------------------------------------------------
# train


def _run_dir(cfg: dict, config_path: str) -> Path:
    return Path(cfg["run_dir"] or Path("runs") / Path(config_path).stem)


def _read_metrics_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _resolve_rules_for(model, distribution):
    """The shardings ``distribution``'s rules give ``model.params`` (raises on a bad rule)."""
    from fnn.distributed import resolve_rules

    return resolve_rules(dict(distribution.rules), model.params, distribution.mesh)


def _keep_rows(path: Path, epochs: int) -> None:
    """Drop the rows of ``metrics.csv`` after ``epochs`` completed epochs (written after
    the backup a resumed run starts from), so the resumed run appends exactly once."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows:
        column = rows[0].index("epoch")
        rows = rows[:1] + [r for r in rows[1:] if int(r[column]) < epochs]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    os.replace(tmp, path)  # a second interruption leaves the old file, not half of it


class _EpochLines(Callback):
    """The CLI's epoch line: adds ``time_s`` (seconds since the epoch began, validation
    included) to the logs, then prints ``epoch  3/30  loss ...  (0.18s)``. A non-finite
    epoch loss stops training (``non_finite`` keeps the epoch and value): checked once per
    epoch, where the running mean already holds every step's loss, so no step waits for
    the device (``TerminateOnNaN`` reads the loss after every batch)."""

    def __init__(self, metric_names: list[str]):
        super().__init__()
        self.metric_names = metric_names
        self.non_finite: tuple[int, float] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._tick = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(logs["loss"]):
            self.non_finite = (epoch, logs["loss"])
            self.model.stop_training = True
            return
        logs[TIME_COLUMN] = round(time.perf_counter() - self._tick, 3)
        epochs = self.params["epochs"]
        parts = [f"epoch {epoch + 1:>{len(str(epochs))}}/{epochs}"]
        ordered = _ordered(logs, self.metric_names)
        parts += [f"{k} {v:.4f}" for k, v in ordered.items() if k != TIME_COLUMN]
        _say("  ".join([*parts, f"({logs[TIME_COLUMN]:.2f}s)"]))


def cmd_train(args) -> int:
    """``fnn train CONFIG``: fit the configured model and write the run directory; exit code."""
    import jax

    from fnn.cli import config as config_lib
    from fnn.distributed import is_primary
    from fnn.training import step as train

    _join_processes()
    cfg = config_lib.load_config(args.config, args.set)
    primary = is_primary()  # process 0 writes the run files; every process trains
    run_dir = _run_dir(cfg, args.config)
    if run_dir.exists() and not run_dir.is_dir():
        raise _UsageError(f"run_dir: {run_dir} is a file, not a directory; choose another run_dir.")
    ckpt_dir = run_dir / "checkpoints"
    if args.overwrite and args.resume:
        raise _UsageError("--resume and --overwrite exclude each other.")
    if ckpt_dir.exists() and any(ckpt_dir.glob("step_*")) and not args.resume:
        if not args.overwrite:
            raise _UsageError(
                f"run_dir: {run_dir} already holds checkpoints; pass --resume to continue, "
                "--overwrite to start again, or --set run_dir=... for a new run."
            )
        _barrier("fnn train: run_dir checked")  # before process 0 deletes it
        if primary:
            shutil.rmtree(run_dir)
    run = Run(cfg, args.config)
    model = run.model
    _check_fairness(run)  # before any training
    _check_explain(run)
    if cfg["sweep"] is not None:  # members in one program: fnn.cli.sweep
        run.require_arrays("sweep")
        from fnn.cli import sweep

        if args.resume:
            raise _UsageError("sweep: --resume is not supported (a sweep writes no checkpoints).")
        if primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(_dump_yaml(cfg))
        return sweep.cmd_train_sweep(run, run_dir, _say)
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(_dump_yaml(cfg))
    _barrier("fnn train: run_dir ready")
    ck = cfg["checkpoint"]
    backup = BackupAndRestore(
        ckpt_dir,
        save_freq=ck["every_steps"] or "epoch",
        every_epochs=ck["every_epochs"],
        max_to_keep=ck["max_to_keep"],
        keep_best=ck["keep_best"],
        monitor=ck["monitor"],
        mode=ck["mode"],
        delete_checkpoint=False,
        metadata={"config": cfg},
    )
    epochs, batch_size = cfg["epochs"], cfg["batch_size"]
    if args.resume:
        done = backup.latest_epoch()
        if primary:
            _keep_rows(run_dir / "metrics.csv", done or 0)
        if done is None:
            _say(f"resume: no checkpoint in {ckpt_dir}; starting from scratch")
        else:
            step = backup.manager.latest_step()
            _say(f"resumed from {backup.manager.path(step)} (epoch {done}, step {step})")
            _say_changed_epochs(backup.manager.path(step), epochs)
    devices = None
    if cfg["distribute"]["strategy"] == "data_parallel":
        devices = cfg["distribute"]["num_devices"] or jax.device_count()
    distribution = None
    if cfg["distribute"]["strategy"] == "sharded":
        from fnn.distributed import Distribution, sharding_table

        dist = cfg["distribute"]
        distribution = Distribution.get({"mesh": dist["mesh"], "rules": dist["rules"]})
        devices = distribution.mesh.size
        shardings = _resolve_rules_for(model, distribution)
        _say(sharding_table(model.params, shardings))
    # TensorBoard before the epoch line (which adds time_s), the CSV row and the backup after.
    lines = _EpochLines(run.metric_names)
    tensorboard = cfg["tensorboard"]
    if tensorboard is None:  # the default: write event files only if tensorboardX is there
        import importlib.util

        tensorboard = (
            "tensorboardX" in sys.modules or importlib.util.find_spec("tensorboardX") is not None
        )
    callbacks = [TensorBoard(run_dir / "tensorboard")] if tensorboard and primary else []
    callbacks.append(lines)
    if primary:
        callbacks.append(CSVLogger(run_dir / "metrics.csv", append=args.resume))
    callbacks.append(backup)  # every process: checkpoint.save is collective, process 0 writes
    # Counted as `fnn summary` (and Keras) count: params plus state, trainable in brackets.
    n_params = model.count_params()
    n_trainable = sum(int(np.prod(np.shape(p))) for p in model.trainable_weights)
    n_train, n_val, n_test = run.sizes()
    _say(
        f"training {Path(args.config).name}: {n_params:,} params ({n_trainable:,} trainable), "
        f"{n_train} train / {n_val} val / {n_test} test examples"
        f"{' (streamed from disk)' if run.stream else ''}, {epochs} epochs, "
        f"{devices or 1} device(s) -> {run_dir}"
    )
    start = time.perf_counter()
    # Streamed: the reader batches and shuffles the examples (fit's shuffle would only
    # permute its batches again).
    inputs = (run.train,) if run.stream else (run.x_train, run.y_train)
    history = model.fit(
        *inputs,
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
        callbacks=callbacks,
        validation_data=run.val if run.stream else (run.x_val, run.y_val),
        shuffle=not run.stream,
        steps_per_epoch=run.steps_per_epoch(),
        validation_batch_size=run.eval_batch_size(),
        devices=None if distribution is not None else devices,
        distribution=distribution,
        dp=cfg["dp"],
    )
    if lines.non_finite is not None:  # one line and exit code 1
        epoch, value = lines.non_finite
        raise train.NonFiniteLossError(
            f"training stopped: non-finite loss ({value}) in epoch {epoch + 1}. Lower the "
            "learning rate, clip gradients (global_clipnorm=...), or check the inputs for NaN."
        )
    wall = time.perf_counter() - start
    test = run.evaluate(run.test) if run.stream else run.evaluate(run.x_test, run.y_test)
    results = {"test": test, "epochs": epochs, "wall_time_s": round(wall, 2)}
    if cfg["dp"] is not None and history.history.get("epsilon"):
        results["dp"] = {"epsilon": history.history["epsilon"][-1], "delta": cfg["dp"]["delta"]}
    report = _fairness(run)
    if report is not None:
        results["fairness"] = report
    results.update(_final_and_best(backup.manager, ck))
    if primary:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    # The saved compile settings name the optimizer, so fnn.load_model(run_dir / "model")
    # is ready to use; its schedule and state are training details (in checkpoints/).
    model.compile(
        optimizer=cfg["optimizer"]["name"], loss=run.loss, metrics=cfg["metrics"], seed=cfg["seed"]
    )
    model.save(run_dir / "model")
    rows = _read_metrics_csv(run_dir / "metrics.csv") if primary else []  # resumed ones too
    plots = _plots(run, rows, run_dir) if cfg["plots"] and rows else []
    if cfg["explain"]["method"] is not None and primary:
        plots.append(_explain(run, run_dir))
    tests = "  ".join(f"test_{k} {v:.4f}" for k, v in test.items())
    if "best" in results:
        _say(_best_line(results, ck["monitor"]))
    final_epoch = results.get("final", {}).get("epoch", epochs)
    _say(f"done in {wall:.1f}s: final model (epoch {final_epoch}, in model/): {tests}")
    if report is not None:
        from fnn.training.fairness import format_report

        _say(f"fairness on the test split ({_fairness_source(cfg)}):\n{format_report(report)}")
    _say(
        f"wrote {run_dir}/: metrics.csv, config.yaml, checkpoints/, model/, results.json"
        + (", " + ", ".join(plots) if plots else "")
    )
    return 0


def _final_and_best(manager, ck: dict) -> dict:
    """``results.json``'s ``final`` (the last epoch: what ``model/`` and ``test`` hold) and,
    with ``keep_best``, ``best`` (the checkpoint with the best monitored value), each with
    its epoch, checkpoint and the metrics logged at that epoch, so the two are never mixed
    up when they differ."""

    def entry(step: int) -> dict:
        logged = {k: v for k, v in manager.metrics(step).items() if k != TIME_COLUMN}
        epoch = int(logged.pop("epoch"))
        return {"epoch": epoch, "checkpoint": str(manager.path(step)), "metrics": logged}

    out = {}
    latest = manager.latest_step()
    if latest is not None:
        out["final"] = entry(latest)
    best = manager.best_step() if ck["keep_best"] else None
    if best is not None:
        out["best"] = {**entry(best), "monitor": ck["monitor"]}
    return out


def _best_line(results: dict, monitor: str) -> str:
    """One line telling the best checkpoint from the final model."""
    best, final = results["best"], results.get("final", {})
    value = best["metrics"].get(monitor, float("nan"))
    if best["epoch"] == final.get("epoch"):
        return f"best checkpoint: the final epoch {best['epoch']} ({monitor} {value:.4f})"
    theirs = final.get("metrics", {}).get(monitor, float("nan"))
    return (
        f"best checkpoint: epoch {best['epoch']} ({monitor} {value:.4f}) in {best['checkpoint']}; "
        f"the final model and the test metrics below are epoch {final.get('epoch')}'s "
        f"({monitor} {theirs:.4f}); results.json has both (best, final)"
    )


def _explain_images(run: Run) -> tuple[int, ...]:
    """The image shape attributions are drawn in: the input shape, or ``(s, s)`` for a
    flat input of ``s * s`` features (digits: 8 x 8). Raises ``ConfigError`` otherwise."""
    shape = run.input_shape
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    if len(shape) in (2, 3):
        return shape
    if side * side == shape[0]:
        return (side, side)
    raise ConfigError(
        f"explain: attribution images need image inputs ([h, w] or [h, w, c]) or flat inputs "
        f"with a square number of features, got example shape {list(shape)}."
    )


def _check_explain(run: Run) -> None:
    explain = run.cfg["explain"]
    if explain["method"] is None:
        return
    run.require_arrays("explain")
    _explain_images(run)
    if not run.classifier:
        raise ConfigError(
            "explain: attributions of the predicted class need a classification loss."
        )
    window = explain["window"]
    if window is not None and len(window) != len(run.input_shape):
        raise ConfigError(
            f"explain.window: expected {len(run.input_shape)} entries (one per input axis of "
            f"{list(run.input_shape)}), got {window}."
        )


def _explain(run: Run, run_dir: Path) -> str:
    """Attributions (``fnn.explain``, of the predicted class) of the first test examples,
    drawn over them in ``attributions_<method>.png``; returns the file name."""
    from fnn.training import explain as explain_lib

    cfg = run.cfg["explain"]
    method, x = cfg["method"], run.x_test[: cfg["examples"]]
    options = {}
    if method == "occlusion":
        options["window"] = cfg["window"] or [1] * len(run.input_shape)
    attributions = np.asarray(getattr(explain_lib, method)(run.model, x, **options))
    predicted = _classes(run.predict(x), run.from_logits)
    shape = _explain_images(run)
    name = f"attributions_{method}.png"
    explain_lib.plot_attributions(
        x.reshape(len(x), *shape),
        attributions.reshape(len(x), *shape),
        str(run_dir / name),
        titles=[f"{t} -> {p}" for t, p in zip(run.y_test[: len(x)], predicted)],
    )
    return name


def _fairness_source(cfg: dict) -> str:
    fair = cfg["fairness"]
    if fair["path"] is not None:
        return f"groups from {fair['path']}"
    split = fair["split_at"]
    column = f"input column {fair['feature']}"
    return column if split is None else f"{column} > {split}"


def fairness_groups(cfg: dict, x_test: np.ndarray) -> np.ndarray | None:
    """The group of each test example as the config's ``fairness`` key gives it (None when
    the key is unset): input column ``feature`` (``"> split_at"``/``"<= split_at"`` when
    split), or the array in the .npy file ``path``."""
    fair = cfg["fairness"]
    if fair["path"] is not None:
        try:
            groups = np.load(fair["path"], allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ConfigError(f"fairness.path: cannot read {fair['path']!r}: {err}") from None
        if groups.shape[:1] != (len(x_test),):
            raise ConfigError(
                f"fairness.path: expected one group per test example ({len(x_test)}), got an "
                f"array of shape {list(groups.shape)}."
            )
        return groups.reshape(len(x_test), -1)[:, 0]
    if fair["feature"] is None:
        return None
    flat = x_test.reshape(len(x_test), -1)
    if fair["feature"] >= flat.shape[1]:
        raise ConfigError(
            f"fairness.feature: expected an input column index below {flat.shape[1]}, got "
            f"{fair['feature']}."
        )
    column = flat[:, fair["feature"]]
    split = fair["split_at"]
    if split is None:
        return column
    return np.where(column > split, f"> {split:g}", f"<= {split:g}")


def _check_fairness(run: Run) -> None:
    if run.cfg["fairness"]["feature"] is not None or run.cfg["fairness"]["path"] is not None:
        run.require_arrays("fairness")
    if fairness_groups(run.cfg, run.x_test) is None:
        return
    if not run.classifier:
        raise ConfigError("fairness: per-group metrics need a classification loss.")
    pos, classes = run.cfg["fairness"]["pos_label"], max(run.num_classes, 2)
    if pos >= classes:
        raise ConfigError(f"fairness.pos_label: expected a class below {classes}, got {pos}.")


def _fairness(run: Run) -> dict | None:
    """Per-group test metrics (:func:`fnn.metrics.group_report`) when ``fairness`` is set."""
    groups = fairness_groups(run.cfg, run.x_test)
    if groups is None:
        return None
    from fnn.training.fairness import group_report

    return group_report(
        run.y_test,
        run.predict(run.x_test),
        groups,
        num_classes=max(run.num_classes, 2),
        pos_label=run.cfg["fairness"]["pos_label"],
        threshold=0.0 if run.from_logits else 0.5,
    )


def _say_changed_epochs(path: Path, epochs: int) -> None:
    """Say explicitly when ``--resume`` runs to another number of epochs than the run that
    wrote the checkpoint (``--set epochs=N``): the schedule is rebuilt for the new total."""
    from fnn.io import checkpoint

    saved = checkpoint.read_info(path)["metadata"].get("config", {}).get("epochs")
    if isinstance(saved, int) and saved != epochs:
        _say(
            f"resume: epochs changed from {saved} (the checkpointed run) to {epochs}: training "
            f"continues to epoch {epochs} and the learning-rate schedule is rebuilt for "
            f"{epochs} epochs."
        )


def _dump_yaml(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)


def _plots(run: Run, history: list[dict], run_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    keys = [k for k in history[0] if k not in ("epoch", TIME_COLUMN) and not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    epochs = [int(row["epoch"]) + 1 for row in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [row[key] for row in history], label=f"train {key}")
        if f"val_{key}" in history[0]:
            ax.plot(epochs, [row[f"val_{key}"] for row in history], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
    written.append("curves.png")
    if run.classifier and not run.stream:  # streamed: no test arrays to predict in one go
        logits = run.predict(run.x_test)
        predicted = _classes(logits, run.from_logits)
        matrix = confusion_matrix(run.y_test, predicted, max(run.num_classes, 2))
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
        accuracy = float(np.trace(matrix) / max(matrix.sum(), 1))
        ax.set_title(f"confusion matrix (test accuracy {accuracy:.4f})")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(len(matrix)))
        ax.set_yticks(range(len(matrix)))
        fig.tight_layout()
        fig.savefig(run_dir / "confusion_matrix.png", dpi=100)
        plt.close(fig)
        written.append("confusion_matrix.png")
    return written


def _classes(outputs: np.ndarray, from_logits: bool) -> np.ndarray:
    """Class indices: argmax over classes, or one logit/probability thresholded at 0/0.5."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        flat = outputs.reshape(len(outputs))
        return (flat > (0.0 if from_logits else 0.5)).astype(np.int32)
    return np.argmax(outputs, axis=-1).astype(np.int32)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[num_classes, num_classes]`` counts, rows true class, columns predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)), 1)
    return matrix


# ---------------------------------------------------------------------------------------
# evaluate / predict / summary


def _resolve_checkpoint(path: str) -> Path:
    from fnn.io.checkpoint import INDEX_FILE, CheckpointError, list_steps

    p = Path(path)
    # A run's model/ folder is a whole-model save (no optimizer state): use the run's
    # latest training checkpoint instead, as for the run directory itself.
    run_model = p.name == "model" and (p.parent / "checkpoints").is_dir()
    if (p / INDEX_FILE).exists() and not run_model:
        return p
    candidates = (p.parent / "checkpoints",) if run_model else (p, p / "checkpoints")
    for candidate in candidates:
        steps = list_steps(candidate)
        if steps:
            return candidate / f"step_{steps[-1]:08d}"
    raise CheckpointError(
        f"--checkpoint {path}: no checkpoint there (expected a checkpoint directory, a "
        "checkpoints/ directory or a run directory)."
    )


def _restore(run: Run, path: str):
    """The checkpoint directory for ``--checkpoint path``, with its train state restored
    into ``run.model`` (the architecture is checked against the config's)."""
    from fnn.io import checkpoint

    directory = _resolve_checkpoint(path)
    model = run.model
    # A fit of no epochs creates the optimizer and metric states: the checkpoint's tree.
    model.fit(*run.first_examples(1), epochs=0, verbose=0)
    model.train_state = checkpoint.restore(directory, target=model.train_state)
    return directory, model.train_state


def cmd_evaluate(args) -> int:
    """``fnn evaluate CONFIG --checkpoint DIR``: test-split metrics of a checkpoint; exit code."""
    from fnn.cli import config as config_lib

    cfg = config_lib.load_config(args.config, args.set)
    run = Run(cfg, args.config)
    _check_fairness(run)
    directory, ts = _restore(run, args.checkpoint)
    test = run.evaluate(run.test) if run.stream else run.evaluate(run.x_test, run.y_test)
    _say(f"checkpoint {directory} (step {int(ts.step)}) on {run.sizes()[2]} test examples:")
    _say("  ".join(f"test_{k} {v:.4f}" for k, v in test.items()))
    _say(json.dumps({f"test_{k}": v for k, v in test.items()}))
    report = _fairness(run)
    if report is not None:
        from fnn.training.fairness import format_report

        _say(f"fairness on the test split ({_fairness_source(cfg)}):\n{format_report(report)}")
        _say(json.dumps({"fairness": report}))
    return 0


def load_inputs(path: str) -> np.ndarray:
    """Inputs for ``fnn predict``: ``.npy``, ``.npz`` (array ``x`` or its only array) or a
    numeric ``.csv`` (optional header); never unpickled."""
    p = Path(path)
    if not p.is_file():
        raise _UsageError(f"--input: no such file {path!r}.")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                if "x" in data.files:
                    return data["x"]
                if len(data.files) == 1:
                    return data[data.files[0]]
                raise _UsageError(f"--input {path}: expected an array 'x', found {data.files}.")
        if p.suffix == ".csv":
            with open(p) as f:
                first = f.readline()
            try:
                [float(v) for v in first.split(",")]
                skip = 0
            except ValueError:
                skip = 1
            return np.loadtxt(p, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float32)
    except (ValueError, OSError) as err:
        raise _UsageError(f"--input {path}: cannot read it: {err}") from None
    raise _UsageError(f"--input {path}: expected a .npy, .npz or .csv file.")


def cmd_predict(args) -> int:
    """``fnn predict CONFIG --checkpoint DIR --input FILE``: write predictions; exit code."""
    from fnn.cli import config as config_lib

    cfg = config_lib.load_config(args.config, args.set)
    run = Run(cfg, args.config)
    x = load_inputs(args.input)
    want = run.input_shape
    if x.shape[1:] != want:
        if x.ndim >= 2 and int(np.prod(x.shape[1:])) == int(np.prod(want)):
            x = x.reshape((len(x), *want))  # e.g. flat CSV rows for image models
        else:
            raise ShapeError(
                f"--input {args.input}: expected examples of shape {list(want)}, got array of "
                f"shape {list(x.shape)}."
            )
    x = x.astype(run.input_dtype)
    directory, ts = _restore(run, args.checkpoint)
    outputs = run.predict(x)
    lines = []
    if run.classifier:
        classes = _classes(outputs, run.from_logits)
        lines.append("index,class")
        lines += [f"{i},{c}" for i, c in enumerate(classes)]
    else:
        flat = outputs.reshape(len(outputs), -1)
        lines.append("index," + ",".join(f"output_{j}" for j in range(flat.shape[1])))
        lines += [f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(flat)]
    text = "\n".join(lines) + "\n"
    if args.output:
        out = Path(args.output)
        if out.suffix == ".npz":
            np.savez(out, outputs=outputs, **({"classes": classes} if run.classifier else {}))
        else:
            out.write_text(text)
        _say(f"wrote {len(outputs)} predictions from {directory} to {out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_tune(args) -> int:
    """``fnn tune``: :mod:`fnn.cli.tune`, its trials trained by this module's ``Run``."""
    from fnn.cli import tune

    return tune.cmd_tune(args, tune.TrainPieces(Run, _EpochLines))


def cmd_export(args) -> int:
    """``fnn export``: the restored checkpoint as a StableHLO or ONNX file (:func:`fnn.export`)."""
    from fnn.cli import config as config_lib
    from fnn.io.export import export

    cfg = config_lib.load_config(args.config, args.set)
    run = Run(cfg, args.config)
    directory, ts = _restore(run, args.checkpoint)
    suffix = {"onnx": ".onnx", "stablehlo": ".stablehlo"}.get(args.format, "")
    out = args.output or str(_run_dir(cfg, args.config) / f"model{suffix}")
    sample = run.first_examples(1)[0]
    path = export(run.model, ts.params, ts.state, sample, out, format=args.format)
    _say(f"exported {directory} (step {int(ts.step)}) as {args.format} to {path}")
    return 0


def cmd_summary(args) -> int:
    """``fnn summary CONFIG``: print the configured model's layers and shapes; exit code."""
    from fnn.cli import config as config_lib
    from fnn.core.summary import summary

    cfg = config_lib.load_config(args.config, args.set)
    run = Run(cfg, args.config)
    _say(
        f"{Path(args.config).name}: dataset {cfg['dataset']['name']} "
        f"{list(run.input_shape)} -> loss {run.loss_name}"
    )
    summary(run.layer, run.input_spec)
    return 0


# ---------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of the ``fnn`` command and its four subcommands."""
    parser = argparse.ArgumentParser(
        prog="fnn", description="Train, evaluate and inspect fnn models from YAML configs."
    )
    parser.add_argument("--version", action="version", version=f"fnn {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_text, fn):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", help="YAML config file (see configs/)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set epochs=5 --set optimizer.learning_rate=0.01",
        )
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        p.set_defaults(fn=fn)
        return p

    p = add("train", "train a model; writes checkpoints, metrics and plots to run_dir", cmd_train)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run_dir first")
    checkpoint_help = (
        "a checkpoint directory (checkpoints/step_*), a run's checkpoints/ directory (its "
        "latest step is used) or the run directory itself"
    )
    p = add("evaluate", "evaluate a checkpoint on the test split", cmd_evaluate)
    p.add_argument("--checkpoint", required=True, metavar="DIR", help=checkpoint_help)
    p = add("predict", "predict with a checkpoint on inputs from a file", cmd_predict)
    p.add_argument("--checkpoint", required=True, metavar="DIR", help=checkpoint_help)
    p.add_argument("--input", required=True, metavar="FILE", help=".npy, .npz or .csv")
    p.add_argument("--output", metavar="FILE", help=".csv or .npz (default: print CSV)")
    p = add("export", "export a checkpoint for serving (StableHLO or ONNX)", cmd_export)
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--format", default="stablehlo", choices=["stablehlo", "onnx"])
    p.add_argument("--output", metavar="FILE", help="default: RUN_DIR/model.<format>")
    add("summary", "print the model's layers, shapes and parameter counts", cmd_summary)
    from fnn.cli import tune as tune_lib  # stdlib-only at import: Optuna loads when it runs

    tune_help = "search hyperparameters over a config's search: ranges (Optuna study)"
    tune_lib.add_arguments(add("tune", tune_help, cmd_tune))
    return parser


def _version() -> str:
    # The installed distribution's version (importing the fnn package from here would
    # point up the layer order).
    from importlib import metadata

    try:
        return metadata.version("fnn")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fnn`` command line; returns the exit code: 2 for bad input (config,
    shapes, usage), 1 for a failure at run time, each with one line on stderr (the full
    traceback only with ``--debug``)."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, ShapeError) as err:
        if args.debug:
            raise
        print(f"fnn: error: {_first_line(err)}", file=sys.stderr)
        return 2
    except FnnError as err:
        if args.debug:
            raise
        print(f"fnn: error: {_first_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fnn predict ... | head`
        sys.stderr.close()
        return 141
    except Exception as err:  # a bug or an environment failure: still one line
        if args.debug:
            raise
        print(
            f"fnn: error: {type(err).__name__}: {_first_line(err)} (run with --debug for "
            "the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
