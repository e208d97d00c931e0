"""``sweep:`` in ``fnn train``: the members of one vmapped program end where separate
``fnn train`` runs with each value end (same Run, same batches, CPU), new values reuse the
compiled programs (counted), and bad sweeps fail with one line and exit code 2."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from fnn.cli import commands as cli
from fnn.cli import config as config_lib
from fnn.cli import sweep as sweep_lib
from fnn.training.ensemble import CompileCounter

# adamw under a warmup + cosine schedule: the swept learning rate is the schedule's peak
# and the weight decay adamw's own argument, both values in the optimizer state.
BASE = {
    "model": {
        "layers": [
            "Flatten",
            {"Dense": {"units": 16, "activation": "relu"}},
            {"Dropout": {"rate": 0.2}},
            {"Dense": {"units": 10}},
        ]
    },
    "dataset": {"name": "digits", "validation_split": 0.2},
    "optimizer": {
        "name": "adamw",
        "learning_rate": 0.001,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "options": {"weight_decay": 0.004},
    },
    "metrics": ["accuracy"],
    "epochs": 2,
    "batch_size": 64,
    "seed": 0,
    "tensorboard": False,
}
LRS, DECAYS = [3e-3, 1e-2], [0.0, 0.05]


def _write(tmp_path, name, **changes) -> str:
    raw = yaml.safe_load(yaml.safe_dump(BASE)) | {"run_dir": str(tmp_path / name)}
    for key, value in changes.items():
        raw = config_lib.apply_overrides(raw, [f"{key}={json.dumps(value)}"])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The sweep as ``fnn train`` runs it (``cmd_train_sweep`` on the config's ``Run``),
    the ``Run`` kept for a second sweep on its compiled programs."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = {"optimizer.learning_rate": LRS, "optimizer.options.weight_decay": DECAYS}
    path = _write(tmp, "sweep", sweep=sweep, plots=False)
    run = cli.Run(config_lib.load_config(path), path)
    (tmp / "sweep").mkdir()
    assert sweep_lib.cmd_train_sweep(run, tmp / "sweep", print) == 0
    return tmp, run


def test_a_member_ends_where_its_own_fnn_train_run_ends(swept):
    """Member 1 (both values nonzero, warmup then cosine decay) against ``fnn train``."""
    tmp, _ = swept
    rows = _csv(tmp / "sweep" / "sweep.csv")
    assert [int(r["member"]) for r in rows] == [0, 1]
    assert [float(r["optimizer.learning_rate"]) for r in rows] == LRS
    row = rows[1]
    values = {"optimizer.learning_rate": LRS[1], "optimizer.options.weight_decay": DECAYS[1]}
    path = _write(tmp, "single", **values, plots=False)
    assert cli.main(["train", path]) == 0
    last = _csv(tmp / "single" / "metrics.csv")[-1]
    test = json.loads((tmp / "single" / "results.json").read_text())["test"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert float(row[key]) == pytest.approx(float(last[key]), rel=1e-5, abs=1e-6), key
    for key, value in test.items():
        assert float(row[f"test_{key}"]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert float(rows[0]["val_loss"]) != pytest.approx(float(row["val_loss"]), rel=1e-3)


def test_new_values_reuse_the_compiled_programs(swept):
    _, run = swept
    keys = ("optimizer.learning_rate", "optimizer.options.weight_decay")
    first, _ = sweep_lib.train_members(run, dict(zip(keys, (LRS, DECAYS))))
    swapped = dict(zip(keys, (LRS[::-1], DECAYS[::-1])))
    with CompileCounter() as counter:
        other, _ = sweep_lib.train_members(run, swapped)
    assert counter.count == 0
    # Really the new values: the members swapped, so did their results.
    np.testing.assert_allclose(other[-1]["loss"], first[-1]["loss"][::-1], rtol=1e-5)


DROPOUT, SMOOTHING = "model.layers[2].Dropout.rate", "loss.label_smoothing"


def test_dropout_and_label_smoothing_members_end_where_their_runs_end(swept):
    """The dropout rate and label smoothing are traced per-member values: member 1 (rate
    0.5, smoothing 0.1, both differing from the config's) ends where ``fnn train --set``
    with them ends, and new values compile no new program (the members swap)."""
    tmp, run = swept
    values = {DROPOUT: [0.0, 0.5], SMOOTHING: [0.0, 0.1]}
    history, test = sweep_lib.train_members(run, values)
    loss = {"name": "sparse_categorical_crossentropy", "from_logits": True, "label_smoothing": 0.1}
    path = _write(tmp, "single_reg", **{DROPOUT: 0.5}, loss=loss, plots=False)
    assert cli.main(["train", path]) == 0
    last = _csv(tmp / "single_reg" / "metrics.csv")[-1]
    want_test = json.loads((tmp / "single_reg" / "results.json").read_text())["test"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[-1][key][1] == pytest.approx(float(last[key]), rel=1e-5, abs=1e-6), key
    for key, value in want_test.items():
        assert test[key][1] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert history[-1]["loss"][0] != pytest.approx(history[-1]["loss"][1], rel=1e-3)
    with CompileCounter() as counter:
        other, _ = sweep_lib.train_members(run, {k: v[::-1] for k, v in values.items()})
    assert counter.count == 0
    np.testing.assert_allclose(other[-1]["loss"], history[-1]["loss"][::-1], rtol=1e-5)


def test_fnn_train_refuses_to_resume_a_sweep(tmp_path, capsys):
    path = _write(tmp_path, "resume", sweep={"optimizer.learning_rate": LRS})
    assert cli.main(["train", path, "--resume"]) == 2
    assert "sweep: --resume is not supported" in capsys.readouterr().err


@pytest.mark.parametrize(
    "sweep,message",
    [
        (
            {"optimizer.learnig_rate": [0.1]},
            r"sweep\.optimizer\.learnig_rate: .*Did you mean 'optimizer\.learning_rate'",
        ),
        ({"epochs": [1, 2]}, r"sweep\.epochs: cannot be swept in one program"),
        (
            {"optimizer.learning_rate": 0.1},
            r"sweep\.optimizer\.learning_rate: expected a non-empty list",
        ),
        ({"optimizer.learning_rate": [0.1, -1.0]}, r"expected finite values > 0, got -1\.0"),
        (
            {"optimizer.learning_rate": [0.1, 0.2], "optimizer.options.weight_decay": [0.0]},
            r"sweep: expected lists of one length .*'optimizer\.learning_rate': 2",
        ),
        ([0.1], r"sweep: expected a mapping"),
        ({"model.layers[1].Dropout.rate": [0.1]}, r"model\.layers\[1\] is not a Dropout entry"),
        ({"model.layers[2].Dropout.rate": [0.1, 1.0]}, r"expected finite values in \[0, 1\)"),
        ({"loss.label_smoothing": [0.1, 1.5]}, r"expected finite values in \[0, 1\], got 1\.5"),
    ],
)
def test_bad_sweep_exits_2_with_one_line(tmp_path, capsys, sweep, message):
    code = cli.main(["train", _write(tmp_path, "bad", sweep=sweep)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "bad").exists()


def test_weight_decay_sweep_needs_an_optimizer_that_owns_it(tmp_path, capsys):
    path = _write(tmp_path, "bad", sweep={"optimizer.options.weight_decay": [0.0, 0.1]})
    raw = yaml.safe_load(Path(path).read_text())
    raw["optimizer"] = {"name": "adam"}
    Path(path).write_text(yaml.safe_dump(raw))
    assert cli.main(["train", path]) == 2
    assert "optimizer 'adam' has no weight_decay argument of its own" in capsys.readouterr().err
