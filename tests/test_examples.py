"""Smoke tests: every example runs (few epochs) and learns beyond chance.

Accuracy floors are loose on purpose (short runs); each example's full run is documented
in its docstring. Multi-process is covered by tests/test_distributed.py and is run here
through its launcher with one epoch.
"""

import ast
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
        ("keras_quickstart", {"epochs": 2, "verbose": 0, "api": "functional"}, 0.8),
        ("transfer_learning", {"epochs": 3}, 0.5),
        ("saliency_digits", {"epochs": 2}, 0.8),
        ("fairness_breast_cancer", {"epochs": 5, "verbose": 0}, 0.8),
        ("ensemble_digits", {"epochs": 2, "members": 3}, 0.8),
        ("dp_digits", {"epochs": 2}, 0.7),
        ("lr_sweep_digits", {"epochs": 2, "members": 3}, 0.8),
        ("data_parallel", {"method": "pmap", "devices": 4, "epochs": 3}, 0.5),
        ("data_parallel", {"method": "sharded", "devices": 4, "epochs": 3}, 0.5),
    ],
)
def test_example_learns(name, kwargs, floor, capsys):
    accuracy = _load(name).main(**kwargs)
    assert accuracy >= floor, capsys.readouterr().out


def test_data_parallel_methods_match_one_device():
    # Both methods promise the single-device result up to float rounding; the single-device
    # run of the same example is the reference (at most one test digit may flip).
    example = _load("data_parallel")
    reference = example.main(devices=1, epochs=2, method="sharded")
    for method in ("pmap", "sharded"):
        assert abs(example.main(devices=4, epochs=2, method=method) - reference) <= 1 / 360


# Code that only a hand-written training loop contains.
_LOOP_MARKERS = ("value_and_grad", "optax.apply_updates", "dp(state")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.stem)
def test_example_uses_library_data_and_declares_own_loop(path):
    source = path.read_text()
    assert "sklearn" not in source, f"{path.name}: load data with fnn.datasets"
    first_line = ast.get_docstring(ast.parse(source)).splitlines()[0]
    own_loop = [m for m in _LOOP_MARKERS if m in source]
    assert bool(own_loop) == first_line.startswith("Hand-written loop on purpose"), (
        f"{path.name}: loop code {own_loop}, first docstring line {first_line!r}"
    )


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
