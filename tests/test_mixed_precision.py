"""Mixed precision: dtype policies resolved at layer construction (checked against Keras 3
under the same policy), bfloat16 training on digits, float16 dynamic loss scaling
(checked against Keras's LossScaleOptimizer)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.core import dtype_policies, spec
from fnn.training import step as train

mp = fnn.mixed_precision
L = fnn.layers


@pytest.fixture(autouse=True)
def _reset_policies():
    """Every test starts and ends with the default global policy (fnn's and Keras's)."""
    import keras

    mp.set_global_policy(None)
    yield
    mp.set_global_policy(None)
    keras.mixed_precision.set_global_policy("float32")


def _ops(jaxpr, names):
    """``(primitive, input dtypes)`` of every ``names`` op, sub-jaxprs (scan bodies) too."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names:
            found.append((eqn.primitive.name, {str(v.aval.dtype) for v in eqn.invars}))
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    found += _ops(sub, names)
    return found


_X2 = np.linspace(-1, 1, 2 * 4, dtype=np.float32).reshape(2, 4)
_X3 = np.linspace(-1, 1, 2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4)
_X4 = np.linspace(-1, 1, 2 * 6 * 6 * 3, dtype=np.float32).reshape(2, 6, 6, 3)
_IDS = np.arange(10, dtype=np.int32).reshape(2, 5) % 7

# kind: (layer from a module of Keras layers, input, whether its matmuls/convs must run in
# bfloat16). Zeros initializers keep Keras's eager weight creation cheap.
_Z = "zeros"
_RNN = {"kernel_initializer": _Z, "recurrent_initializer": _Z}
_KINDS = {
    "Dense": (lambda k: k.Dense(3, kernel_initializer=_Z), _X2, True),
    "Conv2D": (lambda k: k.Conv2D(2, 3, kernel_initializer=_Z), _X4, True),
    "DepthwiseConv2D": (lambda k: k.DepthwiseConv2D(3, depthwise_initializer=_Z), _X4, True),
    "LSTM": (lambda k: k.LSTM(3, **_RNN), _X3, True),
    "GRU": (lambda k: k.GRU(3, return_sequences=True, **_RNN), _X3, True),
    "SimpleRNN": (lambda k: k.SimpleRNN(3, **_RNN), _X3, True),
    "Bidirectional": (lambda k: k.Bidirectional(k.LSTM(3, **_RNN)), _X3, True),
    "MultiHeadAttention": (lambda k: k.MultiHeadAttention(2, 4, kernel_initializer=_Z), _X3, True),
    "BatchNormalization": (lambda k: k.BatchNormalization(), _X2, False),
    "LayerNormalization": (lambda k: k.LayerNormalization(), _X3, False),
    "GroupNormalization": (lambda k: k.GroupNormalization(3), _X4, False),
    "Embedding": (lambda k: k.Embedding(7, 3, embeddings_initializer=_Z), _IDS, False),
    "Activation": (lambda k: k.Activation("softmax"), _X2, False),
    "Activation32": (lambda k: k.Activation("softmax", dtype="float32"), _X2, False),
    "MaxPooling2D": (lambda k: k.MaxPooling2D(), _X4, False),
    "Flatten": (lambda k: k.Flatten(), _X4, False),
    "Dropout": (lambda k: k.Dropout(0.5), _X2, False),
}


@pytest.fixture(scope="module")
def keras_dtypes():
    """Output dtype and weight dtypes of each Keras layer under mixed_bfloat16 (symbolic
    calls: Keras infers the output without computing it)."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    out = {}
    for kind, (make, x, _) in _KINDS.items():
        layer = make(keras.layers)
        t = keras.Input(batch_shape=x.shape, dtype=str(x.dtype))
        y = layer(t, t) if kind == "MultiHeadAttention" else layer(t)
        out[kind] = (str(y.dtype), {str(w.dtype) for w in layer.weights})
    keras.mixed_precision.set_global_policy("float32")
    return out


@pytest.mark.parametrize("kind", list(_KINDS))
def test_policy_reaches_every_layer_kind_as_in_keras(kind, keras_dtypes):
    make, x, in_bf16 = _KINDS[kind]
    mp.set_global_policy("mixed_bfloat16")
    layer = make(L)
    mp.set_global_policy("float32")  # resolved at construction: later changes do not matter
    x = jax.ShapeDtypeStruct(x.shape, x.dtype)
    params, state = jax.eval_shape(layer.init, jax.random.key(0), x)
    # Traced in training mode (batch statistics); the program's own output dtypes.
    train = kind.endswith("Normalization")
    jaxpr, (out, new_state) = jax.make_jaxpr(
        lambda p, s, x: layer.apply(p, s, x, train=train), return_shape=True
    )(params, state, x)
    want_out, want_weights = keras_dtypes[kind]
    assert str(out.dtype) == want_out
    assert {str(p.dtype) for p in jax.tree.leaves(params)} == want_weights
    assert jax.tree.map(lambda a: a.dtype, new_state) == jax.tree.map(lambda a: a.dtype, state)
    if in_bf16:  # every matmul and convolution on bfloat16 operands
        heavy = _ops(jaxpr, {"dot_general", "conv_general_dilated"})
        assert heavy and all(dtypes == {"bfloat16"} for _, dtypes in heavy), heavy
    if train:  # statistics in float32, as Keras
        sums = _ops(jaxpr, {"reduce_sum"})
        assert sums and all(dtypes == {"float32"} for _, dtypes in sums), sums


def test_policy_objects_and_names_match_keras():
    import keras

    for name in ("mixed_bfloat16", "mixed_float16", "float32", "bfloat16", "float16"):
        ours, theirs = mp.DTypePolicy(name), keras.mixed_precision.DTypePolicy(name)
        assert (ours.name, ours.compute_dtype, ours.variable_dtype) == (
            theirs.name,
            theirs.compute_dtype,
            theirs.variable_dtype,
        )
        assert repr(ours) == repr(theirs)
    assert mp.Policy is mp.DTypePolicy and mp.global_policy().name == "float32"
    mp.set_global_policy(mp.DTypePolicy("mixed_float16"))
    assert mp.global_policy() == mp.DTypePolicy("mixed_float16")
    with pytest.raises(fnn.ConfigError, match=r"unknown dtype policy 'mixed_int8'\. Valid"):
        mp.set_global_policy("mixed_int8")
    with pytest.raises(fnn.ConfigError, match=r"dense: dtype='int8': unknown dtype policy"):
        L.Dense(3, dtype="int8")
    with pytest.raises(TypeError, match=r"serial: .*dtype"):
        fnn.serial(L.Dense(3), dtype="mixed_bfloat16")  # combinators take no policy


def test_policy_is_pure_and_saved_in_the_spec():
    x = jnp.asarray(_X2)
    plain = fnn.serial(L.Dense(5, activation="relu"), L.Dense(3))
    mp.set_global_policy("mixed_bfloat16")
    mixed = fnn.serial(L.Dense(5, activation="relu"), L.Dense(3))
    params, state = plain.init(jax.random.key(0), x)
    # The same model traced under either global policy is the same program.
    traced = {mp.global_policy().name: str(jax.make_jaxpr(plain.apply)(params, state, x))}
    mp.set_global_policy(None)
    traced["float32"] = str(jax.make_jaxpr(plain.apply)(params, state, x))
    assert traced["mixed_bfloat16"] == traced["float32"]
    assert "bf16" not in traced["float32"]
    assert "bf16" in str(jax.make_jaxpr(mixed.apply)(params, state, x))
    # bfloat16 results from the same float32 params, within bfloat16's precision.
    want = plain.apply(params, state, x)[0]
    got = mixed.apply(params, state, x)[0]
    np.testing.assert_allclose(np.float32(got), want, rtol=0.05, atol=0.02)
    # The resolved policy is saved, so the rebuilt layer gets it whatever the global one.
    dense = mixed.children[0][1]
    assert dense.spec.config["dtype"] == "mixed_bfloat16"
    rebuilt = spec.build("Dense", dict(dense.spec.config))
    assert rebuilt.dtype_policy.name == "mixed_bfloat16" and rebuilt.compute_dtype == "bfloat16"
    assert spec.build("Flatten", {"dtype": "float32"}).dtype_policy.name == "float32"
    assert "dtype" not in plain.children[0][1].spec.config


def _digits_model(policy: str):
    mp.set_global_policy(policy)
    model = fnn.serial(
        L.Dense(64, activation="relu"), L.Dense(10), L.Activation("softmax", dtype="float32")
    )
    mp.set_global_policy(None)
    return model


def _digits_accuracy(model, params, state, data, epochs=8, batch=64) -> float:
    """Test accuracy after ``epochs`` of Adam from ``params``: one ``lax.scan`` per epoch
    over the shuffled batches (one compiled program, so the test stays cheap)."""
    (x_train, y_train), (x_test, y_test) = data
    loss = fnn.losses.SparseCategoricalCrossentropy()
    opt = optax.adam(3e-3)
    ts = train.init_train_state(model, opt, jax.random.key(0), params=params, state=state)
    epoch = jax.jit(train.make_multi_step(train.make_train_step(model, loss, opt)))
    n = (len(x_train) // batch) * batch
    order = np.random.RandomState(0)
    for _ in range(epochs):
        idx = order.permutation(len(x_train))[:n].reshape(-1, batch)
        ts, _ = epoch(ts, (x_train[idx], y_train[idx]))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(ts.params))
    probs = jax.jit(train.make_predict_step(model))(ts.params, ts.state, x_test)
    assert probs.dtype == jnp.float32  # the float32 softmax
    return float(np.mean(np.argmax(probs, axis=-1) == y_test))


def test_mixed_bfloat16_training_on_digits_reaches_float32_accuracy():
    data = fnn.datasets.load_digits()
    f32_model, bf16_model = _digits_model("float32"), _digits_model("mixed_bfloat16")
    # One initialisation for both (the same param tree), so only the precision differs.
    params, state = f32_model.init(jax.random.key(1), data[0][0][:1])
    f32 = _digits_accuracy(f32_model, params, state, data)
    bf16 = _digits_accuracy(bf16_model, params, state, data)
    assert f32 > 0.93
    assert bf16 >= f32 - 0.01, (f32, bf16)


def test_loss_scale_optimizer_follows_keras():
    """Same scaled gradients (one of them non-finite) into Keras's LossScaleOptimizer and
    ours: the same scale, step counter and weights after every step."""
    import keras

    grads = [np.array([0.5, -1.0], np.float32) * (i + 1) for i in range(6)]
    grads[2] = np.array([np.inf, 1.0], np.float32)
    w0 = np.array([1.0, 2.0], np.float32)
    theirs = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=8.0, dynamic_growth_steps=2
    )
    var = keras.Variable(w0)
    theirs.build([var])
    position = {id(v): i for i, v in enumerate(theirs.variables)}
    their_state, their_w = [v.value for v in theirs.variables], [var.value]
    ours = mp.LossScaleOptimizer(
        fnn.optimizers.SGD(0.1, momentum=0.9), initial_scale=8.0, dynamic_growth_steps=2
    )
    params = {"w": jnp.asarray(w0)}
    state = ours.init(params)
    update = jax.jit(ours.update)
    scales = []
    for g in grads:
        their_w, their_state = theirs.stateless_apply(their_state, [g], their_w)
        updates, state = update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        scales.append(float(state.dynamic_scale))
        assert scales[-1] == float(their_state[position[id(theirs.dynamic_scale)]])
        assert int(state.step_counter) == int(their_state[position[id(theirs.step_counter)]])
        np.testing.assert_allclose(params["w"], np.asarray(their_w[0]), rtol=1e-6)
    # Keras's rule written out: x2 after 2 finite steps in a row, /2 on the inf step.
    assert scales == [8.0, 16.0, 8.0, 8.0, 16.0, 16.0]


def test_float16_training_skips_overflowing_steps_and_grows_the_scale():
    mp.set_global_policy("mixed_float16")
    model = fnn.serial(L.Dense(16, activation="relu"), L.Dense(3))
    mp.set_global_policy(None)
    rs = np.random.RandomState(0)
    x, y = rs.randn(32, 4).astype(np.float32), np.arange(32) % 3
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = mp.LossScaleOptimizer(optax.sgd(0.1), initial_scale=2.0**40, dynamic_growth_steps=2)
    ts = train.init_train_state(model, opt, jax.random.key(0), x)
    step = jax.jit(train.make_train_step(model, loss, opt))
    # 2**40 overflows float16 gradients: the update is skipped and the scale halved.
    ts1, _ = step(ts, (x, y))
    assert float(ts1.opt_state.dynamic_scale) == 2.0**39
    assert int(ts1.opt_state.step_counter) == 0
    for new, old in zip(jax.tree.leaves(ts1.params), jax.tree.leaves(ts.params)):
        np.testing.assert_array_equal(new, old)
    # A small scale: two finite steps double it (Keras's rule), and the update is the
    # unscaled float32-model step within float16 precision.
    small = ts._replace(opt_state=opt.init(ts.params)._replace(dynamic_scale=jnp.float32(8.0)))
    s1, _ = step(small, (x, y))
    s2, _ = step(s1, (x, y))
    assert [float(s.opt_state.dynamic_scale) for s in (s1, s2)] == [8.0, 16.0]
    plain = fnn.serial(L.Dense(16, activation="relu"), L.Dense(3))
    ref, _ = jax.jit(train.make_train_step(plain, loss, optax.sgd(0.1)))(
        train.init_train_state(
            plain, optax.sgd(0.1), jax.random.key(0), x, params=ts.params, state=ts.state
        ),
        (x, y),
    )
    for got, want in zip(jax.tree.leaves(s1.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-3)
    with pytest.raises(fnn.ConfigError, match=r"LossScaleOptimizer is not supported by DP-SGD"):
        train.make_dp_train_step(model, loss, opt, l2_norm_clip=1.0, noise_multiplier=0.0)


def test_compile_wraps_float16_models_in_a_loss_scale_optimizer():
    rs = np.random.RandomState(0)
    x, y = rs.randn(32, 4).astype(np.float32), np.arange(32) % 3
    mp.set_global_policy("mixed_float16")
    model = fnn.Sequential([fnn.Input((4,)), L.Dense(8, activation="relu"), L.Dense(3)])
    mp.set_global_policy(None)
    loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(fnn.optimizers.Adam(1e-3), loss)
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"]).all() and history["loss"][1] < history["loss"][0]
    assert isinstance(model.optimizer, mp.LossScaleOptimizer)
    assert mp.loss_scale_state(model.opt_state) is not None
    assert model.learning_rate == pytest.approx(1e-3)
    config = fnn.optimizers.serialize(model.optimizer)
    assert config["class_name"] == "LossScaleOptimizer"
    again = fnn.optimizers.deserialize(config)
    assert again.inner_optimizer.get_config() == model.optimizer.inner_optimizer.get_config()
    off = fnn.Sequential([fnn.Input((4,)), L.Dense(3, dtype="mixed_float16")])
    off.compile("adam", "mse", auto_scale_loss=False)
    off.train_on_batch(x, np.zeros((32, 3), np.float32))
    assert not isinstance(off.optimizer, mp.LossScaleOptimizer)
    # What compile looks for: float16 values in the traced model (bfloat16 needs no scaling).
    for policy, wanted in (("mixed_float16", True), ("mixed_bfloat16", False), (None, False)):
        layer = fnn.serial(fnn.repeat(L.Dense(4, dtype=policy), 2))  # inside a scan too
        p, s = layer.init(jax.random.key(0), x)
        assert dtype_policies.computes_in_float16(jax.make_jaxpr(layer.apply)(p, s, x)) is wanted
    with pytest.raises(fnn.ConfigError, match=r"dynamic_growth_steps to be an int >= 1"):
        mp.LossScaleOptimizer("sgd", dynamic_growth_steps=0)


def test_keras_files_keep_each_layers_policy(tmp_path):
    """A Keras mixed_bfloat16 model with a float32 softmax loads with the same policies and
    predictions; fnn writes them back so Keras reads the same policies."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    k_model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3),
            keras.layers.Activation("softmax", dtype="float32"),
        ]
    )
    keras.mixed_precision.set_global_policy("float32")
    k_model.save(tmp_path / "k.keras")
    model = fnn.load_model(tmp_path / "k.keras", compile=False)
    assert [layer.dtype_policy.name for layer in model.layers] == ["mixed_bfloat16", "float32"]
    np.testing.assert_allclose(
        model.predict(_X2, verbose=0), k_model.predict(_X2, verbose=0), rtol=1e-2, atol=1e-3
    )
    model.save(tmp_path / "f.keras")
    again = keras.saving.load_model(tmp_path / "f.keras", compile=False)
    assert [layer.dtype_policy.name for layer in again.layers] == ["mixed_bfloat16", "float32"]
