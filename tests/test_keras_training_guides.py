"""The keras.io guides ``training_with_built_in_methods`` and ``writing_your_own_callbacks``
run under fnn (ported in examples/keras_guides, measured in TRAINING_GUIDES.md).

Each guide runs once, statement by statement (``examples/keras_guides/run_guide.py``), in a
temporary directory. The tests assert a floor on the statements that ran (the last
measurement; raise it as fnn grows) and check the guides' numbers against independent
references: chance level and the uniform-prediction loss ``log(10)`` for the digit
classifier, the guide's own learning-rate schedule replayed in plain Python, a numpy MSE of
the model's predictions, and the ``logs`` keys Keras 3 passes to each hook (documented in
the guide: empty at ``*_begin``, loss and metrics at ``*_end``, ``val_`` ones at epoch end).
"""

import importlib.util
import math
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

from pathlib import Path

import numpy as np
import pytest

GUIDES = Path(__file__).resolve().parents[1] / "examples" / "keras_guides"

# Statements that ran in the last measurement (of 163 and 28).
FLOORS = {"training_with_built_in_methods": 163, "writing_your_own_callbacks": 28}


def _module(name):
    spec = importlib.util.spec_from_file_location(f"keras_guides_{name}", GUIDES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


runner = _module("run_guide")


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    """``guide(name)``: the guide's run (a ``run_guide.Result``), run once per module."""
    results = {}

    def run(name):
        if name not in results:
            cwd = tmp_path_factory.mktemp(name)
            results[name] = runner.run_guide(GUIDES / f"{name}.py", cwd=str(cwd), quiet=True)
        return results[name]

    return run


def _bound(result, *names):
    """The namespace values of ``names``; skips (naming the failed statement) if unbound."""
    for name in names:
        if name not in result.namespace:
            cause = result.cause_of(name)
            pytest.skip(f"{name} unbound" + (f": {cause}" if cause else ""))
    return [result.namespace[n] for n in names]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FLOORS))
def test_guide_runs_at_least_the_measured_statements(guide, name):
    result = guide(name)
    failures = "\n".join(str(f) for f in result.failures)
    assert result.ran >= FLOORS[name], f"{result.summary()}\n{failures}"


@pytest.mark.slow
def test_training_guide_learns_the_digits(guide):
    result = guide("training_with_built_in_methods")
    (results, history) = _bound(result, "results", "history")
    loss, accuracy = results
    assert accuracy > 0.5  # chance is 0.1 on ten balanced digit classes
    assert loss < math.log(10)  # the cross-entropy of a uniform prediction
    val_acc = history.history["val_sparse_categorical_accuracy"]
    assert len(val_acc) == 2 and val_acc[-1] > 0.3
    # (``predictions`` is rebound later in the guide to a symbolic tensor.) The test split
    # kept MNIST's layout after the guide's preprocessing:
    (x_test,) = _bound(result, "x_test")
    assert x_test.shape == (360, 784) and x_test.dtype == np.float32


@pytest.mark.slow
def test_callbacks_guide_hooks_logs_and_schedule(guide):
    result = guide("writing_your_own_callbacks")
    lines = result.output.splitlines()
    # Keras 3 passes {} to begin hooks and the running loss/metrics at batch and epoch ends.
    assert "Starting training; got log keys: []" in lines
    assert "...Training: start of batch 0; got log keys: []" in lines
    assert "...Training: end of batch 0; got log keys: ['loss', 'mean_absolute_error']" in lines
    assert (
        "End epoch 0 of training; got log keys: "
        "['loss', 'mean_absolute_error', 'val_loss', 'val_mean_absolute_error']"
    ) in lines
    assert "...Predicting: end of batch 0; got log keys: ['outputs']" in lines

    model, lr_schedule, x_test, y_test = _bound(result, "model", "lr_schedule", "x_test", "y_test")
    lr = 0.1  # RMSprop(learning_rate=0.1) in get_model
    for epoch in range(15):  # the guide's schedule, replayed in plain Python
        lr = lr_schedule(epoch, lr)
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(lr)
    prints = [line for line in lines if line.startswith("\nEpoch") or line.startswith("Epoch ")]
    assert any("Learning rate is 0.001." in line for line in prints)

    loss, mae = model.evaluate(x_test, y_test, batch_size=128, verbose=0)
    y_pred = np.asarray(model.predict(x_test, verbose=0))[:, 0]
    err = y_pred - y_test.astype(np.float64)
    np.testing.assert_allclose(loss, np.mean(err**2), rtol=1e-4)
    np.testing.assert_allclose(mae, np.mean(np.abs(err)), rtol=1e-4)
