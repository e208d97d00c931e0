"""CLI failure paths: each prints one bounded line on stderr and exits 2 (bad input) or 1
(a run-time failure), a traceback only with --debug; plus the small CLI gaps of issue 18."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

import fnn
from fnn.cli import commands as cli
from fnn.cli import config as config_lib

TINY = """\
model:
  layers:
    - Flatten
    - Dense: {units: 10}
dataset: {name: digits}
epochs: 2
batch_size: 64
plots: false
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[:2000]
    assert lines[0].startswith("fnn: error: ") and "Traceback" not in err
    assert len(lines[0]) <= 700
    return lines[0]


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("seed=100000000000000000000000", r"seed: expected an int <= 2147483647"),
        (
            "model.layers[1].Dense.units=100000000000000000000",
            r"model\.layers\[1\]\.Dense\.units: expected an int of at most 2147483647",
        ),
        ("optimizer.learning_rate=.nan", r"optimizer\.learning_rate: expected a finite number"),
        ("optimizer.learning_rate=.inf", r"optimizer\.learning_rate: expected a finite number"),
        ("dataset.validation_split=.nan", r"dataset\.validation_split: expected a finite"),
    ],
)
def test_bad_values_exit_2_at_validation_naming_the_key(tiny, tmp_path, capsys, override, pattern):
    code, _, err = run_cli(
        capsys, "train", tiny, "--set", f"run_dir={tmp_path / 'r'}", "--set", override
    )
    assert code == 2
    assert re.search(pattern, one_line_error(err))
    assert not (tmp_path / "r").exists()  # rejected before anything was written


def test_run_dir_that_is_a_file(tiny, tmp_path, capsys):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("keep me")
    code, _, err = run_cli(capsys, "train", tiny, "--set", f"run_dir={user_file}")
    assert code == 2
    assert "notes.txt is a file, not a directory" in one_line_error(err)
    assert user_file.read_text() == "keep me"


def yaml_bomb(levels: int) -> str:
    items = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("key", ["epochs", "metrics", "model.layers[1].Dense.units"])
def test_nested_anchor_yaml_bomb_gives_a_bounded_message(tiny, key):
    text = TINY.replace("epochs: 2\n", "")
    doc = config_lib._safe_load(text)
    bomb = yaml_bomb(9)  # 9**9 = 387 million strings once expanded
    assert len(bomb) < 700
    overrides = [f"{key}={bomb}"]
    with pytest.raises(
        fnn.errors.ConfigError, match=r"expands to more than 100,000 values"
    ) as info:
        config_lib.load_config_text(config_lib.yaml.safe_dump(doc), overrides)
    assert len(str(info.value)) <= 300


def test_bounded_repr_of_values_in_messages():
    with pytest.raises(fnn.errors.ConfigError) as info:
        config_lib.load_config_text(TINY.replace("epochs: 2", "epochs: " + str(list(range(5000)))))
    assert "epochs: expected a positive int, got [0, 1, 2, 3, 4, 5, ...] (list)" in str(info.value)


def test_out_of_range_labels_in_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    y[5] = 99  # seen once: scikit-learn's stratified split used to raise here
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 4)).astype("float32"), y=y)
    config = tmp_path / "npz.yaml"
    config.write_text(
        "model: {layers: [{Dense: {units: 3}}]}\n"
        f"dataset: {{name: npz, options: {{path: {tmp_path / 'd.npz'}}}, validation_split: 0.2}}\n"
    )
    code, _, err = run_cli(capsys, "train", config, "--set", f"run_dir={tmp_path / 'r'}")
    assert code == 2
    assert "got label 99: label out of range" in one_line_error(err)


def test_unexpected_exception_is_one_line_exit_1_and_debug_shows_it(tiny, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire " + "x" * 5000)

    monkeypatch.setattr(config_lib, "load_config", boom)
    code, _, err = run_cli(capsys, "summary", tiny)
    assert code == 1
    assert "RuntimeError: disk on fire" in one_line_error(err) and "--debug" in err
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main(["summary", str(tiny), "--debug"])


def test_version_and_checkpoint_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fnn {fnn.__version__}"
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--checkpoint DIR a checkpoint directory" in help_text
    assert "or the run directory itself" in help_text


def test_train_resume_evaluate_paths_and_param_counts(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    # The epoch with the largest val_loss counts as "best": an early epoch, not the final one.
    best_max = ("--set", "checkpoint.mode=max", "--set", "dataset.validation_split=0.2")
    code, out, err = run_cli(capsys, "train", tiny, "--set", f"run_dir={run}", *best_max)
    assert code == 0 and "skipped" not in err  # tensorboard left at its default
    header = re.search(r"([\d,]+) params \(([\d,]+) trainable\)", out)
    code, summary, _ = run_cli(capsys, "summary", tiny)
    total = re.search(r"Total params: ([\d,]+)", summary).group(1)
    trainable = re.search(r"Trainable params: ([\d,]+)", summary).group(1)
    assert header.groups() == (total, trainable) == ("650", "650")  # 64*10 + 10
    # evaluate finds the latest checkpoint from the run dir and from its model/ folder.
    lines = []
    for where in (run, run / "model"):
        code, out, _ = run_cli(capsys, "evaluate", tiny, "--checkpoint", where)
        assert code == 0
        lines.append(out.splitlines()[0])
    assert len(set(lines)) == 1 and "step_" in lines[0]
    # --resume with another epoch count says so.
    code, out, _ = run_cli(
        capsys, "train", tiny, "--set", f"run_dir={run}", "--resume", "--set", "epochs=3", *best_max
    )
    assert code == 0
    assert "resume: epochs changed from 2 (the checkpointed run) to 3" in out
    assert json.loads((run / "results.json").read_text())["epochs"] == 3
    check_final_and_best(run, out, epochs=3)


def check_final_and_best(run, out, epochs):
    """results.json and the printed summary tell the best checkpoint from the final model,
    as metrics.csv (one row per epoch) says they are."""
    rows = [
        {k: float(v) for k, v in row.items()}
        for row in csv.DictReader((run / "metrics.csv").open())
    ]
    assert len(rows) == epochs
    results = json.loads((run / "results.json").read_text())
    best_row = max(range(epochs), key=lambda i: (rows[i]["val_loss"], -i))  # ties: earliest
    final, best = results["final"], results["best"]
    assert (final["epoch"], best["epoch"]) == (epochs, best_row + 1) and best["epoch"] != epochs
    assert best["monitor"] == "val_loss" and best["checkpoint"].startswith(str(run / "checkpoints"))
    for entry, row in ((final, rows[-1]), (best, rows[best_row])):
        assert entry["metrics"]["val_loss"] == pytest.approx(row["val_loss"], rel=1e-6)
        assert entry["metrics"]["accuracy"] == pytest.approx(row["accuracy"], rel=1e-6)
    lines = out.splitlines()
    assert lines[-3] == (
        f"best checkpoint: epoch {best['epoch']} (val_loss {rows[best_row]['val_loss']:.4f}) in "
        f"{best['checkpoint']}; the final model and the test metrics below are epoch {epochs}'s "
        f"(val_loss {rows[-1]['val_loss']:.4f}); results.json has both (best, final)"
    )
    assert lines[-2].startswith("done in ")
    assert f"final model (epoch {epochs}, in model/): test_loss" in lines[-2]
