"""The fnn CLI end to end on digits: files, accuracy, resume equality, evaluate/predict."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import ClassVar

import jax
import numpy as np
import pytest

import fnn
from fnn import checkpoint, datasets, saving
from fnn.cli import commands as cli

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "configs" / "digits_mlp.yaml")
SEQUENCE_LSTM = str(ROOT / "configs" / "sequence_lstm.yaml")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 12-epoch run of configs/digits_mlp.yaml shared by the end-to-end tests."""
    run = tmp_path_factory.mktemp("cli") / "run"
    code = cli.main(["train", MLP, "--set", f"run_dir={run}", "--set", "epochs=12"])
    assert code == 0
    return run


def test_train_writes_every_file_and_reaches_95_percent(trained, capsys):
    run = trained
    for name in (
        "metrics.csv",
        "config.yaml",
        "results.json",
        "curves.png",
        "confusion_matrix.png",
    ):
        assert (run / name).is_file(), name
    for png in ("curves.png", "confusion_matrix.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(run / "metrics.csv")
    # fnn.callbacks.CSVLogger's rows (Keras's format): epoch from 0, then the sorted keys.
    assert [int(r["epoch"]) for r in rows] == list(range(12))
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "time_s", "val_accuracy", "val_loss"]
    assert float(rows[-1]["val_accuracy"]) >= 0.95
    # Checkpoints: every 5 epochs and the last, keeping 2 plus the best val_accuracy.
    steps = checkpoint.list_steps(run / "checkpoints")
    steps_per_epoch = 45  # ceil(1437 / 32)
    assert set(steps) <= {5 * steps_per_epoch, 10 * steps_per_epoch, 12 * steps_per_epoch}
    assert steps[-1] == 12 * steps_per_epoch
    # The accuracy the CLI reports equals a plain-numpy accuracy of the saved model.
    loaded = saving.load_layer(run / "model")
    (_, _), (x_test, y_test) = datasets.load_digits()
    logits, _ = loaded.layer.apply(loaded.params, loaded.state, x_test)
    accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == y_test))
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    assert loaded.compile_config["loss"]["class_name"] == "SparseCategoricalCrossentropy"
    # The Keras-style view of the same directory: built, compiled, same predictions.
    model = fnn.load_model(run / "model")
    np.testing.assert_allclose(model.predict(x_test, verbose=0), logits, rtol=1e-5, atol=1e-6)
    assert model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"] == pytest.approx(
        accuracy
    )


def test_evaluate_and_predict_commands(trained, tmp_path, capsys):
    run = trained
    assert cli.main(["evaluate", MLP, "--set", f"run_dir={run}", "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    reported = json.loads(out.strip().splitlines()[-1])
    results = json.loads((run / "results.json").read_text())
    assert reported["test_accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-6)

    (_, _), (x_test, _) = datasets.load_digits()
    loaded = saving.load_layer(run / "model")
    expected = np.argmax(
        np.asarray(loaded.layer.apply(loaded.params, loaded.state, x_test[:20])[0]), -1
    )
    np.save(tmp_path / "x.npy", x_test[:20])
    assert (
        cli.main(["predict", MLP, "--checkpoint", str(run), "--input", str(tmp_path / "x.npy")])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "index,class"
    assert [int(line.split(",")[1]) for line in lines[1:]] == expected.tolist()
    np.savetxt(
        tmp_path / "x.csv",
        x_test[:20],
        delimiter=",",
        header=",".join(f"p{i}" for i in range(64)),
        comments="",
    )
    out_file = tmp_path / "pred.csv"
    args = [
        "predict",
        MLP,
        "--checkpoint",
        str(run / "checkpoints"),
        "--input",
        str(tmp_path / "x.csv"),
    ]
    assert cli.main([*args, "--output", str(out_file)]) == 0
    assert [int(r["class"]) for r in read_csv(out_file)] == expected.tolist()
    # Wrong input shape and a missing checkpoint: one line, no traceback.
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    assert (
        cli.main(["predict", MLP, "--checkpoint", str(run), "--input", str(tmp_path / "bad.npy")])
        == 2
    )
    assert "expected examples of shape [64], got array of shape [3, 5]" in capsys.readouterr().err
    assert cli.main(["evaluate", MLP, "--checkpoint", str(tmp_path / "none")]) == 1
    assert "no checkpoint there" in capsys.readouterr().err


@pytest.fixture
def lstm_checkpoint(tmp_path):
    """configs/sequence_lstm.yaml shrunk (3 units, 40 examples) with a checkpoint of random
    weights (no training: the export path is what is tested): ``(overrides, checkpoint dir,
    the layer, its params and state)``."""
    from fnn.cli import config as config_lib

    sets = ["model.layers[0].LSTM.units=3", "dataset.options.num_samples=40"]
    run = cli.Run(config_lib.load_config(SEQUENCE_LSTM, sets), SEQUENCE_LSTM)
    run.model.fit(run.x_train[:1], run.y_train[:1], epochs=0, verbose=0)
    draw = np.random.default_rng(0)
    ts = run.model.train_state
    params = jax.tree.map(lambda p: (0.5 * draw.normal(size=p.shape)).astype(p.dtype), ts.params)
    checkpoint.save(tmp_path / "ckpt", ts._replace(params=params))
    overrides = [arg for s in sets for arg in ("--set", s)]
    return overrides, tmp_path / "ckpt", run.layer, params, ts.state


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime")
@pytest.mark.parametrize("config", ["digits_mlp", "sequence_lstm"])
def test_export_command_onnx_equals_the_saved_model(config, request, tmp_path, capsys):
    import onnxruntime

    if config == "digits_mlp":
        path, overrides, directory = MLP, [], request.getfixturevalue("trained")
        loaded = saving.load_layer(directory / "model")
        layer, params, state = loaded.layer, loaded.params, loaded.state
        (_, _), (x_test, _) = datasets.load_digits()
    else:
        path = SEQUENCE_LSTM
        overrides, directory, layer, params, state = request.getfixturevalue("lstm_checkpoint")
        x_test = np.random.default_rng(1).normal(size=(9, 20, 3))  # [batch, steps, channels]
    out = tmp_path / "m.onnx"
    args = ["export", path, *overrides, "--checkpoint", str(directory), "--format", "onnx"]
    assert cli.main([*args, "--output", str(out)]) == 0
    x = np.asarray(x_test[:9], np.float32)
    want = np.asarray(layer.apply(params, state, x)[0])
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_0": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_summary_command(capsys):
    assert cli.main(["summary", MLP]) == 0
    out = capsys.readouterr().out
    assert "dense_2 (Dense)" in out and "Total params: 50,826" in out


def test_resume_equals_uninterrupted_training_bitwise(tmp_path, capsys):
    common = [
        "--set", "epochs=4", "--set", "checkpoint.every_epochs=1", "--set", "checkpoint.max_to_keep=10",
        "--set", "optimizer.schedule=cosine", "--set", "plots=false",
    ]  # fmt: skip
    full = tmp_path / "full"
    assert cli.main(["train", MLP, "--set", f"run_dir={full}", *common]) == 0
    # An "interrupted" run: the same directory as it was after epoch 2.
    part = tmp_path / "part"
    shutil.copytree(full, part)
    steps = checkpoint.list_steps(part / "checkpoints")
    for step in steps[2:]:
        shutil.rmtree(part / "checkpoints" / f"step_{step:08d}")
    capsys.readouterr()
    assert cli.main(["train", MLP, "--set", f"run_dir={part}", *common, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resumed from" in captured.out
    # tensorboard is not set in the config: no "skipped" line either way.
    assert "TensorBoard: tensorboardX is not installed" not in captured.err
    a = checkpoint.restore(full / "checkpoints" / f"step_{steps[-1]:08d}")
    b = checkpoint.restore(part / "checkpoints" / f"step_{steps[-1]:08d}")
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()

    def without_time(rows):
        return [{k: v for k, v in r.items() if k != cli.TIME_COLUMN} for r in rows]

    assert without_time(read_csv(full / "metrics.csv")) == without_time(
        read_csv(part / "metrics.csv")
    )
    # Training again into a run directory with checkpoints needs --resume or --overwrite.
    assert cli.main(["train", MLP, "--set", f"run_dir={full}", *common]) == 2
    assert "already holds checkpoints; pass --resume" in capsys.readouterr().err
    # Resuming with another architecture names the mismatched parameters, in one line.
    wider = [*common, "--set", "model.layers[1].Dense.units=64", "--resume"]
    assert cli.main(["train", MLP, "--set", f"run_dir={full}", *wider]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match the target tree" in err
    assert (
        "; .params['dense']['kernel']: checkpoint has float32[64, 256], target float32[64, 64]; "
        in err
    )


@pytest.mark.parametrize("source", ["arrays", "streamed_csv"])
def test_resume_mid_epoch_equals_uninterrupted_training_bitwise(tmp_path, capsys, source):
    """With ``checkpoint.every_steps`` a run "interrupted" inside an epoch (its directory
    as it was after a mid-epoch checkpoint) resumes at the next batch of that epoch and
    ends bit for bit where the uninterrupted run does: for the digits arrays (45 steps an
    epoch, a checkpoint every 20) and a CSV file streamed by ``data:`` (the shuffling
    reader's pass is in the checkpoint; 8 steps an epoch, a checkpoint every 3)."""
    config, every = MLP, 20
    common = ["--set", "plots=false"]
    if source == "streamed_csv":
        files = datasets.write_digits_files(tmp_path / "files")
        config, every = str(ROOT / "configs" / "digits_csv.yaml"), 3
        common += ["--set", f"data.path={files / 'digits.csv'}"]
    common += [
        "--set", "epochs=2", "--set", f"checkpoint.every_steps={every}",
        "--set", "checkpoint.max_to_keep=100", "--set", "checkpoint.every_epochs=1",
    ]  # fmt: skip
    full = tmp_path / "full"
    assert cli.main(["train", config, "--set", f"run_dir={full}", *common]) == 0
    steps = checkpoint.list_steps(full / "checkpoints")
    per_epoch = steps[-1] // 2
    inside = [s for s in steps if per_epoch < s < 2 * per_epoch and s % every == 0]
    assert inside and per_epoch in steps  # a checkpoint inside epoch 2, one at its start
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for step in steps:
        if step > inside[0]:  # the run as it was after a checkpoint inside epoch 2
            shutil.rmtree(part / "checkpoints" / f"step_{step:08d}")
    info = checkpoint.read_info(part / "checkpoints" / f"step_{inside[0]:08d}")
    assert info["metadata"]["data_position"]["epoch"] == 1
    assert info["metadata"]["data_position"]["batch"] == inside[0] - per_epoch
    capsys.readouterr()
    assert cli.main(["train", config, "--set", f"run_dir={part}", *common, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    a = checkpoint.restore(full / "checkpoints" / f"step_{steps[-1]:08d}")
    b = checkpoint.restore(part / "checkpoints" / f"step_{steps[-1]:08d}")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    rows = [read_csv(d / "metrics.csv") for d in (full, part)]
    drop = cli.TIME_COLUMN
    assert [{k: v for k, v in r.items() if k != drop} for r in rows[0]] == [
        {k: v for k, v in r.items() if k != drop} for r in rows[1]
    ]
    assert cli.main(["train", config, "--set", "checkpoint.every_steps=0"]) == 2
    assert "checkpoint.every_steps" in capsys.readouterr().err


class FakeSummaryWriter:
    """Stands in for tensorboardX.SummaryWriter (an optional extra) to check what is logged."""

    scalars: ClassVar[list] = []

    def __init__(self, logdir):
        self.logdir = logdir

    def add_scalar(self, tag, value, step):
        self.scalars.append((Path(self.logdir).name, tag, step, value))

    def flush(self):
        pass

    def close(self):
        pass


def test_data_parallel_matches_single_device(tmp_path, monkeypatch):
    assert jax.device_count() == 8
    fake = type(sys)("tensorboardX")
    fake.SummaryWriter = FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "tensorboardX", fake)
    finals = {}
    for devices in (1, 8):
        run = tmp_path / f"dp{devices}"
        args = [
            "train", MLP, "--set", f"run_dir={run}", "--set", "epochs=2", "--set", "batch_size=64",
            "--set", "distribute.strategy=data_parallel", "--set", f"distribute.num_devices={devices}",
            "--set", "plots=false", "--set", "model.layers[2].Dropout.rate=0.0",
        ]  # fmt: skip
        assert cli.main(args) == 0
        step = checkpoint.list_steps(run / "checkpoints")[-1]
        assert step == 2 * (1437 // 64)  # the last partial batch is dropped
        finals[devices] = checkpoint.restore(run / "checkpoints" / f"step_{step:08d}")["params"]
    for x, y in zip(jax.tree.leaves(finals[1]), jax.tree.leaves(finals[8]), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
    # TensorBoard scalars: every metrics.csv column but epoch and time, per epoch, per run,
    # as fnn.callbacks.TensorBoard writes them (Keras's train/validation runs, epoch_* tags).
    rows = read_csv(tmp_path / "dp8" / "metrics.csv")
    logged = {
        (split, tag, step): value
        for split, tag, step, value in FakeSummaryWriter.scalars[
            len(FakeSummaryWriter.scalars) // 2 :
        ]
        # Keras's TensorBoard also logs evaluation_*_vs_iterations at each validation.
        if tag.startswith("epoch_")
    }
    expected = {
        (
            "validation" if k.startswith("val_") else "train",
            f"epoch_{k.removeprefix('val_')}",
            int(r["epoch"]),
        ): float(v)
        for r in rows
        for k, v in r.items()
        if k not in ("epoch", cli.TIME_COLUMN)
    }
    assert logged == expected and len(expected) == 8


def test_confusion_matrix_and_class_rules_match_sklearn():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=50)
    predicted = cli._classes(logits, from_logits=True)
    np.testing.assert_array_equal(predicted, logits.argmax(-1))
    np.testing.assert_array_equal(
        cli.confusion_matrix(y, predicted, 4), confusion_matrix(y, predicted, labels=range(4))
    )
    # One output unit: a logit is positive at > 0, a probability at > 0.5.
    one = np.array([[0.3], [0.7], [-0.2]], np.float32)
    assert cli._classes(one, from_logits=True).tolist() == [1, 1, 0]
    assert cli._classes(one, from_logits=False).tolist() == [0, 1, 0]
