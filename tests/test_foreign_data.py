"""``tf.data.Dataset`` and PyTorch ``DataLoader`` through ``fit``/``evaluate``/``predict``
(``fnn.io.foreign_data``): the same parameters, loss and outputs as NumPy arrays in the same
batch order, named errors for what cannot be fed, and no TensorFlow/PyTorch import unless the
user passes their objects. The TensorFlow and PyTorch tests skip where the library is not
installed (neither is in the ``test`` extra: ``pip install ".[tf]"`` / ``".[torch]"``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import ml_dtypes
import numpy as np
import pytest

import fnn
from fnn.core.errors import ConfigError, ShapeError
from fnn.io.foreign_data import numpy_tree

N, FEATURES, CLASSES, BATCH, EPOCHS = 40, 4, 3, 16, 2  # 40 rows: a last partial batch of 8


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype(np.float32)
    return x, rng.integers(0, CLASSES, N)


def _model():
    model = fnn.Sequential([fnn.layers.Dense(8, activation="relu"), fnn.layers.Dense(CLASSES)])
    model.compile(
        optimizer="adam",
        loss=fnn.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        seed=0,
    )
    return model


@pytest.fixture(scope="module")
def reference():
    """``fit``/``evaluate``/``predict`` on the NumPy arrays, batches in order (no shuffle)."""
    x, y = _data()
    model = _model()
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    return {
        "params": jax.device_get(model.params),
        "loss": history.history["loss"],
        "evaluate": model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True),
        "predict": model.predict(x, batch_size=BATCH, verbose=0),
    }


def _assert_matches(reference, source, **fit_kwargs):
    model = _model()
    history = model.fit(source, epochs=EPOCHS, verbose=0, **fit_kwargs)
    np.testing.assert_allclose(history.history["loss"], reference["loss"], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        jax.device_get(model.params),
        reference["params"],
    )
    steps = {"steps": fit_kwargs["steps_per_epoch"]} if "steps_per_epoch" in fit_kwargs else {}
    logs = model.evaluate(source, verbose=0, return_dict=True, **steps)
    for key, value in reference["evaluate"].items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(
        model.predict(source, verbose=0, **steps), reference["predict"], rtol=1e-6, atol=1e-6
    )


# ------------------------------------------------------------------ tf.data


def test_tf_dataset_trains_as_arrays(reference):
    tf = pytest.importorskip("tensorflow")
    x, y = _data()
    # float64 x and int64 y as tf.data gives them: converted as NumPy arrays are.
    ds = tf.data.Dataset.from_tensor_slices((x.astype(np.float64), y)).batch(BATCH)
    _assert_matches(reference, ds)


def test_tf_dataset_of_named_inputs_feeds_a_functional_model():
    """Dict batches keyed by input name, in fit, evaluate and predict (each batch is
    arranged onto the model's inputs as dict arrays are)."""
    tf = pytest.importorskip("tensorflow")
    x, y = _data()
    named = {"a": x[:, :2], "b": x[:, 2:]}

    def functional():
        a, b = fnn.Input((2,), name="a"), fnn.Input((2,), name="b")
        out = fnn.layers.Dense(CLASSES)(fnn.layers.Concatenate()([a, b]))
        model = fnn.Model([a, b], out)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", seed=0)
        return model

    ds = tf.data.Dataset.from_tensor_slices((named, y)).batch(BATCH)
    fed, ref = functional(), functional()
    fed.fit(ds, verbose=0)
    ref.fit(named, y, batch_size=BATCH, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        fed.evaluate(ds, verbose=0), ref.evaluate(named, y, batch_size=BATCH, verbose=0), 1e-6
    )
    np.testing.assert_allclose(
        fed.predict(ds, verbose=0), ref.predict(named, batch_size=BATCH, verbose=0), 1e-6, 1e-6
    )


def test_tf_endless_dataset_needs_steps(reference):
    tf = pytest.importorskip("tensorflow")
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()
    with pytest.raises(ConfigError, match=r"endless.*steps_per_epoch"):
        _model().fit(ds, epochs=1, verbose=0)
    # Each epoch starts a new pass over the pipeline: 3 steps = the 3 batches of the arrays.
    _assert_matches(reference, ds, steps_per_epoch=3)


def test_tf_unbatched_dataset_is_named_error():
    tf = pytest.importorskip("tensorflow")
    x, y = _data()
    with pytest.raises(ShapeError, match=r"single examples.*\.batch\(batch_size\)"):
        _model().fit(tf.data.Dataset.from_tensor_slices((x, y)), verbose=0)


def test_tf_string_and_ragged_tensors_are_named_errors():
    tf = pytest.importorskip("tensorflow")
    strings = tf.data.Dataset.from_tensor_slices((["a", "b"], [0, 1])).batch(2)
    with pytest.raises(ConfigError, match="string tensor"):
        _model().fit(strings, verbose=0)
    ragged = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1.0], [2.0, 3.0]]))
    with pytest.raises(ConfigError, match="RaggedTensor"):
        _model().predict(ragged.ragged_batch(2), verbose=0)


# ------------------------------------------------------------------ PyTorch


def test_torch_dataloader_trains_as_arrays(reference):
    torch = pytest.importorskip("torch")
    x, y = _data()
    # float64 and int64 tensors, batches as lists [x, y] (PyTorch's default_collate).
    dataset = torch.utils.data.TensorDataset(
        torch.from_numpy(x.astype(np.float64)), torch.tensor(y)
    )
    _assert_matches(reference, torch.utils.data.DataLoader(dataset, batch_size=BATCH))


def test_torch_tensor_off_the_cpu_is_named_error():
    torch = pytest.importorskip("torch")
    x, y = _data()
    # The "meta" device stands in for a GPU: any non-CPU tensor takes the same check.
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.tensor(y))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        collate_fn=lambda rows: [torch.stack(c).to("meta") for c in zip(*rows)],
    )
    with pytest.raises(ConfigError, match=r"device meta.*on the CPU"):
        _model().fit(loader, verbose=0)
    with pytest.raises(ConfigError, match="wrap it in torch.utils.data.DataLoader"):
        _model().fit(dataset, verbose=0)


def test_torch_tensors_convert_as_numpy():
    torch = pytest.importorskip("torch")
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    bf16 = numpy_tree(torch.from_numpy(x).to(torch.bfloat16))
    assert bf16.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(bf16, x.astype(ml_dtypes.bfloat16))
    grad = numpy_tree([torch.from_numpy(x).requires_grad_(), {"w": torch.ones(3)}])
    np.testing.assert_array_equal(grad[0], x)
    assert isinstance(grad, tuple) and grad[1]["w"].shape == (3,)


# ------------------------------------------------------------------ no import


def test_fnn_imports_neither_tensorflow_nor_torch():
    """``import fnn`` and fit/evaluate/predict on arrays and on iterables neither import nor
    try to import TensorFlow or PyTorch. Import statements and ``importlib.import_module``
    are watched, so a guarded ``try: import torch`` counts even where it is not installed.
    (JAX's compilation cache asks ``importlib.util.find_spec("tensorflow")`` through etils:
    a look-up that imports nothing, so it is not watched.)"""
    script = textwrap.dedent(
        """
        import builtins, importlib, sys

        seen = []
        real_import, real_import_module = builtins.__import__, importlib.import_module

        def watch(name, *args, **kwargs):
            if name.split(".")[0] in ("tensorflow", "torch"):
                seen.append(name)
            return real_import(name, *args, **kwargs)

        def watch_module(name, package=None):
            watch(name)
            return real_import_module(name, package)

        builtins.__import__, importlib.import_module = watch, watch_module
        import numpy as np
        import fnn

        x = np.zeros((8, 2), "float32")
        y = np.zeros((8, 3), "float32")
        model = fnn.Sequential([fnn.layers.Dense(3)])
        model.compile(optimizer="sgd", loss="mse")
        model.fit(x, y, batch_size=4, verbose=0)
        model.fit(((x[i : i + 4], y[i : i + 4]) for i in (0, 4)), verbose=0)
        model.evaluate([(x, y)], verbose=0)
        model.predict(iter([x]), verbose=0)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "torch"))
        print(seen, loaded)
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] []"
