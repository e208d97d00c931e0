"""Normalization layers against plain-numpy formulas: BatchNormalization (train/eval, moving
averages, cross-device statistics), LayerNormalization, GroupNormalization, RMSNormalization."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import fnn
from fnn.layers import (
    BatchNormalization,
    GroupNormalization,
    LayerNormalization,
    RMSNormalization,
)

KEY = jax.random.key(0)


def _normal(shape, seed=0, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape).astype(np.float32)


def _random_params(params, seed=1):
    """Non-trivial gamma/beta so the affine part is tested too."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(1.0, 0.5, p.shape), p.dtype), params)


def _bn_reference(x, gamma, beta, mean_m, var_m, axis, momentum, eps, train):
    axis = axis % x.ndim
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    if train:
        mean = x.mean(axis=reduce)
        var = ((x - mean.reshape(shape)) ** 2).mean(axis=reduce)  # biased, as Keras
        new_m = momentum * mean_m + (1 - momentum) * mean
        new_v = momentum * var_m + (1 - momentum) * var
    else:
        mean, var, new_m, new_v = mean_m, var_m, mean_m, var_m
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return y * gamma.reshape(shape) + beta.reshape(shape), new_m, new_v


# ---------------------------------------------------------------- BatchNormalization


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("axis", [-1, 1])
def test_batchnorm_train_and_eval_match_formula(jit, axis):
    bn = BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-3)
    x = _normal((6, 3, 4), loc=2.0, scale=3.0)
    params, state = bn.init(KEY, x)
    params = _random_params(params)
    state = {
        "moving_mean": jnp.full_like(state["moving_mean"], 0.5),
        **_random_params({"moving_variance": state["moving_variance"]}, seed=2),
    }
    state["moving_variance"] = jnp.abs(state["moving_variance"])
    apply = jax.jit(bn.apply, static_argnames="train") if jit else bn.apply
    args = [np.asarray(params["gamma"]), np.asarray(params["beta"])]
    m0, v0 = np.asarray(state["moving_mean"]), np.asarray(state["moving_variance"])
    for train in (True, False):
        y, new_state = apply(params, state, x, train=train)
        want_y, want_m, want_v = _bn_reference(x, *args, m0, v0, axis, 0.9, 1e-3, train)
        np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(new_state["moving_mean"], want_m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new_state["moving_variance"], want_v, rtol=1e-5, atol=1e-6)
    assert params["gamma"].shape == (x.shape[axis],)


def test_batchnorm_eval_returns_state_unchanged_and_train_updates_over_steps():
    bn = BatchNormalization()  # Keras defaults: momentum 0.99, epsilon 1e-3
    params, state = bn.init(KEY, jnp.zeros((4, 2)))
    assert set(params) == {"gamma", "beta"}
    assert set(state) == {"moving_mean", "moving_variance"}
    np.testing.assert_array_equal(state["moving_variance"], [1.0, 1.0])
    _, same = bn.apply(params, state, jnp.ones((4, 2)), train=False)
    assert same is state
    m, v = np.zeros(2), np.ones(2)
    step = jax.jit(functools.partial(bn.apply, train=True))
    for i in range(5):
        x = _normal((8, 2), seed=i, loc=3.0)
        _, state = step(params, state, x)
        m = 0.99 * m + 0.01 * x.mean(0)
        v = 0.99 * v + 0.01 * x.var(0)
    np.testing.assert_allclose(state["moving_mean"], m, rtol=1e-5)
    np.testing.assert_allclose(state["moving_variance"], v, rtol=1e-5)


def test_batchnorm_without_center_and_scale_and_initializers():
    bn = BatchNormalization(center=False, scale=False, moving_variance_initializer="zeros")
    params, state = bn.init(KEY, jnp.zeros((2, 3)))
    assert params == {}
    np.testing.assert_array_equal(state["moving_variance"], np.zeros(3))
    x = _normal((5, 3))
    y, _ = bn.apply(params, state, x, train=True)
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3), rtol=1e-4, atol=1e-5)


def test_batchnorm_low_precision_input_keeps_float32_params_and_input_dtype():
    bn = BatchNormalization()
    x = jnp.asarray(_normal((16, 4), loc=100.0), jnp.bfloat16)
    params, state = bn.init(KEY, x)
    assert params["gamma"].dtype == jnp.float32 and state["moving_mean"].dtype == jnp.float32
    y, new_state = bn.apply(params, state, x, train=True)
    assert y.dtype == jnp.bfloat16 and new_state["moving_mean"].dtype == jnp.float32
    xf = np.asarray(x, np.float32)
    np.testing.assert_allclose(
        np.asarray(y, np.float32), (xf - xf.mean(0)) / np.sqrt(xf.var(0) + 1e-3), atol=0.05
    )


def test_batchnorm_axis_name_under_pmap_uses_the_global_batch():
    n = jax.local_device_count()
    assert n == 8  # tests/conftest.py forces 8 CPU devices
    bn = BatchNormalization(momentum=0.8, axis_name="batch")
    x = _normal((n, 4, 3), loc=np.arange(n)[:, None, None], scale=2.0)  # shards differ a lot
    params, state = bn.init(KEY, x[0])
    params = _random_params(params)
    replicate = functools.partial(jax.tree.map, lambda a: jnp.broadcast_to(a, (n, *a.shape)))

    step = jax.pmap(lambda p, s, xb: bn.apply(p, s, xb, train=True), axis_name="batch")
    y, new_state = step(replicate(params), replicate(state), x)
    whole = x.reshape(-1, 3)
    want_y, want_m, want_v = _bn_reference(
        whole,
        np.asarray(params["gamma"]),
        np.asarray(params["beta"]),
        np.zeros(3),
        np.ones(3),
        -1,
        0.8,
        1e-3,
        True,
    )
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 3), want_y, rtol=1e-4, atol=1e-4)
    for d in range(n):  # every device holds the same, global, moving averages
        np.testing.assert_allclose(new_state["moving_mean"][d], want_m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new_state["moving_variance"][d], want_v, rtol=1e-4)
    # Without axis_name each device normalizes with its own shard's statistics.
    local = jax.pmap(lambda p, s, xb: BatchNormalization().apply(p, s, xb, train=True)[0])
    y_local = local(replicate(params), replicate(state), x)
    assert not np.allclose(y_local, y, atol=1e-2)


def test_batchnorm_axis_name_under_shard_map():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    bn = BatchNormalization(axis_name="data")
    x = _normal((16, 2), loc=np.arange(16)[:, None])
    params, state = bn.init(KEY, x)

    @functools.partial(
        jax.shard_map, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=(P("data"), P())
    )
    def step(p, s, xb):
        return bn.apply(p, s, xb, train=True)

    y, new_state = jax.jit(step)(params, state, x)
    want_y, want_m, _ = _bn_reference(
        x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), -1, 0.99, 1e-3, True
    )
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state["moving_mean"], want_m, rtol=1e-5)


def test_batchnorm_vmap_over_an_ensemble_axis():
    bn = BatchNormalization()
    xs = _normal((3, 5, 2), loc=1.0)
    params, state = bn.init(KEY, xs[0])
    ys, states = jax.vmap(lambda xb: bn.apply(params, state, xb, train=True))(xs)
    for i in range(3):
        y, s = bn.apply(params, state, xs[i], train=True)
        np.testing.assert_allclose(ys[i], y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(states["moving_mean"][i], s["moving_mean"], rtol=1e-6)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_check_grads_float64(train):
    with jax.enable_x64(True):
        bn = BatchNormalization(axis=1)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 2)))
        params, state = bn.init(KEY, x)
        assert params["gamma"].dtype == jnp.float64
        params = _random_params(params)

        def f(p, x):
            return bn.apply(p, state, x, train=train)[0]

        check_grads(jax.jit(f), (params, x), order=1, modes=["rev", "fwd"], atol=1e-5, rtol=1e-5)


def test_batchnorm_errors():
    bn = BatchNormalization(name="bn")
    params, state = bn.init(KEY, jnp.zeros((2, 8, 8, 16)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"bn: expected inputs with size 16 on axis -1 \(moving_mean has shape \(16,\)\), "
        r"got inputs of shape \(2, 8, 8, 3\)",
    ):
        bn.apply(params, state, jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"bn: expected inputs of rank >= 2 \[batch, \.\.\., channels\], got "
        r"rank 1 \(shape \(5,\)\)",
    ):
        bn.init(KEY, jnp.zeros((5,)))
    with pytest.raises(
        fnn.ShapeError, match=r"bn3: expected inputs with a non-batch axis 3 \(axis=3\), got rank 2"
    ):
        BatchNormalization(axis=3, name="bn3").init(KEY, jnp.zeros((2, 5)))
    with pytest.raises(fnn.ShapeError, match=r"expected inputs with a non-batch axis 0"):
        BatchNormalization(axis=0).init(KEY, jnp.zeros((2, 5)))
    with pytest.raises(fnn.ConfigError, match=r"bn: expected momentum in \[0, 1\], got 1.5"):
        BatchNormalization(momentum=1.5, name="bn")
    with pytest.raises(fnn.ConfigError, match=r"expected axis to be an int, got \[1, 2\]"):
        BatchNormalization(axis=[1, 2])
    with pytest.raises(fnn.ConfigError, match=r"expected epsilon >= 0"):
        BatchNormalization(epsilon=-1.0)


def test_init_under_eval_shape_and_jit():
    x = jax.ShapeDtypeStruct((2, 4, 4, 8), jnp.float32)
    for layer in (
        BatchNormalization(),
        LayerNormalization(),
        GroupNormalization(groups=4),
        RMSNormalization(),
    ):
        params, state = jax.eval_shape(layer.init, KEY, x)
        assert all(leaf.shape == (8,) for leaf in jax.tree.leaves((params, state)))
        concrete = jax.jit(layer.init)(KEY, jnp.zeros(x.shape))
        assert jax.tree.map(jnp.shape, concrete) == jax.tree.map(jnp.shape, (params, state))
        assert fnn.core.get_layer_factory(layer.spec.class_name) is not None


# ---------------------------------------------------------------- LayerNormalization


@pytest.mark.parametrize("jit", [False, True])
def test_layernorm_matches_formula(jit):
    ln = LayerNormalization()
    x = _normal((2, 3, 5), loc=1.0, scale=4.0)
    params, state = ln.init(KEY, x)
    params = _random_params(params)
    apply = jax.jit(ln.apply) if jit else ln.apply
    y, _ = apply(params, state, x)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    want = (x - mean) / np.sqrt(var + 1e-3) * np.asarray(params["gamma"]) + np.asarray(
        params["beta"]
    )
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    assert ln.apply(params, state, x, train=True)[0].shape == x.shape


def test_layernorm_over_several_axes_and_without_affine():
    ln = LayerNormalization(axis=(-2, -1), center=False, epsilon=1e-5)
    x = _normal((3, 4, 5), scale=2.0)
    params, state = ln.init(KEY, x)
    assert jax.tree.map(jnp.shape, params) == {"gamma": (4, 5)}
    gamma = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
    y, _ = ln.apply({"gamma": jnp.asarray(gamma)}, state, x)
    flat = x.reshape(3, -1)
    want = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, want.reshape(x.shape) * gamma, rtol=1e-4, atol=1e-5)
    plain = LayerNormalization(center=False, scale=False)
    assert plain.init(KEY, x) == ({}, {})


def test_layernorm_vmap_and_grads_and_errors():
    ln = LayerNormalization(name="ln")
    xs = _normal((4, 2, 6))
    params, state = ln.init(KEY, xs[0])
    ys = jax.vmap(lambda x: ln.apply(params, state, x)[0])(xs)
    np.testing.assert_allclose(ys, ln.apply(params, state, xs)[0], rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
        p, s = ln.init(KEY, x)
        p = _random_params(p)
        check_grads(
            jax.jit(lambda p, x: ln.apply(p, s, x)[0]), (p, x), order=1, atol=1e-5, rtol=1e-5
        )
    with pytest.raises(
        fnn.ShapeError,
        match=r"ln: expected inputs with size 6 on axis -1 \(gamma has shape \(6,\)\), got "
        r"inputs of shape \(2, 7\)",
    ):
        ln.apply(params, state, jnp.zeros((2, 7)))
    with pytest.raises(fnn.ShapeError, match=r"ln2: expected inputs with an axis 2 \(axis=2\)"):
        LayerNormalization(axis=2, name="ln2").init(KEY, jnp.zeros((2, 7)))
    with pytest.raises(fnn.ConfigError, match=r"expected distinct axes"):
        LayerNormalization(axis=(1, 1))
    with pytest.raises(fnn.ShapeError, match=r"name the same dimension"):
        LayerNormalization(axis=(1, -1)).init(KEY, jnp.zeros((2, 7)))


# ---------------------------------------------------------------- GroupNormalization


def _groupnorm_reference(x, groups, gamma, beta, eps):
    """Loop over examples and groups; statistics over the group's channels and all
    spatial positions."""
    out = np.empty_like(x, dtype=np.float64)
    per = x.shape[-1] // groups
    for b in range(x.shape[0]):
        for g in range(groups):
            sl = x[b, ..., g * per : (g + 1) * per].astype(np.float64)
            out[b, ..., g * per : (g + 1) * per] = (sl - sl.mean()) / np.sqrt(sl.var() + eps)
    return out * gamma + beta


@pytest.mark.parametrize(("groups", "jit"), [(4, False), (4, True), (1, False), (-1, False)])
def test_groupnorm_matches_loop(groups, jit):
    gn = GroupNormalization(groups=groups)
    x = _normal((2, 3, 3, 8), loc=2.0, scale=3.0)
    params, state = gn.init(KEY, x)
    params = _random_params(params)
    apply = jax.jit(gn.apply) if jit else gn.apply
    y, _ = apply(params, state, x)
    g = 8 if groups == -1 else groups
    want = _groupnorm_reference(x, g, np.asarray(params["gamma"]), np.asarray(params["beta"]), 1e-3)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_groupnorm_channels_first_axis_and_grads():
    gn = GroupNormalization(groups=2, axis=1)
    x = _normal((2, 4, 5))  # [batch, channels, time]
    params, state = gn.init(KEY, x)
    y, _ = gn.apply(params, state, x)
    want = _groupnorm_reference(np.moveaxis(x, 1, -1), 2, 1.0, 0.0, 1e-3)
    np.testing.assert_allclose(y, np.moveaxis(want, -1, 1), rtol=1e-4, atol=1e-4)
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)))
        p, s = GroupNormalization(groups=2).init(KEY, x)
        p = _random_params(p)
        f = lambda p, x: GroupNormalization(groups=2).apply(p, s, x)[0]  # noqa: E731
        check_grads(jax.jit(f), (p, x), order=1, atol=1e-5, rtol=1e-5)


def test_groupnorm_errors():
    with pytest.raises(
        fnn.ShapeError,
        match=r"gn: expected a channel count divisible by groups=32, got 48 channels on axis -1 "
        r"\(shape \(2, 48\)\)\. Choose groups that divide 48\.",
    ):
        GroupNormalization(name="gn").init(KEY, jnp.zeros((2, 48)))
    with pytest.raises(fnn.ShapeError, match=r"divisible by groups=8, got 4 channels"):
        GroupNormalization(groups=8).init(KEY, jnp.zeros((2, 4)))
    with pytest.raises(fnn.ConfigError, match=r"expected groups to be a positive int or -1"):
        GroupNormalization(groups=0)
    gn = GroupNormalization(groups=2, name="gn")
    params, state = gn.init(KEY, jnp.zeros((1, 4)))
    with pytest.raises(fnn.ShapeError, match=r"gn: expected inputs with size 4 on axis -1"):
        gn.apply(params, state, jnp.zeros((1, 6)))
    with pytest.raises(fnn.ShapeError, match=r"gn: expected inputs of rank >= 2"):
        gn.apply(params, state, jnp.zeros((4,)))


# ---------------------------------------------------------------- RMSNormalization


@pytest.mark.parametrize("jit", [False, True])
def test_rmsnorm_matches_formula(jit):
    rms = RMSNormalization()
    x = _normal((2, 3, 6), scale=3.0)
    params, state = rms.init(KEY, x)
    assert jax.tree.map(jnp.shape, params) == {"scale": (6,)}
    np.testing.assert_array_equal(params["scale"], np.ones(6))
    params = {"scale": jnp.asarray(np.linspace(0.5, 2.0, 6), jnp.float32)}
    apply = jax.jit(rms.apply) if jit else rms.apply
    y, _ = apply(params, state, x)
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * np.linspace(0.5, 2.0, 6)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_rmsnorm_axes_grads_and_errors():
    rms = RMSNormalization(axis=[1, 2], name="rms")
    x = _normal((2, 3, 4))
    params, state = rms.init(KEY, x)
    assert params["scale"].shape == (3, 4)
    y, _ = rms.apply(params, state, x)
    np.testing.assert_allclose(
        y, x / np.sqrt((x**2).mean((1, 2), keepdims=True) + 1e-6), rtol=1e-5, atol=1e-6
    )
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)))
        r = RMSNormalization()
        p, s = r.init(KEY, x64)
        p = _random_params(p)
        check_grads(
            jax.jit(lambda p, x: r.apply(p, s, x)[0]), (p, x64), order=1, atol=1e-5, rtol=1e-5
        )
    with pytest.raises(
        fnn.ShapeError,
        match=r"rms: expected inputs with sizes \(3, 4\) on axes \(1, 2\) \(scale has shape "
        r"\(3, 4\)\), got inputs of shape \(2, 3, 5\)",
    ):
        rms.apply(params, state, jnp.zeros((2, 3, 5)))
