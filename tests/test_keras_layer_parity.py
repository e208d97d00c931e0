"""Weight order and build parity with Keras 3 for every registered fnn layer that Keras has.

Each case builds the same one-layer model in Keras and in fnn (same class name and
arguments), checks that both build arrays of the same shapes in the same order, moves
Keras's (randomised) weights into fnn with ``set_weights`` and compares the predictions
and the ``get_weights`` lists.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

import fnn
from fnn import layers as fl

keras = pytest.importorskip("keras")

# name -> (arguments for both libraries, input shapes without the batch axis, input dtype).
# Several inputs: a list of shapes. Bidirectional's wrapped layer is built per library.
CASES = {
    "Activation": ({"activation": "gelu"}, (6,), "float32"),
    "ELU": ({"alpha": 0.7}, (6,), "float32"),
    "LeakyReLU": ({"negative_slope": 0.1}, (6,), "float32"),
    "ReLU": ({"max_value": 1.0, "negative_slope": 0.1, "threshold": 0.2}, (6,), "float32"),
    "Softmax": ({"axis": -1}, (6,), "float32"),
    "Add": ({}, [(5,), (5,)], "float32"),
    "Average": ({}, [(5,), (5,)], "float32"),
    "AveragePooling1D": ({"pool_size": 2, "padding": "same"}, (7, 3), "float32"),
    "AveragePooling2D": ({"pool_size": 2, "strides": 1}, (6, 6, 2), "float32"),
    "AveragePooling3D": ({"pool_size": 2}, (4, 4, 4, 2), "float32"),
    "BatchNormalization": ({"momentum": 0.9, "epsilon": 1e-2}, (6,), "float32"),
    "Bidirectional": ({"merge_mode": "concat"}, (5, 3), "float32"),
    "Concatenate": ({"axis": -1}, [(5,), (3,)], "float32"),
    "Conv1D": ({"filters": 4, "kernel_size": 3, "padding": "causal"}, (9, 3), "float32"),
    "Conv1DTranspose": ({"filters": 4, "kernel_size": 3, "strides": 2}, (5, 3), "float32"),
    "Conv2D": (
        {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
        (8, 8, 3),
        "float32",
    ),
    "Conv2DTranspose": ({"filters": 3, "kernel_size": 2, "strides": 2}, (4, 4, 2), "float32"),
    "Conv3D": ({"filters": 2, "kernel_size": 2}, (4, 4, 4, 2), "float32"),
    "Conv3DTranspose": ({"filters": 2, "kernel_size": 2, "strides": 2}, (3, 3, 3, 2), "float32"),
    "Cropping1D": ({"cropping": (1, 2)}, (7, 3), "float32"),
    "Cropping2D": ({"cropping": ((1, 0), (0, 2))}, (6, 6, 2), "float32"),
    "Cropping3D": ({"cropping": 1}, (4, 4, 4, 2), "float32"),
    "Dense": ({"units": 4, "activation": "relu"}, (6,), "float32"),
    "DepthwiseConv1D": ({"kernel_size": 3, "depth_multiplier": 2}, (8, 3), "float32"),
    "DepthwiseConv2D": ({"kernel_size": 3, "padding": "same"}, (6, 6, 3), "float32"),
    "Dropout": ({"rate": 0.5}, (6,), "float32"),
    "Embedding": ({"input_dim": 20, "output_dim": 6}, (9,), "int32"),
    "Flatten": ({}, (3, 4, 2), "float32"),
    "GRU": ({"units": 4, "return_sequences": True}, (5, 3), "float32"),
    "GlobalAveragePooling1D": ({}, (5, 3), "float32"),
    "GlobalAveragePooling2D": ({"keepdims": True}, (4, 4, 3), "float32"),
    "GlobalAveragePooling3D": ({}, (3, 3, 3, 2), "float32"),
    "GlobalMaxPooling1D": ({}, (5, 3), "float32"),
    "GlobalMaxPooling2D": ({}, (4, 4, 3), "float32"),
    "GlobalMaxPooling3D": ({}, (3, 3, 3, 2), "float32"),
    "GroupNormalization": ({"groups": 2}, (5, 4), "float32"),
    "LSTM": ({"units": 4}, (5, 3), "float32"),
    "LayerNormalization": ({"epsilon": 1e-4}, (5, 4), "float32"),
    "MaxPooling1D": ({"pool_size": 3, "strides": 2}, (9, 2), "float32"),
    "MaxPooling2D": ({"pool_size": 2, "padding": "same"}, (5, 5, 2), "float32"),
    "MaxPooling3D": ({"pool_size": 2}, (4, 4, 4, 2), "float32"),
    "Maximum": ({}, [(5,), (5,)], "float32"),
    "MultiHeadAttention": ({"num_heads": 2, "key_dim": 3}, [(5, 6), (7, 4)], "float32"),
    "Multiply": ({}, [(5,), (5,)], "float32"),
    "RMSNormalization": ({"epsilon": 1e-5}, (5, 4), "float32"),
    "Reshape": ({"target_shape": (3, 4)}, (12,), "float32"),
    "SeparableConv1D": ({"filters": 4, "kernel_size": 3, "depth_multiplier": 2}, (8, 3), "float32"),
    "SeparableConv2D": ({"filters": 4, "kernel_size": 3}, (6, 6, 3), "float32"),
    "SimpleRNN": ({"units": 4, "go_backwards": True}, (5, 3), "float32"),
    "UpSampling1D": ({"size": 3}, (4, 2), "float32"),
    "UpSampling2D": ({"size": 2, "interpolation": "bilinear"}, (3, 3, 2), "float32"),
    "UpSampling3D": ({"size": 2}, (2, 2, 2, 1), "float32"),
    "ZeroPadding1D": ({"padding": 2}, (4, 2), "float32"),
    "ZeroPadding2D": ({"padding": ((1, 0), (2, 1))}, (3, 3, 2), "float32"),
    "ZeroPadding3D": ({"padding": 1}, (2, 2, 2, 1), "float32"),
}


def _keras_layers_in_catalogue():
    return sorted(n for n in fnn.core.registered_layers() if hasattr(keras.layers, n))


def test_every_catalogue_layer_that_keras_has_is_a_case():
    assert _keras_layers_in_catalogue() == sorted(CASES)


def _make(name, lib):
    kwargs, _, _ = CASES[name]
    if name == "Bidirectional":
        inner = lib.LSTM(4, return_sequences=True)
        return lib.Bidirectional(inner, **kwargs)
    return getattr(lib, name)(**kwargs)


def _inputs(name, seed):
    _, shapes, dtype = CASES[name]
    rng = np.random.default_rng(seed)
    shapes = shapes if isinstance(shapes, list) else [shapes]
    if dtype == "int32":
        xs = [rng.integers(0, 20, size=(3, *s)).astype(dtype) for s in shapes]
    else:
        xs = [rng.normal(size=(3, *s)).astype(dtype) for s in shapes]
    return xs


def _randomised(model, seed):
    rng = np.random.default_rng(seed)
    out = []
    for w in model.weights:
        value = rng.normal(size=w.shape).astype(np.float32) * 0.5
        if w.path.endswith("moving_variance"):
            value = np.abs(value) + 0.5
        out.append(value)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_layer_model_matches_keras(name):
    _, shapes, dtype = CASES[name]
    several = isinstance(shapes, list)
    xs = _inputs(name, 0)
    k_inputs = [keras.Input(x.shape[1:], dtype=dtype) for x in xs]
    k_layer = _make(name, keras.layers)
    merge = name in ("Add", "Average", "Concatenate", "Maximum", "Multiply")
    k_out = k_layer(k_inputs) if merge else k_layer(*k_inputs)
    k = keras.Model(k_inputs if several else k_inputs[0], k_out)
    f = fnn.Model(_make(name, fl))
    if several:
        f.build([(None, *x.shape[1:]) for x in xs])
    else:
        f._build((fnn.core.as_shape_struct(xs[0]),))
    # Build parity: the same arrays, the same shapes, in Keras's order.
    assert [w.shape for w in f.get_weights()] == [tuple(w.shape) for w in k.weights]
    k.set_weights(_randomised(k, 1))
    f.set_weights(k.get_weights())
    for got, want in zip(f.get_weights(), k.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    x = tuple(xs) if several else xs[0]
    want = np.asarray(k(xs if several else xs[0]))
    np.testing.assert_allclose(np.asarray(f.predict(x, verbose=0)), want, rtol=1e-4, atol=1e-5)


def test_bidirectional_get_weights_lists_the_forward_layer_first():
    """Keras's Bidirectional lists its forward layer's weights first; so does fnn's."""
    f = fnn.Sequential([fnn.Input((5, 3)), fl.Bidirectional(fl.GRU(4, name="gru"))])
    k = keras.Sequential([keras.Input((5, 3)), keras.layers.Bidirectional(keras.layers.GRU(4))])
    assert [n.split("/")[1] for n in f.weight_names()] == ["forward_gru"] * 3 + ["backward_gru"] * 3
    # Keras suffixes names already taken in this process (forward_gru_1).
    directions = [w.path.split("/")[-3].split("_")[0] for w in k.weights]
    assert directions == ["forward"] * 3 + ["backward"] * 3


def test_build_infers_integer_inputs_for_an_embedding_first_model():
    f = fnn.Sequential([fl.Embedding(20, 6), fl.GRU(4)])
    f.build((3, 9))
    k = keras.Sequential([keras.layers.Embedding(20, 6), keras.layers.GRU(4)])
    k.build((3, 9))
    assert [w.shape for w in f.get_weights()] == [tuple(w.shape) for w in k.weights]
