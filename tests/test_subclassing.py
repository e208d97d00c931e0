"""Keras-style subclassed layers and models: pure init/apply pairs underneath, trained
like their Sequential twins."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import layers as fl


class Linear(fnn.layers.Layer):
    def __init__(self, units=32, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros")

    def call(self, inputs):
        return inputs @ self.w + self.b


class Counter(fnn.layers.Layer):
    """A non-trainable weight updated in call (Keras's ComputeSum)."""

    def __init__(self, dim):
        super().__init__()
        self.total = self.add_weight(shape=(dim,), initializer="zeros", trainable=False)

    def call(self, inputs):
        self.total.assign_add(jnp.sum(inputs, axis=0))
        return self.total


class MLP(fnn.Model):
    def __init__(self):
        super().__init__(name="mlp")
        self.hidden = Linear(32)
        self.dropout = fl.Dropout(0.2)
        self.head = fl.Dense(10)

    def call(self, x, training=False):
        h = jax.nn.relu(self.hidden(x))
        return self.head(self.dropout(h, training=training))


def test_subclassed_layer_is_a_pure_pair():
    layer = Linear(3)
    x = jax.ShapeDtypeStruct((2, 4), jnp.float32)
    shapes, _ = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert {k: v.shape for k, v in shapes.items()} == {"w": (4, 3), "b": (3,)}
    params, state = layer.init(jax.random.key(0), x)
    data = jnp.arange(8.0).reshape(2, 4)
    y, _ = jax.jit(layer.apply)(params, state, data)
    np.testing.assert_allclose(y, data @ params["w"] + params["b"], rtol=1e-6)
    g = jax.grad(lambda p: jnp.sum(layer.apply(p, state, data)[0]))(params)
    np.testing.assert_allclose(g["w"], np.tile(data.sum(0)[:, None], (1, 3)), rtol=1e-6)
    batch = jax.vmap(lambda r: layer.apply(params, state, r[None])[0][0])(data)
    np.testing.assert_allclose(batch, y, rtol=1e-6)
    # The object keeps no arrays: only Variable handles.
    assert all(not isinstance(v, jax.Array) for v in vars(layer).values())


def test_non_trainable_assign_in_call_is_the_new_state():
    layer = Counter(2)
    params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((3, 2), jnp.float32))
    assert params == {} and state["total"].shape == (2,)
    x = jnp.ones((3, 2))
    out, state = jax.jit(layer.apply)(params, state, x)
    out, state = jax.jit(layer.apply)(params, state, x)
    np.testing.assert_allclose(out, [6.0, 6.0])
    np.testing.assert_allclose(state["total"], [6.0, 6.0])
    eager = Counter(2)
    eager(np.ones((3, 2), "float32"))
    np.testing.assert_allclose(eager(np.ones((3, 2), "float32")), [6.0, 6.0])
    np.testing.assert_allclose(eager.total.numpy(), [6.0, 6.0])


def test_sublayers_are_keyed_by_attribute_names_and_work_in_graphs():
    model = MLP()
    model.build((None, 64))
    assert set(model.params) == {"hidden", "head"}
    assert [layer.name for layer in model.layers] == ["hidden", "dropout", "head"]
    x = fnn.Input((4,))
    graph = fnn.Model(x, fl.Dense(2)(Linear(5, name="lin")(x)))
    assert graph.params["lin"]["w"].shape == (4, 5)
    assert graph.predict(np.ones((3, 4), "float32"), verbose=0).shape == (3, 2)


def test_a_layer_that_is_not_an_attribute_is_refused():
    class Bad(fnn.layers.Layer):
        def call(self, x):
            return fl.Dense(2)(x)

    with pytest.raises(fnn.ConfigError, match="not an attribute of it"):
        Bad().init(jax.random.key(0), jax.ShapeDtypeStruct((1, 3), jnp.float32))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    return x[:1200], data.target[:1200], x[1200:], data.target[1200:]


def test_subclassed_model_trains_like_its_sequential_twin(digits):
    """Same start, same data order: the subclassed model and the Sequential twin take
    the same steps, so their losses and test accuracy agree."""
    x, y, xt, yt = digits
    sub = MLP()
    twin = fnn.Sequential([fl.Dense(32, activation="relu"), fl.Dropout(0.2), fl.Dense(10)])
    for model in (sub, twin):
        model.compile(
            optimizer="adam",
            loss=fnn.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.build((None, 64))
    twin.set_weights(sub.get_weights())
    hs = sub.fit(x, y, epochs=12, batch_size=32, verbose=0).history
    ht = twin.fit(x, y, epochs=12, batch_size=32, verbose=0).history
    np.testing.assert_allclose(hs["loss"], ht["loss"], rtol=1e-4)
    acc_sub = sub.evaluate(xt, yt, verbose=0)[1]
    acc_twin = twin.evaluate(xt, yt, verbose=0)[1]
    assert acc_sub == pytest.approx(acc_twin, abs=1e-6)
    assert acc_sub > 0.85


class ActivityRegularization(fnn.layers.Layer):
    def __init__(self, rate=1e-2):
        super().__init__()
        self.rate = rate

    def call(self, inputs):
        self.add_loss(self.rate * jnp.sum(inputs))
        return inputs


def test_add_loss_joins_the_training_and_evaluation_loss():
    x = fnn.Input((3,))
    h = fl.Dense(4, activation="relu", name="hidden")(x)
    model = fnn.Model(x, fl.Dense(1, name="head")(ActivityRegularization(0.1)(h)))
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    xs, ys = rng.random((6, 3)).astype("float32"), rng.random((6, 1)).astype("float32")
    p = jax.tree.map(np.asarray, model.params)
    act = np.maximum(xs @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0.0)
    pred = act @ p["head"]["kernel"] + p["head"]["bias"]
    want = np.mean((pred - ys) ** 2) + 0.1 * act.sum()
    assert model.evaluate(xs, ys, batch_size=6, verbose=0) == pytest.approx(want, rel=1e-5)
    assert len(model.get_weights()) == 4  # the added loss is no weight
    outer = ActivityRegularization(0.5)
    outer(np.ones((2, 2), "float32"))
    np.testing.assert_allclose(outer.losses, [2.0])


def test_dense_regularizers_add_keras_penalties_to_the_loss(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")

    def build(lib, layers, regs):
        x = lib.Input((3,))
        h = layers.Dense(
            4,
            activation="relu",
            kernel_regularizer=regs.L2(0.01),
            bias_regularizer=regs.L1(0.02),
            activity_regularizer=regs.L1L2(l1=0.01, l2=0.03),
        )(x)
        return lib.Model(x, layers.Dense(1)(h))

    kmodel = build(keras, keras.layers, keras.regularizers)
    model = build(fnn, fl, fnn.regularizers)
    model.set_weights(kmodel.get_weights())
    rng = np.random.default_rng(5)
    xs, ys = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
    kmodel.compile(optimizer="sgd", loss="mse")
    model.compile(optimizer="sgd", loss="mse")
    want = kmodel.evaluate(xs, ys, batch_size=8, verbose=0)
    assert model.evaluate(xs, ys, batch_size=8, verbose=0) == pytest.approx(want, rel=1e-5)
    assert model.count_params() == kmodel.count_params()
    model.save(tmp_path / "reg")  # regularizers are stored by name in the model file
    loaded = fnn.load_model(tmp_path / "reg")
    assert loaded.evaluate(xs, ys, batch_size=8, verbose=0) == pytest.approx(want, rel=1e-5)


def test_subclassed_layers_round_trip_through_configs_and_model_files(tmp_path):
    class TimesFactor(fnn.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {"factor": self.factor}

    x = fnn.Input((3,))
    model = fnn.Model(x, fl.Dense(2)(TimesFactor(3.0)(x)))
    data = np.random.default_rng(6).normal(size=(4, 3)).astype("float32")
    want = model.predict(data, verbose=0)
    config = model.get_config()
    with pytest.raises(fnn.ConfigError, match="unknown layer 'TimesFactor'"):
        fnn.Model.from_config(config)
    twin = fnn.Model.from_config(config, custom_objects={"TimesFactor": TimesFactor})
    twin.set_weights(model.get_weights())
    np.testing.assert_allclose(twin.predict(data, verbose=0), want, rtol=1e-6)
    model.save(tmp_path / "m")  # TimesFactor is registered now, so the file rebuilds it
    np.testing.assert_allclose(fnn.load_model(tmp_path / "m").predict(data, verbose=0), want)


def test_conv_regularizers_equal_keras_penalties():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")

    def build(lib, layers, regs):
        x = lib.Input((6, 6, 2))
        h = layers.Conv2D(3, 3, kernel_regularizer=regs.L2(0.05), bias_regularizer=regs.L1(0.1))(x)
        h = layers.Conv1D(2, 2, activity_regularizer=regs.L1(0.01))(layers.Reshape((16, 3))(h))
        return lib.Model(x, layers.Dense(1)(layers.Flatten()(h)))

    kmodel = build(keras, keras.layers, keras.regularizers)
    model = build(fnn, fl, fnn.regularizers)
    model.set_weights([w + 0.1 for w in kmodel.get_weights()])
    kmodel.set_weights(model.get_weights())
    rng = np.random.default_rng(7)
    xs = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    ys = rng.normal(size=(4, 1)).astype("float32")
    kmodel.compile(loss="mse")
    model.compile(loss="mse")
    want = kmodel.evaluate(xs, ys, batch_size=4, verbose=0)
    assert model.evaluate(xs, ys, batch_size=4, verbose=0) == pytest.approx(want, rel=1e-5)
