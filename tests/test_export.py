"""fnn.export: StableHLO reloaded without fnn, ONNX checked by onnx.checker and run in
onnxruntime (the independent references), both against fnn's own apply."""

import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import fnn
from fnn import layers
from fnn.io.export import ExportError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def conv_net():
    """A Conv/BatchNorm/pool/Dense layer with moved BatchNorm statistics, its params and
    state, and its reference apply (fnn, eager)."""
    layer = fnn.serial(
        layers.Conv2D(4, 3, activation="relu", padding="same"),
        layers.BatchNormalization(),
        layers.MaxPooling2D(2),
        layers.Conv2D(3, 2, padding="valid"),
        layers.AveragePooling2D(2, padding="same"),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(5, activation="softmax"),
    )
    spec = jax.ShapeDtypeStruct((1, 8, 8, 1), "float32")
    params, state = jax.jit(layer.init)(jax.random.key(0), spec)
    state = jax.tree.map(lambda v: v + 0.3, state)
    apply = jax.jit(lambda x: layer.apply(params, state, x)[0])

    def reference(x):
        return np.asarray(apply(x))

    return layer, params, state, reference


def _onnx_run(path, *xs):
    model = onnx.load(path)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {f"input_{i}": x for i, x in enumerate(xs)})[0]


def test_onnx_conv_bn_pool_dense_any_batch(conv_net, tmp_path):
    layer, params, state, reference = conv_net
    x = RNG.normal(size=(7, 8, 8, 1)).astype(np.float32)
    path = fnn.export(layer, params, state, x[:3], tmp_path / "m.onnx", format="onnx")
    for xb in (x[:3], x):  # the batch axis is symbolic
        np.testing.assert_allclose(_onnx_run(path, xb), reference(xb), rtol=1e-5, atol=1e-6)


def test_onnx_embedding_layernorm_attention(tmp_path):
    layer = fnn.serial(
        layers.Embedding(11, 8),
        layers.TransformerEncoderBlock(num_heads=2, key_dim=4, ff_dim=8),
        layers.GlobalAveragePooling1D(),
        layers.Dense(3),
    )
    x = RNG.integers(0, 11, size=(4, 6)).astype(np.int32)
    params, state = jax.jit(layer.init)(jax.random.key(2), x)
    want = np.asarray(jax.jit(lambda x: layer.apply(params, state, x)[0])(x))
    path = fnn.export(layer, params, state, x, tmp_path / "e.onnx", format="onnx")
    np.testing.assert_allclose(_onnx_run(path, x), want, rtol=1e-5, atol=1e-5)


def test_stablehlo_reloads_without_fnn(conv_net, tmp_path):
    layer, params, state, reference = conv_net
    x = RNG.normal(size=(5, 8, 8, 1)).astype(np.float32)
    path = fnn.export(
        layer,
        params,
        state,
        x[:2],
        tmp_path / "m.shlo",
        format="stablehlo",
        platforms=("cpu", "cuda"),
    )
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, jax
        exported = jax.export.deserialize(bytearray(open({str(path)!r}, "rb").read()))
        y = exported.call(np.load({str(tmp_path / "x.npy")!r}))
        assert "fnn" not in sys.modules and exported.platforms == ("cpu", "cuda")
        np.save({str(tmp_path / "y.npy")!r}, np.asarray(y))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference(x), rtol=1e-6, atol=1e-7)


def test_layer_with_explicit_params(tmp_path):
    layer = fnn.serial(layers.Dense(4, activation="tanh"), layers.Dense(2))
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    params, state = jax.jit(layer.init)(jax.random.key(1), x)
    path = fnn.export(layer, params, state, x, tmp_path / "d.onnx", format="onnx")
    w1, b1 = params[layer.children[0][0]]["kernel"], params[layer.children[0][0]]["bias"]
    w2, b2 = params[layer.children[1][0]]["kernel"], params[layer.children[1][0]]["bias"]
    want = np.tanh(x @ np.asarray(w1) + np.asarray(b1)) @ np.asarray(w2) + np.asarray(b2)
    np.testing.assert_allclose(_onnx_run(path, x), want, rtol=1e-5, atol=1e-6)


def test_errors(tmp_path):
    lstm = fnn.serial(layers.Dense(3), layers.LSTM(2))
    x = np.zeros((2, 4, 3), np.float32)
    params, state = jax.eval_shape(lstm.init, jax.random.key(0), x)
    params, state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), (params, state))
    with pytest.raises(ExportError, match=r"layer 'lstm' \(LSTM\) uses the JAX primitive 'scan'"):
        fnn.export(lstm, params, state, x, tmp_path / "l.onnx", format="onnx")
    with pytest.raises(ExportError, match=r"expected format in \['stablehlo', 'onnx'\]"):
        fnn.export(lstm, params, state, x, tmp_path / "l.x", format="tflite")
    with pytest.raises(ExportError, match="needs its params and state"):
        fnn.export(layers.Dense(2), None, None, x, tmp_path / "l.onnx", format="onnx")
    with pytest.raises(ExportError, match="needs a batch axis"):
        fnn.export(lstm, params, state, np.float32(1.0), tmp_path / "l.onnx", format="onnx")
