"""``summary``: a Keras-like table of a layer's children, shapes and parameter counts,
computed by abstract evaluation (no parameters allocated, no FLOPs spent)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from fnn.core.combinators import record_calls
from fnn.core.layer import Layer, as_shape_struct


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or ``ShapeDtypeStruct``."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))


def count_bytes(tree: Any) -> int:
    """Bytes taken by a pytree of arrays or ``ShapeDtypeStruct``."""
    return int(
        sum(
            int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
            for leaf in jax.tree.leaves(tree)
        )
    )


def _shape_text(outputs: Any, batch_label: str | None = None) -> str:
    def text(shape):
        if batch_label is None or not shape:
            return str(shape)
        return (
            "("
            + ", ".join([batch_label, *map(str, shape[1:])])
            + ("," if len(shape) == 1 else "")
            + ")"
        )

    shapes = [tuple(leaf.shape) for leaf in jax.tree.leaves(outputs)]
    return ", ".join(text(shape) for shape in shapes)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def summary_rows(
    layer: Layer, *inputs: Any, key: jax.Array | None = None, batch_label: str | None = None
) -> list[dict]:
    """One dict per layer call (name, depth, class name, output shape, param count), in order."""
    key = jax.random.key(0) if key is None else key
    abstract_inputs = as_shape_struct(inputs)
    params, state = jax.eval_shape(layer.init, key, *abstract_inputs)
    with record_calls() as records:
        # A fresh lambda each time so that no trace cache can skip the recording.
        outputs, _ = jax.eval_shape(
            lambda p, s, xs: layer.apply(p, s, *xs, rng=None, train=False),
            params,
            state,
            abstract_inputs,
        )
    rows = [
        {
            "name": path[-1],
            "depth": len(path) - 1,
            "kind": child.spec.class_name if child.spec else type(child).__name__,
            "output_shape": _shape_text(out, batch_label),
            "params": count_params(p) + count_params(s),
        }
        for path, child, out, p, s in records
    ]
    if not rows:
        kind = layer.spec.class_name if layer.spec else "Layer"
        rows = [
            {
                "name": layer.name,
                "depth": 0,
                "kind": kind,
                "output_shape": _shape_text(outputs, batch_label),
                "params": count_params(params) + count_params(state),
            }
        ]
    totals = {
        "trainable": count_params(params),
        "non_trainable": count_params(state),
        "bytes": count_bytes(params) + count_bytes(state),
    }
    return rows, totals


def summary(
    layer: Layer,
    *inputs: Any,
    print_fn: Callable[[str], Any] = print,
    key: jax.Array | None = None,
    batch_label: str | None = None,
) -> None:
    """Print a table of ``layer``'s children with output shapes and parameter counts.

    ``inputs`` are arrays or ``jax.ShapeDtypeStruct`` (batch dimension included);
    ``batch_label="None"`` prints the batch axis as Keras does.

    >>> import jax, fnn
    >>> from fnn.layers import Dense, Flatten
    >>> model = fnn.serial(Flatten(), Dense(16, activation="relu"), Dense(10))
    >>> fnn.summary(model, jax.ShapeDtypeStruct((32, 8, 8), "float32"))
    Layer (type)         Output shape      Param #
    ==============================================
    flatten (Flatten)    (32, 64)                0
    dense (Dense)        (32, 16)            1,040
    dense_1 (Dense)      (32, 10)              170
    ==============================================
    Total params: 1,210 (4.73 KB)
    Trainable params: 1,210
    Non-trainable params: 0
    """
    rows, totals = summary_rows(layer, *inputs, key=key, batch_label=batch_label)
    names = ["  " * r["depth"] + f"{r['name']} ({r['kind']})" for r in rows]
    w_name = max(len("Layer (type)"), *(len(n) for n in names)) + 4
    w_shape = max(len("Output shape"), *(len(r["output_shape"]) for r in rows)) + 4
    w_params = max(len("Param #"), *(len(f"{r['params']:,}") for r in rows)) + 2
    rule = "=" * (w_name + w_shape + w_params)
    print_fn(f"{'Layer (type)':<{w_name}}{'Output shape':<{w_shape}}{'Param #':>{w_params}}")
    print_fn(rule)
    for name, row in zip(names, rows):
        print_fn(f"{name:<{w_name}}{row['output_shape']:<{w_shape}}{row['params']:>{w_params},}")
    print_fn(rule)
    total = totals["trainable"] + totals["non_trainable"]
    print_fn(f"Total params: {total:,} ({_human_bytes(totals['bytes'])})")
    print_fn(f"Trainable params: {totals['trainable']:,}")
    print_fn(f"Non-trainable params: {totals['non_trainable']:,}")
