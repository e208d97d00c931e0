"""Loss and metric classes constructed the Keras way equal Keras 3's (KERAS_BACKEND=jax) on
random data; Keras-style Loss/Metric subclasses; sample and class weights reach the loss
and only the weighted metrics."""

import os
import re

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.shell import compile_utils

keras = pytest.importorskip("keras")
ops = keras.ops

RNG = np.random.default_rng(0)
B, C = 12, 5


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _sigmoid(z):
    return (1 / (1 + np.exp(-z))).astype(np.float32)


def _data(kind, rng):
    """``(y_true, y_pred)`` of one kind of problem."""
    z = rng.normal(size=(B, C)).astype(np.float32) * 2
    if kind == "onehot":
        return np.eye(C, dtype=np.float32)[rng.integers(0, C, B)], _softmax(z)
    if kind == "onehot_logits":
        return np.eye(C, dtype=np.float32)[rng.integers(0, C, B)], z
    if kind == "sparse":
        return rng.integers(0, C, B).astype(np.int32), _softmax(z)
    if kind == "sparse_logits":
        return rng.integers(0, C, B).astype(np.int32), z
    if kind == "binary":
        return (rng.uniform(size=(B, C)) < 0.4).astype(np.float32), _sigmoid(z)
    if kind == "binary_logits":
        return (rng.uniform(size=(B, C)) < 0.4).astype(np.float32), z
    if kind == "binary_column":
        return (rng.uniform(size=(B, 1)) < 0.4).astype(np.float32), _sigmoid(z[:, :1])
    if kind == "signed":
        return np.where(rng.uniform(size=(B, C)) < 0.5, -1.0, 1.0).astype(np.float32), z
    if kind == "positive":
        return rng.uniform(0.1, 3, size=(B, C)).astype(np.float32), rng.uniform(
            0.1, 3, size=(B, C)
        ).astype(np.float32)
    return rng.normal(size=(B, C)).astype(np.float32), z  # regression


# (fnn class name, kwargs, data kind); Keras has the same class name and arguments.
LOSSES = [
    ("SparseCategoricalCrossentropy", {}, "sparse"),
    ("SparseCategoricalCrossentropy", {"from_logits": True}, "sparse_logits"),
    ("SparseCategoricalCrossentropy", {"from_logits": True, "ignore_class": 2}, "sparse_logits"),
    ("CategoricalCrossentropy", {}, "onehot"),
    ("CategoricalCrossentropy", {"from_logits": True, "label_smoothing": 0.1}, "onehot_logits"),
    ("BinaryCrossentropy", {}, "binary"),
    ("BinaryCrossentropy", {"from_logits": True, "label_smoothing": 0.2}, "binary_logits"),
    ("BinaryFocalCrossentropy", {}, "binary"),
    (
        "BinaryFocalCrossentropy",
        {"apply_class_balancing": True, "alpha": 0.4, "gamma": 3.0, "from_logits": True},
        "binary_logits",
    ),
    ("MeanSquaredError", {}, "regression"),
    ("MeanAbsoluteError", {}, "regression"),
    ("MeanAbsolutePercentageError", {}, "regression"),
    ("MeanSquaredLogarithmicError", {}, "positive"),
    ("Huber", {"delta": 0.7}, "regression"),
    ("LogCosh", {}, "regression"),
    ("KLDivergence", {}, "onehot"),
    ("Poisson", {}, "positive"),
    ("Hinge", {}, "signed"),
    ("SquaredHinge", {}, "binary_logits"),
    ("CategoricalHinge", {}, "onehot_logits"),
    ("CosineSimilarity", {"axis": -1}, "regression"),
]


@pytest.mark.parametrize(
    "class_name, kwargs, kind", LOSSES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(LOSSES)]
)
def test_loss_class_equals_keras(class_name, kwargs, kind):
    rng = np.random.default_rng(len(class_name))
    y_true, y_pred = _data(kind, rng)
    w = rng.uniform(0, 2, size=B).astype(np.float32)
    ours = getattr(fnn.losses, class_name)(**kwargs)
    theirs = getattr(keras.losses, class_name)(**kwargs)
    assert ours.name == theirs.name
    for sample_weight in (None, w):
        np.testing.assert_allclose(
            ours(y_true, y_pred, sample_weight=sample_weight),
            theirs(y_true, y_pred, sample_weight=sample_weight),
            rtol=2e-5,
            atol=1e-6,
        )
    for reduction in ("sum", "mean_with_sample_weight", None):
        ours = getattr(fnn.losses, class_name)(reduction=reduction, **kwargs)
        theirs = getattr(keras.losses, class_name)(reduction=reduction, **kwargs)
        if reduction is None and "ignore_class" in kwargs:
            continue  # Keras masks per position; fnn's call gives per-example values
        np.testing.assert_allclose(
            ours(y_true, y_pred, sample_weight=w),
            theirs(y_true, y_pred, sample_weight=w),
            rtol=2e-5,
            atol=1e-6,
            err_msg=str(reduction),
        )


def test_loss_subclass_written_the_keras_way():
    def body(self, y_true, y_pred):
        return ops.mean(ops.square(y_pred - y_true), axis=-1) + 0.1 * ops.mean(
            ops.abs(y_pred), axis=-1
        )

    Ours = type("PenalisedMSE", (fnn.losses.Loss,), {"call": body})
    Theirs = type("PenalisedMSE", (keras.losses.Loss,), {"call": body})
    y_true, y_pred = _data("regression", RNG)
    w = RNG.uniform(size=B).astype(np.float32)
    ours, theirs = Ours(name="pmse"), Theirs(name="pmse")
    np.testing.assert_allclose(ours(y_true, y_pred, w), theirs(y_true, y_pred, w), rtol=1e-5)
    assert Ours().name == Theirs().name == "penalised_mse"
    # The subclass trains through compile/fit: its loss is the logged loss.
    model = fnn.Sequential([fnn.layers.Dense(C)])
    model.compile(optax.sgd(0.0), loss=ours)
    hist = model.fit(RNG.normal(size=(B, 3)).astype(np.float32), y_true, batch_size=B, verbose=0)
    preds = np.asarray(model.predict(RNG.normal(size=(1, 3)).astype(np.float32), verbose=0))
    assert preds.shape == (1, C) and np.isfinite(hist.history["loss"][0])
    with pytest.raises(fnn.ConfigError, match=r"loss: expected a subclass of fnn.losses.Loss"):
        fnn.losses.Loss()(y_true, y_pred)
    with pytest.raises(fnn.ConfigError, match=r"huber_loss: expected reduction in"):
        fnn.losses.Huber(reduction="average")


# (class name, kwargs, data kind, fnn-only kwargs).
METRICS = [
    ("Precision", {}, "binary", {}),
    ("Precision", {"thresholds": [0.2, 0.5, 0.8]}, "binary", {}),
    ("Precision", {"class_id": 2}, "binary", {}),
    ("Precision", {"top_k": 2}, "binary", {}),
    ("Precision", {"top_k": 2, "class_id": 1, "thresholds": 0.3}, "binary", {}),
    ("Recall", {}, "binary", {}),
    ("Recall", {"thresholds": [0.3, 0.6]}, "binary", {}),
    ("Recall", {"class_id": 0}, "binary", {}),
    ("Recall", {"top_k": 3}, "onehot", {}),
    ("TruePositives", {}, "binary", {}),
    ("FalsePositives", {"thresholds": [0.25, 0.75]}, "binary", {}),
    ("TrueNegatives", {"thresholds": 0.4}, "binary", {}),
    ("FalseNegatives", {}, "binary_column", {}),
    ("AUC", {}, "binary", {}),
    ("AUC", {"curve": "PR"}, "binary", {}),
    ("AUC", {"num_thresholds": 37, "curve": "PR", "summation_method": "majoring"}, "binary", {}),
    ("AUC", {"thresholds": [0.1, 0.35, 0.5, 0.9]}, "binary", {}),
    ("AUC", {"multi_label": True}, "binary", {}),
    ("AUC", {"multi_label": True, "curve": "PR", "num_labels": C}, "binary", {}),
    ("AUC", {"multi_label": True, "label_weights": [1, 2, 0, 1, 3], "num_labels": C}, "binary", {}),
    ("AUC", {"from_logits": True}, "binary_logits", {}),
    ("MeanSquaredError", {}, "regression", {}),
    ("RootMeanSquaredError", {}, "regression", {}),
    ("MeanAbsoluteError", {}, "regression", {}),
    ("MeanAbsolutePercentageError", {}, "regression", {}),
    ("MeanSquaredLogarithmicError", {}, "positive", {}),
    ("LogCoshError", {}, "regression", {}),
    ("CosineSimilarity", {}, "regression", {}),
    ("BinaryCrossentropy", {"from_logits": True}, "binary_logits", {}),
    ("CategoricalCrossentropy", {}, "onehot", {}),
    ("SparseCategoricalCrossentropy", {"from_logits": True}, "sparse_logits", {}),
    ("KLDivergence", {}, "onehot", {}),
    ("Poisson", {}, "positive", {}),
    ("Hinge", {}, "signed", {}),
    ("BinaryAccuracy", {"threshold": 0.4}, "binary", {}),
    ("CategoricalAccuracy", {}, "onehot", {}),
    ("SparseCategoricalAccuracy", {}, "sparse", {}),
    ("TopKCategoricalAccuracy", {"k": 2}, "onehot", {}),
    ("SparseTopKCategoricalAccuracy", {"k": 3}, "sparse", {}),
    ("F1Score", {}, "onehot", {}),
    ("F1Score", {"average": "macro"}, "onehot", {}),
    ("F1Score", {"average": "micro", "threshold": 0.3}, "binary", {}),
    ("F1Score", {"average": "weighted"}, "onehot", {"num_classes": C}),
    ("FBetaScore", {"beta": 2.0, "average": "macro", "threshold": 0.4}, "binary", {}),
    ("FBetaScore", {"beta": 0.5}, "onehot", {}),
]


def _two_batches(metric, y_true, y_pred, w):
    half = B // 2
    metric.update_state(y_true[:half], y_pred[:half])
    metric.update_state(y_true[half:], y_pred[half:], sample_weight=w[half:])
    return np.asarray(metric.result())


# The pure accumulator is also run under jit for the first case of each class.
_FIRST = {c: i for i, (c, *_) in reversed(list(enumerate(METRICS)))}


@pytest.mark.parametrize(
    "index, class_name, kwargs, kind, extra",
    [(i, *case) for i, case in enumerate(METRICS)],
    ids=[f"{c}-{i}" for i, (c, *_) in enumerate(METRICS)],
)
def test_metric_class_equals_keras_over_two_batches(index, class_name, kwargs, kind, extra):
    rng = np.random.default_rng(len(class_name) + len(kwargs))
    y_true, y_pred = _data(kind, rng)
    w = rng.uniform(0, 2, size=B).astype(np.float32)
    ours = getattr(fnn.metrics, class_name)(**kwargs, **extra)
    theirs = getattr(keras.metrics, class_name)(**kwargs)
    assert ours.name == re.sub(r"_\d+$", "", theirs.name)  # Keras numbers repeated names
    expected = _two_batches(theirs, y_true, y_pred, w)
    np.testing.assert_allclose(
        _two_batches(ours, y_true, y_pred, w), expected, rtol=2e-5, atol=1e-6
    )
    # reset_state forgets; the pure accumulator under jit gives the same value.
    ours.reset_state()
    theirs.reset_state()
    np.testing.assert_allclose(ours.result(), theirs.result(), atol=1e-7)
    if _FIRST[class_name] != index:
        return
    pure = ours.build(y_pred.shape)
    update = jax.jit(pure.update)
    state = update(pure.init(), y_true[: B // 2], y_pred[: B // 2])
    state = update(state, y_true[B // 2 :], y_pred[B // 2 :], w[B // 2 :])
    np.testing.assert_allclose(pure.compute(state), expected, rtol=2e-5, atol=1e-6)


def test_mean_and_sum_take_values():
    values = RNG.normal(size=(4, 3)).astype(np.float32)
    w = RNG.uniform(size=4).astype(np.float32)
    for name in ("Mean", "Sum"):
        ours, theirs = getattr(fnn.metrics, name)(), getattr(keras.metrics, name)()
        for m in (ours, theirs):
            m.update_state(values[:2])
            m.update_state(values[2:], sample_weight=w[2:])
        np.testing.assert_allclose(ours.result(), theirs.result(), rtol=1e-5, err_msg=name)
        assert ours.name == theirs.name


# ------------------------------------------------------------------ user-defined metric


def _categorical_true_positives(base):
    """The custom metric of keras-io's training_with_built_in_methods guide, verbatim,
    on ``base`` (keras.metrics.Metric or fnn.metrics.Metric)."""

    class CategoricalTruePositives(base):
        def __init__(self, name="categorical_true_positives", **kwargs):
            super().__init__(name=name, **kwargs)
            self.true_positives = self.add_variable(shape=(), name="ctp", initializer="zeros")

        def update_state(self, y_true, y_pred, sample_weight=None):
            y_pred = ops.reshape(ops.argmax(y_pred, axis=1), (-1, 1))
            values = ops.cast(y_true, "int32") == ops.cast(y_pred, "int32")
            values = ops.cast(values, "float32")
            if sample_weight is not None:
                sample_weight = ops.cast(sample_weight, "float32")
                values = ops.multiply(values, sample_weight)
            self.true_positives.assign_add(ops.sum(values))

        def result(self):
            return self.true_positives

        def reset_state(self):
            # The state of the metric will be reset at the start of each epoch.
            self.true_positives.assign(0.0)

    return CategoricalTruePositives


def _binary_tp(base):
    """A two-variable metric (add_weight, assign_add, a ratio in result)."""

    class BinaryPrecision(base):
        def __init__(self, name="binary_precision", **kwargs):
            super().__init__(name=name, **kwargs)
            self.tp = self.add_weight(name="tp", initializer="zeros")
            self.pp = self.add_weight(name="pp", initializer="zeros")

        def update_state(self, y_true, y_pred, sample_weight=None):
            pred = ops.cast(ops.reshape(y_pred, (-1,)) > 0.5, "float32")
            true = ops.cast(ops.reshape(y_true, (-1,)), "float32")
            self.tp.assign_add(ops.sum(pred * true))
            self.pp.assign_add(ops.sum(pred))

        def result(self):
            return ops.divide_no_nan(self.tp, self.pp)

    return BinaryPrecision


def test_user_metric_subclass_equals_keras_eagerly():
    y = RNG.integers(0, C, size=(B, 1))
    p = _softmax(RNG.normal(size=(B, C)))
    w = RNG.uniform(size=(B, 1)).astype(np.float32)
    ours, theirs = _categorical_true_positives(fnn.metrics.Metric)(), None
    theirs = _categorical_true_positives(keras.metrics.Metric)()
    for m in (ours, theirs):
        m.update_state(y[:6], p[:6])
        m.update_state(y[6:], p[6:], sample_weight=w[6:])
    assert float(ours.result()) == pytest.approx(float(theirs.result()), rel=1e-6)
    assert [v.name for v in ours.variables] == ["ctp"]
    ours.reset_state()
    assert float(ours.result()) == 0.0
    yb = (RNG.uniform(size=B) < 0.5).astype(np.float32)
    ours, theirs = _binary_tp(fnn.metrics.Metric)(), _binary_tp(keras.metrics.Metric)()
    for m in (ours, theirs):
        m.update_state(yb, p[:, 0] * 2)
    assert float(ours.result()) == pytest.approx(float(theirs.result()), rel=1e-6)


def test_user_metric_subclass_in_compile_and_fit():
    """Frozen weights (lr 0): the epoch's metric is the metric of the model's predictions,
    computed by the same metric class on Keras's side."""
    x = RNG.normal(size=(40, 4)).astype(np.float32)
    y = RNG.integers(0, 3, size=(40, 1))
    yb = (RNG.uniform(size=40) < 0.5).astype(np.float32)
    model = fnn.Sequential([fnn.layers.Dense(3, activation="softmax")])
    ctp = _categorical_true_positives(fnn.metrics.Metric)()
    model.compile(optax.sgd(0.0), "sparse_categorical_crossentropy", metrics=[ctp, "accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    p = np.asarray(model.predict(x, verbose=0))
    reference = _categorical_true_positives(keras.metrics.Metric)()
    for start in range(0, 40, 16):
        reference.update_state(y[start : start + 16], p[start : start + 16])
    assert history.history["categorical_true_positives"] == pytest.approx(
        [float(reference.result())] * 2
    )
    # What model.metrics reads back: the user's instance holds the epoch's state, as in Keras.
    states = model.train_state.metric_states
    assert fnn.metrics.with_state(ctp, states[ctp.name]) is ctp
    assert float(ctp.result()) == pytest.approx(float(reference.result()))
    loss_tracker = fnn.metrics.with_state(fnn.metrics.Mean("loss"), states["loss"])
    assert float(loss_tracker.result()) == pytest.approx(history.history["loss"][-1], rel=1e-6)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # donates the old train state
    assert float(loss_tracker.result()) == pytest.approx(history.history["loss"][-1], rel=1e-6)
    evaluated = model.evaluate(x, y, batch_size=16, verbose=0)
    assert evaluated[1] == pytest.approx(float(reference.result()))
    # A ratio metric of two variables inside fit, against Keras's on the same predictions.
    model = fnn.Sequential([fnn.layers.Dense(1, activation="sigmoid")])
    model.compile(optax.sgd(0.0), "binary_crossentropy", metrics=[_binary_tp(fnn.metrics.Metric)()])
    history = model.fit(x, yb, batch_size=16, epochs=1, verbose=0)
    reference = _binary_tp(keras.metrics.Metric)()
    reference.update_state(yb, np.asarray(model.predict(x, verbose=0)))
    assert history.history["binary_precision"][0] == pytest.approx(float(reference.result()))


# ------------------------------------------------------------------ weighting semantics


def _numpy_precision(y, p, w=None):
    w = np.ones_like(y) if w is None else w
    pred = p > 0.5
    return float(np.sum(w * (pred & (y > 0.5))) / np.sum(w * pred))


def test_class_weight_weights_the_loss_not_the_reported_metrics():
    """Imbalanced data, class_weight {0: 1, 1: 20}, one batch per epoch: the second
    epoch's training precision is the unweighted precision of the predictions after the
    first epoch (Keras's rule), not the class-weighted one."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + 0.8 * rng.normal(size=64) > 1.1).astype(np.float32)
    cw = {0: 1.0, 1: 20.0}
    model = fnn.Sequential([fnn.layers.Dense(1, activation="sigmoid")])
    model.compile(optax.sgd(0.5), "binary_crossentropy", metrics=[fnn.metrics.Precision()])
    model.fit(x, y, batch_size=64, epochs=1, class_weight=cw, shuffle=False, verbose=0)
    p = np.asarray(model.predict(x, verbose=0))[:, 0]
    history = model.fit(x, y, batch_size=64, epochs=1, class_weight=cw, shuffle=False, verbose=0)
    w = np.where(y > 0.5, cw[1], cw[0])
    unweighted, weighted = _numpy_precision(y, p), _numpy_precision(y, p, w)
    assert abs(unweighted - weighted) > 0.05  # the test can tell the two apart
    assert history.history["precision"][0] == pytest.approx(unweighted, rel=1e-5)
    # The loss is class-weighted: Keras's BinaryCrossentropy with the same weights.
    expected_loss = keras.losses.BinaryCrossentropy()(y[:, None], p[:, None], sample_weight=w)
    assert history.history["loss"][0] == pytest.approx(float(expected_loss), rel=1e-5)


def test_weighted_metrics_get_the_sample_weights():
    """compile(weighted_metrics=...) as the resolver reads it: the same metric in both
    lists is reported twice, unweighted and as "weighted_<name>"."""
    x = RNG.normal(size=(32, 4)).astype(np.float32)
    y = (RNG.uniform(size=32) < 0.4).astype(np.float32)
    w = RNG.uniform(0, 3, size=32).astype(np.float32)
    config = {
        "loss": "binary_crossentropy",
        "loss_weights": None,
        "metrics": ["precision"],
        "weighted_metrics": ["precision", fnn.metrics.AUC(name="auc")],
    }
    loss, metrics = compile_utils.resolve(
        config, jax.ShapeDtypeStruct((32, 1), jnp.float32), y, "m"
    )
    assert [m.name for m in metrics] == ["precision", "weighted_precision", "auc"]
    assert [m.weighted for m in metrics] == [False, True, True]
    layer = fnn.layers.Dense(1, activation="sigmoid")
    ts = fnn.train.init_train_state(layer, optax.sgd(0.0), jax.random.key(0), x, metrics=metrics)
    step = fnn.train.make_train_step(layer, loss, optax.sgd(0.0), metrics)
    ts, _ = step(ts, (x, y, w))
    got = fnn.train.compute_metrics(ts.metric_states, metrics)
    p = np.asarray(layer.apply(ts.params, ts.state, x)[0])[:, 0]
    assert float(got["precision"]) == pytest.approx(_numpy_precision(y, p), rel=1e-5)
    assert float(got["weighted_precision"]) == pytest.approx(_numpy_precision(y, p, w), rel=1e-5)
    reference = keras.metrics.AUC()
    reference.update_state(y, p, sample_weight=w)
    assert float(got["auc"]) == pytest.approx(float(reference.result()), rel=1e-5)


def test_positional_arguments_follow_keras():
    y_true, y_pred = _data("binary", np.random.default_rng(3))
    for name, args in [
        ("BinaryAccuracy", ("ba", None, 0.3)),
        ("Precision", (0.3, None, 1, "p")),
        ("Recall", ([0.2, 0.7], 2)),
        ("AUC", (50, "PR", "interpolation", "pr")),
        ("F1Score", ("macro", 0.4, "f")),
        ("TruePositives", ([0.1, 0.9], "tp")),
    ]:
        ours, theirs = getattr(fnn.metrics, name)(*args), getattr(keras.metrics, name)(*args)
        ours.update_state(y_true, y_pred)
        theirs.update_state(y_true, y_pred)
        np.testing.assert_allclose(ours.result(), theirs.result(), rtol=2e-5, err_msg=name)
        assert ours.name == re.sub(r"_\d+$", "", theirs.name)
    labels, logits = _data("sparse_logits", np.random.default_rng(4))
    for name, args, (t, p) in [
        ("SparseCategoricalCrossentropy", (True, 2, "sum"), (labels, logits)),
        ("Huber", (0.5, "sum", "h"), (y_true, y_pred)),
        ("BinaryCrossentropy", (False, 0.1, -1, "mean_with_sample_weight"), (y_true, y_pred)),
    ]:
        ours, theirs = getattr(fnn.losses, name)(*args), getattr(keras.losses, name)(*args)
        np.testing.assert_allclose(ours(t, p), theirs(t, p), rtol=2e-5, err_msg=name)


def test_config_round_trip_and_losses_as_metrics():
    for loss in (
        fnn.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=1, name="ce"),
        fnn.losses.BinaryFocalCrossentropy(gamma=3.0, reduction="sum"),
        fnn.losses.Huber(0.3),
        fnn.losses.MeanSquaredError(name="m"),
    ):
        again = type(loss).from_config(loss.get_config())
        assert again.get_config() == loss.get_config()
        assert fnn.losses.get(fnn.losses.serialize(loss)).get_config() == loss.get_config()
    # A loss object in metrics=[...] is the mean of its per-example values, as in Keras.
    y_true, y_pred = _data("regression", RNG)
    ours = fnn.metrics.get(fnn.losses.MeanAbsoluteError(name="l1"))
    theirs = keras.metrics.MeanMetricWrapper(keras.losses.mean_absolute_error, name="l1")
    for m in (ours, theirs):
        m.update_state(y_true, y_pred)
    assert ours.name == "l1"
    np.testing.assert_allclose(ours.result(), theirs.result(), rtol=1e-6)
