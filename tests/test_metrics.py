"""Metrics against scikit-learn, streamed over uneven batches."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

import fnn
from fnn import metrics

RNG = np.random.default_rng(0)
SPLITS = [0, 1, 37, 100]  # uneven batches, one of size 1


def _stream(metric, y_true, y_pred, sample_weight=None, jit=False):
    update = jax.jit(metric.update) if jit else metric.update
    state = metric.init()
    for a, b in itertools.pairwise(SPLITS):
        sw = None if sample_weight is None else sample_weight[a:b]
        state = update(state, y_true[a:b], y_pred[a:b], sw)
    return np.asarray(metric.compute(state))


def _one_shot(metric, y_true, y_pred, sample_weight=None):
    return np.asarray(metric.compute(metric.update(metric.init(), y_true, y_pred, sample_weight)))


def _probs(n=100, c=4, seed=0):
    z = np.random.default_rng(seed).normal(size=(n, c)) * 2
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _cases(c=4):
    """(name, labels, scores): random, one class absent, all correct, all wrong."""
    p = _probs(c=c)
    y = RNG.integers(0, c, size=100)
    absent = np.where(y == 1, 0, y)
    correct = p.argmax(-1)
    wrong = (p.argmax(-1) + 1) % c
    return [("random", y, p), ("absent", absent, p), ("correct", correct, p), ("wrong", wrong, p)]


@pytest.mark.parametrize("jit", [False, True])
def test_sparse_and_categorical_accuracy_match_sklearn(jit):
    for name, y, p in _cases():
        expected = skm.accuracy_score(y, p.argmax(-1))
        got = _stream(metrics.SparseCategoricalAccuracy(), y, p, jit=jit)
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)
        onehot = np.eye(4, dtype=np.float32)[y]
        np.testing.assert_allclose(
            _stream(metrics.CategoricalAccuracy(), onehot, p), expected, rtol=1e-6
        )


def test_weighted_accuracy_matches_sklearn():
    y, p = _cases()[0][1:]
    w = RNG.uniform(size=100).astype(np.float32)
    expected = skm.accuracy_score(y, p.argmax(-1), sample_weight=w)
    np.testing.assert_allclose(
        _stream(metrics.SparseCategoricalAccuracy(), y, p, w), expected, rtol=1e-5
    )


def test_binary_accuracy_threshold_and_logits():
    p = RNG.uniform(size=(100, 1)).astype(np.float32)
    y = RNG.integers(0, 2, size=(100, 1)).astype(np.float32)
    expected = skm.accuracy_score(y[:, 0], p[:, 0] > 0.5)
    np.testing.assert_allclose(_stream(metrics.BinaryAccuracy(), y, p), expected, rtol=1e-6)
    np.testing.assert_allclose(_stream(metrics.BinaryAccuracy(), y[:, 0], p), expected, rtol=1e-6)
    logits = np.log(p / (1 - p))
    np.testing.assert_allclose(
        _stream(metrics.BinaryAccuracy(from_logits=True), y, logits), expected, rtol=1e-6
    )
    exp7 = skm.accuracy_score(y[:, 0], p[:, 0] > 0.7)
    np.testing.assert_allclose(
        _stream(metrics.BinaryAccuracy(threshold=0.7), y, p), exp7, rtol=1e-6
    )


def test_top_k_accuracy_matches_sklearn():
    y, p = _cases()[0][1:]
    for k in (1, 2, 3):
        expected = skm.top_k_accuracy_score(y, p, k=k, labels=range(4))
        np.testing.assert_allclose(
            _stream(metrics.SparseTopKCategoricalAccuracy(k=k), y, p), expected, rtol=1e-6
        )
        onehot = np.eye(4, dtype=np.float32)[y]
        np.testing.assert_allclose(
            _stream(metrics.TopKCategoricalAccuracy(k=k), onehot, p), expected, rtol=1e-6
        )


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
def test_multiclass_precision_recall_f1_match_sklearn(average):
    for name, y, p in _cases():
        pred = p.argmax(-1)
        prec, rec, f1, _ = skm.precision_recall_fscore_support(
            y, pred, labels=range(4), average=average, zero_division=0
        )
        for cls, expected in ((metrics.Precision, prec), (metrics.Recall, rec)):
            got = _stream(cls(average=average, num_classes=4), y, p)
            np.testing.assert_allclose(
                got, expected, rtol=1e-5, atol=1e-7, err_msg=f"{name} {cls.__name__}"
            )
        got = _stream(metrics.F1Score(average=average, num_classes=4), y, p)
        np.testing.assert_allclose(got, f1, rtol=1e-5, atol=1e-7, err_msg=f"{name} f1")


def test_binary_precision_recall_f1_match_sklearn_with_weights():
    p = RNG.uniform(size=100).astype(np.float32)
    w = RNG.uniform(size=100).astype(np.float32)
    for name, y in [
        ("random", RNG.integers(0, 2, size=100)),
        ("no positives", np.zeros(100, int)),
        ("all correct", (p > 0.5).astype(int)),
        ("all wrong", (p <= 0.5).astype(int)),
    ]:
        pred = (p > 0.5).astype(int)
        prec, rec, f1, _ = skm.precision_recall_fscore_support(
            y, pred, average="binary", zero_division=0, sample_weight=w
        )
        yf = y.astype(np.float32)
        np.testing.assert_allclose(
            _stream(metrics.Precision(), yf, p, w), prec, rtol=1e-5, atol=1e-7, err_msg=name
        )
        np.testing.assert_allclose(
            _stream(metrics.Recall(), yf, p, w), rec, rtol=1e-5, atol=1e-7, err_msg=name
        )
        np.testing.assert_allclose(
            _stream(metrics.F1Score(average="binary"), yf, p, w),
            f1,
            rtol=1e-5,
            atol=1e-7,
            err_msg=name,
        )


def test_confusion_matrix_matches_sklearn():
    for name, y, p in _cases():
        w = RNG.uniform(size=100)
        expected = skm.confusion_matrix(y, p.argmax(-1), labels=range(4), sample_weight=w)
        got = _stream(metrics.ConfusionMatrix(4), y, p, w.astype(np.float32))
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=name)
    # Binary classifier with one probability per example.
    p1 = RNG.uniform(size=(100, 1)).astype(np.float32)
    y1 = RNG.integers(0, 2, size=100)
    got = _stream(metrics.ConfusionMatrix(2), y1, p1)
    np.testing.assert_array_equal(got, skm.confusion_matrix(y1, p1[:, 0] > 0.5))


def test_binary_auc_matches_sklearn_within_1e3():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, size=100)
        p = np.clip(rng.normal(0.5 + 0.2 * (y - 0.5), 0.2), 0, 1).astype(np.float32)
        w = rng.uniform(size=100).astype(np.float32)
        expected = skm.roc_auc_score(y, p, sample_weight=w)
        got = _stream(metrics.AUC(num_thresholds=8192), y.astype(np.float32), p, w)
        assert abs(got - expected) < 1e-3
        ap = skm.average_precision_score(y, p)
        pr = metrics.AUC(num_thresholds=8192, curve="PR", summation_method="majoring")
        assert abs(_stream(pr, y.astype(np.float32), p) - ap) < 1e-2
    # Logits, and a perfectly separated / perfectly wrong ranking.
    logits = np.log(p / (1 - p + 1e-9) + 1e-9).astype(np.float32)
    got = _stream(metrics.AUC(8192, from_logits=True), y.astype(np.float32), logits)
    assert abs(got - skm.roc_auc_score(y, p)) < 1e-3
    assert _stream(metrics.AUC(), y.astype(np.float32), y * 0.8 + 0.1) == pytest.approx(1.0)
    assert _stream(metrics.AUC(), y.astype(np.float32), 0.9 - y * 0.8) == pytest.approx(0.0)


@pytest.mark.parametrize("average", ["macro", "weighted"])
def test_one_vs_rest_auc_matches_sklearn(average):
    y, p = _cases()[0][1:]
    expected = skm.roc_auc_score(y, p, multi_class="ovr", average=average)
    auc = metrics.AUC(8192, multi_label=True, num_labels=4, average=average)
    assert abs(_stream(auc, y, p) - expected) < 1e-3
    onehot = np.eye(4, dtype=np.float32)[y]
    assert abs(_stream(auc, onehot, p) - expected) < 1e-3
    per_class = skm.roc_auc_score(onehot, p, average=None)
    np.testing.assert_allclose(
        _stream(metrics.AUC(8192, multi_label=True, num_labels=4, average=None), y, p),
        per_class,
        atol=1e-3,
    )


def test_mean_and_mean_metric_wrapper():
    values = RNG.normal(size=10).astype(np.float32)
    w = RNG.uniform(size=10).astype(np.float32)
    m = metrics.Mean()
    s = m.update(m.init(), values[:3], w[:3])
    s = m.update(s, values[3:], w[3:])
    np.testing.assert_allclose(m.compute(s), np.average(values, weights=w), rtol=1e-6)
    assert float(m.compute(m.init())) == 0.0
    mse = metrics.get("mse")
    t, p = (
        RNG.normal(size=(100, 3)).astype(np.float32),
        RNG.normal(size=(100, 3)).astype(np.float32),
    )
    np.testing.assert_allclose(_stream(mse, t, p), skm.mean_squared_error(t, p), rtol=1e-5)


def test_streaming_equals_one_shot_and_states_merge_by_sum():
    y, p = _cases()[0][1:]
    for metric in (
        metrics.F1Score(average="macro", num_classes=4),
        metrics.AUC(num_thresholds=256, multi_label=True, num_labels=4),
    ):
        np.testing.assert_allclose(_stream(metric, y, p), _one_shot(metric, y, p), rtol=1e-5)
        a = metric.update(metric.init(), y[:40], p[:40])
        b = metric.update(metric.init(), y[40:], p[40:])
        np.testing.assert_allclose(
            metric.compute(metrics.merge(a, b)), _one_shot(metric, y, p), rtol=1e-5
        )


def test_psum_merges_states_across_devices():
    y, p = _cases()[0][1:]
    metric = metrics.F1Score(average="macro", num_classes=4)

    def per_device(y, p):
        return jax.lax.psum(metric.update(metric.init(), y, p), "d")

    states = jax.pmap(per_device, axis_name="d", devices=jax.devices()[:4])(
        y.reshape(4, 25), p.reshape(4, 25, 4)
    )
    np.testing.assert_allclose(
        metric.compute(jax.tree.map(lambda s: s[0], states)), _one_shot(metric, y, p), rtol=1e-6
    )


def test_get_resolves_accuracy_from_the_loss_like_keras():
    from_loss = {
        "binary_crossentropy": "binary_accuracy",
        "categorical_crossentropy": "categorical_accuracy",
        "sparse_categorical_crossentropy": "sparse_categorical_accuracy",
        fnn.losses.SparseCategoricalCrossentropy(from_logits=True): "sparse_categorical_accuracy",
    }
    y, p = _cases()[0][1:]
    for loss, kind in from_loss.items():
        m = metrics.get("acc", loss=loss)
        assert m.name == "acc"
        assert m.update.__qualname__ == metrics.get(kind).update.__qualname__
    sparse = metrics.get("accuracy", loss="sparse_categorical_crossentropy")
    np.testing.assert_allclose(_stream(sparse, y, p), skm.accuracy_score(y, p.argmax(-1)))
    binary = metrics.get("accuracy", loss=fnn.losses.BinaryCrossentropy(from_logits=True))
    assert binary.config["from_logits"] is True
    # Keras 3's shape rule without a cross-entropy loss.
    assert metrics.get("accuracy", y_true_shape=(8,), y_pred_shape=(8, 4)).config == {}
    assert (
        metrics.get("accuracy", y_true_shape=(8, 1), y_pred_shape=(8, 1)).config["threshold"] == 0.5
    )
    macro = metrics.get("f1_score", loss="sparse_categorical_crossentropy", num_classes=4)
    assert macro.config["average"] == "macro"
    auc = metrics.get("auc", loss="sparse_categorical_crossentropy", num_classes=4)
    expected_auc = skm.roc_auc_score(y, p, multi_class="ovr")
    assert abs(_stream(auc, y, p) - expected_auc) < 1e-3
    ce = metrics.get("crossentropy", loss="sparse_categorical_crossentropy")
    expected = np.mean(-np.log(p[np.arange(100), y]))
    np.testing.assert_allclose(_stream(ce, y, p), expected, rtol=1e-5)


def _sk_report(*args, **kwargs):
    # sklearn prints the support as a float ("29.0") when some class has no true
    # positive; fnn always prints counts as ints, at the same width.
    text = skm.classification_report(*args, zero_division=0, **kwargs)
    return re.sub(r"(\s*)(\d+)\.0$", lambda m: f"{m.group(1)}  {m.group(2)}", text, flags=re.M)


def test_classification_report_matches_sklearn():
    for name, y, p in _cases():
        pred = p.argmax(-1)
        assert metrics.classification_report(y, pred) == _sk_report(y, pred), name
        assert metrics.classification_report(y, p, digits=4) == _sk_report(y, pred, digits=4)
    names = ["cat", "dog", "bird", "fish"]
    y, p = _cases()[0][1:]
    report = metrics.classification_report(y, p, target_names=names)
    assert report == _sk_report(y, p.argmax(-1), target_names=names)
    report = metrics.classification_report(y, p, labels=[0, 2])
    assert report == _sk_report(y, p.argmax(-1), labels=[0, 2])


def test_errors():
    with pytest.raises(
        fnn.ConfigError,
        match=r"unknown metric 'accuarcy'\. Did you mean 'accuracy'\? Valid metrics: acc, accuracy, auc, ",
    ):
        metrics.get("accuarcy")
    with pytest.raises(
        fnn.ConfigError, match=r"precision: expected num_classes to be an int >= 2, got None"
    ):
        metrics.Precision(average="macro")
    with pytest.raises(fnn.ConfigError, match=r"metric 'confusion_matrix' needs num_classes"):
        metrics.get("confusion_matrix")
    with pytest.raises(
        fnn.ConfigError,
        match=r"sparse_categorical_accuracy: expected labels in \[0, 4\) for predictions with 4 classes, got label 7",
    ):
        metrics.SparseCategoricalAccuracy().update(
            metrics.SparseCategoricalAccuracy().init(), np.array([7]), np.zeros((1, 4))
        )
    with pytest.raises(
        fnn.ShapeError,
        match=r"categorical_accuracy: expected one-hot targets of the same shape as the predictions \(2, 4\), got shape \(2,\)",
    ):
        m = metrics.CategoricalAccuracy()
        m.update(m.init(), np.zeros(2), np.zeros((2, 4)))
    with pytest.raises(fnn.ConfigError, match=r"duplicate metric names \['acc'\]"):
        metrics.get_all(["acc", "acc"])
    with pytest.raises(fnn.ConfigError, match=r"auc: expected num_labels \(its state has one"):
        metrics.AUC(multi_label=True).init()
    with pytest.raises(
        fnn.ShapeError,
        match=r"binary_accuracy: expected sample_weight of shape \(3,\) \(one per example\), got shape \(4,\)",
    ):
        m = metrics.BinaryAccuracy()
        m.update(m.init(), np.zeros(3), np.zeros(3), np.ones(4))


def test_metric_states_are_jit_and_scan_friendly():
    y, p = _cases()[0][1:]
    metric = metrics.AUC(multi_label=True, num_labels=4)

    def body(state, batch):
        return metric.update(state, *batch), None

    state, _ = jax.lax.scan(
        body, metric.init(), (y.reshape(4, 25), jnp.asarray(p).reshape(4, 25, 4))
    )
    np.testing.assert_allclose(metric.compute(state), _one_shot(metric, y, p), rtol=1e-6)
