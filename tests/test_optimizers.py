"""Optimizers by Keras name against Keras's update rules written in numpy."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import optimizers

W0 = np.array([1.0, -2.0, 0.5], np.float32)


def _grads(w, t):
    # A fixed, step-dependent gradient field (so momentum terms matter).
    return np.asarray(w) * (1.0 + 0.1 * t) + np.array([0.3, -0.1, 0.2], np.float32)


def _run(opt, steps=4):
    params = {"w": jnp.asarray(W0)}
    state = opt.init(params)
    for t in range(steps):
        g = {"w": jnp.asarray(_grads(params["w"], t))}
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params["w"])


def _keras_reference(rule, steps=4, **hp):
    w = W0.astype(np.float64)
    slots = {}
    for t in range(steps):
        g = _grads(w, t).astype(np.float64)
        w = rule(w, g, t + 1, slots, **hp)
    return w


def _sgd(w, g, t, s, lr=0.01, momentum=0.0, nesterov=False, wd=0.0):
    w = w - lr * wd * w
    v = s.get("v", 0.0)
    v = momentum * v - lr * g
    s["v"] = v
    return w + (momentum * v - lr * g if nesterov else v)


def _rmsprop(w, g, t, s, lr=1e-3, rho=0.9, eps=1e-7):
    s["v"] = rho * s.get("v", 0.0) + (1 - rho) * g**2
    return w - lr * g / np.sqrt(s["v"] + eps)


def _adagrad(w, g, t, s, lr=1e-3, init=0.1, eps=1e-7):
    s["a"] = s.get("a", init) + g**2
    return w - lr * g / np.sqrt(s["a"] + eps)


def _adam(w, g, t, s, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7, wd=0.0):
    w = w - lr * wd * w
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g**2
    m_hat, v_hat = s["m"] / (1 - b1**t), s["v"] / (1 - b2**t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps)


def _lion(w, g, t, s, lr=1e-3, b1=0.9, b2=0.99):
    m = s.get("m", 0.0)
    w = w - lr * np.sign(b1 * m + (1 - b1) * g)
    s["m"] = b2 * m + (1 - b2) * g
    return w


@pytest.mark.parametrize(
    "name, kwargs, rule, ref_kwargs",
    [
        ("sgd", {}, _sgd, {}),
        ("sgd", {"momentum": 0.9}, _sgd, {"momentum": 0.9}),
        ("sgd", {"momentum": 0.9, "nesterov": True}, _sgd, {"momentum": 0.9, "nesterov": True}),
        ("sgd", {"weight_decay": 0.1}, _sgd, {"wd": 0.1}),
        ("rmsprop", {}, _rmsprop, {}),
        ("rmsprop", {"rho": 0.8, "epsilon": 1e-3}, _rmsprop, {"rho": 0.8, "eps": 1e-3}),
        ("adagrad", {}, _adagrad, {}),
        ("adam", {"learning_rate": 0.1}, _adam, {"lr": 0.1}),
        ("adamw", {}, _adam, {"wd": 0.004}),
        ("adamw", {"weight_decay": 0.1}, _adam, {"wd": 0.1}),
        ("adam", {"weight_decay": 0.1}, _adam, {"wd": 0.1}),
        ("lion", {}, _lion, {}),
    ],
)
def test_keras_update_rules(name, kwargs, rule, ref_kwargs):
    np.testing.assert_allclose(
        _run(optimizers.get(name, **kwargs)),
        _keras_reference(rule, **ref_kwargs),
        rtol=1e-5,
        atol=1e-5,
    )


def test_default_learning_rates_are_keras():
    # One plain step: sgd moves by 0.01 * g; adam's first step by ~1e-3 * sign(g).
    g0 = _grads(W0, 0)
    np.testing.assert_allclose(_run(optimizers.get("sgd"), steps=1), W0 - 0.01 * g0, rtol=1e-6)
    np.testing.assert_allclose(
        _run(optimizers.get("adam"), steps=1), W0 - 1e-3 * np.sign(g0), rtol=1e-5
    )


@pytest.mark.parametrize("name", optimizers.names())
def test_every_name_builds_and_descends(name):
    opt = optimizers.get(name, learning_rate=0.05)
    params = {"w": jnp.asarray(W0)}
    state = opt.init(params)
    for _ in range(20):
        updates, state = opt.update({"w": params["w"]}, state, params)  # loss = |w|^2 / 2
        params = optax.apply_updates(params, updates)
    assert np.sum(np.square(params["w"])) < np.sum(np.square(W0))


def test_clipping():
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}
    params = jax_zeros = {"a": jnp.zeros(2), "b": jnp.zeros(2)}

    def first_update(opt):
        updates, _ = opt.update(g, opt.init(jax_zeros), params)
        return {k: np.asarray(v) for k, v in updates.items()}

    per_leaf = first_update(optimizers.get("sgd", learning_rate=1.0, clipnorm=1.0))
    np.testing.assert_allclose(per_leaf["a"], [-0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(per_leaf["b"], [-0.3, -0.4], rtol=1e-6)  # already inside
    glob = first_update(optimizers.get("sgd", learning_rate=1.0, global_clipnorm=1.0))
    norm = np.sqrt(25 + 0.25)
    np.testing.assert_allclose(glob["a"], -np.array([3.0, 4.0]) / norm, rtol=1e-6)
    np.testing.assert_allclose(glob["b"], -np.array([0.3, 0.4]) / norm, rtol=1e-6)
    value = first_update(optimizers.get("sgd", learning_rate=1.0, clipvalue=0.35))
    np.testing.assert_allclose(value["a"], [-0.35, -0.35])
    np.testing.assert_allclose(value["b"], [-0.3, -0.35])


def test_schedule_as_learning_rate_and_with_weight_decay():
    schedule = optax.linear_schedule(0.1, 0.0, transition_steps=4)
    w = _keras_reference(lambda w, g, t, s: w - float(schedule(t - 1)) * (g + 0.5 * w))
    np.testing.assert_allclose(
        _run(optimizers.get("sgd", learning_rate=schedule, weight_decay=0.5)), w, rtol=1e-5
    )


def test_optax_transformations_pass_through_and_accumulation():
    opt = optax.sgd(0.1)
    assert optimizers.get(opt) is opt
    acc = optimizers.get("sgd", learning_rate=0.1, gradient_accumulation_steps=2)
    params = {"w": jnp.asarray(W0)}
    state = acc.init(params)
    u1, state = acc.update({"w": jnp.ones(3)}, state, params)
    u2, state = acc.update({"w": 3 * jnp.ones(3)}, state, params)
    np.testing.assert_array_equal(u1["w"], np.zeros(3))
    np.testing.assert_allclose(u2["w"], -0.1 * 2 * np.ones(3), rtol=1e-6)


def test_errors():
    with pytest.raises(
        fnn.ConfigError,
        match=r"unknown optimizer 'sgdd'\. Did you mean 'sgd'\? Valid optimizers: adadelta, adafactor, adagrad, adam, adamax, adamw, lamb, lion, nadam, rmsprop, sgd\.",
    ):
        optimizers.get("sgdd")
    with pytest.raises(
        fnn.ConfigError,
        match=r"optimizer 'adam': .*'beta1'.*Valid arguments: beta_1, beta_2, epsilon, amsgrad, clipnorm",
    ):
        optimizers.get("adam", beta1=0.5)
    with pytest.raises(
        fnn.ConfigError, match=r"learning_rate and hyperparameters apply to optimizer names only"
    ):
        optimizers.get(optax.adam(1e-3), learning_rate=0.1)
    with pytest.raises(fnn.ConfigError, match=r"expected gradient accumulation steps >= 1, got 0"):
        optimizers.accumulate_gradients("sgd", 0)
