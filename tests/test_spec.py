"""fnn.core.spec.build: the one spec-to-layer builder behind YAML configs, saved JSON and
wrappers, checked against layers built by calling the factories directly."""

from __future__ import annotations

import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import saving
from fnn.cli.config import build_layer, build_model
from fnn.core import spec
from fnn.core.combinators import record_calls
from fnn.layers import LSTM, Bidirectional, Conv2D, Dense, Dropout, Flatten

KEY = jax.random.key(0)


@fnn.register_layer
def SpecTestStack(width: int, *layers: fnn.Layer, name: str = "spec_test_stack"):
    """``width`` before ``*layers``: a saved config must pass it by position."""
    return fnn.serial(*layers, Dense(width), name=name)


@fnn.register_layer
def SpecTestOptions(size: int | None = None, /, name: str = "spec_test_options", **options):
    """Positional-only, ``X | None`` and ``**options`` parameters."""
    del size, options
    return fnn.Lambda(lambda x: x, name=name)


@fnn.register_layer
def SpecTestBoom(name: str = "spec_test_boom"):
    raise TypeError("boom happened")


def _params(layer, *inputs):
    return layer.init(KEY, *inputs)[0]


def _assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ one path, same layers


def test_yaml_json_and_bidirectional_go_through_the_one_builder(monkeypatch):
    calls = []
    real = spec.build

    def spy(class_name, arguments, **kwargs):
        calls.append((class_name, kwargs.get("path", "")))
        return real(class_name, arguments, **kwargs)

    monkeypatch.setattr(spec, "build", spy)
    build_layer("model.layers[0]", {"residual": {"layers": [{"Dense": {"units": 3}}]}})
    assert calls == [("residual", "model.layers[0]"), ("Dense", "model.layers[0].layers[0]")]
    calls.clear()
    saving.layer_from_config(
        {"class_name": "serial", "config": {"layers": [{"class_name": "Flatten", "config": {}}]}}
    )
    assert calls == [("serial", ""), ("Flatten", "layers[0]")]
    calls.clear()
    Bidirectional(LSTM(4))
    assert calls == [("LSTM", "bidirectional.layer"), ("LSTM", "bidirectional.backward_layer")]


CONV_YAML = {
    "Conv2D": {"filters": 4, "kernel_size": [3, 3], "padding": "same", "activation": "relu"}
}
CONV_JSON = {
    "class_name": "Conv2D",
    "config": {
        "filters": 4,
        "kernel_size": {"__tuple__": [3, 3]},
        "padding": "same",
        "activation": "relu",
    },
}


def test_same_arguments_via_yaml_and_json_give_the_python_layer():
    direct = Conv2D(4, (3, 3), padding="same", activation="relu")
    from_yaml = build_layer("m", CONV_YAML)
    from_json = saving.layer_from_config(json.loads(json.dumps(CONV_JSON)))
    assert from_yaml.spec == from_json.spec == direct.spec
    x = jax.ShapeDtypeStruct((2, 6, 6, 3), jnp.float32)
    want = _params(direct, x)
    _assert_same_tree(_params(from_yaml, x), want)
    _assert_same_tree(_params(from_json, x), want)


def test_nested_wrappers_via_yaml_and_json_match_python():
    direct = fnn.serial(
        Bidirectional(LSTM(4, return_sequences=True), merge_mode="sum"),
        fnn.residual(Dense(4), Dropout(0.5, noise_shape=(None, 1, 4))),
    )
    from_yaml = build_model(
        {
            "model": {
                "layers": [
                    {
                        "Bidirectional": {
                            "layer": {"LSTM": {"units": 4, "return_sequences": True}},
                            "merge_mode": "sum",
                        }
                    },
                    {
                        "residual": {
                            "layers": [
                                {"Dense": {"units": 4}},
                                {"Dropout": {"rate": 0.5, "noise_shape": [None, 1, 4]}},
                            ]
                        }
                    },
                ]
            }
        }
    )
    lstm = {"class_name": "LSTM", "config": {"units": 4, "return_sequences": True}}
    from_json = saving.layer_from_config(
        {
            "class_name": "serial",
            "config": {
                "layers": [
                    {"class_name": "Bidirectional", "config": {"layer": lstm, "merge_mode": "sum"}},
                    {
                        "class_name": "residual",
                        "config": {
                            "layers": [
                                {"class_name": "Dense", "config": {"units": 4}},
                                {
                                    "class_name": "Dropout",
                                    "config": {
                                        "rate": 0.5,
                                        "noise_shape": {"__tuple__": [None, 1, 4]},
                                    },
                                },
                            ]
                        },
                    },
                ]
            },
        }
    )
    want_config = saving.layer_to_config(direct)
    assert saving.layer_to_config(from_yaml) == want_config
    assert saving.layer_to_config(from_json) == want_config
    x = jax.random.normal(jax.random.key(1), (2, 5, 3))
    params, state = direct.init(KEY, x)
    want, _ = direct.apply(params, state, x, rng=jax.random.key(2), train=True)
    for layer in (from_yaml, from_json):
        _assert_same_tree(_params(layer, x), params)
        got, _ = layer.apply(params, state, x, rng=jax.random.key(2), train=True)
        np.testing.assert_array_equal(got, want)


def test_keras_input_shape_and_input_dim_are_bound_like_python():
    assert build_layer("m", {"Dense": {"units": 4, "input_shape": [5]}}).spec == (
        Dense(4, input_shape=(5,)).spec
    )
    layer = spec.build("Dense", {"units": 4, "input_dim": 7})
    assert layer.input_shape == Dense(4, input_dim=7).input_shape == (7,)


def test_binding_positional_parameters_before_star_layers_and_options():
    stack = SpecTestStack(3, Flatten(), Dense(2))
    config = saving.layer_to_config(stack)
    rebuilt = saving.layer_from_config(json.loads(json.dumps(config)))
    assert saving.layer_to_config(rebuilt) == config
    x = jax.ShapeDtypeStruct((2, 4, 2), jnp.float32)
    _assert_same_tree(_params(rebuilt, x), _params(stack, x))
    options = SpecTestOptions(5, name="opt", alpha=1, beta="b")
    assert options.spec.config == {"size": 5, "name": "opt", "options": {"alpha": 1, "beta": "b"}}
    assert spec.build("SpecTestOptions", options.spec.config).spec == options.spec
    rebuilt = saving.layer_from_config(json.loads(json.dumps(saving.layer_to_config(options))))
    assert rebuilt.spec == options.spec


def test_full_arguments_are_the_bound_call_with_defaults():
    layer = LSTM(4, dropout=0.25, name="enc", input_shape=(5, 3))
    assert layer.input_shape == (5, 3)
    config = {k: v for k, v in layer.spec.config.items() if k != "input_shape"}
    bound = inspect.signature(LSTM).bind(**config)  # the undecorated factory's signature
    bound.apply_defaults()
    assert spec.full_arguments(layer.spec) == dict(bound.arguments)
    stack = SpecTestStack(3, Dense(2))
    assert spec.full_arguments(stack.spec) == {
        "width": 3,
        "layers": stack.spec.config["layers"],
        "name": "spec_test_stack",
    }


# ------------------------------------------------------------------ errors


ERRORS = [
    (
        ("Dens", {}),
        {"path": "model.layers[1]"},
        r"^model.layers\[1\]: unknown layer 'Dens'. Did you mean 'Dense'\? Registered layers: "
        r".*, serial\. Custom layers must be registered with @fnn.register_layer",
    ),
    (("Dens", {}), {}, r"^unknown layer 'Dens'. Did you mean 'Dense'\?"),
    (
        ("Dense", {"units": 3, "activaton": "relu"}),
        {"path": "m.layers[1]"},
        r"^m.layers\[1\].activaton: unknown argument of Dense. Did you mean 'activation'\? "
        r"Valid arguments: units, activation, use_bias, kernel_initializer, bias_initializer, "
        r"kernel_regularizer, bias_regularizer, activity_regularizer, dtype, name, input_shape, "
        r"input_dim\.$",
    ),
    (
        ("Dense", {"unit": 3, "bais": 0}),
        {"path": "layers[2]", "source": "saved"},
        r"^layers\[2\]: Dense: unknown saved arguments \['bais', 'unit'\]. Did you mean "
        r"'units'\? Valid arguments: units, ",
    ),
    (("Dense", {"units": "ten"}), {"path": "p"}, r"^p.units: expected int, got 'ten' \(str\)\.$"),
    (("Dense", {"units": True}), {"path": "p"}, r"^p.units: expected int, got True \(bool\)\.$"),
    (
        ("Dense", {"units": 2, "use_bias": 1}),
        {"path": "p"},
        r"^p.use_bias: expected bool, got 1 \(int\)\.$",
    ),
    (("Dropout", {"rate": "0.5"}), {"path": "p"}, r"^p.rate: expected float, got '0.5' \(str\)"),
    (
        ("SpecTestOptions", {"size": 2.5}),
        {"path": "p"},
        r"^p.size: expected int \| None, got 2.5 \(float\)\.$",
    ),
    (
        ("SpecTestStack", {"width": 2, "layers": [fnn.LayerSpec("Dense", {"units": 1}), 3]}),
        {"path": "p"},
        r"^p.layers\[1\]: expected a layer, got 3 \(int\)\.$",
    ),
    (("Dense", {}), {"path": "p"}, r"^p.units: required argument of Dense is missing\.$"),
    (
        ("Dense", {"units": -3}),
        {"path": "model.layers[2]"},
        r"^model.layers\[2\].units: expected units to be a positive int, got -3\.$",
    ),
    (("Dense", {"units": -3}), {}, r"^dense: expected units to be a positive int, got -3\.$"),
    (
        ("serial", {"layers": [fnn.LayerSpec("Flatten", {}), fnn.LayerSpec("Dense", {})]}),
        {"path": "model"},
        r"^model.layers\[1\].units: required argument of Dense is missing\.$",
    ),
    (
        ("serial", {"layers": "Dense"}),
        {"path": "p"},
        r"^p.layers: expected a list of layers, got 'Dense' \(str\)\.$",
    ),
    (
        ("SpecTestOptions", {"options": [1]}),
        {"path": "p"},
        r"^p.options: expected a mapping of arguments, got \[1\] \(list\)\.$",
    ),
    (("Dense", [3]), {"path": "p"}, r"^p: expected the arguments of Dense as a mapping, got \[3\]"),
    (
        ("Dense", {"units": 2, "input_shape": "x"}),
        {"path": "p"},
        r"^p.input_shape: expected input_shape to be a tuple of positive ints .* got 'x'\.$",
    ),
    (("SpecTestBoom", {}), {"path": "p"}, r"^p: SpecTestBoom: boom happened$"),
]


@pytest.mark.parametrize(("call", "options", "match"), ERRORS)
def test_builder_errors_start_with_the_key_path(call, options, match):
    with pytest.raises(fnn.ConfigError, match=match) as info:
        spec.build(*call, **options)
    assert "\n" not in str(info.value)


def test_bool_is_no_int_but_an_int_is_a_float():
    assert spec.build("Dropout", {"rate": 0}).spec.config == {"rate": 0}
    assert spec.build("SpecTestOptions", {"size": None}).spec.config == {"size": None}
    # Without the annotation checks the factory is the judge (it takes 1 for use_bias).
    loose = spec.build("Dense", {"units": 2, "use_bias": 1}, check_types=False)
    assert loose.spec == Dense(2, use_bias=1).spec


# ------------------------------------------------------------------ wrappers call children


def test_wrappers_call_their_children_through_call_child():
    x = jax.ShapeDtypeStruct((2, 5, 8), jnp.float32)
    block = ["attention", "attention_dropout", "norm1", "ffn", "ffn_dropout", "norm2"]
    for layer, want in [
        (Bidirectional(LSTM(4)), ["forward_lstm", "backward_lstm"]),  # forward first
        (fnn.layers.TransformerEncoderBlock(2, 4, 16), block),
    ]:
        params, state = jax.eval_shape(layer.init, KEY, x)
        with record_calls() as records:
            jax.eval_shape(lambda p, s, x, layer=layer: layer.apply(p, s, x), params, state, x)
        assert [path[0] for path, *_ in records if len(path) == 1] == want
