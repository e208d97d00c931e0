"""The functional API (fnn.Input, calling layers, fnn.Model(inputs, outputs)) against
Keras 3 itself: the same graph built in both, Keras's weights moved over with
set_weights, equal predictions and parameter counts."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import layers as fl

keras = pytest.importorskip("keras")
kl = keras.layers


def _mlp(lib, L):
    x = lib.Input((6,), name="features")
    h = L.Dense(8, activation="relu")(x)
    h = L.Dense(8, activation="tanh")(h)
    return lib.Model(x, L.Dense(3)(h))


def _multi_io(lib, L):
    title = lib.Input((None,), dtype="int32", name="title")
    body = lib.Input((None,), dtype="int32", name="body")
    tags = lib.Input((5,), name="tags")
    t = L.LSTM(6)(L.Embedding(30, 4)(title))
    b = L.GRU(3)(L.Embedding(30, 4)(body))
    h = L.concatenate([t, b, tags])
    return lib.Model(
        [title, body, tags], [L.Dense(1, name="priority")(h), L.Dense(4, name="dept")(h)]
    )


def _shared(lib, L):
    a = lib.Input((7,), dtype="int32")
    b = lib.Input((7,), dtype="int32")
    emb = L.Embedding(20, 5)
    pool = L.GlobalAveragePooling1D()
    h = L.concatenate([pool(emb(a)), pool(emb(b))])
    return lib.Model([a, b], L.Dense(2)(h))


def _resnet(lib, L):
    x = lib.Input((12, 12, 3))
    h = L.Conv2D(8, 3, activation="relu")(x)
    block = L.MaxPooling2D(2)(L.Conv2D(8, 3, activation="relu")(h))
    r = L.Conv2D(8, 3, padding="same", activation="relu")(block)
    r = L.Conv2D(8, 3, padding="same")(r)
    h = L.add([r, block])
    h = L.BatchNormalization()(h)
    h = L.GlobalAveragePooling2D()(h)
    return lib.Model(x, L.Dense(4)(L.Dropout(0.5)(h)))


def _transformer(lib, L):
    tokens = lib.Input((10,), dtype="int32")
    h = L.Embedding(50, 8)(tokens)
    att = L.MultiHeadAttention(num_heads=2, key_dim=4)(h, h)
    h = L.LayerNormalization(epsilon=1e-6)(L.add([h, att]))
    ff = L.Dense(8)(L.Dense(16, activation="relu")(h))
    h = L.LayerNormalization(epsilon=1e-6)(L.add([h, ff]))
    h = L.GlobalAveragePooling1D()(h)
    return lib.Model(tokens, L.Dense(2, activation="softmax")(L.Dense(6, activation="relu")(h)))


def _nested(lib, L):
    inner_in = lib.Input((4,))
    inner = lib.Model(inner_in, L.Dense(3, activation="relu")(inner_in), name="inner")
    x = lib.Input((4,))
    y = lib.Input((4,))
    h = L.concatenate([inner(x), inner(y)])
    return lib.Model([x, y], L.Dense(2)(h))


def _arithmetic(lib, L):
    x = lib.Input((5,))
    a = L.Dense(5)(x)
    b = L.Dense(5)(x)
    return lib.Model(x, L.Dense(1)(L.multiply([a, b])))


def _feature_extraction(lib, L):
    x = lib.Input((6,))
    h1 = L.Dense(5, activation="relu", name="h1")(x)
    h2 = L.Dense(4, activation="relu", name="h2")(h1)
    base = lib.Model(x, L.Dense(2, name="head")(h2))
    return lib.Model(base.inputs, [base.get_layer("h1").output, base.get_layer("h2").output])


def _conv1d_bilstm(lib, L):
    x = lib.Input((16, 3))
    h = L.Conv1D(6, 3, activation="relu")(x)
    h = L.MaxPooling1D(2)(h)
    h = L.Bidirectional(L.LSTM(4, return_sequences=True))(h)
    h = L.GlobalMaxPooling1D()(h)
    return lib.Model(x, L.Dense(2)(h))


def _dict_outputs(lib, L):
    x = lib.Input((6,))
    h = L.Dense(8, activation="relu")(x)
    return lib.Model(x, {"score": L.Dense(1)(h), "label": L.Dense(3, activation="softmax")(h)})


def _inputs(model, rng):
    out = []
    for t in model.inputs:
        shape = tuple(7 if d is None else d for d in t.shape[1:])
        if "int" in str(t.dtype):
            out.append(rng.integers(0, 20, (4, *shape)).astype("int32"))
        else:
            out.append(rng.normal(size=(4, *shape)).astype("float32"))
    return out


BUILDERS = [
    _mlp,
    _multi_io,
    _shared,
    _resnet,
    _transformer,
    _nested,
    _arithmetic,
    _feature_extraction,
    _conv1d_bilstm,
    _dict_outputs,
]


def _flat(out):
    if isinstance(out, dict):
        return [np.asarray(out[k]) for k in sorted(out)]
    if isinstance(out, list | tuple):
        return [np.asarray(o) for o in out]
    return [np.asarray(out)]


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__.strip("_"))
def test_graph_equals_keras_with_moved_weights(builder):
    kmodel = builder(keras, kl)
    model = builder(fnn, fl)
    assert model.count_params() == kmodel.count_params()
    assert [w.shape for w in model.get_weights()] == [w.shape for w in kmodel.get_weights()]
    model.set_weights(kmodel.get_weights())
    xs = _inputs(model, np.random.default_rng(0))
    arg = xs[0] if len(xs) == 1 else xs
    want = _flat(kmodel.predict(arg, verbose=0))
    got = _flat(model.predict(arg, verbose=0))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)
    called = _flat(model(arg))
    for g, w in zip(called, want):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)


def test_symbolic_shapes_follow_the_data_where_keras_says_none():
    tokens = fnn.Input((None,), dtype="int32")
    h = fl.Embedding(10, 4)(tokens)
    assert h.shape == (None, None, 4)
    pooled = fl.MaxPooling1D(2)(fl.Conv1D(3, 3)(h))
    assert pooled.shape == (None, None, 3)
    ktokens = keras.Input((None,), dtype="int32")
    kpooled = kl.MaxPooling1D(2)(kl.Conv1D(3, 3)(kl.Embedding(10, 4)(ktokens)))
    assert tuple(kpooled.shape) == pooled.shape


def test_graph_layer_is_pure_under_jit_grad_vmap_and_eval_shape():
    x = fnn.Input((3,))
    model = fnn.Model(x, fl.Dense(2)(fl.Dense(4, activation="tanh")(x)))
    layer = model.layer
    abstract = jax.ShapeDtypeStruct((1, 3), jnp.float32)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), abstract)
    assert jax.tree.map(lambda a: a.shape, shapes[0])["dense"]["kernel"] == (3, 4)
    params, state = layer.init(jax.random.key(1), abstract)
    data = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    eager, _ = layer.apply(params, state, data)
    jitted, _ = jax.jit(layer.apply)(params, state, data)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
    per_row = jax.vmap(lambda r: layer.apply(params, state, r[None])[0][0])(data)
    np.testing.assert_allclose(per_row, eager, rtol=1e-5, atol=1e-6)

    # The same function written by hand: gradients agree.
    def by_hand(p, v):
        h = jnp.tanh(v @ p["dense"]["kernel"] + p["dense"]["bias"])
        return jnp.sum(h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"])

    g = jax.grad(lambda p: jnp.sum(layer.apply(p, state, data)[0]))(params)
    want = jax.grad(by_hand)(params, data)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), g, want)
    # A graph is an ordinary layer: it nests in fnn.serial.
    stacked = fnn.serial(layer, fl.Dense(1))
    p2, s2 = stacked.init(jax.random.key(0), abstract)
    assert stacked.apply(p2, s2, data)[0].shape == (5, 1)


def test_bad_graphs_raise_before_tracing():
    a, b = fnn.Input((3,), name="a"), fnn.Input((4,), name="b")
    out = fl.Dense(2)(fl.concatenate([a, b]))
    with pytest.raises(fnn.ConfigError, match="depends on the input 'b'.*disconnected"):
        fnn.Model(a, out)
    with pytest.raises(fnn.ConfigError, match="expected inputs to be fnn.Input tensors"):
        fnn.Model(fl.Dense(3)(a), out)
    with pytest.raises(fnn.ConfigError, match="expected outputs to be a symbolic tensor"):
        fnn.Model(a, np.ones(3))
    with pytest.raises(
        fnn.ShapeError, match=r"concatenate: called on a \(None, 3\), .*\(None, 2, 2\)"
    ):
        fl.concatenate([a, fnn.Input((2, 2))])
    with pytest.raises(fnn.ShapeError, match=r"add: called on q \(None, 3\), .*\(None, 5\)"):
        fl.Dense(3, name="q")(fnn.Input((4,))) + fnn.Input((5,))


def test_data_of_another_shape_is_refused_with_the_input_name():
    x = fnn.Input((4,), name="pixels")
    model = fnn.Model(x, fl.Dense(2)(x))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(
        fnn.ShapeError, match=r"expected input 'pixels' of shape \(None, 4\).*\(8, 5\)"
    ):
        model.fit(np.ones((8, 5), "float32"), np.ones((8, 2), "float32"), verbose=0)
    with pytest.raises(fnn.ShapeError, match="pixels"):
        model.predict(np.ones((8, 3), "float32"), verbose=0)


def test_named_inputs_and_outputs_train_like_keras_dict_data():
    """fit with dicts keyed by input and output names, per-output losses and loss weights:
    one SGD step moves the weights exactly as Keras's does."""
    kmodel, model = _multi_io(keras, kl), _multi_io(fnn, fl)
    model.set_weights(kmodel.get_weights())
    rng = np.random.default_rng(1)
    data = dict(zip(["title", "body", "tags"], _inputs(model, rng)))
    targets = {
        "priority": rng.random((4, 1)).astype("float32"),
        "dept": np.eye(4, dtype="float32")[rng.integers(0, 4, 4)],
    }
    losses = {"priority": "binary_crossentropy", "dept": "categorical_crossentropy"}
    weights = {"priority": 1.0, "dept": 0.2}
    metrics = {"dept": ["categorical_accuracy"]}
    kmodel.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=losses, loss_weights=weights, metrics=metrics
    )
    model.compile(optimizer=optax.sgd(0.1), loss=losses, loss_weights=weights, metrics=metrics)
    kh = kmodel.fit(data, targets, epochs=1, batch_size=4, shuffle=False, verbose=0)
    h = model.fit(data, targets, epochs=1, batch_size=4, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"], kh.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(h.history["dept_loss"], kh.history["dept_loss"], rtol=1e-5)
    assert sorted(h.history) == sorted(kh.history)
    np.testing.assert_allclose(
        h.history["dept_categorical_accuracy"], kh.history["dept_categorical_accuracy"]
    )
    for got, want in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_layers_get_layer_and_weights_read_the_model():
    x = fnn.Input((3,), name="x")
    h = fl.Dense(4, name="hidden")(x)
    model = fnn.Model(x, fl.Dense(1, name="head")(h))
    assert [layer.name for layer in model.layers] == ["x", "hidden", "head"]
    view = model.get_layer("hidden")
    assert view.output is h and model.get_layer(index=2).name == "head"
    kernel, bias = view.get_weights()
    assert kernel.shape == (3, 4)
    view.set_weights([np.ones_like(kernel), np.zeros_like(bias)])
    np.testing.assert_array_equal(model.params["hidden"]["kernel"], np.ones((3, 4)))
    assert model.input_shape == (None, 3) and model.output_shape == (None, 1)
    assert len(model.trainable_weights) == 4 and model.non_trainable_weights == []
    with pytest.raises(fnn.ConfigError, match="no layer named 'hiden'.*Did you mean 'hidden'"):
        model.get_layer("hiden")


def test_trainable_false_freezes_that_layer_in_the_next_fit():
    x = fnn.Input((3,))
    model = fnn.Model(x, fl.Dense(1, name="head")(fl.Dense(4, name="base")(x)))
    model.get_layer("base").trainable = False
    model.compile(optimizer="adam", loss="mse")
    before = jax.tree.map(np.array, model.params)
    data = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    model.fit(data, data[:, :1], epochs=2, batch_size=8, verbose=0)
    np.testing.assert_array_equal(model.params["base"]["kernel"], before["base"]["kernel"])
    assert not np.allclose(model.params["head"]["kernel"], before["head"]["kernel"])
    assert model.count_params() == 21 and len(model.trainable_weights) == 2


def test_a_nested_built_model_brings_its_weights_and_can_be_frozen():
    """Transfer learning as in Keras: base(inputs, training=False) in a new model starts
    from base's weights; base.trainable = False keeps them."""
    bx = fnn.Input((3,))
    base = fnn.Model(bx, fl.Dense(4, activation="relu")(bx), name="base")
    probe = np.random.default_rng(2).normal(size=(5, 3)).astype("float32")
    features = base.predict(probe, verbose=0)
    base.trainable = False
    x = fnn.Input((3,))
    model = fnn.Model(x, fl.Dense(1)(base(x, training=False)))
    np.testing.assert_allclose(model.get_layer("base")(probe), features, rtol=1e-6)
    model.compile(optimizer="adam", loss="mse")
    model.fit(probe, probe[:, :1], epochs=3, verbose=0)
    np.testing.assert_allclose(
        fnn.Model(bx, base.outputs[0]).predict(probe, verbose=0), features, rtol=1e-6
    )
    trained = fnn.Model(model.inputs, model.get_layer("base").output)
    np.testing.assert_allclose(trained.predict(probe, verbose=0), features, rtol=1e-6)


def test_config_json_clone_and_saved_files_rebuild_the_graph(tmp_path):
    model = _multi_io(fnn, fl)
    xs = _inputs(model, np.random.default_rng(3))
    want = _flat(model.predict(xs, verbose=0))
    twin = fnn.models.model_from_json(model.to_json())
    assert twin.count_params() == model.count_params()
    assert [layer.name for layer in twin.layers] == [layer.name for layer in model.layers]
    twin.set_weights(model.get_weights())
    for g, w in zip(_flat(twin.predict(xs, verbose=0)), want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    model.set_weights([w + 1.0 for w in model.get_weights()])
    clone = fnn.models.clone_model(model)  # same architecture, its own fresh weights
    assert [w.shape for w in clone.get_weights()] == [w.shape for w in model.get_weights()]
    assert not np.allclose(clone.get_weights()[0], model.get_weights()[0])
    want = _flat(model.predict(xs, verbose=0))
    model.save(tmp_path / "graph")
    loaded = fnn.load_model(tmp_path / "graph")
    for g, w in zip(_flat(loaded.predict(xs, verbose=0)), want):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_summary_has_keras_connected_to_column():
    lines = []
    model = _shared(fnn, fl)
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Connected to" in text
    assert "embedding (Embedding)" in text
    row = next(line for line in lines if line.startswith("embedding "))
    assert "input_layer[0][0]" in row and "input_layer_1[0][0]" in row
    assert f"Total params: {_shared(keras, kl).count_params():,}" in text


def test_eager_layer_calls_keep_weights_like_keras():
    layer = fl.Dense(3)
    assert layer.weights == []
    x = np.ones((1, 4), "float32")
    y = layer(x)
    kernel, bias = layer.get_weights()
    np.testing.assert_allclose(y, x @ kernel + bias, rtol=1e-6)
    np.testing.assert_allclose(layer(x), y)  # the same weights on the next call


def test_sequential_pop_add_after_build_and_unbuilt_summary():
    lines = []
    model = fnn.Sequential([fl.Dense(4), fl.Dense(2)])
    model.summary(print_fn=lines.append)
    assert "not built yet" in lines[0]
    model.build((None, 3))
    first = model.get_weights()[0]
    model.pop()
    model.add(fl.Dense(5))
    model.build((None, 3))
    np.testing.assert_array_equal(model.get_weights()[0], first)
    assert [w.shape for w in model.get_weights()] == [(3, 4), (4,), (4, 5), (5,)]
    seq = fnn.Sequential([fnn.Input((3,)), fl.Dense(4, name="a"), fl.Dense(2, name="b")])
    extractor = fnn.Model(seq.inputs, [layer.output for layer in seq.layers])
    outs = extractor.predict(np.ones((2, 3), "float32"), verbose=0)
    np.testing.assert_allclose(outs[-1], seq.predict(np.ones((2, 3), "float32"), verbose=0))


def test_a_graph_trains_data_parallel_like_on_one_device():
    def build():
        a, b = fnn.Input((4,), name="a"), fnn.Input((3,), name="b")
        h = fl.concatenate([fl.Dense(5, activation="relu")(a), b])
        model = fnn.Model([a, b], fl.Dense(2)(fl.BatchNormalization()(h)))
        model.compile(optimizer="adam", loss="mse")
        return model

    rng = np.random.default_rng(4)
    data = {"a": rng.normal(size=(32, 4)), "b": rng.normal(size=(32, 3))}
    data = {k: v.astype("float32") for k, v in data.items()}
    y = rng.normal(size=(32, 2)).astype("float32")
    one, many = build(), build()
    one.fit(data, y, batch_size=16, epochs=2, verbose=0)
    many.fit(data, y, batch_size=16, epochs=2, verbose=0, devices=jax.devices()[:4])
    for got, want in zip(many.get_weights(), one.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_declarative_graph_out_of_order_is_refused():
    with pytest.raises(fnn.ConfigError, match="does not come before it"):
        fnn.core.graph.Functional(
            layers=[fl.Dense(2), fl.Dense(2)],
            inputs=[{"name": "x", "shape": [None, 3], "dtype": "float32"}],
            nodes=[
                {
                    "layer": 0,
                    "args": [{"__ref__": {"node": 1, "index": 0}}],
                    "kwargs": {},
                    "training": None,
                },
                {"layer": 1, "args": [{"__ref__": {"input": 0}}], "kwargs": {}, "training": None},
            ],
            outputs={"__ref__": {"node": 0, "index": 0}},
        )


def test_graph_errors_name_each_layer_by_its_unique_name():
    # While the graph is being built: the third Conv2D is conv2d_2, its input conv2d_1's.
    h = fl.Conv2D(2, 3)(fl.Conv2D(2, 3)(fnn.Input((8, 8, 1))))
    with pytest.raises(
        fnn.ShapeError, match=r"^conv2d_2: called on conv2d_1 \(None, 4, 4, 2\): expected spatial"
    ):
        fl.Conv2D(2, 9)(h)
    # In the built graph's init and apply.
    x = fnn.Input((3,))
    graph = fnn.core.graph.functional(x, fl.Dense(3)(fl.Dense(3)(x)))
    params, state = graph.init(jax.random.key(0), jnp.ones((2, 3)))
    params["dense_1"]["kernel"] = jnp.ones((5, 3))
    with pytest.raises(fnn.ShapeError, match=r"^dense_1: expected inputs with last dimension 5"):
        graph.apply(params, state, jnp.ones((2, 3)))
