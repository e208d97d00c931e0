"""``sweep:`` in a training config: several hyperparameter values trained as members of
one compiled program (:mod:`fnn.training.ensemble`'s sweeps).

::

    sweep:
      optimizer.learning_rate: [1.0e-3, 3.0e-3, 1.0e-2]
      optimizer.options.weight_decay: [0.0, 1.0e-4, 1.0e-3]   # adamw, lion only
      model.layers[2].Dropout.rate: [0.0, 0.2, 0.5]            # a Dropout entry of model.layers
      loss.label_smoothing: [0.0, 0.1, 0.1]                    # crossentropy losses

Member i trains with the i-th value of every list (equal lengths), from the same
initialisation, on the same batches in the same order as ``fnn train --set KEY=VALUE``
with those values would (the learning-rate schedule and warmup included). The values are
inputs of the compiled program, not constants in it: the optimizer's live in its state
(``optax.inject_hyperparams``), the dropout rate and label smoothing in the member's state,
from which each step builds its layer and loss (``fnn.train.make_hyper_steps``); so other
values reuse the compiled program. The members run through the one loop
(:func:`fnn.training.loop.fit`) with a member-axis ``Trainer``, on ``Model.fit``'s batches
(``fnn.io.data_adapter.ArrayData.epoch_data``). ``fnn train`` then writes ``sweep.csv``
(member, values, final train, validation and test metrics), ``sweep.png`` (each metric
against each swept value; needs matplotlib) and ``config.yaml`` to ``run_dir``; no
checkpoints or model file (``--resume`` is refused). ``fnn tune`` trains batches of trials
this way (:mod:`fnn.cli.tune`).
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import re
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from fnn.core.errors import ConfigError, closest

__all__ = [
    "SWEEPABLE",
    "check_sweep",
    "cmd_train_sweep",
    "sweepable",
    "train_members",
    "write_results",
]

# Config key -> the optimizer argument it sweeps.
OPTIMIZER_KEYS = {
    "optimizer.learning_rate": "learning_rate",
    "optimizer.options.weight_decay": "weight_decay",
}
LABEL_SMOOTHING = "loss.label_smoothing"
# The rate of the Dropout entry i of model.layers (a top-level layer of the model).
_DROPOUT = re.compile(r"model\.layers\[(\d+)\]\.Dropout\.rate")
SWEEPABLE = (*OPTIMIZER_KEYS, "model.layers[i].Dropout.rate", LABEL_SMOOTHING)
# Optimizers whose weight decay is their own argument (traceable); fnn's generic decoupled
# decay for the others is switched on by a Python test of the value, so it cannot be swept.
_OWN_WEIGHT_DECAY = ("adamw", "lion")


def _why_not(key: str, cfg: Mapping) -> str | None:
    """Why config ``key`` cannot be swept under ``cfg`` (None: it can)."""
    if key in OPTIMIZER_KEYS:
        name = str(cfg["optimizer"]["name"]).lower()
        if key.endswith("weight_decay") and name not in _OWN_WEIGHT_DECAY:
            return (
                f"optimizer {name!r} has no weight_decay argument of its own to sweep; use "
                f"{' or '.join(_OWN_WEIGHT_DECAY)}."
            )
        return None
    if key == LABEL_SMOOTHING:
        from fnn.training import losses

        loss = losses.get(cfg["loss"]["name"])
        if "label_smoothing" not in inspect.signature(type(loss)).parameters:
            return f"loss {cfg['loss']['name']!r} has no label_smoothing argument."
        return None
    match = _DROPOUT.fullmatch(key)
    if match is None:
        return (
            f"cannot be swept in one program.{closest(key, list(SWEEPABLE))} Sweepable keys: "
            f"{', '.join(SWEEPABLE)}."
        )
    layers = cfg["model"]["layers"]
    i = int(match.group(1))
    if i >= len(layers) or not (isinstance(layers[i], Mapping) and "Dropout" in layers[i]):
        return f"model.layers[{i}] is not a Dropout entry of the config's {len(layers)} layers."
    return None


def sweepable(key: str, cfg: Mapping) -> bool:
    """Whether the sweep mechanism can vary config ``key`` under the validated ``cfg``."""
    return _why_not(key, cfg) is None


def check_sweep(cfg: Mapping) -> dict[str, list[float]] | None:
    """The validated ``sweep`` of a (defaults-filled) config: ``{config key: [n] floats}``,
    or None when unset; raises a one-line ``ConfigError`` naming the bad key or value.

    >>> cfg = {"optimizer": {"name": "adam"}, "distribute": {"strategy": "none"}}
    >>> check_sweep(cfg | {"sweep": {"optimizer.learning_rate": [1e-3, 1e-2]}})
    {'optimizer.learning_rate': [0.001, 0.01]}
    """
    sweep = cfg.get("sweep")
    if sweep is None:
        return None
    if not isinstance(sweep, Mapping) or not sweep:
        raise ConfigError(
            f"sweep: expected a mapping like {{optimizer.learning_rate: [1.0e-3, 1.0e-2]}}, "
            f"got {sweep!r}."
        )
    out: dict[str, list[float]] = {}
    for key, values in sweep.items():
        key = str(key)
        why = _why_not(key, cfg)
        if why is not None:
            raise ConfigError(f"sweep.{key}: {why}")
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            raise ConfigError(f"sweep.{key}: expected a non-empty list of numbers, got {values!r}.")
        for v in values:
            if key == "optimizer.learning_rate":
                ok, what = v > 0, "> 0"
            elif key.endswith("Dropout.rate"):
                ok, what = 0 <= v < 1, "in [0, 1)"
            elif key == LABEL_SMOOTHING:
                ok, what = 0 <= v <= 1, "in [0, 1]"
            else:
                ok, what = v >= 0, ">= 0"
            if not math.isfinite(v) or not ok:
                raise ConfigError(f"sweep.{key}: expected finite values {what}, got {v!r}.")
        out[key] = [float(v) for v in values]
    sizes = {k: len(v) for k, v in out.items()}
    if len(set(sizes.values())) != 1:
        raise ConfigError(
            f"sweep: expected lists of one length (one value per member), got {sizes}."
        )
    if cfg["distribute"]["strategy"] != "none":
        raise ConfigError(
            f"sweep: expected distribute.strategy none, got {cfg['distribute']['strategy']!r} "
            "(members are not placed on several devices)."
        )
    return out


# run -> {(swept keys, n): (member Trainer, member init)}: a later call with other values
# (or a later batch of trials) reuses the compiled programs.
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _member_build(run, keys: tuple[str, ...]):
    """``build(values) -> (layer, loss)`` of ``fnn.train.make_hyper_steps``: ``run``'s model
    with the swept Dropout rates, its loss with the swept label smoothing (traced values)."""
    from fnn.core.spec import rebuild
    from fnn.training import losses

    base = run.model.layer
    dropouts = {int(_DROPOUT.fullmatch(k).group(1)): k for k in keys if _DROPOUT.fullmatch(k)}
    children = [child for _, child in (base.children or ())]
    if dropouts and len(children) != len(run.cfg["model"]["layers"]):
        raise ConfigError(
            f"sweep: expected the model's {len(children)} layers to be the config's "
            f"{len(run.cfg['model']['layers'])} model.layers entries."
        )

    def build(values):
        layer, loss = base, run.loss
        if dropouts:
            layers = [
                rebuild(c, rate=values[dropouts[i]]) if i in dropouts else c
                for i, c in enumerate(children)
            ]
            layer = rebuild(base, layers=tuple(layers))
        if LABEL_SMOOTHING in values:
            config = {**run.cfg["loss"], "label_smoothing": values[LABEL_SMOOTHING]}
            loss = losses.from_entry(config)
        return layer, loss

    return build


def _programs(run, keys: tuple[str, ...], n: int):
    """The member ``Trainer`` and the jitted ``init(params, state, rng, optimizer values,
    layer/loss values)`` of a sweep of ``n`` members over config ``keys`` on ``run``'s
    model (built once per run, keys and member count)."""
    import jax
    import jax.numpy as jnp

    from fnn.shell import layer_views
    from fnn.training import ensemble
    from fnn.training import loop as loop_lib
    from fnn.training import step as step_lib

    if layer_views.frozen_paths(run.model.layer):  # Model.fit would mask their updates
        raise ConfigError(
            "sweep: layers with trainable: false are not supported in a sweep; unfreeze "
            "them or train the values one by one."
        )
    cache = _PROGRAMS.setdefault(run, {})
    if (keys, n) not in cache:
        args = [OPTIMIZER_KEYS[k] for k in keys if k in OPTIMIZER_KEYS]
        tx = ensemble.sweep_optimizer(run.optimizer, dict.fromkeys(args, 0.0))
        steps = ensemble.make_hyper_steps(_member_build(run, keys), tx, run.metrics)
        trainer = loop_lib.Trainer(
            run.model.layer, run.loss, tx, run.metrics, members=n, steps=steps
        )

        def one(params, state, rng, optimizer_values, values):
            # Member i is fnn train's state with its own values: same params, same rng.
            ts = step_lib.TrainState(
                step=jnp.zeros([], jnp.int32),
                params=params,
                state=state,
                opt_state=tx.init(params),
                rng=rng,
                metric_states=step_lib.init_metric_states(run.metrics),
            )
            ts = ensemble.set_sweep_hyperparams(ts, optimizer_values)
            return ensemble.hyper_state(ts, values)

        init = jax.jit(jax.vmap(one, in_axes=(None, None, None, 0, 0)))
        cache[keys, n] = trainer, init
    return cache[keys, n]


def _per_member(logs: Mapping, n: int) -> dict[str, np.ndarray]:
    """The member trainer's logs (each metric's mean, then ``<name>_member_<i>``) as
    ``{name: [n]}``."""
    names = [k for k in logs if f"{k}_member_0" in logs]
    return {k: np.asarray([logs[f"{k}_member_{i}"] for i in range(n)]) for k in names}


class _Hooks:
    """:func:`fnn.training.loop.fit`'s hooks for a member train state: no callbacks, only
    ``on_epoch_end(epoch, logs) -> stop`` (logs hold ``[n]`` arrays)."""

    def __init__(self, train_state, on_epoch_end: Callable[[int, dict], bool] | None):
        self.train_state = train_state
        self.stop_training = False
        self.initial_epoch = 0
        self._on_epoch_end = on_epoch_end

    def wants(self, hook: str) -> bool:
        del hook
        return False

    def on_epoch_end(self, epoch, logs=None):
        if self._on_epoch_end is not None and self._on_epoch_end(epoch, logs):
            self.stop_training = True

    def __getattr__(self, hook: str):
        if hook.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(hook)


def train_members(
    run, values: Mapping[str, list[float]], *, on_epoch_end=None
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Train ``run``'s model (a ``fnn.cli.commands.Run``) once per member, member i with
    ``{key: v[i]}`` of ``values`` (sweepable config keys, e.g.
    ``{"optimizer.learning_rate": [n]}``), as one vmapped program through the one loop;
    ``on_epoch_end(epoch, logs) -> stop`` sees each epoch's ``{key: [n]}`` logs (``val_*``
    included). Returns ``(history, test)``: a ``{key: [n]}`` dict per epoch run and the
    members' ``[n]`` test metrics."""
    from fnn.io import data_adapter as data_lib
    from fnn.training import loop as loop_lib

    cfg = run.cfg
    keys = tuple(values)
    n = len(next(iter(values.values())))
    trainer, init = _programs(run, keys, n)
    ts = run.model.train_state  # built by Run (its Input): the params fnn train starts from

    def swept(names):
        return {k: np.asarray(values[k], np.float32) for k in names}

    optimizer_keys = [k for k in keys if k in OPTIMIZER_KEYS]
    optimizer_values = {OPTIMIZER_KEYS[k]: v for k, v in swept(optimizer_keys).items()}
    layer_values = swept(k for k in keys if k not in OPTIMIZER_KEYS)
    train_state = init(ts.params, ts.state, ts.rng, optimizer_values, layer_values)
    # Model.fit's batches for fnn train: the same order, batch size and step count.
    data = data_lib.ArrayData(run.x_train, run.y_train)
    batch_size = cfg["batch_size"]
    steps = min(run.steps_per_epoch(), math.ceil(data.n / batch_size))
    epoch_data = data.epoch_data(
        batch_size, steps, seed=cfg["seed"], on_device=data.fits_on_device()
    )

    def batches(x, y):
        return data_lib.ArrayData(x, y).eval_batches(run.eval_batch_size())

    history: list[dict] = []

    def epoch_end(epoch, logs):
        logs = _per_member(logs, n)
        history.append(logs)
        return bool(on_epoch_end(epoch, logs)) if on_epoch_end is not None else False

    hooks = _Hooks(train_state, epoch_end)
    with warnings.catch_warnings():  # a diverging member is a result here, not a warning
        warnings.filterwarnings("ignore", message="fit: the training loss", category=RuntimeWarning)
        loop_lib.fit(
            trainer,
            hooks,
            epoch_data,
            epochs=cfg["epochs"],
            validation=lambda: batches(run.x_val, run.y_val),
        )
    test = loop_lib.evaluate(trainer, hooks, batches(run.x_test, run.y_test))
    return history, _per_member(test, n)


def write_results(
    run_dir: Path,
    sweep: Mapping[str, list[float]],
    history: list[dict],
    test: Mapping,
    *,
    metric_names: list[str],
    plot: bool,
) -> tuple[str, list[str]]:
    """``(table, files)``: the member table (Markdown, for the terminal) and the files
    written to ``run_dir``: ``sweep.csv``, ``results.json`` and, with ``plot`` and
    matplotlib, ``sweep.png``."""
    from fnn.training.ensemble import sweep_table

    final = {k: np.asarray(v) for k, v in history[-1].items() if np.ndim(v) == 1}
    final |= {f"test_{k}": np.asarray(v) for k, v in test.items() if np.ndim(v) == 1}
    final = _ordered(final, metric_names)
    n = len(next(iter(sweep.values())))
    rows = [
        {"member": i, **{k: sweep[k][i] for k in sweep}, "epochs": len(history)}
        | {k: float(v[i]) for k, v in final.items()}
        for i in range(n)
    ]
    with open(run_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run_dir / "results.json").write_text(json.dumps({"members": rows}, indent=2) + "\n")
    files = ["sweep.csv", "results.json"]
    if plot and _plot(run_dir / "sweep.png", sweep, final):
        files.append("sweep.png")
    return sweep_table(sweep, final), files


def _ordered(logs: Mapping, names: list[str]) -> dict:
    """``loss``, the metrics in config order, their ``val_*`` then ``test_*``, then the rest."""
    keys = ["loss", *names]
    keys += [f"{p}{k}" for p in ("val_", "test_") for k in keys]
    return {k: logs[k] for k in keys if k in logs} | {
        k: v for k, v in logs.items() if k not in keys
    }


def _plot(path: Path, sweep: Mapping[str, list[float]], final: Mapping[str, np.ndarray]) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in final if k != "time_s"]
    fig, axes = plt.subplots(
        len(sweep), len(metrics), figsize=(3.2 * len(metrics), 3 * len(sweep)), squeeze=False
    )
    for row, key in zip(axes, sweep):
        xs = np.asarray(sweep[key])
        order = np.argsort(xs)
        for ax, metric in zip(row, metrics):
            # A value shared by several members (another key varies): points, no line.
            style = "-" if len(set(xs.tolist())) == len(xs) else "none"
            ax.plot(xs[order], final[metric][order], marker="o", linestyle=style)
            if xs.min() > 0 and xs.max() / xs.min() >= 10:
                ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_title(metric)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def cmd_train_sweep(run, run_dir: Path, say: Callable[[str], None]) -> int:
    """``fnn train`` of a config with ``sweep:``: train the members, print the epoch lines
    and the member table, write the results (see the module docstring); exit code."""
    cfg = run.cfg
    sweep = check_sweep(cfg)
    n = len(next(iter(sweep.values())))
    epochs = cfg["epochs"]
    say(
        f"sweeping {', '.join(sweep)} over {n} members in one program: {len(run.x_train)} train "
        f"/ {len(run.x_val)} val / {len(run.x_test)} test examples, {epochs} epochs -> {run_dir}"
    )
    tick = [time.perf_counter()]

    def line(epoch, logs):
        now = time.perf_counter()
        parts = [f"epoch {epoch + 1:>{len(str(epochs))}}/{epochs}"]
        for key, value in _ordered(logs, run.metric_names).items():
            if np.ndim(value) == 1:
                parts.append(f"{key} " + " ".join(f"{float(v):.4f}" for v in value))
        say("  ".join([*parts, f"({now - tick[0]:.2f}s)"]))
        tick[0] = now
        return False

    start = time.perf_counter()
    history, test = train_members(run, sweep, on_epoch_end=line)
    wall = time.perf_counter() - start
    table, files = write_results(
        run_dir, sweep, history, test, metric_names=run.metric_names, plot=cfg["plots"]
    )
    say(f"done in {wall:.1f}s:\n{table}")
    say(f"wrote {run_dir}/: config.yaml, " + ", ".join(files))
    return 0
