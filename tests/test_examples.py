"""Smoke tests: every example runs (few epochs) and learns beyond chance.

Accuracy floors are loose on purpose (short runs); each example's full run is documented
in its docstring. Multi-process is covered by tests/test_distributed.py and is run here
through its launcher with one epoch.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name,kwargs,floor",
    [
        ("mlp_digits", {"epochs": 3}, 0.8),
        ("cnn_digits", {"epochs": 2}, 0.8),
        ("lstm_digits", {"epochs": 3}, 0.5),
        ("keras_quickstart", {"epochs": 2, "verbose": 0}, 0.8),
        ("transfer_learning", {"epochs": 3}, 0.5),
        ("saliency_digits", {"epochs": 2}, 0.8),
        ("data_parallel_pmap", {"devices": 4, "epochs": 3}, 0.5),
        ("data_parallel_sharded", {"devices": 4, "epochs": 3}, 0.5),
    ],
)
def test_example_learns(name, kwargs, floor, capsys):
    accuracy = _load(name).main(**kwargs)
    assert accuracy >= floor, capsys.readouterr().out


def test_custom_layer_example_recovers_scale():
    assert abs(_load("custom_layer").main(steps=300) - 3.0) < 0.1


def test_multi_process_example_launches_two_processes():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "multi_process.py"), "--launch", "2", "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "accuracy" in done.stdout
