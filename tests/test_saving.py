"""Architecture configs, weights-only and whole-model saving."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import saving
from fnn.checkpoint import CheckpointError
from fnn.layers import Concatenate, Dense, Dropout, Flatten

X = jax.ShapeDtypeStruct((2, 4, 3), jnp.float32)


@fnn.register_layer
def Scale(factor: float = 2.0, name: str = "scale"):
    """A custom registered layer: ``[...] -> [...]`` times a learned scalar times ``factor``."""

    def init(key, x):
        del key, x
        return {"alpha": jnp.ones(())}, {"calls": jnp.zeros((), jnp.int32)}

    def apply(params, state, x, *, rng=None, train=False):
        del rng
        calls = state["calls"] + 1 if train else state["calls"]
        return x * params["alpha"] * factor, {"calls": calls}

    return fnn.Layer(init, apply, name)


def network():
    return fnn.serial(
        Flatten(),
        Dense(8, activation=jax.nn.relu, kernel_initializer="he_normal"),
        fnn.residual(Dense(8, activation="tanh"), Dropout(0.2, noise_shape=(None, 1))),
        fnn.fan_out(Dense(3, name="left"), Dense(3, use_bias=False, name="right")),
        Concatenate(),
        Scale(factor=0.5),
        Dense(5, dtype=jnp.float32),
        name="net",
    )


def test_layer_config_round_trip_rebuilds_the_same_function():
    model = network()
    config = saving.layer_to_config(model)
    text = json.dumps(config)  # plain JSON
    rebuilt = saving.layer_from_config(json.loads(text))
    assert saving.layer_to_config(rebuilt) == config
    params, state = model.init(jax.random.key(0), X)
    params2, state2 = rebuilt.init(jax.random.key(0), X)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, params2)
    x = jax.random.normal(jax.random.key(1), X.shape)
    y, _ = model.apply(params, state, x, rng=jax.random.key(2), train=True)
    y2, _ = jax.jit(lambda p, s, x: rebuilt.apply(p, s, x, rng=jax.random.key(2), train=True))(
        params, state, x
    )
    np.testing.assert_allclose(y, y2, rtol=1e-6)
    layers = config["config"]["layers"]
    assert layers[1] == {
        "class_name": "Dense",
        "config": {"units": 8, "activation": "relu", "kernel_initializer": "he_normal"},
    }
    assert layers[2]["config"]["layers"][1]["config"]["noise_shape"] == {"__tuple__": [None, 1]}
    assert layers[6]["config"]["dtype"] == {"__dtype__": "float32"}
    assert layers[5] == {"class_name": "Scale", "config": {"factor": 0.5}}


def test_unsavable_layers_name_the_layer():
    with pytest.raises(fnn.ConfigError, match=r"cannot save layer 'double': it was not built by a"):
        saving.layer_to_config(fnn.serial(Dense(2), fnn.Lambda(lambda x: 2 * x, name="double")))
    with pytest.raises(
        fnn.ConfigError,
        match=r"dense_9 \(Dense\).activation: cannot save the callable '<lambda>'; only regis",
    ):
        saving.layer_to_config(Dense(2, activation=lambda x: x, name="dense_9"))
    with pytest.raises(fnn.ConfigError, match=r"unknown layer 'Dens'. Did you mean 'Dense'\?"):
        saving.layer_from_config({"class_name": "Dens", "config": {}})
    with pytest.raises(fnn.ConfigError, match=r"expected a layer config"):
        saving.layer_from_config({"units": 3})
    with pytest.raises(fnn.ConfigError, match=r"Dense: unknown saved arguments \['unit'\]"):
        saving.layer_from_config({"class_name": "Dense", "config": {"unit": 3}})


def test_saved_arguments_the_factory_accepted_still_load():
    """Saved configs are not type-checked against annotations: a file whose arguments the
    factory took when it was saved (an int for a bool) loads as before."""
    layer = Dense(3, use_bias=0)
    rebuilt = saving.layer_from_config(json.loads(json.dumps(saving.layer_to_config(layer))))
    assert rebuilt.spec == layer.spec
    params = rebuilt.init(jax.random.key(0), jax.ShapeDtypeStruct((2, 4), jnp.float32))[0]
    assert sorted(params) == sorted(layer.init(jax.random.key(0), jnp.ones((2, 4)))[0])


def test_saved_config_errors_in_nested_layers_start_with_their_key_path():
    def net(*layers):
        return {"class_name": "serial", "config": {"layers": [*layers]}}

    flatten = {"class_name": "Flatten", "config": {}}
    cases = [
        (
            net(flatten, {"class_name": "Dens", "config": {}}),
            r"^layers\[1\]: unknown layer 'Dens'. Did you mean 'Dense'\? Registered layers: ",
        ),
        (
            net(net(flatten, {"class_name": "Dense", "config": {"unit": 3}})),
            r"^layers\[0\].layers\[1\]: Dense: unknown saved arguments \['unit'\]. Did you mean "
            r"'units'\?",
        ),
        (
            net({"class_name": "Dense", "config": {"units": "3"}}),
            r"^layers\[0\].units: expected units to be a positive int, got '3'\.$",
        ),
        (
            net({"class_name": "Dense", "config": {"units": 0}}),
            r"^layers\[0\].units: expected units to be a positive int, got 0\.$",
        ),
        (
            net({"class_name": "Dropout", "config": {"rate": 0.1, "noise_shape": {"x": 1}}}),
            r"^layers\[0\].noise_shape: unrecognised entry \{'x': 1\} in a saved layer config\.$",
        ),
        (net({"units": 3}), r"^layers\[0\]: unrecognised entry \{'units': 3\} in a saved layer"),
    ]
    for config, match in cases:
        with pytest.raises(fnn.ConfigError, match=match):
            saving.layer_from_config(config)


def test_weights_round_trip_and_architecture_mismatch(tmp_path):
    model = network()
    params, state = model.init(jax.random.key(0), X)
    saving.save_weights(tmp_path / "w", params, state)
    abstract = jax.eval_shape(model.init, jax.random.key(1), X)
    p2, s2 = saving.load_weights(tmp_path / "w", *abstract)
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)
    p3, _ = saving.load_weights(tmp_path / "w")  # without a target: plain dicts
    np.testing.assert_array_equal(p3["dense"]["kernel"], params["dense"]["kernel"])
    other = fnn.serial(Flatten(), Dense(6), name="net")
    with pytest.raises(CheckpointError) as info:
        saving.load_weights(tmp_path / "w", *jax.eval_shape(other.init, jax.random.key(0), X))
    message = str(info.value)
    assert (
        "['params']['dense']['kernel']: checkpoint has float32[12, 8], target float32[12, 6]"
        in message
    )
    assert "['params']['fan_out']: in the checkpoint but not in the target" in message
    assert "['state']['scale']: in the checkpoint but not in the target" in message


def test_save_and_load_model(tmp_path):
    model = network()
    params, state = model.init(jax.random.key(0), X)
    compile_config = {"optimizer": {"name": "adam", "learning_rate": 1e-3}, "loss": "mse"}
    saving.save_model(
        tmp_path / "m", model, params, state, inputs=[X], compile_config=compile_config
    )
    loaded = saving.load_layer(tmp_path / "m")
    assert loaded.compile_config == compile_config and loaded.inputs == [X]
    x = jax.random.normal(jax.random.key(1), X.shape)
    np.testing.assert_array_equal(
        model.apply(params, state, x)[0], loaded.layer.apply(loaded.params, loaded.state, x)[0]
    )
    saving.save_weights(tmp_path / "w", params, state)
    with pytest.raises(CheckpointError, match=r"holds weights only, not a saved model"):
        saving.load_layer(tmp_path / "w")


def test_model_save_and_fnn_load_model(tmp_path):
    from fnn import losses
    from fnn.layers import BatchNormalization

    (x_train, y_train), (x_test, y_test) = fnn.datasets.load_iris()
    model = fnn.Sequential(
        [Dense(16, activation="relu"), BatchNormalization(), Dense(3)], name="iris"
    )
    model.compile(
        optimizer="adam",
        loss=losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    model.save(tmp_path / "iris")
    loaded = fnn.load_model(tmp_path / "iris")
    assert type(loaded) is fnn.Sequential and loaded.name == "iris"
    assert [layer.spec.class_name for layer in loaded.layers] == [
        "Dense",
        "BatchNormalization",
        "Dense",
    ]
    for a, b in zip(
        jax.tree.leaves((model.params, model.state)),
        jax.tree.leaves((loaded.params, loaded.state)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)  # moving statistics included
    np.testing.assert_allclose(
        loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0), rtol=1e-6
    )
    # Compiled with the saved loss and metrics: evaluate works right away and agrees.
    before = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    after = loaded.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert after == pytest.approx(before)
    # Weights-only directories and uncompilable settings give clear messages.
    fnn.save_weights(tmp_path / "w", model.params, model.state)
    with pytest.raises(CheckpointError, match=r"holds weights only, not a saved model"):
        fnn.load_model(tmp_path / "w")
    import optax

    model.compile(optimizer=optax.sgd(0.1), loss="sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match=r"iris: saved without compile settings \(optimizer"):
        model.save(tmp_path / "uncompiled")
    assert not fnn.load_model(tmp_path / "uncompiled").compiled
