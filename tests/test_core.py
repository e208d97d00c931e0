"""The layer protocol: Layer type, naming, eval_shape/jit/grad/vmap/pmap purity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.layers import Dense, Dropout, Flatten


def test_layer_unpacks_as_init_apply_pair_and_is_immutable():
    layer = Dense(3)
    init, apply = layer
    assert init is layer.init and apply is layer.apply
    with pytest.raises(AttributeError):
        layer.name = "other"


def test_spec_records_only_explicit_arguments():
    assert Dense(3).spec.config == {"units": 3}
    assert Dense(3, name="head").spec.config == {"units": 3, "name": "head"}
    assert Dense(3).spec.class_name == "Dense"


@pytest.mark.parametrize("bad", ["", "1abc", "a/b", "has space", 3])
def test_invalid_layer_names_are_rejected(bad):
    with pytest.raises(fnn.ConfigError, match="invalid layer name"):
        Dense(3, name=bad)


def test_init_under_eval_shape_allocates_nothing():
    model = fnn.serial(Dense(4096), Dense(4096), Dense(10))
    x = jax.ShapeDtypeStruct((8, 4096), jnp.float32)
    params, state = jax.eval_shape(model.init, jax.random.key(0), x)
    leaves = jax.tree.leaves(params)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    assert params["dense_1"]["kernel"].shape == (4096, 4096)
    assert state == {}


def test_init_under_jit_matches_eager():
    model = fnn.serial(Flatten(), Dense(8), Dense(2))
    x = jnp.ones((3, 2, 5))
    eager, _ = model.init(jax.random.key(1), x)
    jitted, _ = jax.jit(model.init)(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_allclose, eager, jitted)


def test_apply_under_jit_grad_vmap_pmap():
    model = fnn.serial(Dense(8, activation="tanh"), Dense(1))
    x = jax.random.normal(jax.random.key(0), (4, 3))
    params, state = model.init(jax.random.key(1), x)
    reference = np.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
    reference = reference @ params["dense_1"]["kernel"] + params["dense_1"]["bias"]

    y, _ = model.apply(params, state, x)
    np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-6)
    y_jit, _ = jax.jit(model.apply)(params, state, x)
    np.testing.assert_allclose(y_jit, reference, rtol=1e-5, atol=1e-6)

    y_vmap, _ = jax.vmap(lambda xi: model.apply(params, state, xi[None])[0][0])(x), None
    np.testing.assert_allclose(y_vmap, reference, rtol=1e-5, atol=1e-6)

    n = jax.local_device_count()
    xs = jnp.broadcast_to(x, (n, *x.shape))
    y_pmap, _ = jax.pmap(model.apply, in_axes=(None, None, 0))(params, state, xs)
    np.testing.assert_allclose(y_pmap[0], reference, rtol=1e-5, atol=1e-6)

    def loss(p):
        return jnp.sum(model.apply(p, state, x)[0] ** 2)

    grads = jax.grad(loss)(params)
    # d/db of sum(y^2) for the last bias is 2 * sum(y).
    np.testing.assert_allclose(grads["dense_1"]["bias"], 2 * reference.sum(0), rtol=1e-5)


def test_apply_rejects_unknown_keywords():
    layer = Dense(2)
    params, state = layer.init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(TypeError):
        layer.apply(params, state, jnp.ones((1, 3)), training=True)


def test_keys_are_stable_across_constructions():
    def build():
        return fnn.serial(Dense(4), Dropout(0.1), Dense(4), fnn.serial(Dense(2), Dense(2)))

    x = jax.ShapeDtypeStruct((1, 3), jnp.float32)
    first = jax.eval_shape(build().init, jax.random.key(0), x)[0]
    second = jax.eval_shape(build().init, jax.random.key(0), x)[0]
    assert jax.tree.structure(first) == jax.tree.structure(second)
    assert sorted(first) == ["dense", "dense_1", "sequential"]
    assert sorted(first["sequential"]) == ["dense", "dense_1"]


def test_register_layer_rebuilds_from_spec():
    layer = Dense(5, activation="relu", name="head")
    factory = fnn.core.get_layer_factory(layer.spec.class_name)
    rebuilt = factory(**layer.spec.config)
    x = jnp.ones((2, 3))
    params, state = layer.init(jax.random.key(0), x)
    np.testing.assert_allclose(layer.apply(params, state, x)[0], rebuilt.apply(params, state, x)[0])
    with pytest.raises(fnn.ConfigError, match="unknown layer 'Dens'.*Did you mean 'Dense'"):
        fnn.core.get_layer_factory("Dens")
