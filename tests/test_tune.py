"""``fnn tune``: bad search configs fail before any trial; a small study on digits is read
back from its SQLite file with sqlite3 (not Optuna); best.yaml retrains to the best value."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("optuna")

from fnn.cli import commands as cli
from fnn.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "configs" / "digits_mlp_search.yaml"


def _config(tmp_path, name="search.yaml", **search):
    raw = yaml.safe_load(SEARCH.read_text())
    raw["run_dir"] = str(tmp_path / "run")
    raw["epochs"] = 2
    raw["model"]["layers"][1]["Dense"]["units"] = 16
    raw["search"].update(search)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize(
    "search,message",
    [
        ({"space": {}}, r"search\.space: expected at least one range"),
        ({"n_trails": 3}, r"search\.n_trails: unknown key\. Did you mean 'n_trials'\?"),
        (
            {"space": {"optimizer.learnig_rate": {"type": "float", "low": 0.1, "high": 0.2}}},
            r"search\.space\.optimizer\.learnig_rate: no such key in the config",
        ),
        (
            {"space": {"model.layers[1].Dense.units": {"type": "int", "low": 0, "high": 8}}},
            r"search\.space\.model\.layers\[1\]\.Dense\.units = 0: .*units",
        ),
        (
            {"space": {"optimizer.learning_rate": {"type": "float", "low": 1, "high": 0.1}}},
            r"search\.space\.optimizer\.learning_rate: empty range, low 1 > high 0\.1",
        ),
        ({"objective": {"metric": "val_acc"}}, r"search\.objective\.metric: expected a value"),
        ({"storage": "nosuchdb://x/y"}, r"search\.storage: cannot open 'nosuchdb://x/y'"),
        (
            {"space": {"seed": {"type": "int", "low": 0, "high": 3, "when": {"epochs": 2}}}},
            r"search\.space\.seed\.when\.epochs: expected a range listed above this one",
        ),
    ],
)
def test_bad_search_exits_2_with_one_line_before_any_trial(tmp_path, capsys, search, message):
    code = cli.main(["tune", _config(tmp_path, **search)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "study.db").exists() or _trials(tmp_path / "run") == []


def _trials(run_dir: Path) -> list[tuple]:
    """(number, state, value) of every trial, straight from Optuna's SQLite schema."""
    with sqlite3.connect(run_dir / "study.db") as db:
        return db.execute(
            "SELECT t.number, t.state, v.value FROM trials t "
            "LEFT JOIN trial_values v ON v.trial_id = t.trial_id ORDER BY t.number"
        ).fetchall()


def _params(run_dir: Path, number: int) -> set[str]:
    with sqlite3.connect(run_dir / "study.db") as db:
        rows = db.execute(
            "SELECT p.param_name FROM trial_params p JOIN trials t ON p.trial_id = t.trial_id "
            "WHERE t.number = ?",
            (number,),
        ).fetchall()
    return {r[0] for r in rows}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two 2-epoch trials of a 16-unit MLP, random sampler (seed 3 draws sgd, then adam)."""
    tmp = tmp_path_factory.mktemp("tune")
    path = _config(tmp, sampler={"name": "random", "seed": 3}, n_trials=2)
    code = cli.main(["tune", path])
    assert code == 0
    return tmp / "run", path


def test_study_table_csv_and_conditional_keys(study, capsys):
    run_dir, path = study
    trials = _trials(run_dir)
    assert [t[0] for t in trials] == [0, 1]  # exactly n_trials, numbered once
    assert {t[1] for t in trials} <= {"COMPLETE", "PRUNED"}
    with open(run_dir / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [0, 1]
    assert {r["optimizer.name"] for r in rows} == {"adam", "sgd"}  # both branches drawn
    for row, (_, state, value) in zip(rows, trials):
        assert row["state"] == state.lower()
        if state == "COMPLETE":
            assert float(row["value"]) == pytest.approx(value, rel=1e-12)
        names = _params(run_dir, int(row["number"]))
        # momentum is drawn exactly when the optimizer is sgd (the `when:` condition)
        assert ("optimizer.options.momentum" in names) == (row["optimizer.name"] == "sgd")
    assert (run_dir / "history.png").exists() and (run_dir / "params.png").exists()
    code = cli.main(["tune", path])  # the study exists: refuses, one line, exit 2
    assert code == 2
    assert "--resume" in capsys.readouterr().err


def test_best_yaml_retrains_to_the_best_value(study, capsys):
    run_dir, _ = study
    best = json.loads((run_dir / "best.json").read_text())
    complete = [t for t in _trials(run_dir) if t[1] == "COMPLETE"]
    assert best["value"] == max(t[2] for t in complete)
    cfg = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert cfg["optimizer"]["learning_rate"] == best["params"]["optimizer.learning_rate"]
    assert "search" not in cfg
    assert cli.main(["train", str(run_dir / "best.yaml")]) == 0
    with open(Path(cfg["run_dir"]) / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    # Same Run, same fit, CPU-deterministic: the retrained run lands on the trial's value.
    assert float(last["val_accuracy"]) == pytest.approx(best["value"], abs=1e-6)


@pytest.mark.slow
def test_killed_worker_leaves_a_consistent_study_and_resume_finishes_it(tmp_path):
    """A worker SIGKILLed mid-trial: its trial is marked FAIL on --resume (heartbeat stale),
    counts once, and the study ends with exactly n_trials, each number once."""
    path = _config(
        tmp_path, n_trials=3, heartbeat_s=1, grace_period_s=2, sampler={"name": "random"}
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "fnn", "tune", path]
    run_dir = tmp_path / "run"
    worker = subprocess.Popen([*base, "--set", "epochs=200"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run_dir / "study.db").exists() and any(t[1] == "RUNNING" for t in _trials(run_dir)):
            break
        time.sleep(0.5)
    worker.kill()
    worker.wait()
    assert [t[1] for t in _trials(run_dir)] == ["RUNNING"]
    time.sleep(3)  # past the grace period
    done = subprocess.run([*base, "--resume", "--workers", "2"], env=env, capture_output=True,
                          text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr
    trials = _trials(run_dir)
    assert [t[0] for t in trials] == [0, 1, 2]
    assert trials[0][1] == "FAIL"
    assert {t[1] for t in trials[1:]} <= {"COMPLETE", "PRUNED"}


def test_structured_choice_then_widths_inside_it(tmp_path):
    """A whole `model.layers` list as a categorical (recorded by index), widths set inside
    the chosen list afterwards, and a width that exists only in the 3-block choice."""
    from fnn.cli import tune

    blocks = [{"Dense": {"units": 32, "activation": "relu"}}]
    two = ["Flatten", *blocks * 2, {"Dense": {"units": 10}}]
    three = ["Flatten", *blocks * 3, {"Dense": {"units": 10}}]
    width = {"type": "int", "low": 8, "high": 64}
    space = {
        "model.layers": {"type": "categorical", "choices": [two, three]},
        "model.layers[1].Dense.units": width,
        "model.layers[3].Dense.units": {**width, "when": {"model.layers": 1}},
    }
    raw, search = tune.load_search(_config(tmp_path, space=space))
    params = {
        "model.layers": 1,
        "model.layers[1].Dense.units": 12,
        "model.layers[3].Dense.units": 40,
    }
    layers = tune.trial_config(raw, search["space"], params)["model"]["layers"]
    units = [e["Dense"]["units"] for e in layers[1:]]
    assert units == [12, 32, 40, 10]
    two_only = tune.trial_config(raw, search["space"], {"model.layers": 0})["model"]["layers"]
    assert two_only == two
    bad = {**space, "model.layers[3].Dense.units": {**width, "when": {"model.layers": 2}}}
    with pytest.raises(ConfigError, match=r"when\.model\.layers: 2 is not a value of that range"):
        tune.load_search(_config(tmp_path, name="bad.yaml", space=bad))


def test_trial_orphaned_before_its_first_heartbeat_is_failed(tmp_path):
    """Optuna skips RUNNING trials without a heartbeat; a worker killed between ``ask`` and
    its first beat would hold a slot forever. Under the slot lock fnn fails such a trial and
    leaves a marked (live) one running."""
    import optuna
    from optuna.trial import TrialState

    from fnn.cli import tune

    search = {"storage": None, "heartbeat_s": 60, "grace_period_s": 120}
    storage = tune._storage(search, tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    orphan, live = study.ask(), study.ask()
    storage.record_heartbeat(live._trial_id)
    storage.set_trial_system_attr(live._trial_id, tune._BEAT_MARK, True)
    tune._fail_stale(study, storage)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.FAIL, TrialState.RUNNING]
    assert orphan.number == 0


LR_ONLY = {"optimizer.learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}


def _intermediate(run_dir: Path, number: int) -> list[float]:
    """The values a trial reported to the pruner, by epoch, from Optuna's SQLite schema."""
    with sqlite3.connect(run_dir / "study.db") as db:
        rows = db.execute(
            "SELECT v.step, v.intermediate_value FROM trial_intermediate_values v JOIN trials t "
            "ON v.trial_id = t.trial_id WHERE t.number = ? ORDER BY v.step",
            (number,),
        ).fetchall()
    return [value for _, value in rows]


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    """Two learning-rate trials trained as members of one program (batch_trials 2)."""
    tmp = tmp_path_factory.mktemp("tune_batched")
    path = _config(tmp, sampler={"name": "random", "seed": 3}, n_trials=2, batch_trials=2,
                   space=LR_ONLY)  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["tune", path]) == 0
    return tmp / "run", out.getvalue()


def test_batched_trials_run_in_one_program_each_with_its_own_reports(batched):
    """Real training: two trials in one program, numbered once, each reporting every epoch
    and ending with its own last value (that a member equals its own ``fnn train`` run is
    tests/test_sweep.py's check; the bookkeeping is checked against a formula below)."""
    run_dir, stdout = batched
    trials = _trials(run_dir)
    assert [t[0] for t in trials] == [0, 1]  # exactly n_trials, numbered once
    assert [t[1] for t in trials] == ["COMPLETE", "COMPLETE"]
    assert stdout.count("2 trials in one program") == 2, stdout
    for number, _, value in trials:
        reported = _intermediate(run_dir, number)
        assert len(reported) == 2 and reported[-1] == value  # one report per epoch
    assert trials[0][2] != trials[1][2]
    assert (run_dir / "best.yaml").exists()


@pytest.mark.filterwarnings(
    "ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning"
)
def test_each_batched_trial_reports_is_pruned_and_told_by_its_own_member(tmp_path, monkeypatch):
    """``_train_batch`` with the members' logs given by a formula of each trial's learning
    rate (the training itself is the sweep's, tested in test_sweep.py): trial i reports
    member i's value every epoch, a member below the threshold is pruned (its trial says
    so, the others keep reporting), a diverged member fails its trial only."""
    import optuna
    from optuna.trial import TrialState

    from fnn.cli import sweep as sweep_lib
    from fnn.cli import tune

    lrs = [0.02, 0.001, 0.5, 0.01]  # 0.5 diverges (NaN), 0.001 drops below 0.3 at epoch 2

    def value(lr, epoch):
        return math.nan if lr > 0.1 else 0.6 - (epoch + 1) * 15 * (0.02 - lr)

    def fake_members(run, values, *, on_epoch_end):
        assert values == {"optimizer.learning_rate": lrs}  # member i is trial i
        for epoch in range(3):
            logs = {"val_accuracy": np.array([value(lr, epoch) for lr in lrs])}
            if on_epoch_end(epoch, logs):
                break
        return [], {}

    monkeypatch.setattr(sweep_lib, "train_members", fake_members)
    space = {"optimizer.learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}}
    raw, search = tune.load_search(_config(tmp_path, space=space, n_trials=4))
    raw["epochs"] = 3
    storage = tune._storage(search, tmp_path)
    study = optuna.create_study(
        storage=storage, study_name="s", direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=0.3),
    )  # fmt: skip
    for lr in lrs:
        study.enqueue_trial({"optimizer.learning_rate": lr})
    trials = [study.ask() for _ in lrs]
    pieces = tune.TrainPieces(Run=lambda cfg, path: None, EpochLines=None)
    assert tune._train_batch(study, trials, raw, search, storage, "x.yaml", pieces, {}) == 4
    done = study.get_trials(deepcopy=False)
    assert [t.state for t in done] == [TrialState.COMPLETE, TrialState.PRUNED,
                                       TrialState.FAIL, TrialState.COMPLETE]  # fmt: skip
    for t, lr in zip(done, lrs):
        epochs = {"COMPLETE": 3, "PRUNED": 2, "FAIL": 0}[t.state.name]
        assert t.intermediate_values == {e + 1: value(lr, e) for e in range(epochs)}
    assert done[0].value == value(lrs[0], 2) and done[3].value == value(lrs[3], 2)


@pytest.mark.parametrize(
    "space,optimizer,batch,expected",
    [
        (LR_ONLY, "adam", 8, True),
        (LR_ONLY, "adam", 1, False),  # batch_trials 1: one at a time
        (
            {**LR_ONLY, "model.layers[1].Dense.units": {"type": "int", "low": 8, "high": 32}},
            "adam",
            8,
            False,
        ),
        (
            {"optimizer.options.weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
            "adamw",
            8,
            True,
        ),
        (
            {"optimizer.options.weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
            "adam",
            8,
            False,
        ),
        (
            {**LR_ONLY, "model.layers[2].Dropout.rate": {"type": "float", "low": 0.0, "high": 0.5}},
            "adam",
            8,
            True,
        ),
    ],
)
def test_trials_batch_only_over_sweepable_keys(tmp_path, space, optimizer, batch, expected):
    from fnn.cli import tune

    path = _config(tmp_path, space=space, batch_trials=batch)
    raw, search = tune.load_search(path, [f"optimizer.name={optimizer}"])
    assert tune._batchable(search, raw) is expected


@pytest.mark.filterwarnings(
    "ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning"
)
def test_a_batch_of_asks_stays_within_n_trials_and_every_trial_is_marked(tmp_path):
    """``_ask(k)`` under the slot lock: min(k, slots left) trials, each with its heartbeat
    mark (so ``_fail_stale`` treats a killed batch like a killed single trial)."""
    import optuna

    from fnn.cli import tune

    search = {"storage": None, "heartbeat_s": 60, "grace_period_s": 120, "n_trials": 3}
    storage = tune._storage(search, tmp_path)
    study = optuna.create_study(storage=storage, study_name="s")
    sizes = [len(tune._ask(study, storage, search, tmp_path, 2)) for _ in range(3)]
    assert sizes == [2, 1, 0]
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(tune._BEAT_MARK in t.system_attrs for t in trials)
