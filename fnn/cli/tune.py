"""``fnn tune CONFIG``: hyperparameter search over a training config, on an Optuna study.

A search config is a training config (see :mod:`fnn.cli.config`) plus a ``search:`` key::

    search:
      objective: {metric: val_accuracy, mode: max}   # a logged value: loss, val_<metric> ...
      n_trials: 16                   # trials in the study in all (workers share them)
      sampler: {name: tpe}           # random | tpe (seed: the config's seed by default)
      pruner: {name: hyperband}      # none | median | successive_halving | hyperband
      storage: null                  # default sqlite:///<run_dir>/study.db; any SQLAlchemy URL
      space:                         # config key path -> range
        optimizer.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        model.layers[1].Dense.units: {type: int, low: 32, high: 256, log: true}
        optimizer.name: {type: categorical, choices: [adam, sgd]}
        optimizer.options.momentum: {type: float, low: 0.0, high: 0.95,
                                     when: {optimizer.name: sgd}}

Ranges: ``float`` (``low``, ``high``, ``log``, ``step``), ``int`` (``low``, ``high``,
``log``, ``step``), ``categorical`` (``choices``; a choice may be any YAML value, e.g. a
whole ``model.layers`` list: then the trial records its index). ``when: {KEY: VALUE or
[VALUES]}`` makes a range conditional on an earlier one (for a structured categorical, on
its index): e.g. the width of a third block only when the architecture has three blocks.

Each trial trains exactly as ``fnn train`` does (same ``Run``, same ``fit``), reports the
objective after every epoch to the pruner (bad trials stop early) and ends with the last
epoch's value. When every range is a float over a key the sweep mechanism varies
(``optimizer.learning_rate``; ``optimizer.options.weight_decay`` of adamw/lion, see
:mod:`fnn.cli.sweep`), a worker asks ``search.batch_trials`` trials at once (default 8,
fewer when fewer slots are left) and trains them as members of one compiled program
(later batches reuse it): each reports its own per-epoch value and is told its own result;
a pruned member stops reporting (the program stops once every member has), the TPE sampler
runs with ``constant_liar`` so that a batch spreads out. Otherwise, or with
``batch_trials: 1``, trials run one at a time.

The study lives in Optuna's RDB storage; ``--workers N`` starts N local processes on it;
a file lock in ``run_dir`` hands out trial slots so that the study holds exactly
``n_trials``; every running trial writes a heartbeat, and a trial whose worker was
killed is marked FAIL (it counts towards ``n_trials``) by the next worker or by ``--resume``
once its heartbeat is older than ``grace_period_s``. ``run_dir`` receives ``study.db``,
``trials.csv``, ``history.png`` and ``params.png`` (if matplotlib is installed) and
``best.yaml``, the complete config of the best trial (``fnn train best.yaml`` retrains it).
Bad input prints one line and exits 2 before any trial runs.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from fnn.core.errors import ConfigError, FnnError, closest

__all__ = [
    "SEARCH_DEFAULTS",
    "TrainPieces",
    "add_arguments",
    "cmd_tune",
    "load_search",
    "trial_config",
]

SEARCH_DEFAULTS: dict[str, Any] = {
    "objective": {"metric": None, "mode": "max"},
    "n_trials": 16,
    "sampler": {"name": "tpe", "seed": None, "n_startup_trials": 5},
    "pruner": {"name": "hyperband", "min_epochs": 1, "reduction_factor": 3},
    "storage": None,
    "study_name": None,
    "heartbeat_s": 2,
    "grace_period_s": 10,
    "batch_trials": 8,
    "space": None,
}
_SAMPLERS = ("random", "tpe")
_PRUNERS = ("none", "median", "successive_halving", "hyperband")
_RANGE_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
_PRIMITIVE = (str, int, float, bool, type(None))
_OPEN_PARENTS = (("dataset", "options"), ("optimizer", "options"), ("loss",))


def _unknown(path: str, key: str, valid: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"{path}.{key}: unknown key.{closest(key, list(valid))} Valid keys: "
        f"{', '.join(sorted(valid))}."
    )


def _merge(path: str, value: Any, defaults: Mapping) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {value!r}.")
    out = copy.deepcopy(dict(defaults))
    for key, item in value.items():
        if key not in defaults:
            raise _unknown(path, str(key), list(defaults))
        if isinstance(defaults[key], dict):
            out[key] = _merge(f"{path}.{key}", item, defaults[key])
        else:
            out[key] = item
    return out


def _number(path: str, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{path}: expected a number, got {value!r}.")
    return value


def _check_range(path: str, spec: Any) -> dict:
    if not isinstance(spec, Mapping) or spec.get("type") not in _RANGE_KEYS:
        kind = spec.get("type") if isinstance(spec, Mapping) else spec
        raise ConfigError(
            f"{path}: expected a range like {{type: float, low: 1.0e-4, high: 0.1, log: true}}"
            f" (type float, int or categorical), got {kind!r}."
        )
    spec = dict(spec)
    for key in spec:
        if key not in _RANGE_KEYS[spec["type"]]:
            raise _unknown(path, str(key), _RANGE_KEYS[spec["type"]])
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{path}.choices: expected a non-empty list, got {choices!r}.")
        return spec
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{path}.{key}: required key is missing.")
        _number(f"{path}.{key}", spec[key])
        if spec["type"] == "int" and not isinstance(spec[key], int):
            raise ConfigError(f"{path}.{key}: expected an int, got {spec[key]!r}.")
    if spec["low"] > spec["high"]:
        raise ConfigError(f"{path}: empty range, low {spec['low']} > high {spec['high']}.")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{path}.log: expected true or false, got {log!r}.")
    if log and spec["low"] <= 0:
        raise ConfigError(f"{path}: a log range needs low > 0, got {spec['low']}.")
    if spec.get("step") is not None:
        _number(f"{path}.step", spec["step"])
        if log:
            raise ConfigError(f"{path}: step and log exclude each other.")
    return spec


def _structured(spec: Mapping) -> bool:
    return spec["type"] == "categorical" and not all(
        isinstance(c, _PRIMITIVE) for c in spec["choices"]
    )


def _split_key(key: str) -> list:
    from fnn.cli import config as config_lib

    return config_lib._split_key(key)


def _key_exists(cfg: Any, parts: list) -> bool:
    """Whether a key path names a value of the (defaults-filled) config, or a new key in a
    mapping that takes free keys (optimizer/dataset options, loss, layer arguments)."""
    node = cfg
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False
        elif not isinstance(node, Mapping):
            return False
        elif part not in node:
            head = tuple(parts[:depth])
            in_layer = len(head) == 4 and head[:2] == ("model", "layers")  # [i].Class.arg
            return last and (head in _OPEN_PARENTS or in_layer)
        node = node[part]
    return True


def load_search(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[dict, dict]:
    """``(base_raw, search)``: the config without ``search`` (parsed, overridden, checked by
    :func:`fnn.cli.config.validate`) and the checked ``search`` section. Every range is
    checked on the config: its key must exist and configs at its ends must validate."""
    from fnn.cli import config as config_lib

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {str(path)!r}: {err.strerror}.") from None
    try:
        raw = config_lib._safe_load(text)
    except Exception as err:  # yaml errors: the one-line form of load_config_text
        config_lib.load_config_text(text)
        raise ConfigError(f"{path.name}: {err}") from None
    raw = config_lib.apply_overrides(raw if raw is not None else {}, overrides)
    if not isinstance(raw, dict) or "search" not in raw:
        raise ConfigError(f"{path.name}: search: required key is missing (fnn tune needs one).")
    raw = dict(raw)
    search_raw = raw.pop("search")
    try:
        base = config_lib.validate(copy.deepcopy(raw))
        search = _check_search(search_raw, base, raw)
    except ConfigError as err:
        raise ConfigError(f"{path.name}: {err}") from None
    return raw, search


def _check_search(value: Any, base: dict, raw: dict) -> dict:
    from fnn.cli import config as config_lib

    search = _merge("search", value if value is not None else {}, SEARCH_DEFAULTS)
    space = search["space"]
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("search.space: expected at least one range (key path: range).")
    obj = search["objective"]
    names = list(base["metrics"])
    logged = ["loss", "val_loss", *names, *(f"val_{m}" for m in names)]
    if obj["metric"] not in logged:
        raise ConfigError(
            f"search.objective.metric: expected a value every epoch logs ({', '.join(logged)}),"
            f" got {obj['metric']!r}.{closest(str(obj['metric']), logged)}"
        )
    if obj["mode"] not in ("min", "max"):
        raise ConfigError(f"search.objective.mode: expected min or max, got {obj['mode']!r}.")
    n = search["n_trials"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"search.n_trials: expected a positive int, got {n!r}.")
    if search["sampler"]["name"] not in _SAMPLERS:
        raise ConfigError(
            f"search.sampler.name: expected one of {', '.join(_SAMPLERS)}, got "
            f"{search['sampler']['name']!r}."
        )
    if base.get("sweep") is not None:
        raise ConfigError(
            "sweep: fnn tune searches search.space instead; remove sweep: (trials over the "
            "learning rate or weight decay train as members of one program by themselves)."
        )
    if search["pruner"]["name"] not in _PRUNERS:
        raise ConfigError(
            f"search.pruner.name: expected one of {', '.join(_PRUNERS)}, got "
            f"{search['pruner']['name']!r}."
        )
    for key in ("heartbeat_s", "grace_period_s", "batch_trials"):
        if not isinstance(search[key], int) or search[key] < 1:
            raise ConfigError(f"search.{key}: expected a positive int, got {search[key]!r}.")
    checked: dict[str, dict] = {}
    for key, spec in space.items():
        where = f"search.space.{key}"
        spec = _check_range(where, spec)
        parts = _split_key(str(key))
        when = spec.get("when") or {}
        if not isinstance(when, Mapping):
            raise ConfigError(f"{where}.when: expected a mapping KEY: VALUE, got {when!r}.")
        for other, allowed in when.items():
            if other not in checked:
                raise ConfigError(
                    f"{where}.when.{other}: expected a range listed above this one."
                    f"{closest(str(other), list(checked))}"
                )
            options = allowed if isinstance(allowed, list) else [allowed]
            if not any(_admits(checked[other], v) for v in options):
                raise ConfigError(
                    f"{where}.when.{other}: {allowed!r} is not a value of that range."
                )
        checked[str(key)] = spec
        # The key must exist where this range applies: with its conditions met.
        context = trial_config(raw, checked, _condition_values(checked, str(key)))
        full = config_lib.validate(copy.deepcopy(context))
        if not _key_exists(full, parts):
            raise ConfigError(f"{where}: no such key in the config (nor a free option).")
        for probe in _probes(spec):
            try:
                values = _condition_values(checked, str(key)) | {str(key): probe}
                config_lib.validate(trial_config(raw, checked, values))
            except ConfigError as err:
                raise ConfigError(f"{where} = {_show(probe)}: {err}") from None
    search["space"] = checked
    return search


def _admits(spec: Mapping, value: Any) -> bool:
    if spec["type"] == "categorical":
        if _structured(spec):
            return isinstance(value, int) and 0 <= value < len(spec["choices"])
        return value in spec["choices"]
    return isinstance(value, int | float) and spec["low"] <= value <= spec["high"]


def _condition_values(space: Mapping, key: str) -> dict:
    """Values of the earlier ranges that make ``key``'s conditions (and theirs) hold."""
    out: dict = {}
    for other, allowed in (space[key].get("when") or {}).items():
        out |= _condition_values(space, other)
        out[other] = (allowed if isinstance(allowed, list) else [allowed])[0]
    return out


def _probes(spec: Mapping) -> list:
    if spec["type"] == "categorical":
        return list(range(len(spec["choices"]))) if _structured(spec) else list(spec["choices"])
    return [spec["low"], spec["high"]]


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, float) else f"{value:.6g}"


def trial_config(raw: Mapping, space: Mapping, params: Mapping) -> dict:
    """The raw config with a trial's ``params`` (key path -> value; a structured choice's
    index) applied through the ``--set`` mechanism, in the space's order (so a whole
    ``model.layers`` choice comes before the widths set inside it).

    >>> space = {"optimizer.learning_rate": {"type": "float", "low": 1e-3, "high": 0.1}}
    >>> trial_config({"optimizer": {"name": "sgd"}}, space, {"optimizer.learning_rate": 0.01})
    {'optimizer': {'name': 'sgd', 'learning_rate': 0.01}}
    """
    from fnn.cli import config as config_lib

    out = copy.deepcopy(dict(raw))
    for key, spec in space.items():
        if key not in params:
            continue
        value = params[key]
        if _structured(spec):
            value = spec["choices"][value]
        out = config_lib.apply_overrides(out, [f"{key}={json.dumps(value)}"])
    return out


# ---------------------------------------------------------------------------------------
# The study


def _storage_url(search: dict, run_dir: Path) -> str:
    return search["storage"] or f"sqlite:///{run_dir / 'study.db'}"


def _storage(search: dict, run_dir: Path):
    import optuna

    url = _storage_url(search, run_dir)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=search["heartbeat_s"],
            grace_period=search["grace_period_s"],
        )
    except Exception as err:  # SQLAlchemy raises many kinds: all mean "cannot open"
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"search.storage: cannot open {url!r}: {text}") from None


def _sampler(search: dict, seed: int, worker: int, *, batched: bool = False):
    import optuna

    s = search["sampler"]
    # Each worker draws its own stream: equal seeds would propose equal trials.
    seed = (s["seed"] if s["seed"] is not None else seed) + 1000 * worker
    if s["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Trials asked together would otherwise all be drawn from the same history: the liar
    # counts the running ones as bad results, spreading a batch out.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=s["n_startup_trials"], constant_liar=batched
    )


def _pruner(search: dict, epochs: int):
    import optuna

    p = search["pruner"]
    if p["name"] == "none":
        return optuna.pruners.NopPruner()
    if p["name"] == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=p["min_epochs"])
    if p["name"] == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p["min_epochs"], reduction_factor=p["reduction_factor"]
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=p["min_epochs"], max_resource=epochs, reduction_factor=p["reduction_factor"]
    )


def _study(search: dict, raw: dict, run_dir: Path, name: str, worker: int, *, create: bool):
    import optuna

    storage = _storage(search, run_dir)
    base_seed = raw.get("seed", 0) if isinstance(raw.get("seed", 0), int) else 0
    kwargs = {
        "study_name": name,
        "storage": storage,
        "sampler": _sampler(search, base_seed, worker),
        "pruner": _pruner(search, raw.get("epochs", 10)),
    }
    direction = "maximize" if search["objective"]["mode"] == "max" else "minimize"
    if create:
        return optuna.create_study(direction=direction, load_if_exists=True, **kwargs), storage
    return optuna.load_study(**kwargs), storage


@contextlib.contextmanager
def _slot_lock(run_dir: Path):
    """Exclusive across the local workers: counting the trials and asking for one."""
    import fcntl

    with open(run_dir / "study.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Heartbeat:
    """Records the running trials' heartbeats every ``interval`` s (what ``study.optimize``
    does; fnn asks for trials under a lock, so it runs the ask/tell interface)."""

    def __init__(self, storage, trial_ids: int | Sequence[int], interval: int):
        ids = [trial_ids] if isinstance(trial_ids, int) else list(trial_ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(storage, ids, interval), daemon=True
        )

    def _beat(self, storage, trial_ids, interval):
        while True:
            for trial_id in trial_ids:
                storage.record_heartbeat(trial_id)
            if self._stop.wait(interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _suggest(trial, space: Mapping) -> dict:
    params: dict = {}
    for key, spec in space.items():
        when = spec.get("when") or {}
        if not all(
            key_ in params and params[key_] in (v if isinstance(v, list) else [v])
            for key_, v in when.items()
        ):
            continue
        if spec["type"] == "float":
            params[key] = trial.suggest_float(
                key, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
            )
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(
                key, spec["low"], spec["high"], log=spec.get("log", False),
                step=spec.get("step") or 1,
            )  # fmt: skip
        elif _structured(spec):
            params[key] = trial.suggest_categorical(key, list(range(len(spec["choices"]))))
        else:
            params[key] = trial.suggest_categorical(key, spec["choices"])
    return params


def _train_trial(cfg: dict, config_path: str, trial, metric: str, cli) -> tuple[float, int, bool]:
    """Train one trial as ``fnn train`` does (``cli.Run``, ``cli.EpochLines``: the train
    command's pieces); returns (last value, epochs run, pruned)."""
    import jax

    from fnn.shell.callbacks import Callback

    run = cli.Run(cfg, config_path)
    run.require_arrays("tune")
    reported: list[float] = []
    pruned = [False]

    class Report(Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = float(logs[metric])
            reported.append(value)
            if not math.isfinite(value):
                self.model.stop_training = True
                return
            trial.report(value, epoch + 1)  # step = epochs done, so min_epochs means epochs
            # Never at the last epoch: a trial that ran every epoch is complete.
            if epoch + 1 < self.params["epochs"] and trial.should_prune():
                pruned[0] = True
                self.model.stop_training = True

    devices = None
    if cfg["distribute"]["strategy"] == "data_parallel":
        devices = cfg["distribute"]["num_devices"] or jax.device_count()
    lines = cli.EpochLines(run.metric_names)
    # The same fit call as cmd_train (its checkpoint and log callbacks change no numbers).
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        run.model.fit(
            run.x_train,
            run.y_train,
            batch_size=cfg["batch_size"],
            epochs=cfg["epochs"],
            verbose=0,
            callbacks=[lines, Report()],
            validation_data=(run.x_val, run.y_val),
            steps_per_epoch=run.steps_per_epoch(),
            validation_batch_size=run.eval_batch_size(),
            devices=devices,
        )
    if not reported:
        raise ConfigError(f"search.objective.metric: {metric} was never reported.")
    if lines.non_finite is not None:  # fnn train would stop with an error: a failed trial
        return math.nan, len(reported), False
    return reported[-1], len(reported), pruned[0]


def _work(args, raw: dict, search: dict, run_dir: Path, name: str, worker: int, cli) -> int:
    """One worker: take trial slots until the study holds ``n_trials``; returns trials run."""
    from optuna.trial import TrialState

    study, storage = _study(search, raw, run_dir, name, worker, create=False)
    # A resumed study must not replay its first draws: offset the seed by the trials so far.
    seed = raw.get("seed", 0) if isinstance(raw.get("seed", 0), int) else 0
    batch = search["batch_trials"] if _batchable(search, raw) else 1
    study.sampler = _sampler(
        search, seed + len(study.get_trials(deepcopy=False)), worker, batched=batch > 1
    )
    metric = search["objective"]["metric"]
    done = 0
    runs: dict = {}  # batched: the one Run whose compiled member programs every batch reuses
    while True:
        trials = _ask(study, storage, search, run_dir, batch)
        if not trials:
            return done
        if batch > 1:
            done += _train_batch(study, trials, raw, search, storage, args.config, cli, runs)
            continue
        trial = trials[0]
        start = time.perf_counter()
        params = _suggest(trial, search["space"])
        text = "  ".join(f"{k}={_show(v)}" for k, v in params.items())
        with _Heartbeat(storage, trial._trial_id, search["heartbeat_s"]):
            try:
                cfg = _validated(trial_config(raw, search["space"], params))
                value, epochs, pruned = _train_trial(cfg, args.config, trial, metric, cli)
            except (FnnError, FloatingPointError) as err:
                study.tell(trial, state=TrialState.FAIL)
                print(f"trial {trial.number}: {text} -> failed: {err}", flush=True)
                done += 1
                continue
        seconds = time.perf_counter() - start
        if not math.isfinite(value):
            study.tell(trial, state=TrialState.FAIL)
            state = "failed (non-finite)"
        elif pruned:
            study.tell(trial, state=TrialState.PRUNED)
            state = "pruned"
        else:
            study.tell(trial, value)
            state = "complete"
        trial_done = f"{metric} {value:.4f} ({state}, {epochs} epochs, {seconds:.1f}s)"
        print(f"trial {trial.number}: {text} -> {trial_done}", flush=True)
        done += 1


_BEAT_MARK = "fnn_heartbeat"


def _ask(study, storage, search: dict, run_dir: Path, k: int) -> list:
    """Up to ``k`` new trials (none once the study holds ``n_trials``), asked under the slot
    lock after failing the stale ones."""
    with _slot_lock(run_dir):
        _fail_stale(study, storage)
        taken = len(study.get_trials(deepcopy=False, states=_taken_states()))
        trials = [study.ask() for _ in range(max(0, min(k, search["n_trials"] - taken)))]
        for trial in trials:
            # Optuna never calls a trial without a heartbeat stale: beat and mark it while
            # the lock is held, so any unmarked RUNNING trial seen under the lock is orphaned.
            storage.record_heartbeat(trial._trial_id)
            storage.set_trial_system_attr(trial._trial_id, _BEAT_MARK, True)
    return trials


def _batchable(search: dict, raw: dict) -> bool:
    """Whether trials can train as members of one program: ``batch_trials > 1`` and every
    range a float over a key the sweep mechanism varies (:mod:`fnn.cli.sweep`)."""
    from fnn.cli import sweep as sweep_lib

    if search["batch_trials"] < 2 or raw.get("sweep") is not None:
        return False
    base = _validated(raw)
    if base["distribute"]["strategy"] != "none":
        return False
    return all(
        spec["type"] == "float" and not spec.get("when") and sweep_lib.sweepable(key, base)
        for key, spec in search["space"].items()
    )


def _train_batch(
    study, trials: list, raw: dict, search: dict, storage, config_path, cli, runs: dict
) -> int:
    """Train ``trials`` (their ranges all sweepable) as members of one program
    (:func:`fnn.cli.sweep.train_members`): every epoch each running trial reports its own
    value to the pruner; each is told its own result. ``runs`` keeps the ``Run`` (and so
    the compiled programs) for the next batch. Returns the number of trials."""
    import numpy as np
    from optuna.trial import TrialState

    from fnn.cli import sweep as sweep_lib

    metric = search["objective"]["metric"]
    start = time.perf_counter()
    params = [_suggest(t, search["space"]) for t in trials]
    values = {k: [p[k] for p in params] for k in search["space"]}
    last, ran = [math.nan] * len(trials), [0] * len(trials)
    live = [True] * len(trials)  # neither pruned nor diverged: still reporting
    pruned = [False] * len(trials)
    failed = None
    with _Heartbeat(storage, [t._trial_id for t in trials], search["heartbeat_s"]):
        try:
            # The ranges are all sweepable values: every trial has the same config apart
            # from them, and the members take theirs from ``values``.
            cfg = _validated(trial_config(raw, search["space"], params[0]))

            def report(epoch, logs):
                for i, trial in enumerate(trials):
                    if not live[i]:
                        continue
                    last[i], ran[i] = float(np.asarray(logs[metric])[i]), epoch + 1
                    if not math.isfinite(last[i]):
                        live[i] = False
                        continue
                    trial.report(last[i], epoch + 1)
                    # Never at the last epoch: a trial that ran every epoch is complete.
                    if epoch + 1 < cfg["epochs"] and trial.should_prune():
                        live[i], pruned[i] = False, True
                return not any(live)  # every member pruned or diverged: stop the program

            if "run" not in runs:
                runs["run"] = cli.Run(cfg, config_path)
            sweep_lib.train_members(runs["run"], values, on_epoch_end=report)
        except (FnnError, FloatingPointError) as err:
            failed = err
    seconds = time.perf_counter() - start
    shared = f"{len(trials)} trials in one program, {seconds:.1f}s"
    for i, trial in enumerate(trials):
        text = "  ".join(f"{k}={_show(v)}" for k, v in params[i].items())
        if failed is not None:
            study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number}: {text} -> failed: {failed}", flush=True)
            continue
        if not math.isfinite(last[i]):
            study.tell(trial, state=TrialState.FAIL)
            state = "failed (non-finite)"
        elif pruned[i]:
            study.tell(trial, state=TrialState.PRUNED)
            state = "pruned"
        else:
            study.tell(trial, last[i])
            state = "complete"
        result = f"{metric} {last[i]:.4f} ({state}, {ran[i]} epochs, {shared})"
        print(f"trial {trial.number}: {text} -> {result}", flush=True)
    return len(trials)


def _fail_stale(study, storage) -> None:
    """Marks FAIL the RUNNING trials whose worker died: a heartbeat older than the grace
    period (Optuna's rule), or no heartbeat mark at all (killed between ask and the first
    beat). Call under ``_slot_lock``: a live worker marks its trial before releasing it."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _BEAT_MARK not in t.system_attrs:
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def _validated(raw: dict) -> dict:
    from fnn.cli import config as config_lib

    return config_lib.validate(copy.deepcopy(raw))


def _taken_states():
    """Trials that hold one of the ``n_trials`` slots."""
    from optuna.trial import TrialState

    return (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# ---------------------------------------------------------------------------------------
# Results


def _rows(study, space: Mapping) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = None
        if t.datetime_start and t.datetime_complete:
            duration = round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        row = {"number": t.number, "state": t.state.name.lower(), "value": value}
        row |= {k: t.params.get(k, "") for k in space}
        row |= {"epochs": len(t.intermediate_values), "duration_s": duration}
        rows.append(row)
    return rows


def _table(rows: list[dict], metric: str) -> str:
    if not rows:
        return "(no trials)"
    header = [k if k != "value" else metric for k in rows[0]]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    body = [[cell(v) for v in r.values()] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _plots(rows: list[dict], space: Mapping, metric: str, mode: str, run_dir: Path) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    for state, marker in (("complete", "o"), ("pruned", "x")):
        sel = [r for r in rows if r["state"] == state and r["value"] is not None]
        ax.scatter([r["number"] for r in sel], [r["value"] for r in sel], marker=marker,
                   label=state)  # fmt: skip
    best, line = None, []
    for r in sorted(done, key=lambda r: r["number"]):
        v = r["value"]
        best = v if best is None or (v > best if mode == "max" else v < best) else best
        line.append((r["number"], best))
    ax.step(*zip(*line), where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "history.png", dpi=100)
    plt.close(fig)
    keys = list(space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        sel = [r for r in done if r[key] != ""]
        xs = [r[key] for r in sel]
        if space[key]["type"] == "categorical":
            labels = sorted({str(x) for x in xs})
            xs = [labels.index(str(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels)
        ax.scatter(xs, [r["value"] for r in sel])
        if space[key].get("log"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "params.png", dpi=100)
    plt.close(fig)
    return ["history.png", "params.png"]


def _report(study, raw: dict, search: dict, run_dir: Path) -> None:
    import yaml

    metric, mode = search["objective"]["metric"], search["objective"]["mode"]
    space = search["space"]
    rows = _rows(study, space)
    with open(run_dir / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["number"])
        writer.writeheader()
        writer.writerows(rows)
    print(_table(rows, metric), flush=True)
    written = ["study.db" if not search["storage"] else None, "trials.csv"]
    written += _plots(rows, space, metric, mode, run_dir)
    complete = [r for r in rows if r["state"] == "complete"]
    if complete:
        best = study.best_trial
        cfg = trial_config(raw, space, best.params)
        cfg["run_dir"] = str(run_dir / "best")
        header = (
            f"# Best trial {best.number} of the study {study.study_name!r}: "
            f"{metric} {best.value:.6g}.\n# Retrain it: fnn train {run_dir / 'best.yaml'}\n"
        )
        (run_dir / "best.yaml").write_text(header + yaml.safe_dump(cfg, sort_keys=False))
        (run_dir / "best.json").write_text(
            json.dumps({"number": best.number, "value": best.value, "params": best.params},
                       indent=2) + "\n"
        )  # fmt: skip
        written += ["best.yaml", "best.json"]
        params = "  ".join(f"{k}={_show(v)}" for k, v in best.params.items())
        print(f"best: trial {best.number}  {metric} {best.value:.4f}  {params}", flush=True)
    else:
        print("no trial completed: no best.yaml", flush=True)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    states = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"{len(rows)} trials ({states}); wrote {run_dir}/: "
          + ", ".join(w for w in written if w), flush=True)  # fmt: skip


# ---------------------------------------------------------------------------------------
# The command


class TrainPieces(NamedTuple):
    """What a trial borrows from ``fnn train`` (:mod:`fnn.cli.commands` passes them in, so
    that the import goes one way): ``Run(cfg, config_path)`` and the epoch-line callback."""

    Run: Any
    EpochLines: Any


def cmd_tune(args, cli: TrainPieces) -> int:
    """``fnn tune CONFIG [--workers N] [--resume | --overwrite]``: run the search."""
    import shutil

    raw, search = load_search(args.config, args.set)
    try:
        import optuna
    except ImportError:
        raise ConfigError("fnn tune needs Optuna: pip install 'fnn[tune]'.") from None
    import warnings

    # Heartbeats are marked experimental, and Optuna expects them only under study.optimize;
    # fnn runs ask/tell under its slot lock and records the heartbeats itself (_Heartbeat).
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir = Path(raw.get("run_dir") or Path("runs") / Path(args.config).stem)
    name = search["study_name"] or Path(args.config).stem
    if args.workers < 1:
        raise ConfigError(f"--workers: expected a positive int, got {args.workers}.")
    if args.worker_index is not None:  # a process started by --workers
        _work(args, raw, search, run_dir, name, args.worker_index, cli)
        return 0
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other.")
    db = run_dir / "study.db"
    if not search["storage"] and db.exists() and not args.resume:
        if not args.overwrite:
            raise ConfigError(
                f"run_dir: {run_dir} already holds a study; pass --resume to continue it, "
                "--overwrite to start again, or --set run_dir=... for a new search."
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    study, storage = _study(search, raw, run_dir, name, 0, create=True)  # errors: exit 2 here
    if args.resume:
        with _slot_lock(run_dir):
            _fail_stale(study, storage)
    url = _storage_url(search, run_dir)
    print(f"tuning {Path(args.config).name}: study {name!r} in {url}, {search['n_trials']} "
          f"trials, {args.workers} worker(s), objective {search['objective']['mode']} "
          f"{search['objective']['metric']}", flush=True)  # fmt: skip
    if args.workers == 1:
        _work(args, raw, search, run_dir, name, 0, cli)
        codes = [0]
    else:
        cmd = [sys.executable, "-m", "fnn", "tune", args.config]
        cmd += [a for s in args.set for a in ("--set", s)]
        procs = [subprocess.Popen([*cmd, "--worker-index", str(i)]) for i in range(args.workers)]
        codes = [p.wait() for p in procs]
        if any(codes):  # the study stays consistent; the table below shows what was done
            print(f"fnn tune: worker exit codes {codes}", file=sys.stderr, flush=True)
    _report(_study(search, raw, run_dir, name, 0, create=False)[0], raw, search, run_dir)
    return 1 if any(codes) else 0


def add_arguments(p) -> None:
    """The ``tune`` subcommand's own options (``config`` and ``--set`` come from the CLI)."""
    import argparse

    p.add_argument("--workers", type=int, default=1, help="local processes on the one study")
    p.add_argument("--resume", action="store_true", help="continue the study in run_dir")
    p.add_argument("--overwrite", action="store_true", help="delete an existing study first")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
