"""The CLI's ``dp:`` and ``explain:`` sections: a DP-SGD run reports the accountant's
epsilon and writes attribution images; bad values are one line and exit code 2."""

from __future__ import annotations

import json

import pytest

import fnn
from fnn.cli import commands as cli

TINY = """
model: {layers: [Flatten, {Dense: {units: 10}}]}
dataset: {name: digits}
epochs: 1
plots: false
tensorboard: false
checkpoint: {monitor: val_loss}
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


@pytest.mark.slow
def test_train_with_dp_and_explain(config, tmp_path, capsys):
    run = tmp_path / "run"
    dp = ["dp.l2_norm_clip=1.0", "dp.noise_multiplier=1.1", "dp.delta=1e-5", "dp.chunk_size=8"]
    explain = ["explain.method=integrated_gradients", "explain.examples=3"]
    args = [a for kv in [f"run_dir={run}", *dp, *explain] for a in ("--set", kv)]
    assert cli.main(["train", config, *args]) == 0
    results = json.loads((run / "results.json").read_text())
    # 1,437 training digits, batch 32: 45 steps in the one epoch
    want = fnn.train.dp_epsilon(
        num_examples=1437, batch_size=32, noise_multiplier=1.1, delta=1e-5, steps=45
    )
    assert results["dp"] == {"epsilon": want, "delta": 1e-5}
    assert "epsilon" in capsys.readouterr().out
    png = run / "attributions_integrated_gradients.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "setting, message",
    [
        ("dp={l2_norm_clip: -1, noise_multiplier: 1}", "dp: expected l2_norm_clip > 0, got -1."),
        ("dp.noise=1", "dp: unknown keys ['noise'], missing keys ['l2_norm_clip', "),
        ("dp=3", "dp: expected a mapping with l2_norm_clip and noise_multiplier"),
        ("explain.method=shap", "explain.method: expected an attribution method: saliency, "),
        ("explain.examples=0", "explain.examples: expected a positive int, got 0"),
        ("explain.windows=[2]", "explain.windows: unknown key. Did you mean 'window'?"),
    ],
)
def test_bad_dp_and_explain_values_are_one_line_and_exit_2(config, setting, message, capsys):
    assert cli.main(["train", config, "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_explain_needs_image_like_inputs(tmp_path, capsys):
    path = tmp_path / "cancer.yaml"  # 30 features: not an image
    path.write_text(TINY.replace("digits", "breast_cancer") + "explain: {method: saliency}\n")
    assert cli.main(["train", str(path), "--set", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "explain: attribution images need image inputs" in err and "\n" not in err
