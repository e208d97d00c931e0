"""fnn.export: StableHLO reloaded without fnn, ONNX checked by onnx.checker and run in
onnxruntime (the independent references), both against Model.predict."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fnn
from fnn import layers
from fnn.io.export import ExportError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

RNG = np.random.default_rng(0)


def _built(layers, shape, dtype="float32"):
    model = fnn.Sequential([fnn.Input(shape, dtype=dtype), *layers])
    model.build((None, *shape))
    return model


@pytest.fixture(scope="module")
def conv_model():
    model = _built(
        [
            layers.Conv2D(4, 3, activation="relu", padding="same"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(2),
            layers.Conv2D(3, 2, strides=1, padding="valid"),
            layers.AveragePooling2D(2, padding="same"),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(5, activation="softmax"),
        ],
        (8, 8, 1),
    )
    # Non-trivial BatchNorm statistics, so the exported moving averages are checked.
    ts = model.train_state
    bn = ts.state["batch_normalization"]
    new_bn = {k: v + (0.3 if "mean" in k else 0.5) for k, v in bn.items()}
    model.train_state = ts._replace(state={**ts.state, "batch_normalization": new_bn})
    return model


def _onnx_run(path, *xs):
    model = onnx.load(path)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {f"input_{i}": x for i, x in enumerate(xs)})[0]


def test_onnx_conv_bn_pool_dense_any_batch(conv_model, tmp_path):
    x = RNG.normal(size=(3, 8, 8, 1)).astype(np.float32)
    path = fnn.export(conv_model, None, None, x, tmp_path / "m.onnx", format="onnx")
    for batch in (3, 7):  # the batch axis is symbolic
        xb = RNG.normal(size=(batch, 8, 8, 1)).astype(np.float32)
        np.testing.assert_allclose(
            _onnx_run(path, xb), conv_model.predict(xb, verbose=0), rtol=1e-5, atol=1e-6
        )


def test_onnx_embedding_layernorm_attention(tmp_path):
    tokens = fnn.Input((6,), dtype="int32")
    h = layers.Embedding(11, 8)(tokens)
    h = layers.MultiHeadAttention(2, 4)(h, h)
    h = layers.LayerNormalization()(h)
    h = layers.GlobalAveragePooling1D()(h)
    out = layers.Dense(3)(h)
    model = fnn.Model(tokens, out)
    x = RNG.integers(0, 11, size=(4, 6)).astype(np.int32)
    model.predict(x, verbose=0)
    path = fnn.export(model, None, None, x, tmp_path / "e.onnx", format="onnx")
    np.testing.assert_allclose(
        _onnx_run(path, x), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_stablehlo_reloads_without_fnn(conv_model, tmp_path):
    x = RNG.normal(size=(5, 8, 8, 1)).astype(np.float32)
    path = fnn.export(conv_model, None, None, x[:2], tmp_path / "m.shlo", format="stablehlo")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, jax
        exported = jax.export.deserialize(bytearray(open({str(path)!r}, "rb").read()))
        y = exported.call(np.load({str(tmp_path / "x.npy")!r}))
        assert "fnn" not in sys.modules
        np.save({str(tmp_path / "y.npy")!r}, np.asarray(y))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=tmp_path)
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), conv_model.predict(x, verbose=0), rtol=1e-6, atol=1e-7
    )


def test_layer_with_explicit_params(tmp_path):
    import jax

    layer = fnn.serial(layers.Dense(4, activation="tanh"), layers.Dense(2))
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    params, state = layer.init(jax.random.key(1), x)
    path = fnn.export(layer, params, state, x, tmp_path / "d.onnx", format="onnx")
    w1, b1 = params[layer.children[0][0]]["kernel"], params[layer.children[0][0]]["bias"]
    w2, b2 = params[layer.children[1][0]]["kernel"], params[layer.children[1][0]]["bias"]
    want = np.tanh(x @ np.asarray(w1) + np.asarray(b1)) @ np.asarray(w2) + np.asarray(b2)
    np.testing.assert_allclose(_onnx_run(path, x), want, rtol=1e-5, atol=1e-6)


def test_errors(tmp_path):
    lstm = _built([layers.LSTM(2)], (4, 3))
    x = np.zeros((2, 4, 3), np.float32)
    with pytest.raises(ExportError, match=r"layer 'lstm' \(LSTM\) uses the JAX primitive 'scan'"):
        fnn.export(lstm, None, None, x, tmp_path / "l.onnx", format="onnx")
    with pytest.raises(ExportError, match=r"expected format in \['stablehlo', 'onnx'\]"):
        fnn.export(lstm, None, None, x, tmp_path / "l.x", format="tflite")
    with pytest.raises(ExportError, match="needs its params and state"):
        fnn.export(layers.Dense(2), None, None, x, tmp_path / "l.onnx", format="onnx")
    with pytest.raises(ExportError, match="needs a batch axis"):
        fnn.export(lstm, None, None, np.float32(1.0), tmp_path / "l.onnx", format="onnx")
