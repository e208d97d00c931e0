"""summary: per-layer shapes and parameter counts, computed abstractly."""

import jax
import jax.numpy as jnp

import fnn
from fnn.layers import Dense, Flatten


def test_summary_counts_match_formula_and_allocate_nothing():
    model = fnn.serial(Flatten(), Dense(512, activation="relu"), Dense(10))
    lines = []
    fnn.summary(model, jax.ShapeDtypeStruct((32, 28, 28), jnp.float32), print_fn=lines.append)
    text = "\n".join(lines)
    total = 784 * 512 + 512 + 512 * 10 + 10
    assert f"Total params: {total:,}" in text
    assert "dense (Dense)" in text and "(32, 512)" in text
    assert "dense_1 (Dense)" in text and "(32, 10)" in text
    rows, totals = fnn.summary.__globals__["summary_rows"](
        model, jax.ShapeDtypeStruct((32, 28, 28), jnp.float32)
    )
    assert [r["params"] for r in rows] == [0, 784 * 512 + 512, 5130]
    assert totals["bytes"] == 4 * total


def test_summary_of_single_layer_and_nested():
    lines = []
    fnn.summary(Dense(3), jnp.ones((2, 4)), print_fn=lines.append)
    assert any("dense (Dense)" in line and "15" in line for line in lines)
    lines = []
    nested = fnn.serial(fnn.residual(Dense(4)), Dense(2))
    fnn.summary(nested, jnp.ones((2, 4)), print_fn=lines.append)
    assert any(line.startswith("  dense (Dense)") for line in lines)
    assert any("residual (residual)" in line for line in lines)


def test_batch_label_prints_keras_style_none_and_model_summary_uses_it():
    lines = []
    fnn.summary(Dense(3), jnp.ones((2, 4)), print_fn=lines.append, batch_label="None")
    assert any("(None, 3)" in line for line in lines)
    model = fnn.Sequential([Dense(3, input_shape=(4,)), Dense(1)])
    lines = []
    model.summary(print_fn=lines.append)
    assert any(line.startswith("dense_1 (Dense)") and "(None, 1)" in line for line in lines)
