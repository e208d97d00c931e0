"""Metrics as pure accumulators: ``Metric(name, init, update, compute)``.

``state = metric.init()`` is a small pytree of zero-initialised *sums* (weighted counts,
totals, histograms), ``state = metric.update(state, y_true, y_pred, sample_weight=None)``
adds one batch, and ``metric.compute(state)`` gives the value. Because states are sums,
they accumulate inside a jitted loop or ``lax.scan``, and per-device states merge with
``lax.psum`` (or ``jax.tree.map(operator.add, a, b)``) before ``compute``.

>>> import jax.numpy as jnp, fnn
>>> acc = fnn.metrics.get("accuracy", loss="sparse_categorical_crossentropy")
>>> state = acc.init()
>>> state = acc.update(state, jnp.array([0, 1]), jnp.array([[0.9, 0.1], [0.8, 0.2]]))
>>> state = acc.update(state, jnp.array([1]), jnp.array([[0.3, 0.7]]))
>>> round(float(acc.compute(state)), 4)
0.6667
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError, ShapeError, shape_of, unknown_name
from fnn.training import losses as losses_lib

State = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Metric:
    """A streaming metric: ``init() -> state``, ``update(state, y_true, y_pred,
    sample_weight=None) -> state``, ``compute(state) -> value``; all pure.

    ``init()`` must return zeros, and ``update`` must *add* the batch's contribution, so
    that states from several batches or devices merge by summation.
    """

    name: str
    init: Callable[[], State]
    update: Callable[..., State]
    compute: Callable[[State], Any]
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __iter__(self):
        return iter((self.init, self.update, self.compute))

    def renamed(self, name: str) -> Metric:
        """The same metric reported under another name."""
        return dataclasses.replace(self, name=name)

    def __repr__(self) -> str:
        return f"<fnn Metric {self.name!r}>"


# --------------------------------------------------------------------------- helpers


def _zeros(*shape) -> jax.Array:
    return jnp.zeros(shape, jnp.float32)


def _safe_div(num, den):
    """``num / den`` with 0 where ``den == 0`` (Keras's divide_no_nan, sklearn's
    ``zero_division=0``)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _example_weights(sample_weight, batch: int, name: str) -> jax.Array:
    if sample_weight is None:
        return jnp.ones((batch,), jnp.float32)
    w = jnp.asarray(sample_weight, jnp.float32)
    if w.ndim == 2 and w.shape[-1] == 1:
        w = w[:, 0]
    if w.shape not in ((), (batch,)):
        raise ShapeError(
            f"{name}: expected sample_weight of shape ({batch},) (one per example), got shape "
            f"{w.shape}."
        )
    return jnp.broadcast_to(w, (batch,))


def _broadcast_weights(w: jax.Array, shape: tuple) -> jax.Array:
    """Example weights ``[batch]`` broadcast over the trailing axes of ``shape``."""
    return jnp.broadcast_to(w.reshape(w.shape + (1,) * (len(shape) - 1)), shape)


def _batch_size(name, y_pred) -> int:
    losses_lib.check_batch_axis(name, y_pred)
    return shape_of(y_pred)[0]


def _match_ranks(name, y_true, y_pred):
    return losses_lib.match_ranks(name, jnp.asarray(y_true), jnp.asarray(y_pred))


def _sparse_labels(name, y_true, y_pred):
    """Integer labels ``[batch, ...]`` from sparse labels or one-hot ``[batch, ..., C]``."""
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_true.shape == y_pred.shape and y_pred.shape[-1] > 1:
        return jnp.argmax(y_true, -1)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1:] == (1,):
        y_true = y_true[..., 0]
    if y_true.shape != y_pred.shape[:-1]:
        raise ShapeError(
            f"{name}: expected integer labels of shape {y_pred.shape[:-1]} or one-hot labels of "
            f"shape {y_pred.shape} for predictions of shape {y_pred.shape}, got labels of shape "
            f"{y_true.shape}."
        )
    losses_lib.check_sparse_labels(name, y_true, y_pred.shape[-1])
    return y_true.astype(jnp.int32)


def Mean(name: str = "mean") -> Metric:
    """Weighted mean of values: ``update(state, values, sample_weight=None)``.

    ``values`` has any shape; ``sample_weight`` broadcasts against it (a scalar weight for
    a scalar value, e.g. a batch loss weighted by the batch size as Keras's loss tracker).
    """

    def init():
        return {"total": _zeros(), "count": _zeros()}

    def update(state, values, sample_weight=None):
        values = jnp.asarray(values, jnp.float32)
        if sample_weight is None:
            w = jnp.ones_like(values)
        else:
            w = jnp.asarray(sample_weight, jnp.float32)
            w = w.reshape(w.shape + (1,) * (values.ndim - w.ndim))
            w = jnp.broadcast_to(w, values.shape)
        return {
            "total": state["total"] + jnp.sum(values * w),
            "count": state["count"] + jnp.sum(w),
        }

    def compute(state):
        return _safe_div(state["total"], state["count"])

    return Metric(name, init, update, compute)


def MeanMetricWrapper(fn: Callable, name: str | None = None, **config) -> Metric:
    """Weighted mean over examples of a per-example ``fn(y_true, y_pred) -> [batch]``."""
    name = name or getattr(fn, "__name__", "mean_metric")
    mean = Mean(name)

    def update(state, y_true, y_pred, sample_weight=None):
        values = fn(y_true, y_pred)
        if values.ndim != 1:
            values = losses_lib.per_example_mean(values)
        w = _example_weights(sample_weight, values.shape[0], name)
        return mean.update(state, values, w)

    return Metric(name, mean.init, update, mean.compute, config)


# --------------------------------------------------------------------------- accuracy


def _per_example(x):
    return losses_lib.per_example_mean(x.astype(jnp.float32))


def accuracy(y_true, y_pred):
    """Exact-match accuracy per example (Keras ``Accuracy``)."""
    y_true, y_pred = _match_ranks("accuracy", y_true, y_pred)
    return _per_example(y_true == y_pred)


def binary_accuracy(y_true, y_pred, threshold=0.5, from_logits=False):
    """``y_true == (p > threshold)`` per example, for 0/1 targets."""
    y_true, y_pred = _match_ranks("binary_accuracy", y_true, y_pred)
    if from_logits:
        y_pred = jax.nn.sigmoid(y_pred.astype(jnp.float32))
    return _per_example(y_true == (y_pred > threshold).astype(y_true.dtype))


def categorical_accuracy(y_true, y_pred):
    """``argmax(y_true) == argmax(y_pred)`` per example, one-hot targets."""
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ShapeError(
            f"categorical_accuracy: expected one-hot targets of the same shape as the predictions "
            f"{y_pred.shape}, got shape {y_true.shape}. Integer labels need "
            "'sparse_categorical_accuracy'."
        )
    return _per_example(jnp.argmax(y_true, -1) == jnp.argmax(y_pred, -1))


def sparse_categorical_accuracy(y_true, y_pred):
    """``y_true == argmax(y_pred)`` per example, integer labels."""
    labels = _sparse_labels("sparse_categorical_accuracy", y_true, y_pred)
    return _per_example(labels == jnp.argmax(y_pred, -1))


def _in_top_k(labels, y_pred, k):
    y_pred = jnp.asarray(y_pred, jnp.float32)
    true_score = jnp.take_along_axis(y_pred, labels[..., None], -1)
    # Ties with the true class count in its favour (rank by strictly greater scores).
    rank = jnp.sum(y_pred > true_score, axis=-1)
    return rank < k


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5):
    """Whether the label is among the ``k`` highest scores, per example."""
    labels = _sparse_labels("sparse_top_k_categorical_accuracy", y_true, y_pred)
    return _per_example(_in_top_k(labels, y_pred, k))


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """Whether ``argmax(y_true)`` is among the ``k`` highest scores, per example."""
    labels = _sparse_labels("top_k_categorical_accuracy", y_true, y_pred)
    return _per_example(_in_top_k(labels, y_pred, k))


def Accuracy(name: str = "accuracy") -> Metric:
    """Exact-match accuracy (Keras ``Accuracy``: ``y_true == y_pred``)."""
    return MeanMetricWrapper(accuracy, name)


def BinaryAccuracy(
    threshold: float = 0.5, from_logits: bool = False, name: str = "binary_accuracy"
) -> Metric:
    """Fraction of 0/1 targets matched by ``p > threshold`` (``sigmoid`` first if
    ``from_logits``; Keras has no ``from_logits`` here)."""
    return MeanMetricWrapper(
        lambda t, p: binary_accuracy(t, p, threshold, from_logits),
        name,
        threshold=threshold,
        from_logits=from_logits,
    )


def CategoricalAccuracy(name: str = "categorical_accuracy") -> Metric:
    """Accuracy for one-hot targets ``[batch, C]`` and scores ``[batch, C]``."""
    return MeanMetricWrapper(categorical_accuracy, name)


def SparseCategoricalAccuracy(name: str = "sparse_categorical_accuracy") -> Metric:
    """Accuracy for integer labels ``[batch]`` and scores ``[batch, C]``."""
    return MeanMetricWrapper(sparse_categorical_accuracy, name)


def TopKCategoricalAccuracy(k: int = 5, name: str = "top_k_categorical_accuracy") -> Metric:
    """Top-``k`` accuracy for one-hot targets."""
    return MeanMetricWrapper(lambda t, p: top_k_categorical_accuracy(t, p, k), name, k=k)


def SparseTopKCategoricalAccuracy(
    k: int = 5, name: str = "sparse_top_k_categorical_accuracy"
) -> Metric:
    """Top-``k`` accuracy for integer labels."""
    return MeanMetricWrapper(lambda t, p: sparse_top_k_categorical_accuracy(t, p, k), name, k=k)


# --------------------------------------------------------------------------- confusion counts


def _check_num_classes(name, num_classes):
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(
            f"{name}: expected num_classes to be an int >= 2, got {num_classes!r}. Multi-class "
            "metrics keep a [num_classes, num_classes] state, so they need it up front."
        )


def _class_predictions(name, y_true, y_pred, num_classes, threshold, from_logits):
    """``(labels, predicted)`` integer arrays of the same shape ``[batch, ...]``."""
    y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred)
    if y_pred.shape[-1:] == (num_classes,) and y_true.shape in (y_pred.shape, y_pred.shape[:-1]):
        return _sparse_labels(name, y_true, y_pred), jnp.argmax(y_pred, -1)
    if num_classes == 2:
        # Binary classifier with one score per example: threshold it.
        y_true, y_pred = _match_ranks(name, y_true, y_pred)
        if from_logits:
            y_pred = jax.nn.sigmoid(y_pred.astype(jnp.float32))
        losses_lib.check_sparse_labels(name, y_true, 2)
        return y_true.astype(jnp.int32), (y_pred > threshold).astype(jnp.int32)
    raise ShapeError(
        f"{name}: expected predictions [batch, ..., {num_classes}] with labels [batch, ...] or "
        f"one-hot labels, got predictions of shape {y_pred.shape} and labels of shape "
        f"{y_true.shape}."
    )


def _confusion_update(name, num_classes, threshold, from_logits):
    def update(state, y_true, y_pred, sample_weight=None):
        batch = _batch_size(name, y_pred)
        labels, preds = _class_predictions(
            name, y_true, y_pred, num_classes, threshold, from_logits
        )
        w = _broadcast_weights(_example_weights(sample_weight, batch, name), labels.shape)
        valid = (labels >= 0) & (labels < num_classes)
        index = jnp.where(valid, labels * num_classes + preds, 0).ravel()
        counts = jnp.zeros(num_classes * num_classes, jnp.float32)
        counts = counts.at[index].add(jnp.where(valid, w, 0.0).ravel())
        return {"matrix": state["matrix"] + counts.reshape(num_classes, num_classes)}

    return update


def ConfusionMatrix(
    num_classes: int,
    threshold: float = 0.5,
    from_logits: bool = False,
    name: str = "confusion_matrix",
) -> Metric:
    """Weighted ``[num_classes, num_classes]`` counts, rows = true class, columns = predicted
    (sklearn's ``confusion_matrix`` layout). Scores ``[batch, C]`` are arg-maxed; for
    ``num_classes=2`` a single score per example is thresholded.
    """
    _check_num_classes(name, num_classes)
    return Metric(
        name,
        lambda: {"matrix": _zeros(num_classes, num_classes)},
        _confusion_update(name, num_classes, threshold, from_logits),
        lambda state: state["matrix"],
        {"num_classes": num_classes, "threshold": threshold, "from_logits": from_logits},
    )


_AVERAGES = ("binary", "micro", "macro", "weighted", None)


def _from_matrix(kind: str, matrix: jax.Array, average):
    tp = jnp.diagonal(matrix)
    fp = jnp.sum(matrix, 0) - tp
    fn = jnp.sum(matrix, 1) - tp
    support = jnp.sum(matrix, 1)
    if average == "micro":
        tp, fp, fn = jnp.sum(tp), jnp.sum(fp), jnp.sum(fn)
    values = {
        "precision": _safe_div(tp, tp + fp),
        "recall": _safe_div(tp, tp + fn),
        "f1_score": _safe_div(2 * tp, 2 * tp + fp + fn),
    }[kind]
    if average == "macro":
        return jnp.mean(values)
    if average == "weighted":
        return _safe_div(jnp.sum(values * support), jnp.sum(support))
    return values


def _binary_counts_update(name, threshold, from_logits):
    def update(state, y_true, y_pred, sample_weight=None):
        batch = _batch_size(name, y_pred)
        y_true, y_pred = _match_ranks(name, y_true, y_pred)
        if from_logits:
            y_pred = jax.nn.sigmoid(y_pred.astype(jnp.float32))
        w = _broadcast_weights(_example_weights(sample_weight, batch, name), y_true.shape)
        t = (y_true > 0.5).astype(jnp.float32)
        p = (y_pred > threshold).astype(jnp.float32)
        return {
            "tp": state["tp"] + jnp.sum(w * t * p),
            "fp": state["fp"] + jnp.sum(w * (1 - t) * p),
            "fn": state["fn"] + jnp.sum(w * t * (1 - p)),
        }

    return update


def _confusion_metric(kind, thresholds, average, num_classes, from_logits, name):
    if average not in _AVERAGES:
        raise ConfigError(f"{name}: expected average in {list(_AVERAGES)}, got {average!r}.")
    config = {"thresholds": thresholds, "average": average, "num_classes": num_classes}
    config["from_logits"] = from_logits
    if average == "binary":
        if not isinstance(thresholds, int | float) or not 0.0 <= thresholds <= 1.0:
            raise ConfigError(f"{name}: expected a threshold in [0, 1], got {thresholds!r}.")

        def compute(state):
            tp, fp, fn = state["tp"], state["fp"], state["fn"]
            return {
                "precision": _safe_div(tp, tp + fp),
                "recall": _safe_div(tp, tp + fn),
                "f1_score": _safe_div(2 * tp, 2 * tp + fp + fn),
            }[kind]

        return Metric(
            name,
            lambda: {"tp": _zeros(), "fp": _zeros(), "fn": _zeros()},
            _binary_counts_update(name, thresholds, from_logits),
            compute,
            config,
        )
    _check_num_classes(name, num_classes)
    return Metric(
        name,
        lambda: {"matrix": _zeros(num_classes, num_classes)},
        _confusion_update(name, num_classes, thresholds, from_logits),
        lambda state: _from_matrix(kind, state["matrix"], average),
        config,
    )


def Precision(
    thresholds: float = 0.5,
    average: str | None = "binary",
    num_classes: int | None = None,
    from_logits: bool = False,
    name: str = "precision",
) -> Metric:
    """Precision ``tp / (tp + fp)`` (0 when nothing is predicted positive).

    ``average="binary"`` (Keras's ``Precision``): every entry of ``y_pred`` is thresholded
    at ``thresholds`` against 0/1 targets of the same shape (multi-label entries pooled).
    ``average="micro" | "macro" | "weighted" | None`` (sklearn's meaning, classes
    ``0..num_classes-1``): single-label multi-class from arg-maxed scores ``[batch, C]``;
    ``None`` returns per-class values ``[C]``.
    """
    return _confusion_metric("precision", thresholds, average, num_classes, from_logits, name)


def Recall(
    thresholds: float = 0.5,
    average: str | None = "binary",
    num_classes: int | None = None,
    from_logits: bool = False,
    name: str = "recall",
) -> Metric:
    """Recall ``tp / (tp + fn)``; arguments as ``Precision``."""
    return _confusion_metric("recall", thresholds, average, num_classes, from_logits, name)


def F1Score(
    average: str | None = "binary",
    threshold: float = 0.5,
    num_classes: int | None = None,
    from_logits: bool = False,
    name: str = "f1_score",
) -> Metric:
    """F1 ``2 tp / (2 tp + fp + fn)``; arguments as ``Precision`` (``average=None`` gives
    per-class scores like Keras's ``F1Score``)."""
    return _confusion_metric("f1_score", threshold, average, num_classes, from_logits, name)


# --------------------------------------------------------------------------- AUC


def AUC(
    num_thresholds: int = 8192,
    curve: str = "ROC",
    multi_label: bool = False,
    num_labels: int | None = None,
    from_logits: bool = False,
    average: str | None = "macro",
    name: str = "auc",
) -> Metric:
    """Area under the ROC (or PR) curve from a histogram of scores.

    State: weighted counts of positive and negative entries in ``num_thresholds`` equal
    bins of the score in ``[0, 1]`` (Keras keeps confusion counts at the same number of
    fixed thresholds; a histogram is the same information at O(batch) update cost). The
    ROC area counts a positive above a negative as 1 and a pair in the same bin as 1/2,
    i.e. the trapezoidal rule at the bin edges, so it equals the exact (sklearn) value
    up to ties inside one bin: about ``1 / (2 num_thresholds)`` for spread-out scores.
    ``curve="PR"`` gives average precision (sklearn's step sum over bin-edge thresholds).

    ``multi_label=False`` pools every entry into one binary problem (Keras's default).
    ``multi_label=True`` keeps one histogram per column of ``num_labels`` and averages
    the per-label areas (``"macro"``, ``"weighted"`` by positives, or ``None`` for all);
    integer labels ``[batch]`` with scores ``[batch, C]`` give one-vs-rest multi-class
    AUC as sklearn's ``roc_auc_score(..., multi_class="ovr")``. ``from_logits`` applies
    ``sigmoid`` (softmax for integer labels) first. Areas with no positives or no
    negatives are 0.
    """
    if curve not in ("ROC", "PR"):
        raise ConfigError(f"{name}: expected curve 'ROC' or 'PR', got {curve!r}.")
    if not isinstance(num_thresholds, int) or num_thresholds < 2:
        raise ConfigError(f"{name}: expected num_thresholds >= 2, got {num_thresholds!r}.")
    if average not in ("macro", "weighted", None):
        raise ConfigError(f"{name}: expected average 'macro', 'weighted' or None, got {average!r}.")
    if multi_label and (not isinstance(num_labels, int) or num_labels < 1):
        raise ConfigError(
            f"{name}: multi_label=True needs num_labels (the number of score columns), got "
            f"{num_labels!r}."
        )
    labels = num_labels if multi_label else 1
    bins = num_thresholds

    def init():
        return {"pos": _zeros(labels, bins), "neg": _zeros(labels, bins)}

    def update(state, y_true, y_pred, sample_weight=None):
        batch = _batch_size(name, y_pred)
        y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred, jnp.float32)
        sparse = multi_label and y_true.shape != y_pred.shape and y_pred.shape[-1] == labels
        if sparse:
            ints = _sparse_labels(name, y_true, y_pred)
            y_true = jax.nn.one_hot(ints, labels, dtype=jnp.float32)
            if from_logits:
                y_pred = jax.nn.softmax(y_pred, -1)
        else:
            y_true, y_pred = _match_ranks(name, y_true, y_pred)
            if from_logits:
                y_pred = jax.nn.sigmoid(y_pred)
        w = _broadcast_weights(_example_weights(sample_weight, batch, name), y_true.shape)
        if multi_label:
            if y_pred.shape[-1] != labels:
                raise ShapeError(
                    f"{name}: expected scores with last dimension num_labels={labels}, got "
                    f"shape {y_pred.shape}."
                )
            column = jnp.broadcast_to(jnp.arange(labels), y_pred.shape)
        else:
            column = jnp.zeros(y_pred.shape, jnp.int32)
        b = jnp.clip(jnp.floor(y_pred * bins).astype(jnp.int32), 0, bins - 1)
        index = (column * bins + b).ravel()
        t = (y_true > 0.5).astype(jnp.float32)
        pos = jnp.zeros(labels * bins).at[index].add((w * t).ravel())
        neg = jnp.zeros(labels * bins).at[index].add((w * (1 - t)).ravel())
        return {
            "pos": state["pos"] + pos.reshape(labels, bins),
            "neg": state["neg"] + neg.reshape(labels, bins),
        }

    def compute(state):
        pos, neg = state["pos"], state["neg"]
        n_pos, n_neg = jnp.sum(pos, -1), jnp.sum(neg, -1)
        if curve == "ROC":
            below = jnp.cumsum(neg, -1) - neg
            area = _safe_div(jnp.sum(pos * (below + 0.5 * neg), -1), n_pos * n_neg)
        else:
            # Threshold k predicts positive for bins >= k.
            tp = jnp.cumsum(pos[:, ::-1], -1)[:, ::-1]
            fp = jnp.cumsum(neg[:, ::-1], -1)[:, ::-1]
            precision = _safe_div(tp, tp + fp)
            recall_step = _safe_div(pos, n_pos[:, None])
            area = jnp.sum(recall_step * precision, -1)
            area = jnp.where(n_pos > 0, area, 0.0)
        if not multi_label:
            return area[0]
        if average == "macro":
            return jnp.mean(area)
        if average == "weighted":
            return _safe_div(jnp.sum(area * n_pos), jnp.sum(n_pos))
        return area

    config = {
        "num_thresholds": num_thresholds,
        "curve": curve,
        "multi_label": multi_label,
        "num_labels": num_labels,
        "from_logits": from_logits,
        "average": average,
    }
    return Metric(name, init, update, compute, config)


# --------------------------------------------------------------------------- lookup


def _loss_metric(loss_name):
    def make(name=None, **kwargs):
        loss = losses_lib.get(loss_name)
        return MeanMetricWrapper(loss, name or loss.name)

    return make


def _cosine(name="cosine_similarity"):
    return MeanMetricWrapper(lambda t, p: -losses_lib.cosine_similarity(t, p), name)


_METRICS: dict[str, Callable[..., Metric]] = {
    "accuracy": Accuracy,
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "precision": Precision,
    "recall": Recall,
    "f1_score": F1Score,
    "auc": AUC,
    "confusion_matrix": ConfusionMatrix,
    "cosine_similarity": _cosine,
}
for _loss_name in (
    "mean_squared_error",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "kl_divergence",
    "log_cosh",
    "poisson",
    "hinge",
    "squared_hinge",
    "categorical_hinge",
):
    _METRICS[_loss_name] = _loss_metric(_loss_name)
_ALIASES = {
    "acc": "accuracy",
    "mse": "mean_squared_error",
    "mae": "mean_absolute_error",
    "mape": "mean_absolute_percentage_error",
    "msle": "mean_squared_logarithmic_error",
    "kld": "kl_divergence",
    "logcosh": "log_cosh",
    "f1": "f1_score",
    "ce": "crossentropy",
}
# Class-style names (``"SparseCategoricalAccuracy"``) as Keras's deserializer accepts.
_CLASS_NAMES = {
    "Accuracy": "accuracy",
    "BinaryAccuracy": "binary_accuracy",
    "CategoricalAccuracy": "categorical_accuracy",
    "SparseCategoricalAccuracy": "sparse_categorical_accuracy",
    "TopKCategoricalAccuracy": "top_k_categorical_accuracy",
    "SparseTopKCategoricalAccuracy": "sparse_top_k_categorical_accuracy",
    "Precision": "precision",
    "Recall": "recall",
    "F1Score": "f1_score",
    "AUC": "auc",
    "ConfusionMatrix": "confusion_matrix",
}
_NEEDS_CLASSES = ("confusion_matrix",)


def _loss_name(loss) -> tuple[str | None, bool]:
    if loss is None:
        return None, False
    loss = losses_lib.get(loss)
    from_logits = bool(loss.config.get("from_logits", False))
    name = loss.class_name or loss.name
    return {
        "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
        "CategoricalCrossentropy": "categorical_crossentropy",
        "BinaryCrossentropy": "binary_crossentropy",
    }.get(name, name), from_logits


def _accuracy_for(name, loss, y_true_shape, y_pred_shape) -> Metric:
    loss_name, from_logits = _loss_name(loss)
    if loss_name == "binary_crossentropy":
        return BinaryAccuracy(from_logits=from_logits, name=name)
    if loss_name == "categorical_crossentropy":
        return CategoricalAccuracy(name=name)
    if loss_name == "sparse_categorical_crossentropy":
        return SparseCategoricalAccuracy(name=name)
    if y_pred_shape is not None and y_true_shape is not None:
        # Keras 3's rule from the shapes when the loss does not tell.
        t, p = tuple(y_true_shape), tuple(y_pred_shape)
        if p[-1:] == (1,) or len(p) == 1:
            return BinaryAccuracy(name=name)
        if len(t) == len(p) and t[-1:] == p[-1:]:
            return CategoricalAccuracy(name=name)
        return SparseCategoricalAccuracy(name=name)
    return Accuracy(name=name)


def get(
    identifier,
    *,
    loss=None,
    num_classes: int | None = None,
    y_true_shape=None,
    y_pred_shape=None,
) -> Metric:
    """A ``Metric`` from a Keras name, a ``Metric``, or a per-example callable.

    ``"accuracy"``/``"acc"`` resolve as tf.keras does from the loss: binary, categorical or
    sparse-categorical accuracy for the matching cross-entropy (``from_logits`` is carried
    over to binary accuracy); without a cross-entropy loss, from ``y_true_shape`` and
    ``y_pred_shape`` as Keras 3 does; else exact-match ``Accuracy``. ``"crossentropy"``/
    ``"ce"`` is the loss's cross-entropy. ``"precision"``, ``"recall"`` and ``"f1_score"``
    are binary (Keras), or macro-averaged multi-class when the loss is a categorical
    cross-entropy and ``num_classes`` is given (``"auc"`` then is one-vs-rest macro
    AUC, where Keras would pool all entries); ``"confusion_matrix"`` needs
    ``num_classes``. String metrics are named by the string given, as in Keras.

    >>> import fnn
    >>> fnn.metrics.get("acc", loss="categorical_crossentropy").name
    'acc'
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = _CLASS_NAMES.get(identifier, identifier)
        key = _ALIASES.get(key, key)
        name = identifier
        loss_name, from_logits = _loss_name(loss)
        if key == "accuracy":
            return _accuracy_for(name, loss, y_true_shape, y_pred_shape)
        if key == "crossentropy":
            if loss_name not in (
                "binary_crossentropy",
                "categorical_crossentropy",
                "sparse_categorical_crossentropy",
            ):
                raise ConfigError(
                    f"metric {identifier!r} needs a cross-entropy loss to pick binary, "
                    f"categorical or sparse categorical; got loss {loss_name!r}."
                )
            return MeanMetricWrapper(losses_lib.get(loss), name)
        if key not in _METRICS:
            raise unknown_name("metric", identifier, list(_METRICS) + list(_ALIASES))
        multiclass = loss_name in ("categorical_crossentropy", "sparse_categorical_crossentropy")
        if key in ("precision", "recall", "f1_score") and multiclass and num_classes:
            return _METRICS[key](
                average="macro", num_classes=num_classes, from_logits=from_logits, name=name
            )
        if key == "auc" and multiclass and num_classes:
            return AUC(multi_label=True, num_labels=num_classes, from_logits=from_logits, name=name)
        if key in ("precision", "recall", "f1_score", "auc", "binary_accuracy") and from_logits:
            return _METRICS[key](from_logits=True, name=name)
        if key in _NEEDS_CLASSES:
            if num_classes is None:
                raise ConfigError(
                    f"metric {identifier!r} needs num_classes: pass num_classes= or build it "
                    f"with fnn.metrics.ConfusionMatrix(num_classes)."
                )
            return _METRICS[key](num_classes, from_logits=from_logits, name=name)
        return _METRICS[key](name=name)
    if callable(identifier):
        return MeanMetricWrapper(identifier, getattr(identifier, "__name__", "metric"))
    raise ConfigError(
        f"expected a metric name, Metric or callable fn(y_true, y_pred), got {identifier!r}."
    )


def get_all(identifiers: Sequence, **kwargs) -> tuple[Metric, ...]:
    """``get`` for each identifier; duplicate names are an error."""
    metrics = tuple(get(m, **kwargs) for m in identifiers)
    names = [m.name for m in metrics]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or "loss" in names:
        raise ConfigError(
            f"duplicate metric names {duplicates or ['loss']}: each metric needs a unique name "
            "(and 'loss' is reserved for the running loss); pass name= to rename one."
        )
    return metrics


def merge(a: State, b: State) -> State:
    """Sum of two states of the same metric (e.g. from two hosts)."""
    return jax.tree.map(jnp.add, a, b)


# --------------------------------------------------------------------------- report


def classification_report(
    y_true, y_pred, *, labels=None, target_names=None, digits: int = 2
) -> str:
    """Per-class precision, recall, F1 and support as text, laid out like scikit-learn's
    ``classification_report`` (undefined ratios are 0). Plain numpy.

    ``y_pred`` is class labels ``[n]`` or scores ``[n, C]`` (arg-maxed); ``y_true`` is labels
    ``[n]`` or one-hot ``[n, C]``.

    >>> import fnn
    >>> print(fnn.metrics.classification_report([0, 1, 1], [0, 1, 0]))
                  precision    recall  f1-score   support
    <BLANKLINE>
               0       0.50      1.00      0.67         1
               1       1.00      0.50      0.67         2
    <BLANKLINE>
        accuracy                           0.67         3
       macro avg       0.75      0.75      0.67         3
    weighted avg       0.83      0.67      0.67         3
    <BLANKLINE>
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_pred.ndim == 2:
        y_pred = np.argmax(y_pred, -1)
    if y_true.ndim == 2:
        y_true = np.argmax(y_true, -1)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ShapeError(
            f"classification_report: expected labels of shape [n] for both, got y_true "
            f"{y_true.shape} and y_pred {y_pred.shape}."
        )
    all_labels = labels is None
    labels = np.unique(np.concatenate([y_true, y_pred])) if labels is None else np.asarray(labels)
    if target_names is None:
        target_names = [str(label) for label in labels]
    if len(target_names) != len(labels):
        raise ConfigError(
            f"classification_report: expected {len(labels)} target_names, got {len(target_names)}."
        )
    tp = np.array([np.sum((y_true == c) & (y_pred == c)) for c in labels], float)
    pred = np.array([np.sum(y_pred == c) for c in labels], float)
    support = np.array([np.sum(y_true == c) for c in labels], int)

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)

    precision, recall = ratio(tp, pred), ratio(tp, support.astype(float))
    f1 = ratio(2 * precision * recall, precision + recall)
    headers = ["precision", "recall", "f1-score", "support"]
    width = max(max(len(n) for n in target_names), len("weighted avg"), digits)
    out = ("{:>{width}s} " + " {:>9}" * 4).format("", *headers, width=width) + "\n\n"
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    for i, n in enumerate(target_names):
        out += row.format(n, precision[i], recall[i], f1[i], support[i], width=width, digits=digits)
    out += "\n"
    total = int(support.sum())
    if all_labels:
        acc = float(np.sum(y_true == y_pred) / max(len(y_true), 1))
        out += ("{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
            "accuracy", "", "", acc, total, width=width, digits=digits
        )
    else:
        p_micro = ratio(tp.sum(), pred.sum())
        r_micro = ratio(tp.sum(), float(support.sum()))
        f_micro = ratio(2 * p_micro * r_micro, p_micro + r_micro)
        out += row.format("micro avg", p_micro, r_micro, f_micro, total, width=width, digits=digits)
    out += row.format(
        "macro avg", precision.mean(), recall.mean(), f1.mean(), total, width=width, digits=digits
    )
    wts = support / max(total, 1)
    out += row.format(
        "weighted avg",
        np.sum(precision * wts),
        np.sum(recall * wts),
        np.sum(f1 * wts),
        total,
        width=width,
        digits=digits,
    )
    return out
