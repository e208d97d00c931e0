"""``sweep:`` in a training config: several optimizer hyperparameter values trained as
members of one compiled program (:mod:`fnn.training.ensemble`'s sweeps).

::

    sweep:
      optimizer.learning_rate: [1.0e-3, 3.0e-3, 1.0e-2]
      optimizer.options.weight_decay: [0.0, 1.0e-4, 1.0e-3]   # adamw, lion only

Member i trains with the i-th value of every list (equal lengths), from the same
initialisation, on the same batches in the same order as ``fnn train`` with those values
would (the learning-rate schedule and warmup included). The values live in the optimizer
state (``optax.inject_hyperparams``), so other values reuse the compiled program. The
members run through the one loop (:func:`fnn.training.loop.fit`) with a member-axis
``Trainer``. ``fnn train`` then writes ``sweep.csv`` (member, values, final train,
validation and test metrics), ``sweep.png`` (each metric against each swept value; needs
matplotlib) and ``config.yaml`` to ``run_dir``; no checkpoints or model file (``--resume``
is refused). ``fnn tune`` trains batches of trials this way (:mod:`fnn.cli.tune`).
"""

from __future__ import annotations

import csv
import json
import math
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
    "optimizer_values",
    "sweepable",
    "train_members",
    "write_results",
]

# Config key -> the optimizer argument it sweeps.
SWEEPABLE = {
    "optimizer.learning_rate": "learning_rate",
    "optimizer.options.weight_decay": "weight_decay",
}
# Optimizers whose weight decay is their own argument (traceable); fnn's generic decoupled
# decay for the others is switched on by a Python test of the value, so it cannot be swept.
_OWN_WEIGHT_DECAY = ("adamw", "lion")


def sweepable(key: str, optimizer_name: str) -> bool:
    """Whether the sweep mechanism can vary config ``key`` under ``optimizer_name``."""
    if key not in SWEEPABLE:
        return False
    return key != "optimizer.options.weight_decay" or optimizer_name in _OWN_WEIGHT_DECAY


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
    name = str(cfg["optimizer"]["name"]).lower()
    out: dict[str, list[float]] = {}
    for key, values in sweep.items():
        key = str(key)
        if key not in SWEEPABLE:
            raise ConfigError(
                f"sweep.{key}: cannot be swept in one program.{closest(key, list(SWEEPABLE))} "
                f"Sweepable keys: {', '.join(SWEEPABLE)}."
            )
        if not sweepable(key, name):
            raise ConfigError(
                f"sweep.{key}: optimizer {name!r} has no weight_decay argument of its own to "
                f"sweep; use {' or '.join(_OWN_WEIGHT_DECAY)}."
            )
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            raise ConfigError(f"sweep.{key}: expected a non-empty list of numbers, got {values!r}.")
        low = 0.0 if key.endswith("weight_decay") else None
        for v in values:
            if not math.isfinite(v) or (v < 0 if low == 0.0 else v <= 0):
                what = ">= 0" if low == 0.0 else "> 0"
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


def optimizer_values(sweep: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """``{optimizer argument: values}`` of a checked sweep (config keys -> arguments)."""
    return {SWEEPABLE[k]: list(v) for k, v in sweep.items()}


# run -> {swept names: (member Trainer, member init)}: a later call with other values (or a
# later batch of trials) reuses the compiled programs.
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _programs(run, names: tuple[str, ...], n: int):
    """The member ``Trainer`` and the jitted ``init(params, state, rng, {name: [n]})`` of
    a sweep of ``n`` members over ``names`` on ``run``'s model (built once per run, names
    and member count)."""
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
    if (names, n) not in cache:
        tx = ensemble.sweep_optimizer(run.optimizer, dict.fromkeys(names, 0.0))
        trainer = loop_lib.Trainer(run.model.layer, run.loss, tx, run.metrics, members=n)

        def one(params, state, rng, vals):
            # Member i is fnn train's state with its own values: same params, same rng.
            ts = step_lib.TrainState(
                step=jnp.zeros([], jnp.int32),
                params=params,
                state=state,
                opt_state=tx.init(params),
                rng=rng,
                metric_states=step_lib.init_metric_states(run.metrics),
            )
            return ensemble.set_sweep_hyperparams(ts, vals)

        cache[names, n] = trainer, jax.jit(jax.vmap(one, in_axes=(None, None, None, 0)))
    return cache[names, n]


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
    optimizer arguments ``{k: v[i]}`` of ``values`` (e.g. ``{"learning_rate": [n]}``), as
    one vmapped program through the one loop; ``on_epoch_end(epoch, logs) -> stop`` sees
    each epoch's ``{key: [n]}`` logs (``val_*`` included). Returns ``(history, test)``:
    a ``{key: [n]}`` dict per epoch run and the members' ``[n]`` test metrics."""
    from fnn.io import data_adapter as data_lib
    from fnn.training import loop as loop_lib

    cfg = run.cfg
    n = len(next(iter(values.values())))
    trainer, init = _programs(run, tuple(values), n)
    ts = run.model.train_state  # built by Run (its Input): the params fnn train starts from
    swept = {k: np.asarray(v, np.float32) for k, v in values.items()}
    train_state = init(ts.params, ts.state, ts.rng, swept)
    # The batches Model.fit feeds fnn train: the same order, batch size and step count.
    data = data_lib.ArrayData(run.x_train, run.y_train)
    batch_size = cfg["batch_size"]
    steps = min(run.steps_per_epoch(), math.ceil(data.n / batch_size))
    on_device = data.fits_on_device()

    def epoch_data(epoch):
        order = loop_lib.epoch_order(data.n, seed=cfg["seed"], epoch=epoch)
        return data.epoch(order, batch_size, steps, on_device=on_device)

    def batches(x, y):
        split = data_lib.ArrayData(x, y)
        size = run.eval_batch_size()
        order = np.arange(split.n, dtype=np.int32)
        return split.epoch(order, size, math.ceil(split.n / size), on_device=False)

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
    history, test = train_members(run, optimizer_values(sweep), on_epoch_end=line)
    wall = time.perf_counter() - start
    table, files = write_results(
        run_dir, sweep, history, test, metric_names=run.metric_names, plot=cfg["plots"]
    )
    say(f"done in {wall:.1f}s:\n{table}")
    say(f"wrote {run_dir}/: config.yaml, " + ", ".join(files))
    return 0
