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


def bn_model(units=4, name="bn_net", **dense):
    from fnn.layers import BatchNormalization

    return fnn.Sequential(
        [fnn.Input((3,)), Dense(units, **dense), BatchNormalization(), Dense(2)], name=name
    )


def trained_bn_model():
    model = bn_model()
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3)).astype("float32"), rng.normal(size=(64, 2))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)  # moving statistics move too
    return model, x


def test_model_save_weights_is_the_fnn_checkpoint_directory(tmp_path):
    model, x = trained_bn_model()
    model.save_weights(tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "arrays.safetensors",
        "checkpoint.json",
    ]
    # The same directory as fnn.save_weights: the functional loader reads it ...
    params, state = fnn.load_weights(tmp_path / "w")
    for a, b in zip(
        jax.tree.leaves((model.params, model.state)), jax.tree.leaves((params, state)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    # ... and a fresh model of the same architecture gets every array, state included.
    fresh = bn_model()
    fresh.set_weights([np.zeros_like(w) + 0.5 for w in fresh.get_weights()])
    fresh.load_weights(tmp_path / "w")
    for a, b in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), model.predict(x, verbose=0))
    # What fnn.save_weights writes, Model.load_weights reads.
    fnn.save_weights(tmp_path / "f", model.params, model.state)
    other = bn_model()
    other.load_weights(tmp_path / "f")
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(fnn.ConfigError, match=r"bn_net: load_weights needs built parameters"):
        fnn.Sequential([Dense(2)], name="bn_net").load_weights(tmp_path / "w")


def test_weights_are_matched_by_path_not_by_position(tmp_path):
    """Two layers of the same shape called in the opposite order: loading by list position
    would swap them, loading by path keeps each array with its layer."""
    first = fnn.Sequential([fnn.Input((3,)), Dense(3, name="b"), Dense(3, name="a")])
    second = fnn.Sequential([fnn.Input((3,)), Dense(3, name="a"), Dense(3, name="b")])
    assert first.weight_names()[0] == "b/kernel" and second.weight_names()[0] == "a/kernel"
    first.save_weights(tmp_path / "w")
    second.load_weights(tmp_path / "w")
    for name in ("a", "b"):
        for key in ("kernel", "bias"):
            np.testing.assert_array_equal(second.params[name][key], first.params[name][key])
    # model.save / fnn.load_model match by path too.
    first.save(tmp_path / "m")
    loaded = fnn.load_model(tmp_path / "m")
    assert loaded.weight_names() == first.weight_names()
    for a, b in zip(loaded.get_weights(), first.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Model.load_weights reads a model.save directory as well (it holds params and state).
    second.load_weights(tmp_path / "m")
    np.testing.assert_array_equal(second.params["b"]["kernel"], first.params["b"]["kernel"])


def test_model_load_weights_of_another_architecture_names_every_mismatch(tmp_path):
    model, _ = trained_bn_model()
    model.save_weights(tmp_path / "w")
    before = bn_model(units=5).get_weights()
    wider = bn_model(units=5)
    with pytest.raises(CheckpointError) as info:
        wider.load_weights(tmp_path / "w")
    message = str(info.value)
    assert "['params']['dense']['kernel']: checkpoint has float32[3, 4], target float32[3, 5]" in (
        message
    )
    assert "['state']['batch_normalization']['moving_mean']: checkpoint has float32[4]" in message
    for a, b in zip(wider.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)  # a failed load changes nothing
    missing = fnn.Sequential(
        [fnn.Input((3,)), Dense(4), fnn.layers.BatchNormalization(), Dense(2), Dense(1)]
    )
    with pytest.raises(CheckpointError, match=r"\['params'\]\['dense_2'\]: missing from the"):
        missing.load_weights(tmp_path / "w")
    extra = fnn.Sequential([fnn.Input((3,)), Dense(4), Dense(2)])
    with pytest.raises(CheckpointError) as info:
        extra.load_weights(tmp_path / "w")
    assert "['params']['batch_normalization']: in the checkpoint but not in the target" in str(
        info.value
    )
    assert "['state']['batch_normalization']: in the checkpoint but not in the target" in str(
        info.value
    )
    other_dtype = bn_model(dtype="bfloat16")
    with pytest.raises(CheckpointError, match=r"checkpoint has float32\[3, 4\], target bfloat16"):
        other_dtype.load_weights(tmp_path / "w")


@pytest.mark.parametrize("name", ["x.keras", "x.weights.h5", "x.npz", "X.H5"])
def test_single_file_names_are_a_clear_error(tmp_path, name):
    model = bn_model()
    path = tmp_path / name
    suffix = name[name.rindex(".") :].lower()
    with pytest.raises(fnn.ConfigError, match=rf"bn_net: save_weights: cannot write .*\{suffix} "):
        model.save_weights(path)
    if suffix == ".keras":  # a Sequential writes a real Keras archive there
        model.save(path)
        assert path.is_file()
        path.unlink()
    else:
        with pytest.raises(
            fnn.ConfigError, match=rf"bn_net: save: cannot write .*not \{suffix} files"
        ):
            model.save(path)
    with pytest.raises(fnn.ConfigError, match=r"^save_weights: cannot write"):
        fnn.save_weights(path, model.params, model.state)
    assert not path.exists()  # no directory named like a file of another format
    path.write_bytes(b"a file of another library")
    with pytest.raises(fnn.ConfigError, match=rf"bn_net: load_weights: cannot read .*\{suffix}"):
        model.load_weights(path)
    with pytest.raises(fnn.ConfigError, match=r"^load_weights: cannot read .*get_weights\(\)"):
        fnn.load_weights(path)
    with pytest.raises(fnn.ConfigError, match=r"^load_model: cannot read"):
        fnn.load_model(path)


@pytest.mark.parametrize("stage", ["arrays_written", "before_rename"])
def test_failed_model_save_weights_keeps_the_previous_weights(tmp_path, monkeypatch, stage):
    from fnn import checkpoint

    model, x = trained_bn_model()
    model.save_weights(tmp_path / "w")
    saved = model.get_weights()
    model.set_weights([w + 1.0 for w in saved])

    def crash(at, tmp):
        if at == stage:
            raise RuntimeError(f"disk full at {at}")

    monkeypatch.setattr(checkpoint, "_TEST_HOOK", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_weights(tmp_path / "w")
    monkeypatch.setattr(checkpoint, "_TEST_HOOK", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary left over
    model.load_weights(tmp_path / "w")
    for a, b in zip(model.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(a, b)
