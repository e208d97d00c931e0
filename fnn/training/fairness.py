"""Per-group (fairness) metrics as a pure accumulator: ``GroupMetrics(...)`` returns
``(init, update, merge, compute)``.

The state is one ``[num_groups, num_classes, num_classes]`` table of (weighted) counts,
rows the true class and columns the predicted class, one table per group. Because it is a
sum, it accumulates under ``jit``/``lax.scan`` and per-device states merge with
``lax.psum`` or ``merge`` before ``compute``. From it come, per group: ``count``,
``accuracy``, ``precision``, ``recall`` (= ``tpr``), ``selection_rate``, ``fpr``; and the
disparities between groups: ``demographic_parity_difference`` (max - min selection rate),
``demographic_parity_ratio`` (min / max), ``equalized_odds_difference`` (the larger of the
TPR and FPR gaps), all as fairlearn defines them. The binary rates treat ``pos_label`` as
the positive class (one-vs-rest for more than two classes); groups with no examples are left
out of the disparities. Zero denominators give 0 (as scikit-learn's ``zero_division=0``).

>>> import jax.numpy as jnp
>>> gm = GroupMetrics(num_groups=2)
>>> state = gm.update(gm.init(), jnp.array([1, 0, 1, 1]), jnp.array([0.9, 0.2, 0.3, 0.8]),
...                   jnp.array([0, 0, 1, 1]))
>>> out = gm.compute(state)
>>> [float(v) for v in out["selection_rate"]], float(out["demographic_parity_difference"])
([0.5, 0.5], 0.0)
>>> [float(v) for v in out["recall"]]
[1.0, 0.5]

:func:`group_report` does the same on host arrays with any group labels (strings too) and
returns plain floats, e.g. for ``model.evaluate(x, y, groups=g, return_dict=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError, ShapeError

__all__ = [
    "DISPARITIES",
    "PER_GROUP",
    "GroupAccumulator",
    "GroupMetrics",
    "format_report",
    "group_report",
]

PER_GROUP = ("count", "accuracy", "precision", "recall", "selection_rate", "tpr", "fpr")
DISPARITIES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
)


class GroupAccumulator(NamedTuple):
    """Pure per-group accumulator (see the module docstring and :func:`GroupMetrics`).

    ``init() -> {"counts": [G, C, C]}``; ``update(state, y_true [batch] or [batch, 1],
    y_pred [batch] scores, [batch, 1] scores or [batch, C] scores or probabilities, groups
    [batch] ints in [0, G), sample_weight [batch] = None) -> state``; ``merge(a, b)``;
    ``compute(state) -> dict`` of ``[G]`` per-group arrays and scalar disparities.
    """

    init: Any
    update: Any
    merge: Any
    compute: Any


def _classes(y_pred, threshold: float) -> jax.Array:
    """Class indices from predictions: integer labels as given, one score thresholded,
    several scores by argmax."""
    y_pred = jnp.asarray(y_pred)
    if y_pred.ndim >= 2 and y_pred.shape[-1] > 1:
        return jnp.argmax(y_pred, axis=-1).reshape(-1)
    flat = y_pred.reshape(-1)
    if jnp.issubdtype(flat.dtype, jnp.integer) or flat.dtype == jnp.bool_:
        return flat.astype(jnp.int32)
    return (flat > threshold).astype(jnp.int32)


def GroupMetrics(
    num_groups: int,
    num_classes: int = 2,
    *,
    pos_label: int = 1,
    threshold: float = 0.5,
    name: str = "group_metrics",
) -> GroupAccumulator:
    """Per-group confusion counts and the fairness metrics built on them.

    ``num_groups``: groups are ints in ``[0, num_groups)``; ``num_classes``: classes of
    ``y_true``; ``pos_label``: the "selected"/positive class of the binary rates;
    ``threshold``: for one score per example (use 0.0 for logits). Returns a
    ``GroupAccumulator(init, update, merge, compute)``; ``update(state, y_true [batch],
    y_pred [batch(, C)], groups [batch], sample_weight=None)``.
    """
    del name
    for arg, value, low in (("num_groups", num_groups, 1), ("num_classes", num_classes, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"GroupMetrics: expected {arg} an int >= {low}, got {value!r}.")
    if not isinstance(pos_label, int) or not 0 <= pos_label < num_classes:
        raise ConfigError(
            f"GroupMetrics: expected pos_label an int in [0, {num_classes}), got {pos_label!r}."
        )
    g_, c_ = num_groups, num_classes

    def init():
        return {"counts": jnp.zeros((g_, c_, c_), jnp.float32)}

    def update(state, y_true, y_pred, groups, sample_weight=None):
        y_true = jnp.asarray(y_true).reshape(-1).astype(jnp.int32)
        pred = _classes(y_pred, threshold)
        groups = jnp.asarray(groups).reshape(-1).astype(jnp.int32)
        if not (y_true.shape == pred.shape == groups.shape):
            raise ShapeError(
                f"GroupMetrics: expected y_true, y_pred and groups with one entry per example, "
                f"got y_true {tuple(np.shape(y_true))}, predictions for {pred.shape[0]} "
                f"examples, groups {tuple(groups.shape)}."
            )
        w = jnp.ones(y_true.shape, jnp.float32)
        if sample_weight is not None:
            w = jnp.broadcast_to(jnp.asarray(sample_weight, jnp.float32).reshape(-1), w.shape)
        # Out-of-range indices are dropped (not clipped), so a bad label adds nothing.
        counts = state["counts"].at[groups, y_true, pred].add(w, mode="drop")
        return {"counts": counts}

    def merge(a, b):
        return jax.tree.map(jnp.add, a, b)

    def compute(state):
        m = state["counts"]
        p = pos_label
        total = m.sum(axis=(1, 2))
        correct = jnp.trace(m, axis1=1, axis2=2)
        tp = m[:, p, p]
        predicted_pos = m[:, :, p].sum(axis=1)
        actual_pos = m[:, p, :].sum(axis=1)
        fp = predicted_pos - tp
        actual_neg = total - actual_pos
        tpr = _div(tp, actual_pos)
        fpr = _div(fp, actual_neg)
        selection = _div(predicted_pos, total)
        present = total > 0
        out = {
            "count": total,
            "accuracy": _div(correct, total),
            "precision": _div(tp, predicted_pos),
            "recall": tpr,
            "selection_rate": selection,
            "tpr": tpr,
            "fpr": fpr,
        }
        lo, hi = _span(selection, present)
        out["demographic_parity_difference"] = hi - lo
        out["demographic_parity_ratio"] = _div(lo, hi)
        tpr_lo, tpr_hi = _span(tpr, present)
        fpr_lo, fpr_hi = _span(fpr, present)
        out["equalized_odds_difference"] = jnp.maximum(tpr_hi - tpr_lo, fpr_hi - fpr_lo)
        return out

    return GroupAccumulator(init, update, merge, compute)


def _div(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _span(values, present):
    lo = jnp.min(jnp.where(present, values, jnp.inf))
    hi = jnp.max(jnp.where(present, values, -jnp.inf))
    none = ~jnp.any(present)
    return jnp.where(none, 0.0, lo), jnp.where(none, 0.0, hi)


def group_report(
    y_true,
    y_pred,
    groups,
    *,
    num_classes: int | None = None,
    pos_label: int = 1,
    threshold: float = 0.5,
    sample_weight=None,
) -> dict:
    """Fairness report on host arrays: ``{"groups": {label: {count, accuracy, ...}},
    "demographic_parity_difference": ..., ...}`` with plain floats (JSON-ready).

    ``groups [n]`` holds any labels (ints, strings, bools); ``y_pred`` as in
    ``GroupMetrics.update``. Group labels are reported as strings, in sorted order.

    >>> r = group_report([1, 0, 1, 0], [1, 1, 1, 0], ["a", "a", "b", "b"])
    >>> r["groups"]["a"]["selection_rate"], r["demographic_parity_difference"]
    (1.0, 0.5)
    """
    groups = np.asarray(groups).reshape(-1)
    y_true_np = np.asarray(y_true).reshape(-1)
    if len(groups) != len(y_true_np):
        raise ShapeError(
            f"groups: expected one group per example ({len(y_true_np)}), got shape "
            f"{tuple(np.shape(groups))}."
        )
    labels, codes = np.unique(groups, return_inverse=True)
    if num_classes is None:
        width = np.shape(y_pred)[-1] if np.ndim(y_pred) >= 2 else 1
        num_classes = max(int(y_true_np.max(initial=0)) + 1, width, 2)
    gm = GroupMetrics(len(labels), num_classes, pos_label=pos_label, threshold=threshold)
    state = gm.update(gm.init(), y_true_np, np.asarray(y_pred), codes, sample_weight)
    values = jax.device_get(gm.compute(state))
    table = {
        str(label): {k: float(values[k][i]) for k in PER_GROUP} for i, label in enumerate(labels)
    }
    for row in table.values():
        row["count"] = round(row["count"]) if sample_weight is None else row["count"]
    return {"groups": table, **{k: float(values[k]) for k in DISPARITIES}}


def format_report(report: Mapping) -> str:
    """The per-group table and disparities of a :func:`group_report` as text lines."""
    width = max([5, *(len(g) for g in report["groups"])])
    lines = [f"{'group':<{width}}  " + "  ".join(f"{c:>{max(len(c), 6)}}" for c in PER_GROUP)]
    for group, row in report["groups"].items():
        cells = []
        for c in PER_GROUP:
            w = max(len(c), 6)
            cells.append(f"{row[c]:>{w}d}" if isinstance(row[c], int) else f"{row[c]:>{w}.4f}")
        lines.append(f"{group:<{width}}  " + "  ".join(cells))
    lines += [f"{k}: {report[k]:.4f}" for k in DISPARITIES]
    return "\n".join(lines)
