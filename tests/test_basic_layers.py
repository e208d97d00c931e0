"""First layers: Dense, Activation, Flatten, Reshape, Dropout, initializers, activations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.layers import Activation, Dense, Dropout, Flatten, Reshape


def _apply(layer, x, **kwargs):
    params, state = layer.init(jax.random.key(0), x)
    return params, layer.apply(params, state, x, **kwargs)[0]


@pytest.mark.parametrize("jit", [False, True])
def test_dense_matches_numpy_on_any_rank(jit):
    layer = Dense(5, activation="relu")
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    params, state = layer.init(jax.random.key(0), x)
    apply = jax.jit(layer.apply) if jit else layer.apply
    y, _ = apply(params, state, x)
    kernel, bias = np.asarray(params["kernel"]), np.asarray(params["bias"])
    expected = np.maximum(np.einsum("abi,io->abo", x, kernel) + bias, 0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert params["kernel"].shape == (4, 5)


def test_dense_without_bias():
    params, y = _apply(Dense(2, use_bias=False), jnp.ones((1, 3)))
    assert set(params) == {"kernel"}


def test_dense_width_mismatch_names_layer_and_shapes():
    layer = Dense(128, name="dense_1")
    params, state = layer.init(jax.random.key(0), jnp.ones((1, 784)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"dense_1: expected inputs with last dimension 784 \(kernel has shape \(784, 128\)\), "
        r"got inputs of shape \(32, 28, 28\)\. Did you forget a Flatten\(\)",
    ):
        layer.apply(params, state, jnp.ones((32, 28, 28)))


def test_dense_rank_zero_and_bad_units():
    with pytest.raises(fnn.ShapeError, match=r"dense: expected inputs of rank >= 1"):
        Dense(2).init(jax.random.key(0), jnp.ones(()))
    with pytest.raises(fnn.ConfigError, match="dense: expected units to be a positive int"):
        Dense(0)


def test_flatten_and_reshape():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    _, y = _apply(Flatten(), x)
    np.testing.assert_array_equal(y, np.arange(24.0).reshape(2, 12))
    _, y = _apply(Reshape((4, -1)), x)
    assert y.shape == (2, 4, 3)
    with pytest.raises(
        fnn.ShapeError, match=r"reshape: cannot reshape inputs of shape \(2, 3, 4\)"
    ):
        _apply(Reshape((5,)), x)
    with pytest.raises(fnn.ConfigError, match="at most one -1"):
        Reshape((-1, -1))


def test_dropout_keeps_expected_fraction_and_rescales():
    rate = 0.3
    x = jnp.ones((200_000,))
    y, _ = Dropout(rate).apply({}, {}, x, rng=jax.random.key(0), train=True)
    y = np.asarray(y)
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 0.005  # ~5 sigma for n = 200k
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.01


def test_dropout_identity_in_eval_and_errors():
    x = jnp.arange(5.0)
    y, _ = Dropout(0.5).apply({}, {}, x, train=False)
    np.testing.assert_array_equal(y, x)
    for rate in (-0.1, 1.0, 1.5):
        with pytest.raises(fnn.ConfigError, match=r"dropout: expected rate in \[0, 1\)"):
            Dropout(rate)
    with pytest.raises(fnn.ConfigError, match="needs a PRNG key"):
        Dropout(0.5).apply({}, {}, x, train=True)


def test_dropout_noise_shape_broadcasts_mask():
    y, _ = Dropout(0.5, noise_shape=(None, 1)).apply(
        {}, {}, jnp.ones((64, 8)), rng=jax.random.key(0), train=True
    )
    rows = np.asarray(y)
    assert all(len(set(row.tolist())) == 1 for row in rows)


ACTIVATION_REFERENCES = {
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "linear": lambda x: x,
}


@pytest.mark.parametrize("name", sorted(ACTIVATION_REFERENCES))
def test_activations_match_formulas(name):
    x = np.linspace(-3, 3, 13).reshape(1, 13).astype(np.float32)
    _, y = _apply(Activation(name), jnp.asarray(x))
    np.testing.assert_allclose(y, ACTIVATION_REFERENCES[name](x), rtol=1e-5, atol=1e-6)


def test_unknown_names_list_valid_ones():
    with pytest.raises(fnn.ConfigError, match=r"unknown activation 'rleu'\. Did you mean 'relu'\?"):
        Dense(2, activation="rleu")
    with pytest.raises(fnn.ConfigError, match=r"unknown initializer 'glorot'.*Valid initializers"):
        Dense(2, kernel_initializer="glorot")


@pytest.mark.parametrize(
    "name,expected_std",
    [
        ("glorot_uniform", np.sqrt(2 / (300 + 200))),
        ("glorot_normal", np.sqrt(2 / (300 + 200))),
        ("he_uniform", np.sqrt(2 / 300)),
        ("he_normal", np.sqrt(2 / 300)),
        ("lecun_normal", np.sqrt(1 / 300)),
        ("lecun_uniform", np.sqrt(1 / 300)),
    ],
)
def test_variance_scaling_initializers_have_keras_variance(name, expected_std):
    w = fnn.initializers.get(name)(jax.random.key(0), (300, 200), jnp.float32)
    assert abs(float(jnp.std(w)) / expected_std - 1) < 0.02


def test_conv_kernel_fan_in_uses_receptive_field():
    w = fnn.initializers.get("he_normal")(jax.random.key(0), (3, 3, 16, 32), jnp.float32)
    assert abs(float(jnp.std(w)) / np.sqrt(2 / (9 * 16)) - 1) < 0.03


def test_simple_initializers():
    key, shape = jax.random.key(0), (64, 64)
    assert float(fnn.initializers.get("zeros")(key, shape).sum()) == 0
    assert float(fnn.initializers.get("ones")(key, shape).sum()) == 64 * 64
    np.testing.assert_allclose(fnn.initializers.constant(0.5)(key, (3,)), [0.5] * 3)
    q = fnn.initializers.get("orthogonal")(key, shape)
    np.testing.assert_allclose(q.T @ q, np.eye(64), atol=1e-4)
    t = fnn.initializers.get("truncated_normal")(key, (10_000,))
    assert float(jnp.max(jnp.abs(t))) <= 2 * 0.05 + 1e-6


def test_check_grads_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (3, 4), jnp.float64)
        for layer in (Dense(3, activation="tanh"), Activation("gelu"), Flatten(), Reshape((2, 2))):
            params, state = layer.init(jax.random.key(1), x)
            if params:
                assert params["kernel"].dtype == jnp.float64

            def f(p, x, layer=layer, state=state):
                return layer.apply(p, state, x)[0]

            check_grads(f, (params, x), order=2, modes=["rev", "fwd"], atol=1e-6, rtol=1e-6)


def test_vector_initializers_use_keras_fans():
    # Keras: a vector of length n has fan_in = fan_out = n.
    n = 10_000
    w = fnn.initializers.get("glorot_uniform")(jax.random.key(0), (n,), jnp.float32)
    limit = np.sqrt(6 / (n + n))
    assert float(jnp.max(jnp.abs(w))) <= limit and float(jnp.max(jnp.abs(w))) > 0.9 * limit
    assert fnn.initializers.glorot_uniform.__name__ == "glorot_uniform"
    assert "fan_avg" in fnn.initializers.glorot_uniform.__doc__
