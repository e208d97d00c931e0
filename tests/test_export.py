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


def _onnx_run(path, *xs, every=False):
    model = onnx.load(path)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {f"input_{i}": x for i, x in enumerate(xs)})
    return outputs if every else outputs[0]


def _random_params(layer, key, *xs):
    """``layer``'s params drawn N(0, 0.5^2) (every gate, bias and block non-trivial) and state."""
    params, state = jax.eval_shape(layer.init, key, *xs)
    draw = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    params = jax.tree.map(lambda s: (0.5 * draw.normal(size=s.shape)).astype(s.dtype), params)
    return params, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)


def _assert_onnx_equals_fnn(layer, params, state, xs, tmp_path, *, export_batch=2):
    """Export with a batch of ``export_batch``, run the whole batch in onnxruntime and
    compare every output (tuples flattened) with fnn's apply."""
    example = tuple(x[:export_batch] for x in xs)
    path = fnn.export(layer, params, state, example, tmp_path / "r.onnx", format="onnx")
    want = jax.tree.leaves(layer.apply(params, state, *xs)[0])
    got = _onnx_run(path, *xs, every=True)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-5, atol=1e-6)


# (class, arguments): every output mode, go_backwards, both GRU variants, the activations
# that map onto ONNX's (Keras 3 hard_sigmoid as HardSigmoid(1/6, 1/2), linear as Affine).
RECURRENT_CASES = [
    ("LSTM", {}),
    ("LSTM", {"return_sequences": True, "go_backwards": True}),
    ("LSTM", {"return_state": True, "use_bias": False}),
    ("GRU", {"return_sequences": True, "return_state": True}),
    ("GRU", {"reset_after": False, "go_backwards": True, "recurrent_activation": "hard_sigmoid"}),
    ("SimpleRNN", {"activation": "relu", "return_sequences": True}),
    ("SimpleRNN", {"activation": "linear", "return_state": True}),
    ("SimpleRNN", {"activation": "elu"}),
    ("GRU", {"activation": "softsign", "recurrent_activation": "softplus"}),
    ("Bidirectional", {"return_sequences": True}),
]


@pytest.mark.parametrize(("kind", "kwargs"), RECURRENT_CASES)
def test_onnx_recurrent_equals_fnn(kind, kwargs, tmp_path):
    if kind == "Bidirectional":
        layer = layers.Bidirectional(layers.LSTM(3, **kwargs), merge_mode="concat")
    else:
        layer = getattr(layers, kind)(3, **kwargs)
    for steps in (1, 6):
        x = RNG.normal(size=(5, steps, 2)).astype(np.float32)
        params, state = _random_params(layer, jax.random.key(steps), x)
        _assert_onnx_equals_fnn(layer, params, state, (x,), tmp_path)


def _tokens(steps):
    """Token rows with padding (0) anywhere: at the end, inside, everywhere, nowhere."""
    tokens = RNG.integers(1, 6, size=(5, steps)).astype(np.int32)
    tokens[0, steps // 2 :] = 0
    tokens[1, ::2] = 0
    tokens[2] = 0
    return tokens


def test_onnx_recurrent_masks(tmp_path):
    # Embedding(mask_zero) -> Bidirectional GRU passing the mask on -> a backward LSTM,
    # and a GRU whose mask and initial state are model inputs; 0, 1 or several real steps.
    stacked = fnn.serial(
        layers.Embedding(6, 2, mask_zero=True),
        layers.Bidirectional(layers.GRU(3, return_sequences=True, return_mask=True)),
        layers.LSTM(2, go_backwards=True, return_sequences=True),
        layers.SimpleRNN(2, return_state=True),
    )
    gru = layers.GRU(3, return_sequences=True)
    zeroed = fnn.serial(
        layers.Embedding(6, 2, mask_zero=True),
        layers.LSTM(2, return_sequences=True, zero_output_for_mask=True, go_backwards=True),
    )
    for steps in (1, 6):
        tokens = _tokens(steps)
        params, state = _random_params(stacked, jax.random.key(steps), tokens)
        _assert_onnx_equals_fnn(stacked, params, state, (tokens,), tmp_path)
        params, state = _random_params(zeroed, jax.random.key(steps), tokens)
        _assert_onnx_equals_fnn(zeroed, params, state, (tokens,), tmp_path)
        x = RNG.normal(size=(5, steps, 2)).astype(np.float32)
        h0 = RNG.normal(size=(5, 3)).astype(np.float32)
        params, state = _random_params(gru, jax.random.key(steps), x)
        _assert_onnx_equals_fnn(gru, params, state, (x, tokens != 0, h0), tmp_path)


def test_onnx_recurrent_error_names_the_layer(tmp_path):
    model = fnn.serial(layers.LSTM(2, return_sequences=True), layers.LSTM(2, activation="gelu"))
    x = np.zeros((2, 3, 2), np.float32)
    params, state = _random_params(model, jax.random.key(0), x)
    with pytest.raises(
        ExportError, match=r"layer 'lstm_1' \(LSTM\): activation='gelu' has no ONNX"
    ):
        fnn.export(model, params, state, x, tmp_path / "g.onnx", format="onnx")
    bf16 = layers.LSTM(2, dtype="mixed_bfloat16")
    params, state = _random_params(bf16, jax.random.key(0), x)
    with pytest.raises(ExportError, match=r"layer 'lstm' \(LSTM\): ONNX export needs float32"):
        fnn.export(bf16, params, state, x, tmp_path / "b.onnx", format="onnx")


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
    # A recurrent model (a scan) in the same fresh process.
    lstm = fnn.serial(layers.LSTM(3, return_sequences=True), layers.GRU(2))
    seq = RNG.normal(size=(5, 4, 2)).astype(np.float32)
    lstm_params, lstm_state = _random_params(lstm, jax.random.key(3), seq)
    fnn.export(lstm, lstm_params, lstm_state, seq[:2], tmp_path / "l.shlo")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "seq.npy", seq)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, jax
        def load(name):
            return jax.export.deserialize(bytearray(open(name, "rb").read()))
        exported = load({str(path)!r})
        y = exported.call(np.load("x.npy"))
        assert "fnn" not in sys.modules and exported.platforms == ("cpu", "cuda")
        np.save("y.npy", np.asarray(y))
        np.save("l.npy", np.asarray(load("l.shlo").call(np.load("seq.npy"))))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference(x), rtol=1e-6, atol=1e-7)
    want = lstm.apply(lstm_params, lstm_state, seq)[0]
    np.testing.assert_allclose(np.load(tmp_path / "l.npy"), want, rtol=1e-6, atol=1e-6)


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
    params, state = _random_params(lstm, jax.random.key(0), x)
    up = fnn.serial(layers.Dense(3), layers.Conv1DTranspose(2, 3, strides=2))
    up_params, up_state = _random_params(up, jax.random.key(0), x)
    with pytest.raises(
        ExportError, match=r"layer 'conv1d_transpose' \(Conv1DTranspose\) uses the JAX primitive"
    ):
        fnn.export(up, up_params, up_state, x, tmp_path / "u.onnx", format="onnx")
    with pytest.raises(ExportError, match=r"expected format in \['stablehlo', 'onnx'\]"):
        fnn.export(lstm, params, state, x, tmp_path / "l.x", format="tflite")
    with pytest.raises(ExportError, match="needs its params and state"):
        fnn.export(layers.Dense(2), None, None, x, tmp_path / "l.onnx", format="onnx")
    with pytest.raises(ExportError, match="needs a batch axis"):
        fnn.export(lstm, params, state, np.float32(1.0), tmp_path / "l.onnx", format="onnx")
