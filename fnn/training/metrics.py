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

Keras's stateful interface sits on top (``update_state``/``result``/``reset_state``), and
``Metric`` subclasses written the Keras way (``add_variable``, ``assign_add``) are traced
into the same pure triple, so they run inside the compiled steps:

>>> p = fnn.metrics.Precision(thresholds=[0.3, 0.6])
>>> p.update_state(jnp.array([1, 0, 1]), jnp.array([0.9, 0.5, 0.4]))
>>> [round(float(v), 3) for v in p.result()]
[0.667, 1.0]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError, ShapeError, shape_of, unknown_name
from fnn.core.subclass import snake_case
from fnn.core.variables import ArrayLike, unwrap
from fnn.training import losses as losses_lib

State = Any


class Variable(ArrayLike):
    """One state variable of a Keras-style ``Metric`` subclass (``add_variable``).

    ``value`` is a jax array of fixed ``shape`` and ``dtype``; ``assign``,
    ``assign_add`` and ``assign_sub`` replace it (inside ``fit`` the value is a tracer:
    the metric's variables are the pytree state of a pure accumulator).
    ``jnp.asarray(variable)`` and arithmetic give arrays.
    """

    def __init__(self, value, name: str):
        self._value = jnp.asarray(value)
        self.name = name

    @property
    def value(self) -> jax.Array:
        return self._value

    @property
    def shape(self) -> tuple:
        return tuple(self._value.shape)

    @property
    def dtype(self):
        return self._value.dtype

    def assign(self, value) -> Variable:
        value = jnp.asarray(unwrap(value)).astype(self.dtype)
        if value.shape != self._value.shape:
            if value.ndim:
                raise ShapeError(
                    f"variable {self.name!r}: expected a value of shape {self.shape}, got "
                    f"shape {value.shape}."
                )
            value = jnp.broadcast_to(value, self._value.shape)
        self._value = value
        return self

    def __jax_array__(self):
        return self._value

    def __repr__(self) -> str:
        return f"<fnn metric Variable {self.name!r} shape={self.shape} dtype={self.dtype}>"


_value_of = unwrap


_snake_case = snake_case


class Metric:
    """A streaming metric: pure ``init() -> state``, ``update(state, y_true, y_pred,
    sample_weight=None) -> state``, ``compute(state) -> value``, plus Keras's stateful
    interface on top (``update_state``, ``result``, ``reset_state``, ``__call__``).

    ``init()`` must return zeros, and ``update`` must *add* the batch's contribution, so
    that states from several batches or devices merge by summation.

    Subclass it the Keras way: create state with ``self.add_variable(...)`` (or
    ``add_weight``) in ``__init__``, and define ``update_state`` (with ``assign_add``),
    ``result`` and optionally ``reset_state`` (default: every variable to zeros). The pure
    functions are then traced from those methods, the variables' values being the state
    pytree, so the metric works inside compiled ``fit``/``evaluate`` steps; states merge
    across devices by summation, which is right for counts and totals (as Keras's own
    metrics keep).

    ``weighted``: whether the training and evaluation steps pass ``sample_weight`` (and
    ``class_weight``) to ``update``; ``False`` as Keras's ``compile(metrics=...)``,
    ``True`` for ``compile(weighted_metrics=...)`` (see ``weighted``).

    >>> import jax.numpy as jnp, fnn
    >>> class Positives(fnn.metrics.Metric):
    ...     def __init__(self, name="positives", **kwargs):
    ...         super().__init__(name=name, **kwargs)
    ...         self.count = self.add_variable(shape=(), initializer="zeros", name="count")
    ...     def update_state(self, y_true, y_pred, sample_weight=None):
    ...         self.count.assign_add(jnp.sum(jnp.asarray(y_pred) > 0.5))
    ...     def result(self):
    ...         return self.count
    >>> m = Positives()
    >>> m.update_state(None, jnp.array([0.2, 0.9, 0.7]))
    >>> float(m.result()), float(m.compute(m.update(m.init(), None, jnp.array([0.9]))))
    (2.0, 1.0)
    """

    def __init__(
        self,
        name: str | None = None,
        init: Callable[[], State] | None = None,
        update: Callable[..., State] | None = None,
        compute: Callable[[State], Any] | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        dtype=None,
        weighted: bool = False,
        builder: Callable[[tuple], Metric] | None = None,
    ):
        self.name = name or _snake_case(type(self).__name__)
        self.config = dict(config or {})
        self.dtype = dtype or "float32"
        self.weighted = weighted
        self._builder = builder
        self._variables: list[Variable] = []
        self._state = None
        if init is None:
            # A Keras-style subclass: the pure functions come from its variables.
            init, update, compute = self._traced_init, self._traced_update, self._traced_compute
        self.init, self.update, self.compute = init, update, compute

    def __iter__(self):
        return iter((self.init, self.update, self.compute))

    @property
    def built(self) -> bool:
        """Whether the state's shapes are known (metrics with per-class state built
        without ``num_classes`` learn it from the first predictions, as in Keras)."""
        return self._builder is None

    def build(self, y_pred_shape) -> Metric:
        """This metric with its state shaped for predictions ``[batch, ..., C]`` (itself if
        already built). ``compile`` builds every metric from the model's output shape."""
        if self._builder is None:
            return self
        out = self._builder(tuple(y_pred_shape))
        out.name, out.weighted = self.name, self.weighted
        return out

    def renamed(self, name: str) -> Metric:
        """The same metric reported under another name."""
        out = copy.copy(self)
        out.name, out._state = name, None
        return out

    def __repr__(self) -> str:
        return f"<fnn Metric {self.name!r}>"

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, Keras's ``get_config`` (``name`` and ``dtype`` too)."""
        return {"name": self.name, "dtype": self.dtype, **self.config}

    # ------------------------------------------------------------ Keras's stateful API

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        """Add one batch to this instance's state (eager)."""
        if self._builder is not None:
            built = self.build(np.shape(y_pred))
            self.init, self.update, self.compute = built.init, built.update, built.compute
            self.config, self._builder = built.config, None
        state = self.init() if self._state is None else self._state
        self._state = self.update(state, y_true, y_pred, sample_weight)

    def result(self):
        """The metric's value over every batch since the last ``reset_state``."""
        return self.compute(self.init() if self._state is None else self._state)

    def reset_state(self) -> None:
        """Forget the accumulated batches (variables of a subclass go back to zeros)."""
        self._state = None
        for v in self._variables:
            v.assign(jnp.zeros(v.shape, v.dtype))

    def reset_states(self) -> None:
        """tf.keras's name of ``reset_state``."""
        self.reset_state()

    def __call__(self, y_true, y_pred, sample_weight=None):
        """``update_state`` then ``result``, as Keras."""
        self.update_state(y_true, y_pred, sample_weight=sample_weight)
        return self.result()

    @property
    def variables(self) -> list[Variable]:
        return list(self._variables)

    def add_variable(
        self, shape=(), initializer="zeros", dtype=None, aggregation="sum", name=None
    ) -> Variable:
        """A new state variable (Keras's signature; only ``aggregation="sum"``: states
        merge across devices by summation)."""
        if aggregation not in ("sum", None):
            raise ConfigError(
                f"{self.name}: expected aggregation='sum' (states merge by summation), got "
                f"{aggregation!r}."
            )
        shape = (shape,) if isinstance(shape, int) else tuple(shape or ())
        dtype = jnp.dtype(dtype or self.dtype or jnp.float32)
        if isinstance(initializer, int | float | np.ndarray | jax.Array):
            value = jnp.broadcast_to(jnp.asarray(initializer, dtype), shape)
        else:
            from fnn.core import initializers

            value = initializers.get(initializer)(jax.random.key(0), shape, dtype)
        names = {v.name for v in self._variables}
        name = name or f"variable_{len(self._variables)}"
        if name in names:
            name = f"{name}_{len(self._variables)}"
        variable = Variable(value, name)
        self._variables.append(variable)
        return variable

    def add_weight(self, name=None, shape=(), initializer="zeros", dtype=None) -> Variable:
        """``add_variable`` with tf.keras's argument order."""
        return self.add_variable(shape=shape, initializer=initializer, dtype=dtype, name=name)

    # ------------------------------------------------------------ traced pure functions

    def _values(self) -> dict:
        return {v.name: v.value for v in self._variables}

    def _load(self, state: Mapping) -> None:
        for v in self._variables:
            v._value = jnp.asarray(state[v.name])

    def _traced(self, state, fn):
        if type(self).update_state is Metric.update_state:
            raise ConfigError(
                f"{self.name}: expected a Metric subclass to define update_state and result "
                "(or Metric(name, init, update, compute)), got neither."
            )
        saved = self._values()
        try:
            if state is not None:
                self._load(state)
            return fn()
        finally:
            self._load(saved)

    def _traced_init(self):
        return self._traced(None, lambda: (self.reset_state(), self._values())[1])

    def _traced_update(self, state, y_true, y_pred, sample_weight=None):
        def run():
            self.update_state(y_true, y_pred, sample_weight=sample_weight)
            return self._values()

        return self._traced(state, run)

    def _traced_compute(self, state):
        return self._traced(state, lambda: jax.tree.map(jnp.asarray, _value_of(self.result())))


def weighted(metric: Metric) -> Metric:
    """``metric`` (a copy if needed) that the training steps update with the sample
    weights (what ``compile(weighted_metrics=[...])`` does)."""
    if metric.weighted:
        return metric
    out = copy.copy(metric)
    out.weighted, out._state = True, None
    return out


def with_state(metric: Metric, state: State) -> Metric:
    """``metric`` itself, now holding a copy of ``state`` (e.g. from
    ``TrainState.metric_states``) as its eager state, so ``result()`` reads it, as a Keras
    metric instance reads what ``fit`` accumulated (a subclass gets the values loaded into
    its variables). The copy survives the step donating the train state."""
    state = jax.tree.map(lambda a: jnp.array(a, copy=True), state)
    if metric._variables and metric.init == metric._traced_init:
        metric._load(state)
    else:
        metric._state = state
    return metric


def unweighted(metric: Metric) -> Metric:
    """``metric`` (a copy if needed) that the training steps update without the sample
    weights (what ``compile(metrics=[...])`` does)."""
    if not metric.weighted:
        return metric
    out = copy.copy(metric)
    out.weighted, out._state = False, None
    return out


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


class _ValuesMetric(Metric):
    """A metric of values, not predictions: ``update_state(values, sample_weight=None)``."""

    def update_state(self, values, sample_weight=None) -> None:
        state = self.init() if self._state is None else self._state
        self._state = self.update(state, values, sample_weight)

    def __call__(self, values, sample_weight=None):
        self.update_state(values, sample_weight=sample_weight)
        return self.result()


def _value_weights(values, sample_weight):
    if sample_weight is None:
        return jnp.ones_like(values)
    w = jnp.asarray(sample_weight, jnp.float32)
    if w.ndim > values.ndim:
        w = jnp.squeeze(w, tuple(range(values.ndim, w.ndim)))
    w = w.reshape(w.shape + (1,) * (values.ndim - w.ndim))
    return jnp.broadcast_to(w, values.shape)


def Mean(name: str = "mean", dtype=None) -> Metric:
    """Weighted mean of values: ``update(state, values, sample_weight=None)``.

    ``values`` has any shape; ``sample_weight`` broadcasts against it (a scalar weight for
    a scalar value, e.g. a batch loss weighted by the batch size as Keras's loss tracker).
    """

    def init():
        return {"total": _zeros(), "count": _zeros()}

    def update(state, values, sample_weight=None):
        values = jnp.asarray(values, jnp.float32)
        w = _value_weights(values, sample_weight)
        return {
            "total": state["total"] + jnp.sum(values * w),
            "count": state["count"] + jnp.sum(w),
        }

    def compute(state):
        return _safe_div(state["total"], state["count"])

    return _ValuesMetric(name, init, update, compute, dtype=dtype)


def Sum(name: str = "sum", dtype=None) -> Metric:
    """Weighted sum of values: ``update(state, values, sample_weight=None)``."""

    def update(state, values, sample_weight=None):
        values = jnp.asarray(values, jnp.float32)
        return {"total": state["total"] + jnp.sum(values * _value_weights(values, sample_weight))}

    return _ValuesMetric(
        name, lambda: {"total": _zeros()}, update, lambda state: state["total"], dtype=dtype
    )


def MeanMetricWrapper(fn: Callable, name: str | None = None, dtype=None, **config) -> Metric:
    """Weighted mean over examples of a per-example ``fn(y_true, y_pred) -> [batch]`` (a
    ``Loss`` contributes its unreduced ``call``)."""
    name = name or getattr(fn, "name", None) or getattr(fn, "__name__", "mean_metric")
    per_example = fn.call if isinstance(fn, losses_lib.Loss) else fn
    mean = Mean(name)

    def update(state, y_true, y_pred, sample_weight=None):
        values = jnp.asarray(per_example(y_true, y_pred))
        if values.ndim != 1:
            values = losses_lib.per_example_mean(values)
        w = _example_weights(sample_weight, values.shape[0], name)
        return mean.update(state, values, w)

    return Metric(name, mean.init, update, mean.compute, config, dtype=dtype)


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


def Accuracy(name: str = "accuracy", dtype=None) -> Metric:
    """Exact-match accuracy (Keras ``Accuracy``: ``y_true == y_pred``)."""
    return MeanMetricWrapper(accuracy, name, dtype)


def BinaryAccuracy(
    name: str = "binary_accuracy",
    dtype=None,
    threshold: float = 0.5,
    *,
    from_logits: bool = False,
) -> Metric:
    """Fraction of 0/1 targets matched by ``p > threshold`` (``sigmoid`` first if
    ``from_logits``, an fnn extension: Keras has no ``from_logits`` here)."""
    return MeanMetricWrapper(
        lambda t, p: binary_accuracy(t, p, threshold, from_logits),
        name,
        dtype,
        threshold=threshold,
        from_logits=from_logits,
    )


def CategoricalAccuracy(name: str = "categorical_accuracy", dtype=None) -> Metric:
    """Accuracy for one-hot targets ``[batch, C]`` and scores ``[batch, C]``."""
    return MeanMetricWrapper(categorical_accuracy, name, dtype)


def SparseCategoricalAccuracy(name: str = "sparse_categorical_accuracy", dtype=None) -> Metric:
    """Accuracy for integer labels ``[batch]`` and scores ``[batch, C]``."""
    return MeanMetricWrapper(sparse_categorical_accuracy, name, dtype)


def TopKCategoricalAccuracy(
    k: int = 5, name: str = "top_k_categorical_accuracy", dtype=None
) -> Metric:
    """Top-``k`` accuracy for one-hot targets."""
    return MeanMetricWrapper(lambda t, p: top_k_categorical_accuracy(t, p, k), name, dtype, k=k)


def SparseTopKCategoricalAccuracy(
    k: int = 5, name: str = "sparse_top_k_categorical_accuracy", dtype=None
) -> Metric:
    """Top-``k`` accuracy for integer labels."""
    return MeanMetricWrapper(
        lambda t, p: sparse_top_k_categorical_accuracy(t, p, k), name, dtype, k=k
    )


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


# Keras's metrics_utils.NEG_INF: the score of entries outside the top k.
NEG_INF = -1e10


def _div_no_nan(num, den):
    """``num / den`` with 0 where ``den == 0`` (Keras's ``divide_no_nan``)."""
    return jnp.where(den != 0, num / jnp.where(den != 0, den, 1.0), 0.0)


def _parse_thresholds(name, thresholds, default) -> tuple[tuple[float, ...], bool]:
    """``(thresholds, single)``: a float gives one threshold (a scalar result), a list one
    result per threshold, ``None`` the ``default``."""
    if thresholds is None:
        return (default,), True
    single = isinstance(thresholds, int | float)
    values = (float(thresholds),) if single else tuple(float(t) for t in thresholds)
    if not values or any(not 0.0 <= t <= 1.0 for t in values):
        raise ConfigError(
            f"{name}: expected thresholds in [0, 1] (a float or a list), got {thresholds!r}."
        )
    return values, single


def _filter_top_k(y_pred, k: int):
    """Scores outside the ``k`` largest of the last axis set to ``NEG_INF``."""
    _, idx = jax.lax.top_k(y_pred, k)
    keep = jnp.sum(jax.nn.one_hot(idx, y_pred.shape[-1], dtype=y_pred.dtype), axis=-2)
    return y_pred * keep + NEG_INF * (1 - keep)


def _threshold_counts(name, thresholds, top_k, class_id, from_logits):
    """``init, update`` of weighted ``tp, fp, tn, fn`` ``[T]`` at fixed thresholds, the
    state of Keras's confusion metrics: every entry of ``y_pred`` (after ``top_k`` and
    ``class_id``) is positive where it is ``> threshold``; ``y_true`` counts where non-zero."""
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"{name}: expected top_k to be an int >= 1, got {top_k!r}.")
    if class_id is not None and (not isinstance(class_id, int) or class_id < 0):
        raise ConfigError(f"{name}: expected class_id to be an int >= 0, got {class_id!r}.")
    t_values = jnp.asarray(thresholds, jnp.float32)
    size = len(thresholds)

    def init():
        return {k: _zeros(size) for k in ("tp", "fp", "tn", "fn")}

    def update(state, y_true, y_pred, sample_weight=None):
        batch = _batch_size(name, y_pred)
        y_true, y_pred = _match_ranks(name, y_true, y_pred)
        y_pred = y_pred.astype(jnp.float32)
        if from_logits:
            y_pred = jax.nn.sigmoid(y_pred)
        w = _broadcast_weights(_example_weights(sample_weight, batch, name), y_true.shape)
        if top_k is not None:
            y_pred = _filter_top_k(y_pred, top_k)
        if class_id is not None:
            if y_pred.ndim < 2 or class_id >= y_pred.shape[-1]:
                raise ShapeError(
                    f"{name}: expected predictions [batch, classes] with more than "
                    f"class_id={class_id} classes, got shape {y_pred.shape}."
                )
            y_true, y_pred, w = y_true[..., class_id], y_pred[..., class_id], w[..., class_id]
        t = (y_true != 0).astype(jnp.float32).ravel()
        w = w.ravel()
        positive = (y_pred.ravel()[None, :] > t_values[:, None]).astype(jnp.float32)  # [T, n]
        return {
            "tp": state["tp"] + positive @ (t * w),
            "fp": state["fp"] + positive @ ((1 - t) * w),
            "tn": state["tn"] + (1 - positive) @ ((1 - t) * w),
            "fn": state["fn"] + (1 - positive) @ (t * w),
        }

    return init, update


def _thresholded(kind, name, thresholds, top_k, class_id, from_logits):
    default = 0.5 if top_k is None else NEG_INF
    values, single = _parse_thresholds(name, thresholds, default)
    init, update = _threshold_counts(name, values, top_k, class_id, from_logits)
    formulas = {
        "true_positives": lambda s: s["tp"],
        "false_positives": lambda s: s["fp"],
        "true_negatives": lambda s: s["tn"],
        "false_negatives": lambda s: s["fn"],
        "precision": lambda s: _div_no_nan(s["tp"], s["tp"] + s["fp"]),
        "recall": lambda s: _div_no_nan(s["tp"], s["tp"] + s["fn"]),
        "f1_score": lambda s: _div_no_nan(2 * s["tp"], 2 * s["tp"] + s["fp"] + s["fn"]),
    }

    def compute(state):
        value = formulas[kind](state)
        return value[0] if single else value

    config = {"thresholds": thresholds, "top_k": top_k, "class_id": class_id}
    if from_logits:
        config["from_logits"] = True
    return Metric(name, init, update, compute, config)


def _count_metric(kind, doc):
    def make(thresholds=None, name: str | None = None, dtype=None, *, from_logits=False):
        metric = _thresholded(kind, name or kind, thresholds, None, None, from_logits)
        metric.dtype = dtype or metric.dtype
        return metric

    make.__name__ = "".join(part.title() for part in kind.split("_"))
    make.__qualname__ = make.__name__
    make.__doc__ = doc
    return make


TruePositives = _count_metric(
    "true_positives",
    "Weighted count of entries with ``y_true != 0`` and ``y_pred > threshold`` (Keras's "
    "``TruePositives``; a list of thresholds gives one count each).",
)
FalsePositives = _count_metric(
    "false_positives", "Weighted count of entries with ``y_true == 0`` and ``y_pred > threshold``."
)
TrueNegatives = _count_metric(
    "true_negatives", "Weighted count of entries with ``y_true == 0`` and ``y_pred <= threshold``."
)
FalseNegatives = _count_metric(
    "false_negatives", "Weighted count of entries with ``y_true != 0`` and ``y_pred <= threshold``."
)


def _confusion_metric(kind, thresholds, average, num_classes, from_logits, name):
    """Single-label multi-class precision/recall from the confusion matrix (fnn's
    ``average`` extension, sklearn's meaning)."""
    if average not in _AVERAGES:
        raise ConfigError(f"{name}: expected average in {list(_AVERAGES)}, got {average!r}.")
    config = {"thresholds": thresholds, "average": average, "num_classes": num_classes}
    config["from_logits"] = from_logits
    _check_num_classes(name, num_classes)
    threshold = 0.5 if thresholds is None else thresholds
    return Metric(
        name,
        lambda: {"matrix": _zeros(num_classes, num_classes)},
        _confusion_update(name, num_classes, threshold, from_logits),
        lambda state: _from_matrix(kind, state["matrix"], average),
        config,
    )


def Precision(
    thresholds=None,
    top_k: int | None = None,
    class_id: int | None = None,
    name: str = "precision",
    dtype=None,
    *,
    average: str | None = "binary",
    num_classes: int | None = None,
    from_logits: bool = False,
) -> Metric:
    """Precision ``tp / (tp + fp)`` (0 when nothing is predicted positive), Keras's way.

    Every entry of ``y_pred`` is positive where it is ``> thresholds`` (default 0.5; a list
    gives one value per threshold), against targets of the same shape (non-zero =
    positive; multi-label entries pooled). ``top_k``: only the ``k`` highest scores of each
    row can be positive (default threshold then none). ``class_id``: only that column.
    fnn extensions (keyword-only): ``from_logits`` applies ``sigmoid`` first;
    ``average="micro" | "macro" | "weighted" | None`` with ``num_classes`` is
    single-label multi-class precision from arg-maxed scores ``[batch, C]`` (sklearn's
    meaning; ``None`` gives per-class values ``[C]``).
    """
    if average != "binary":
        return _confusion_metric("precision", thresholds, average, num_classes, from_logits, name)
    metric = _thresholded("precision", name, thresholds, top_k, class_id, from_logits)
    metric.dtype = dtype or metric.dtype
    return metric


def Recall(
    thresholds=None,
    top_k: int | None = None,
    class_id: int | None = None,
    name: str = "recall",
    dtype=None,
    *,
    average: str | None = "binary",
    num_classes: int | None = None,
    from_logits: bool = False,
) -> Metric:
    """Recall ``tp / (tp + fn)``; arguments as ``Precision``."""
    if average != "binary":
        return _confusion_metric("recall", thresholds, average, num_classes, from_logits, name)
    metric = _thresholded("recall", name, thresholds, top_k, class_id, from_logits)
    metric.dtype = dtype or metric.dtype
    return metric


def _unbuilt(name, what):
    def init():
        raise ConfigError(
            f"{name}: expected {what} (its state has one entry per class), got none. Pass "
            f"it, use the metric in compile (which builds it from the output shape), or "
            "call update_state once."
        )

    return init


_FBETA_AVERAGES = (None, "micro", "macro", "weighted")


def FBetaScore(
    average: str | None = None,
    beta: float = 1.0,
    threshold: float | None = None,
    name: str = "fbeta_score",
    dtype=None,
    *,
    num_classes: int | None = None,
    from_logits: bool = False,
) -> Metric:
    """F-beta per class over targets ``[batch, C]`` (one-hot or multi-label), Keras's way.

    ``threshold=None``: the row's highest score is the prediction; else scores
    ``> threshold``. ``average``: ``None`` (per-class ``[C]``), ``"micro"`` (pooled counts),
    ``"macro"`` or ``"weighted"`` (by support). ``num_classes`` (keyword) fixes the state's
    shape up front; without it the first predictions (or ``compile``) build it. Integer
    labels ``[batch]`` are one-hot encoded and ``from_logits`` applies ``sigmoid`` (fnn
    extensions).
    """
    if average not in _FBETA_AVERAGES:
        raise ConfigError(f"{name}: expected average in {list(_FBETA_AVERAGES)}, got {average!r}.")
    if not isinstance(beta, int | float) or beta <= 0:
        raise ConfigError(f"{name}: expected beta > 0, got {beta!r}.")
    if threshold is not None and not (isinstance(threshold, int | float) and 0 < threshold <= 1):
        raise ConfigError(f"{name}: expected threshold in (0, 1] or None, got {threshold!r}.")
    config = {"average": average, "beta": beta, "threshold": threshold}
    if num_classes is None:

        def build(shape):
            return FBetaScore(
                average,
                beta,
                threshold,
                name,
                dtype,
                num_classes=shape[-1],
                from_logits=from_logits,
            )

        return Metric(
            name, _unbuilt(name, "num_classes"), None, None, config, dtype=dtype, builder=build
        )
    keys = ("tp", "fp", "fn", "support")

    def update(state, y_true, y_pred, sample_weight=None):
        batch = _batch_size(name, y_pred)
        y_true, y_pred = jnp.asarray(y_true), jnp.asarray(y_pred, jnp.float32)
        if y_pred.ndim == 2 and y_true.shape in ((batch,), (batch, 1)):
            if num_classes > 1:
                labels = _sparse_labels(name, y_true, y_pred)
                y_true = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
            else:  # one score per example
                y_true = y_true.reshape(batch, 1)
        if y_pred.ndim != 2 or y_true.shape != y_pred.shape or y_pred.shape[-1] != num_classes:
            raise ShapeError(
                f"{name}: expected targets and predictions [batch, {num_classes}], got "
                f"targets {y_true.shape} and predictions {y_pred.shape}."
            )
        if from_logits:
            y_pred = jax.nn.sigmoid(y_pred)
        if threshold is None:
            top = jnp.max(y_pred, axis=-1, keepdims=True)
            p = (y_pred >= top) & (jnp.abs(y_pred) > 1e-9)
        else:
            p = y_pred > threshold
        p, t = p.astype(jnp.float32), y_true.astype(jnp.float32)
        w = _example_weights(sample_weight, batch, name)[:, None]
        batch_counts = (p * t, p * (1 - t), (1 - p) * t, t)
        return {k: state[k] + jnp.sum(v * w, 0) for k, v in zip(keys, batch_counts)}

    def compute(state):
        tp, fp, fn, support = (state[k] for k in keys)
        if average == "micro":
            tp, fp, fn = jnp.sum(tp), jnp.sum(fp), jnp.sum(fn)
        eps = losses_lib.EPSILON
        precision, recall = tp / (tp + fp + eps), tp / (tp + fn + eps)
        score = (1 + beta**2) * precision * recall / (beta**2 * precision + recall + eps)
        if average == "weighted":
            return jnp.sum(score * support / (jnp.sum(support) + eps))
        return score if average is None else jnp.mean(score)

    config["num_classes"] = num_classes
    return Metric(
        name, lambda: {k: _zeros(num_classes) for k in keys}, update, compute, config, dtype=dtype
    )


def F1Score(
    average: str | None = None,
    threshold: float | None = None,
    name: str = "f1_score",
    dtype=None,
    *,
    num_classes: int | None = None,
    from_logits: bool = False,
) -> Metric:
    """``FBetaScore`` with ``beta=1`` (Keras's ``F1Score``). ``average="binary"`` (an fnn
    extension, what ``metrics=["f1_score"]`` gives) is ``2 tp / (2 tp + fp + fn)`` over
    every entry thresholded at ``threshold`` (default 0.5), like sklearn's binary F1."""
    if average == "binary":
        metric = _thresholded("f1_score", name, threshold, None, None, from_logits)
        metric.dtype = dtype or metric.dtype
        return metric
    return FBetaScore(
        average, 1.0, threshold, name, dtype, num_classes=num_classes, from_logits=from_logits
    )


# --------------------------------------------------------------------------- AUC


def AUC(
    num_thresholds: int = 200,
    curve: str = "ROC",
    summation_method: str = "interpolation",
    name: str = "auc",
    dtype=None,
    thresholds=None,
    multi_label: bool = False,
    num_labels: int | None = None,
    label_weights=None,
    from_logits: bool = False,
    *,
    average: str | None = "macro",
) -> Metric:
    """Area under the ROC or PR curve, Keras's approximation (Riemann sum over
    confusion counts at ``num_thresholds`` thresholds).

    Thresholds: ``-eps``, ``i / (num_thresholds - 1)``, ``1 + eps`` (or the sorted
    ``thresholds`` between ``-eps`` and ``1 + eps``). The state is a histogram of the
    weighted positive and negative entries between consecutive thresholds
    ``[labels, num_thresholds]``, from which the counts at every threshold are suffix
    sums (the same bucketing as Keras's, O(batch) per update). ``summation_method``:
    ``"interpolation"`` (trapezoids; for PR, Davis & Goadrich's interpolation),
    ``"minoring"`` or ``"majoring"``.

    ``multi_label=False`` pools every entry into one binary problem (``label_weights``
    weight the columns). ``multi_label=True`` gives one curve per column (``num_labels``,
    or learned from the first predictions / ``compile``) and averages the areas: mean, or
    ``label_weights``-weighted, as Keras; fnn's keyword ``average`` may also be
    ``"weighted"`` (by positives) or ``None`` (every label's area). Integer labels
    ``[batch]`` with scores ``[batch, C]`` (``multi_label=True``) give one-vs-rest AUC,
    with ``softmax`` for ``from_logits``. ``from_logits`` otherwise applies ``sigmoid``.
    """
    if curve not in ("ROC", "PR"):
        raise ConfigError(f"{name}: expected curve 'ROC' or 'PR', got {curve!r}.")
    if summation_method not in ("interpolation", "minoring", "majoring"):
        raise ConfigError(
            f"{name}: expected summation_method 'interpolation', 'minoring' or 'majoring', got "
            f"{summation_method!r}."
        )
    if average not in ("macro", "weighted", None):
        raise ConfigError(f"{name}: expected average 'macro', 'weighted' or None, got {average!r}.")
    if thresholds is not None:
        edges = sorted(float(t) for t in thresholds)
        thr = np.asarray([-losses_lib.EPSILON, *edges, 1.0 + losses_lib.EPSILON], np.float32)
        num_thresholds = len(thr)
    elif not isinstance(num_thresholds, int) or num_thresholds < 2:
        raise ConfigError(f"{name}: expected num_thresholds > 1, got {num_thresholds!r}.")
    else:
        thr = None
    config = {
        "num_thresholds": num_thresholds,
        "curve": curve,
        "summation_method": summation_method,
        "thresholds": thresholds,
        "multi_label": multi_label,
        "num_labels": num_labels,
        "label_weights": label_weights,
        "from_logits": from_logits,
        "average": average,
    }
    if multi_label and num_labels is None:

        def build(shape):
            return AUC(
                num_thresholds,
                curve,
                summation_method,
                name,
                dtype,
                thresholds,
                True,
                shape[-1],
                label_weights,
                from_logits,
                average=average,
            )

        return Metric(
            name, _unbuilt(name, "num_labels"), None, None, config, dtype=dtype, builder=build
        )
    if multi_label and (not isinstance(num_labels, int) or num_labels < 1):
        raise ConfigError(f"{name}: expected num_labels to be an int >= 1, got {num_labels!r}.")
    labels = num_labels if multi_label else 1
    bins = num_thresholds
    lw = None if label_weights is None else jnp.asarray(label_weights, jnp.float32)

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
        if lw is not None and not multi_label:
            w = w * jnp.broadcast_to(lw, w.shape)
        if multi_label:
            if y_pred.shape[-1] != labels:
                raise ShapeError(
                    f"{name}: expected scores with last dimension num_labels={labels}, got "
                    f"shape {y_pred.shape}."
                )
            column = jnp.broadcast_to(jnp.arange(labels), y_pred.shape)
        else:
            column = jnp.zeros(y_pred.shape, jnp.int32)
        p = jnp.clip(y_pred, 0.0, 1.0)
        if thr is None:  # Keras's bucket of evenly spaced thresholds
            b = jnp.maximum(jnp.ceil(p * (bins - 1)) - 1, 0).astype(jnp.int32)
        else:  # the last threshold below the score
            b = jnp.maximum(jnp.searchsorted(jnp.asarray(thr), p, side="left") - 1, 0)
        index = (column * bins + b).ravel()
        t = (y_true != 0).astype(jnp.float32)
        pos = jnp.zeros(labels * bins).at[index].add((w * t).ravel())
        neg = jnp.zeros(labels * bins).at[index].add((w * (1 - t)).ravel())
        return {
            "pos": state["pos"] + pos.reshape(labels, bins),
            "neg": state["neg"] + neg.reshape(labels, bins),
        }

    def compute(state):
        pos, neg = state["pos"], state["neg"]
        tp = jnp.cumsum(pos[:, ::-1], -1)[:, ::-1]  # [labels, T]: entries > threshold k
        fp = jnp.cumsum(neg[:, ::-1], -1)[:, ::-1]
        fn = jnp.sum(pos, -1, keepdims=True) - tp
        tn = jnp.sum(neg, -1, keepdims=True) - fp
        if curve == "PR" and summation_method == "interpolation":
            dtp = tp[:, :-1] - tp[:, 1:]
            predicted = tp + fp
            dp = predicted[:, :-1] - predicted[:, 1:]
            slope = _div_no_nan(dtp, jnp.maximum(dp, 0))
            intercept = tp[:, 1:] - slope * predicted[:, 1:]
            both = (predicted[:, :-1] > 0) & (predicted[:, 1:] > 0)
            ratio = jnp.where(
                both, _div_no_nan(predicted[:, :-1], jnp.maximum(predicted[:, 1:], 0)), 1.0
            )
            terms = _div_no_nan(
                slope * (dtp + intercept * jnp.log(ratio)), jnp.maximum(tp[:, 1:] + fn[:, 1:], 0)
            )
        else:
            recall = _div_no_nan(tp, tp + fn)
            if curve == "ROC":
                x, y = _div_no_nan(fp, fp + tn), recall
            else:
                x, y = recall, _div_no_nan(tp, tp + fp)
            heights = {
                "interpolation": (y[:, :-1] + y[:, 1:]) / 2.0,
                "minoring": jnp.minimum(y[:, :-1], y[:, 1:]),
                "majoring": jnp.maximum(y[:, :-1], y[:, 1:]),
            }[summation_method]
            terms = (x[:, :-1] - x[:, 1:]) * heights
        area = jnp.sum(terms, -1)
        if not multi_label:
            return area[0]
        if average is None:
            return area
        if average == "weighted":
            n_pos = jnp.sum(pos, -1)
            return _div_no_nan(jnp.sum(area * n_pos), jnp.sum(n_pos))
        if lw is not None:
            return _div_no_nan(jnp.sum(area * lw), jnp.sum(lw))
        return jnp.mean(area)

    return Metric(name, init, update, compute, config, dtype=dtype)


# --------------------------------------------------------------------------- lookup


def _loss_metric(class_name, loss_name, doc, options=()):
    """A Keras metric class that is the mean of a loss's per-example values:
    ``Cls(name=..., dtype=None, **options)``."""

    def make(name: str = loss_name, dtype=None, **kwargs):
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            raise ConfigError(
                f"{name}: unexpected arguments {unknown}; {class_name} takes name, dtype"
                f"{''.join(', ' + o for o in options)}."
            )
        loss = losses_lib.get({"class_name": _LOSS_CLASSES[loss_name], "config": kwargs})
        return MeanMetricWrapper(loss, name, dtype, **kwargs)

    make.__name__ = make.__qualname__ = class_name
    make.__doc__ = doc
    return make


_LOSS_CLASSES = {
    "mean_squared_error": "MeanSquaredError",
    "mean_absolute_error": "MeanAbsoluteError",
    "mean_absolute_percentage_error": "MeanAbsolutePercentageError",
    "mean_squared_logarithmic_error": "MeanSquaredLogarithmicError",
    "binary_crossentropy": "BinaryCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "kl_divergence": "KLDivergence",
    "log_cosh": "LogCosh",
    "poisson": "Poisson",
    "hinge": "Hinge",
    "squared_hinge": "SquaredHinge",
    "categorical_hinge": "CategoricalHinge",
}
_MEAN_OF = "Weighted mean over examples of the per-example "
MeanSquaredError = _loss_metric("MeanSquaredError", "mean_squared_error", _MEAN_OF + "MSE.")
MeanAbsoluteError = _loss_metric("MeanAbsoluteError", "mean_absolute_error", _MEAN_OF + "MAE.")
MeanAbsolutePercentageError = _loss_metric(
    "MeanAbsolutePercentageError", "mean_absolute_percentage_error", _MEAN_OF + "MAPE."
)
MeanSquaredLogarithmicError = _loss_metric(
    "MeanSquaredLogarithmicError", "mean_squared_logarithmic_error", _MEAN_OF + "MSLE."
)
BinaryCrossentropy = _loss_metric(
    "BinaryCrossentropy",
    "binary_crossentropy",
    _MEAN_OF + "binary cross-entropy.",
    ("from_logits", "label_smoothing"),
)
CategoricalCrossentropy = _loss_metric(
    "CategoricalCrossentropy",
    "categorical_crossentropy",
    _MEAN_OF + "categorical cross-entropy.",
    ("from_logits", "label_smoothing", "axis"),
)
SparseCategoricalCrossentropy = _loss_metric(
    "SparseCategoricalCrossentropy",
    "sparse_categorical_crossentropy",
    _MEAN_OF + "sparse categorical cross-entropy.",
    ("from_logits", "axis"),
)
KLDivergence = _loss_metric("KLDivergence", "kl_divergence", _MEAN_OF + "KL divergence.")
Poisson = _loss_metric("Poisson", "poisson", _MEAN_OF + "Poisson loss.")
Hinge = _loss_metric("Hinge", "hinge", _MEAN_OF + "hinge loss.")
SquaredHinge = _loss_metric("SquaredHinge", "squared_hinge", _MEAN_OF + "squared hinge loss.")
CategoricalHinge = _loss_metric(
    "CategoricalHinge", "categorical_hinge", _MEAN_OF + "categorical hinge loss."
)


def LogCoshError(name: str = "logcosh", dtype=None) -> Metric:
    """Weighted mean over examples of ``log(cosh(y_pred - y_true))``."""
    return MeanMetricWrapper(losses_lib.log_cosh, name, dtype)


def RootMeanSquaredError(name: str = "root_mean_squared_error", dtype=None) -> Metric:
    """``sqrt`` of the weighted mean squared error over every entry (Keras's
    ``RootMeanSquaredError``)."""
    mse = MeanMetricWrapper(losses_lib.mean_squared_error, name, dtype)
    return Metric(name, mse.init, mse.update, lambda s: jnp.sqrt(mse.compute(s)), dtype=dtype)


def CosineSimilarity(name: str = "cosine_similarity", dtype=None, axis: int = -1) -> Metric:
    """Weighted mean over examples of the cosine similarity along ``axis`` (1 is best)."""
    return MeanMetricWrapper(
        lambda t, p: -losses_lib.cosine_similarity(t, p, axis), name, dtype, axis=axis
    )


def _cosine(name="cosine_similarity"):
    return CosineSimilarity(name)


_METRICS: dict[str, Callable[..., Metric]] = {
    "accuracy": Accuracy,
    "binary_accuracy": BinaryAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "precision": Precision,
    "recall": Recall,
    "f1_score": lambda name="f1_score", average="binary", **kw: F1Score(average, name=name, **kw),
    "fbeta_score": FBetaScore,
    "auc": AUC,
    "confusion_matrix": ConfusionMatrix,
    "cosine_similarity": CosineSimilarity,
    "true_positives": TruePositives,
    "false_positives": FalsePositives,
    "true_negatives": TrueNegatives,
    "false_negatives": FalseNegatives,
    "root_mean_squared_error": RootMeanSquaredError,
    "log_cosh": LogCoshError,
    "mean": Mean,
    "sum": Sum,
}
for _loss_name, _class_name in _LOSS_CLASSES.items():
    if _loss_name not in _METRICS:
        _METRICS[_loss_name] = globals()[_class_name]
_ALIASES = {
    "acc": "accuracy",
    "mse": "mean_squared_error",
    "mae": "mean_absolute_error",
    "mape": "mean_absolute_percentage_error",
    "msle": "mean_squared_logarithmic_error",
    "rmse": "root_mean_squared_error",
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
    "FBetaScore": "fbeta_score",
    "AUC": "auc",
    "ConfusionMatrix": "confusion_matrix",
    "TruePositives": "true_positives",
    "FalsePositives": "false_positives",
    "TrueNegatives": "true_negatives",
    "FalseNegatives": "false_negatives",
    "RootMeanSquaredError": "root_mean_squared_error",
    "LogCoshError": "log_cosh",
    "CosineSimilarity": "cosine_similarity",
    **{c: n for n, c in _LOSS_CLASSES.items()},
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
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
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
    if callable(identifier):  # a per-example function, or a Loss (its unreduced values)
        name = getattr(identifier, "name", None) or getattr(identifier, "__name__", "metric")
        return MeanMetricWrapper(identifier, name)
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


# Per-group (fairness) metrics live in their own module; fnn.metrics exposes them too.
from fnn.training.fairness import GroupMetrics, format_report, group_report  # noqa: E402, F401
