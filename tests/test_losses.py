"""Losses against numpy formulas and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import fnn
from fnn import losses

RNG = np.random.default_rng(0)
EPS = 1e-7


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_sparse_ce(labels, logits):
    logp = np.log(_softmax(logits.astype(np.float64)))
    return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


@pytest.mark.parametrize("jit", [False, True])
def test_sparse_ce_from_logits_matches_numpy_and_optax(jit):
    logits = RNG.normal(size=(6, 5)).astype(np.float32) * 3
    labels = RNG.integers(0, 5, size=6)
    fn = losses.SparseCategoricalCrossentropy(from_logits=True)
    call = jax.jit(fn.call) if jit else fn.call
    got = call(labels, logits)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, _np_sparse_ce(labels, logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        got, optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-5
    )


def test_sparse_ce_on_probabilities_clips_like_keras():
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], np.float32)
    labels = np.array([1, 2])
    expected = -np.log(np.clip(probs[[0, 1], labels], EPS, 1 - EPS))
    np.testing.assert_allclose(
        losses.get("sparse_categorical_crossentropy").call(labels, probs), expected, rtol=1e-5
    )


def test_sparse_ce_labels_with_trailing_one_and_extra_axes():
    logits = RNG.normal(size=(3, 4, 6)).astype(np.float32)
    labels = RNG.integers(0, 6, size=(3, 4))
    fn = losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(
        fn.call(labels, logits), _np_sparse_ce(labels, logits).mean(1), rtol=1e-5
    )
    np.testing.assert_allclose(
        fn.call(labels[:, 0:1], logits[:, 0]), _np_sparse_ce(labels[:, 0], logits[:, 0]), rtol=1e-5
    )


def test_sparse_ce_ignore_class_matches_keras_mean_over_valid_positions():
    logits = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    labels = RNG.integers(0, 5, size=(3, 4))
    labels[0, :2] = -1
    labels[2, :] = -1
    fn = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    per = np.where(labels >= 0, _np_sparse_ce(np.maximum(labels, 0), logits), 0)
    expected_scalar = per.sum() / (labels >= 0).sum()  # Keras: mean over valid positions
    got = losses.reduce(fn.call(labels, logits), mask=fn.mask(labels))
    np.testing.assert_allclose(got, expected_scalar, rtol=1e-5)


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_categorical_ce_with_label_smoothing_matches_optax(ls):
    logits = RNG.normal(size=(4, 7)).astype(np.float32)
    onehot = np.eye(7, dtype=np.float32)[RNG.integers(0, 7, size=4)]
    got = losses.CategoricalCrossentropy(from_logits=True, label_smoothing=ls).call(onehot, logits)
    smooth = optax.smooth_labels(onehot, ls) if ls else onehot
    np.testing.assert_allclose(got, optax.softmax_cross_entropy(logits, smooth), rtol=1e-5)
    sparse = losses.SparseCategoricalCrossentropy(from_logits=True, label_smoothing=ls)
    np.testing.assert_allclose(sparse.call(onehot.argmax(-1), logits), got, rtol=1e-5)


def test_categorical_ce_on_probabilities_renormalises_and_clips():
    p = RNG.uniform(0.01, 1, size=(4, 3)).astype(np.float32)
    t = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    q = p / p.sum(-1, keepdims=True)
    expected = -(t * np.log(np.clip(q, EPS, 1 - EPS))).sum(-1)
    np.testing.assert_allclose(
        losses.get("categorical_crossentropy").call(t, p), expected, rtol=1e-5
    )


@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_binary_ce_logits_and_probabilities(ls):
    z = RNG.normal(size=(5, 3)).astype(np.float32) * 4
    t = RNG.integers(0, 2, size=(5, 3)).astype(np.float32)
    ts = t * (1 - ls) + 0.5 * ls
    expected = optax.sigmoid_binary_cross_entropy(z, ts).mean(-1)
    got = losses.BinaryCrossentropy(from_logits=True, label_smoothing=ls).call(t, z)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    pc = np.clip(p, EPS, 1 - EPS)
    expected_p = -(ts * np.log(pc) + (1 - ts) * np.log(1 - pc)).mean(-1)
    got_p = losses.BinaryCrossentropy(label_smoothing=ls).call(t, p.astype(np.float32))
    np.testing.assert_allclose(got_p, expected_p, rtol=1e-4)


def test_binary_ce_squeezes_trailing_one_and_rank_one_is_per_example():
    z = RNG.normal(size=(4, 1)).astype(np.float32)
    t = np.array([0, 1, 1, 0], np.float32)
    fn = losses.get("binary_crossentropy")
    p = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(fn.call(t, p), fn.call(t[:, None], p), rtol=1e-6)
    assert fn.call(t, p[:, 0]).shape == (4,)


def test_regression_losses_match_numpy():
    t = RNG.normal(size=(4, 3)).astype(np.float32)
    p = RNG.normal(size=(4, 3)).astype(np.float32) * 2
    e = p - t
    cases = {
        "mse": (e**2).mean(-1),
        "mae": np.abs(e).mean(-1),
        "huber": np.where(np.abs(e) <= 1, 0.5 * e**2, np.abs(e) - 0.5).mean(-1),
        "log_cosh": np.log(np.cosh(e)).mean(-1),
        "mape": (100 * np.abs(e / np.maximum(np.abs(t), EPS))).mean(-1),
        "cosine_similarity": -(
            (t / np.linalg.norm(t, axis=-1, keepdims=True))
            * (p / np.linalg.norm(p, axis=-1, keepdims=True))
        ).sum(-1),
        "hinge": np.maximum(1 - np.where(t == 0, -1, t) * p, 0).mean(-1),
    }
    for name, expected in cases.items():
        np.testing.assert_allclose(
            losses.get(name).call(t, p), expected, rtol=2e-5, atol=1e-5, err_msg=name
        )
    np.testing.assert_allclose(
        losses.MeanSquaredError().call(t, p), optax.l2_loss(p, t).mean(-1) * 2, rtol=1e-5
    )
    np.testing.assert_allclose(
        losses.Huber(delta=2.0).call(t, p), optax.huber_loss(p, t, delta=2.0).mean(-1), rtol=1e-5
    )


def test_kld_and_poisson_and_msle_match_numpy():
    t = _softmax(RNG.normal(size=(3, 4)))
    p = _softmax(RNG.normal(size=(3, 4)))
    t[0, 0] = 0.0
    tc, pc = np.clip(t, EPS, 1), np.clip(p, EPS, 1)
    np.testing.assert_allclose(
        losses.get("kld").call(t, p), (tc * np.log(tc / pc)).sum(-1), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        losses.get("poisson").call(t, p), (p - t * np.log(p + EPS)).mean(-1), rtol=1e-5
    )
    expected = ((np.log(p + 1) - np.log(t + 1)) ** 2).mean(-1)
    np.testing.assert_allclose(losses.get("msle").call(t, p), expected, rtol=1e-4, atol=1e-7)


def test_losses_average_over_extra_axes():
    t = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    p = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(losses.get("mse").call(t, p), ((p - t) ** 2).mean((1, 2)), rtol=1e-5)


def test_reduce_follows_sum_over_batch_size():
    per = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    w = np.array([1.0, 0.0, 2.0, 1.0], np.float32)
    assert float(losses.reduce(per)) == pytest.approx(2.5)
    # Keras divides by the batch size, not by the sum of the weights.
    assert float(losses.reduce(per, sample_weight=w)) == pytest.approx((1 + 6 + 4) / 4)
    m = np.array([1, 1, 0, 0], np.float32)
    assert float(losses.reduce(per, mask=m)) == pytest.approx(1.5)
    assert float(losses.reduce(per, sample_weight=w, mask=m)) == pytest.approx(1 / 2)
    assert float(losses.reduce(per, mask=np.zeros(4))) == 0.0


def test_stable_for_extreme_logits_in_float32_and_bfloat16():
    logits = jnp.array([[1000.0, -1000.0], [-1000.0, 1000.0]])
    labels = jnp.array([0, 0])
    for dtype in (jnp.float32, jnp.bfloat16):
        got = losses.SparseCategoricalCrossentropy(from_logits=True).call(
            labels, logits.astype(dtype)
        )
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, [0.0, 2000.0], rtol=1e-3)
        b = losses.BinaryCrossentropy(from_logits=True).call(
            jnp.array([1.0, 0.0]), jnp.array([-500.0, -500.0], dtype)
        )
        np.testing.assert_allclose(b, [500.0, 0.0], rtol=1e-3)


def test_bfloat16_close_to_float32():
    logits = RNG.normal(size=(16, 10)).astype(np.float32)
    labels = RNG.integers(0, 10, size=16)
    fn = losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(
        fn.call(labels, jnp.asarray(logits, jnp.bfloat16)),
        fn.call(labels, logits),
        rtol=2e-2,
        atol=2e-2,
    )


def test_gradients_in_float64():
    with jax.enable_x64(True):
        z = jnp.asarray(RNG.normal(size=(3, 4)))
        labels = jnp.array([0, 3, 1])
        for fn in (
            lambda z: losses.SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
                labels, z
            ),
            lambda z: losses.BinaryCrossentropy(from_logits=True)(jnp.ones_like(z), z),
            lambda z: losses.Huber()(jnp.zeros_like(z), z),
            lambda z: losses.CosineSimilarity()(jnp.ones_like(z), z),
        ):
            check_grads(jax.jit(fn), (z,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_vmap_over_examples_equals_batch():
    logits = RNG.normal(size=(5, 3)).astype(np.float32)
    labels = RNG.integers(0, 3, size=5)
    fn = losses.SparseCategoricalCrossentropy(from_logits=True)
    per = jax.vmap(lambda t, p: fn.call(t[None], p[None])[0])(labels, logits)
    np.testing.assert_allclose(per, fn.call(labels, logits), rtol=1e-6)


def test_get_names_callables_and_serialization():
    assert losses.get("mse").name == "mean_squared_error"
    assert losses.get("MeanSquaredError").name == "mean_squared_error"
    assert losses.get("kld").name == "kl_divergence"
    assert losses.get("huber").name == "huber_loss"
    custom = losses.get(lambda t, p: jnp.abs(t - p))
    assert custom.name == "<lambda>"
    ce = losses.SparseCategoricalCrossentropy(from_logits=True, name="ce")
    config = losses.serialize(ce)
    assert config == {
        "class_name": "SparseCategoricalCrossentropy",
        "config": {"from_logits": True, "label_smoothing": 0.0, "name": "ce"},
    }
    again = losses.get(config)
    assert again.name == "ce" and again.config["from_logits"] is True


def test_errors():
    with pytest.raises(
        fnn.ConfigError,
        match=r"unknown loss function 'mean_sqared_error'\. Did you mean 'mean_squared_error'\? Valid loss functions: binary_crossentropy, .*sparse_categorical_crossentropy, squared_hinge\.",
    ):
        losses.get("mean_sqared_error")
    fn = losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(
        fnn.ConfigError,
        match=r"sparse_categorical_crossentropy: expected labels in \[0, 3\) for predictions with 3 classes, got label 3",
    ):
        fn.call(np.array([0, 3]), np.zeros((2, 3)))
    with pytest.raises(fnn.ConfigError, match=r"got label -1"):
        fn.call(np.array([0, -1]), np.zeros((2, 3)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"sparse_categorical_crossentropy: expected integer labels of shape \(2,\) for predictions of shape \(2, 3\) \[batch, \.\.\., classes\], got labels of shape \(2, 3\)\. One-hot labels need 'categorical_crossentropy'",
    ):
        fn.call(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"categorical_crossentropy: expected one-hot targets of the same shape as the predictions \(2, 3\), got shape \(2,\)\. Integer labels need 'sparse_categorical_crossentropy'",
    ):
        losses.get("categorical_crossentropy").call(np.zeros(2), np.zeros((2, 3)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"mean_squared_error: expected targets of the same shape as the predictions \(4, 2\), got shape \(4, 3\)",
    ):
        losses.get("mse").call(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(fnn.ConfigError, match=r"expected label_smoothing in \[0, 1\]"):
        losses.BinaryCrossentropy(label_smoothing=2.0)
    with pytest.raises(fnn.ShapeError, match=r"reduce: expected sample_weight of shape \(3,\)"):
        losses.reduce(jnp.ones(3), sample_weight=jnp.ones(4))
