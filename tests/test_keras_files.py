"""Keras model files both ways, checked against Keras 3 itself.

Keras-saved ``.keras`` (and legacy ``.h5``) files open in fnn with Keras's predictions;
fnn-saved ``.keras`` files open in ``keras.saving.load_model`` with fnn's predictions.
Each architecture is written once over a layers module: fnn's catalogue has Keras's
class names and arguments, so ``lib`` is ``keras.layers`` or ``fnn.layers``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import json
import zipfile

import numpy as np
import pytest

import fnn
from fnn import layers as fl
from fnn.io import keras_file

keras = pytest.importorskip("keras")
pytest.importorskip("h5py")

# name -> (input shape without batch, input dtype, layers over ``lib``)
ARCHITECTURES = {
    "mlp": ((10,), "float32", lambda lib: [
        lib.Dense(16, activation="relu"), lib.Dropout(0.3), lib.Dense(3, activation="softmax")]),
    "cnn_batchnorm": ((8, 8, 1), "float32", lambda lib: [
        lib.Conv2D(4, 3, padding="same"), lib.BatchNormalization(), lib.Activation("relu"),
        lib.MaxPooling2D(2), lib.Flatten(), lib.Dense(2)]),
    "lstm_gru_text": ((7,), "int32", lambda lib: [
        lib.Embedding(30, 5), lib.LSTM(6, return_sequences=True), lib.GRU(4),
        lib.Dense(1, activation="sigmoid")]),
    "bidirectional_text": ((7,), "int32", lambda lib: [
        lib.Embedding(30, 5), lib.Bidirectional(lib.LSTM(4, return_sequences=True)),
        lib.Bidirectional(lib.GRU(3), merge_mode="sum"), lib.Dense(2)]),
    "embedding_pooling": ((9,), "int32", lambda lib: [
        lib.Embedding(25, 8), lib.GlobalAveragePooling1D(), lib.Dense(4, activation="tanh")]),
    "conv1d": ((16, 3), "float32", lambda lib: [
        lib.Conv1D(6, 3, strides=2, padding="causal", activation="relu"), lib.MaxPooling1D(2),
        lib.Conv1D(4, 2, dilation_rate=2), lib.GlobalMaxPooling1D(), lib.Dense(2)]),
    "separable_depthwise": ((10, 10, 3), "float32", lambda lib: [
        lib.SeparableConv2D(4, 3, depth_multiplier=2), lib.DepthwiseConv2D(3, padding="same"),
        lib.AveragePooling2D(2), lib.GlobalAveragePooling2D(), lib.Dense(2)]),
    "upsampling_decoder": ((4, 4, 2), "float32", lambda lib: [
        lib.Conv2DTranspose(3, 2, strides=2), lib.UpSampling2D(2), lib.ZeroPadding2D(1),
        lib.Cropping2D(((1, 0), (0, 1))), lib.Conv2D(1, 1, activation="sigmoid")]),
    "norms_rnn": ((12,), "float32", lambda lib: [
        lib.Reshape((4, 3)), lib.LayerNormalization(), lib.SimpleRNN(5, return_sequences=True),
        lib.GroupNormalization(groups=5), lib.RMSNormalization(), lib.Flatten()]),
    "activations": ((6,), "float32", lambda lib: [
        lib.Dense(5, activation="gelu"), lib.Dense(5, activation="selu"),
        lib.Dense(5, activation="softplus"), lib.Activation("swish"),
        lib.Dense(4, activation="leaky_relu", use_bias=False), lib.Activation("softmax")]),
    "conv3d": ((4, 4, 4, 1), "float32", lambda lib: [
        lib.Conv3D(2, 2, padding="same"), lib.MaxPooling3D(2), lib.UpSampling3D(2),
        lib.GlobalAveragePooling3D()]),
    "gru_options": ((6, 4), "float32", lambda lib: [
        lib.GRU(5, reset_after=False, return_sequences=True, go_backwards=True),
        lib.LSTM(3, unit_forget_bias=False), lib.Dense(2)]),
}  # fmt: skip


def _data(name, seed=0):
    shape, dtype, _ = ARCHITECTURES[name]
    rng = np.random.default_rng(seed)
    if dtype == "int32":
        return rng.integers(0, 25, size=(4, *shape)).astype(dtype)
    return rng.normal(size=(4, *shape)).astype(dtype)


def _keras_model(name):
    shape, dtype, layers = ARCHITECTURES[name]
    model = keras.Sequential([keras.Input(shape, dtype=dtype), *layers(keras.layers)], name=name)
    rng = np.random.default_rng(1)
    # Random weights (positive variances) so that a wrong order or layout shows.
    model.set_weights(
        [
            np.abs(rng.normal(size=w.shape)).astype("float32") + 0.5
            if w.path.endswith("moving_variance")
            else rng.normal(size=w.shape).astype("float32") * 0.4
            for w in model.weights
        ]
    )
    return model


def _fnn_model(name):
    shape, dtype, layers = ARCHITECTURES[name]
    model = fnn.Sequential([fnn.Input(shape, dtype=dtype), *layers(fl)], name=name)
    rng = np.random.default_rng(2)
    weights = model.get_weights()
    model.set_weights(
        [
            np.abs(rng.normal(size=w.shape)).astype("float32") + 0.5
            if n.endswith("moving_variance")
            else rng.normal(size=w.shape).astype("float32") * 0.4
            for n, w in zip(model.weight_names(), weights, strict=True)
        ]
    )
    return model


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_keras_saved_file_predicts_the_same_in_fnn(tmp_path, name):
    k = _keras_model(name)
    x = _data(name)
    k.save(tmp_path / "m.keras")
    f = fnn.load_model(tmp_path / "m.keras")
    assert isinstance(f, fnn.Sequential) and f.name == name
    assert [w.shape for w in f.get_weights()] == [tuple(w.shape) for w in k.weights]
    _close(f.predict(x, verbose=0), k.predict(x, verbose=0))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_fnn_saved_file_predicts_the_same_in_keras(tmp_path, name):
    f = _fnn_model(name)
    x = _data(name)
    fnn.save_model(tmp_path / "m.keras", f)
    k = keras.saving.load_model(tmp_path / "m.keras")
    assert [w.shape for w in f.get_weights()] == [tuple(w.shape) for w in k.weights]
    _close(k.predict(x, verbose=0), f.predict(x, verbose=0))
    # ... and back into fnn: the same weights, bit for bit.
    again = fnn.load_model(tmp_path / "m.keras")
    for got, want in zip(again.get_weights(), f.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["mlp", "cnn_batchnorm", "bidirectional_text", "gru_options"])
def test_legacy_h5_full_model_file_predicts_the_same_in_fnn(tmp_path, name):
    k = _keras_model(name)
    x = _data(name)
    k.save(tmp_path / "m.h5")  # Keras 2-style HDF5 (model_config + model_weights)
    f = fnn.load_model(tmp_path / "m.h5")
    _close(f.predict(x, verbose=0), k.predict(x, verbose=0))


def test_truncated_and_foreign_files_are_a_clear_error(tmp_path):
    k = _keras_model("mlp")
    k.save(tmp_path / "m.keras")
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(fnn.ConfigError, match=r"^load_model: cannot read .*cut\.keras.*unreadable"):
        fnn.load_model(tmp_path / "cut.keras")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(fnn.ConfigError, match=r"text\.h5.*unreadable HDF5 file"):
        fnn.load_model(tmp_path / "text.h5")
    with zipfile.ZipFile(tmp_path / "noweights.keras", "w") as z:
        z.writestr("config.json", json.dumps(k.get_config()))
    with pytest.raises(fnn.ConfigError, match=r"a zip without model\.weights\.h5"):
        fnn.load_model(tmp_path / "noweights.keras")
    k.save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(fnn.ConfigError, match=r"without model_config \(a weights-only file\?\)"):
        fnn.load_model(tmp_path / "only.weights.h5")
    with pytest.raises(fnn.ConfigError, match=r"no such file"):
        fnn.load_model(tmp_path / "missing.keras")


@keras.saving.register_keras_serializable(package="tests")
class Scale(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def test_custom_and_lambda_layers_are_named_in_one_error(tmp_path):
    k = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3),
            Scale(name="scale"),
            keras.layers.Lambda(lambda x: x + 1.0, name="plus_one"),
            keras.layers.Reshape((3, 1)),
            keras.layers.TimeDistributed(keras.layers.Dense(2), name="td"),
        ]
    )
    k.save(tmp_path / "custom.keras")
    with pytest.raises(fnn.ConfigError, match=r"cannot load 3 layer\(s\)") as info:
        fnn.load_model(tmp_path / "custom.keras")
    message = str(info.value)
    assert "'scale' (Scale): a custom object (tests>Scale)" in message
    assert "'plus_one' (Lambda): holds Python code, which fnn never runs" in message
    assert "'td' (TimeDistributed): not in fnn's layer catalogue" in message


def test_settings_that_change_the_math_load_or_are_refused_by_name(tmp_path):
    k = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, kernel_regularizer="l2", name="reg")]
    )
    k.save(tmp_path / "reg.keras")
    # Dense's regularizers load (fnn.regularizers): the penalty joins the loss as in Keras.
    f = fnn.load_model(tmp_path / "reg.keras")
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    y = np.zeros((6, 3), "float32")
    k.compile(loss="mse")
    f.compile(loss="mse")
    assert f.evaluate(x, y, verbose=0) == pytest.approx(k.evaluate(x, y, verbose=0), rel=1e-5)
    ln = keras.Sequential([keras.Input((4,)), keras.layers.LayerNormalization(rms_scaling=True)])
    ln.save(tmp_path / "rms.keras")
    with pytest.raises(
        fnn.ConfigError, match=r"rms_scaling=True \(fnn supports only the default\)"
    ):
        fnn.load_model(tmp_path / "rms.keras")


def test_fnn_layers_keras_lacks_are_refused_when_writing(tmp_path):
    model = fnn.Sequential(
        [fnn.Input((5,), dtype="int32"), fl.Embedding(10, 4), fl.PositionalEmbedding(5)]
    )
    with pytest.raises(fnn.ConfigError, match=r"cannot write PositionalEmbedding to a Keras file"):
        fnn.save_model(tmp_path / "p.keras", model)
    lstm = fnn.Sequential([fnn.Input((5, 3)), fl.LSTM(2, return_sequences=True, return_mask=True)])
    with pytest.raises(fnn.ConfigError, match=r"Keras's LSTM has no return_mask"):
        fnn.save_model(tmp_path / "l.keras", lstm)
    mlp = _fnn_model("mlp")
    with pytest.raises(fnn.ConfigError, match=r"fnn writes Keras 3 \.keras archives, not \.h5"):
        fnn.save_model(tmp_path / "m.h5", mlp)
    assert not list(tmp_path.iterdir())


def _functional_pair():
    """Two inputs (one of token ids), a merge, a shared layer, attention, two outputs."""
    L = keras.layers
    tokens, feats = keras.Input((7,), dtype="int32", name="tokens"), keras.Input((5, 4), name="x")
    emb = L.Embedding(20, 4)(tokens)
    att = L.MultiHeadAttention(2, 3, name="mha")(feats, emb)
    shared = L.Dense(4, activation="tanh", name="shared")
    h = L.concatenate([shared(shared(att)), feats])
    pooled = L.GlobalAveragePooling1D()(h)
    summed = L.Add()([L.Dense(3)(pooled), L.Dense(3)(pooled)])
    k = keras.Model([tokens, feats], [L.Dense(2, name="a")(summed), L.Dense(1, name="b")(pooled)])
    rng = np.random.default_rng(3)
    k.set_weights([rng.normal(size=w.shape).astype("float32") * 0.4 for w in k.weights])
    x = [
        rng.integers(0, 20, size=(3, 7)).astype("int32"),
        rng.normal(size=(3, 5, 4)).astype("float32"),
    ]
    return k, x


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_functional_model_predicts_the_same_in_fnn(tmp_path, suffix):
    k, x = _functional_pair()
    k.save(tmp_path / f"f{suffix}")
    f = fnn.load_model(tmp_path / f"f{suffix}")
    assert [w.shape for w in f.get_weights()] == [tuple(w.shape) for w in k.weights]
    for got, want in zip(f.predict(tuple(x), verbose=0), k.predict(x, verbose=0), strict=True):
        _close(got, want)


def test_other_paths_keep_fnn_directory_format(tmp_path):
    f = _fnn_model("mlp")
    fnn.save_model(tmp_path / "dir", f)
    assert (tmp_path / "dir").is_dir()
    again = fnn.load_model(tmp_path / "dir")
    _close(again.predict(_data("mlp"), verbose=0), f.predict(_data("mlp"), verbose=0))
    assert not keras_file.is_keras_path(tmp_path / "dir")


def test_nested_models_and_unwritable_models_are_named(tmp_path):
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="inner")
    outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)])
    outer.save(tmp_path / "nested.keras")
    with pytest.raises(fnn.ConfigError, match=r"'inner' \(Sequential\): a model nested in the"):
        fnn.load_model(tmp_path / "nested.keras")


class _Subclassed(fnn.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.head = fl.Dense(2)

    def call(self, x):
        return self.head(x)


def test_subclassed_and_nested_models_are_refused_when_writing(tmp_path):
    sub = _Subclassed()
    sub.predict(np.zeros((2, 4), "float32"), verbose=0)
    with pytest.raises(fnn.ConfigError, match=r"sub: save: cannot write a \.keras file of a subc"):
        sub.save(tmp_path / "s.keras")
    x = fnn.Input((4,))
    inner = fnn.Model(x, fl.Dense(3)(x), name="inner")
    y = fnn.Input((4,))
    outer = fnn.Model(y, fl.Dense(2)(inner(y)), name="outer")
    with pytest.raises(fnn.ConfigError, match=r"outer: cannot write layer 'inner' \(Functional\)"):
        outer.save(tmp_path / "n.keras")
    z = fnn.Input((4,))
    arithmetic = fnn.Model(z, fl.Dense(2)(z) * 2.0, name="arith")
    with pytest.raises(fnn.ConfigError, match=r"cannot write TensorOp to a Keras file"):
        arithmetic.save(tmp_path / "a.keras")
    wrapped = fnn.Model(fl.Dense(2), name="wrapped")
    wrapped.predict(np.zeros((2, 4), "float32"), verbose=0)
    with pytest.raises(fnn.ConfigError, match=r"wrapped: save: .* of a Model around one layer"):
        wrapped.save(tmp_path / "w.keras")
    assert not list(tmp_path.iterdir())


# Functional graphs written once over ``lib`` (keras.layers or fnn.layers) and ``Input``.
def _two_in_dict_out(lib, Input):
    a, b = Input((4,), name="a"), Input((3,), name="b")
    shared = lib.Dense(5, activation="tanh", name="shared")
    x = lib.Concatenate()([shared(lib.Dense(4)(b)), shared(a)])
    y1 = lib.Dense(2, name="o1")(lib.BatchNormalization()(x))
    return [a, b], {"y1": y1, "y2": lib.Dense(1, activation="sigmoid", name="o2")(x)}


def _residual_cnn(lib, Input):
    x = Input((8, 8, 3), name="image")
    h = lib.Activation("relu")(lib.BatchNormalization()(lib.Conv2D(4, 3, padding="same")(x)))
    for _ in range(2):
        r = lib.BatchNormalization()(lib.Conv2D(4, 3, padding="same", activation="relu")(h))
        h = lib.Add()([h, r])
    return x, lib.Dense(3, activation="softmax")(lib.GlobalAveragePooling2D()(h))


def _text_attention_list_out(lib, Input):
    tokens, feats = Input((7,), dtype="int32", name="tokens"), Input((5, 4), name="x")
    emb = lib.Embedding(20, 4)(tokens)
    att = lib.MultiHeadAttention(2, 3, name="mha")(feats, emb)
    shared = lib.Dense(4, activation="tanh", name="shared")
    h = lib.Concatenate()([shared(shared(att)), feats])
    pooled = lib.GlobalAveragePooling1D()(h)
    summed = lib.Add()([lib.Dense(3)(pooled), lib.Dense(3)(pooled)])
    return [tokens, feats], [lib.Dense(2, name="a")(summed), lib.Dense(1, name="b")(pooled)]


def _recurrent_branches(lib, Input):
    x = Input((6, 3), name="seq")
    fwd = lib.LSTM(4, return_sequences=True)(x)
    both = lib.Bidirectional(lib.GRU(3))(fwd)
    last = lib.SimpleRNN(2)(lib.Dropout(0.5)(x))
    return x, lib.Dense(2)(lib.Concatenate()([both, last, lib.Dense(3)(both)]))


def _dict_in(lib, Input):
    a, b = Input((4,), name="left"), Input((4,), name="right")
    d = lib.Dense(3, name="tower")
    return {"left": a, "right": b}, lib.Multiply()([d(a), d(b)])


GRAPHS = {
    "two_in_dict_out": _two_in_dict_out,
    "residual_cnn": _residual_cnn,
    "text_attention_list_out": _text_attention_list_out,
    "recurrent_branches": _recurrent_branches,
    "dict_in": _dict_in,
}


def _random_weights(model, names, seed):
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            np.abs(rng.normal(size=w.shape)).astype("float32") + 0.5
            if n.endswith("moving_variance")
            else rng.normal(size=w.shape).astype("float32") * 0.4
            for n, w in zip(names, model.get_weights(), strict=True)
        ]
    )


def _graph_data(inputs, seed=0):
    rng = np.random.default_rng(seed)

    def one(t):
        shape = (3, *t.shape[1:])
        if np.dtype(t.dtype).kind == "i":
            return rng.integers(0, 20, size=shape).astype("int32")
        return rng.normal(size=shape).astype("float32")

    if isinstance(inputs, dict):
        return {k: one(t) for k, t in inputs.items()}
    return [one(t) for t in inputs] if isinstance(inputs, list) else one(inputs)


def _flat(y):
    if isinstance(y, dict):
        return [np.asarray(y[k]) for k in sorted(y)]
    return [np.asarray(v) for v in y] if isinstance(y, list | tuple) else [np.asarray(y)]


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_fnn_functional_file_predicts_the_same_in_keras(tmp_path, name):
    inputs, outputs = GRAPHS[name](fl, fnn.Input)
    f = fnn.Model(inputs, outputs, name=name)
    _random_weights(f, f.weight_names(), seed=4)
    x = _graph_data(inputs)
    f.save(tmp_path / "m.keras")
    k = keras.saving.load_model(tmp_path / "m.keras")
    assert k.name == name
    # Keras's own model of the same graph orders its layers and weights the same way.
    ki, ko = GRAPHS[name](keras.layers, keras.Input)
    reference = keras.Model(ki, ko, name=name)
    classes = [type(layer).__name__ for layer in reference.layers]
    assert [type(layer).__name__ for layer in k.layers] == classes
    assert [w.shape for w in k.weights] == [w.shape for w in reference.weights]
    for got, want in zip(k.get_weights(), f.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    fx = tuple(x) if isinstance(x, list) else x
    expected = _flat(f.predict(fx, verbose=0))
    keras_out = _flat(k.predict(x, verbose=0))
    assert len(keras_out) == len(expected)
    for got, want in zip(keras_out, expected, strict=True):
        _close(got, want)
    again = fnn.load_model(tmp_path / "m.keras")
    for got, want in zip(again.get_weights(), f.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_flat(again.predict(fx, verbose=0)), expected, strict=True):
        _close(got, want)


def test_model_checkpoint_writes_a_functional_keras_file(tmp_path):
    inputs, outputs = _residual_cnn(fl, fnn.Input)
    f = fnn.Model(inputs, outputs, name="cnn")
    f.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = _graph_data(inputs)
    y = np.array([0, 1, 2])
    path = tmp_path / "best_model.keras"
    f.fit(x, y, epochs=1, verbose=0, callbacks=[fnn.callbacks.ModelCheckpoint(path, "loss")])
    k = keras.saving.load_model(path)
    _close(k.predict(x, verbose=0), f.predict(x, verbose=0))


@pytest.mark.parametrize("name", ["two_in_dict_out", "residual_cnn"])
def test_keras_functional_graphs_incl_dict_outputs_open_in_fnn(tmp_path, name):
    inputs, outputs = GRAPHS[name](keras.layers, keras.Input)
    k = keras.Model(inputs, outputs, name=name)
    _random_weights(k, [w.path for w in k.weights], seed=5)
    x = _graph_data(inputs)
    k.save(tmp_path / "k.keras")
    f = fnn.load_model(tmp_path / "k.keras")
    fx = tuple(x) if isinstance(x, list) else x
    got, want = _flat(f.predict(fx, verbose=0)), _flat(k.predict(x, verbose=0))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        _close(g, w)


def test_a_compiled_keras_file_loads_compiled(tmp_path):
    k = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    k.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["sparse_categorical_accuracy"],
    )
    k.save(tmp_path / "c.keras")
    f = fnn.load_model(tmp_path / "c.keras")
    assert isinstance(f.optimizer, fnn.optimizers.Adam)
    assert f.optimizer.learning_rate == pytest.approx(0.01)
    x = np.random.default_rng(1).random((8, 4)).astype("float32")
    y = np.arange(8) % 3
    np.testing.assert_allclose(f.evaluate(x, y, verbose=0), k.evaluate(x, y, verbose=0), rtol=1e-5)
    assert not fnn.load_model(tmp_path / "c.keras", compile=False).compiled
