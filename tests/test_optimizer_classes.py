"""Keras optimizer classes and learning-rate schedules against Keras 3 itself.

Each optimizer runs 20 steps from the same start on a small quadratic and on a tiny MLP's
parameter tree in fnn (``init``/``update``) and in Keras (``apply_gradients`` on
``keras.Variable``s), with the same gradient function; the trajectories must agree in
float32. Tolerances: ``EXACT`` where fnn's rule is Keras's formula (only rounding differs);
``EPS`` for the Adam family, where optax adds ``epsilon`` to the bias-corrected
``sqrt(v_hat)`` and Keras to ``sqrt(v)`` (documented in the class docstrings), and
Nadam, whose time-dependent momentum products round differently.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest

import fnn
from fnn import optimizers
from fnn.optimizers import schedules
from fnn.shell import compile_utils

EXACT = 2e-6
EPS = 5e-5
# Keras's own get_config reads its variables with np.array (a numpy-2 deprecation there).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

_rng = np.random.default_rng(0)
A = _rng.normal(size=(5, 3)).astype(np.float32)
B = _rng.normal(size=5).astype(np.float32)
X = _rng.normal(size=(8, 4)).astype(np.float32)
Y = _rng.normal(size=(8, 1)).astype(np.float32)
START = {
    "quadratic": {"w": np.array([1.0, -2.0, 0.5], np.float32)},
    "mlp": {
        "dense": {
            "kernel": 0.5 * _rng.normal(size=(4, 3)).astype(np.float32),
            "bias": np.full(3, 0.1, np.float32),
        },
        "out": {
            "kernel": 0.5 * _rng.normal(size=(3, 1)).astype(np.float32),
            "bias": np.zeros(1, np.float32),
        },
    },
}


def _quadratic(p):
    return 0.5 * jnp.sum(jnp.square(A @ p["w"] - B))


def _mlp(p):
    h = jnp.tanh(X @ p["dense"]["kernel"] + p["dense"]["bias"])
    return jnp.mean(jnp.square(h @ p["out"]["kernel"] + p["out"]["bias"] - Y))


GRADS = {"quadratic": jax.jit(jax.grad(_quadratic)), "mlp": jax.jit(jax.grad(_mlp))}


def _fnn_path(opt, problem, steps=20):
    params = jax.tree.map(jnp.asarray, START[problem])
    state, update = opt.init(params), jax.jit(opt.update)
    for _ in range(steps):
        updates, state = update(GRADS[problem](params), state, params)
        params = optax.apply_updates(params, updates)
    return jax.tree.leaves(params)


def _keras_path(opt, problem, steps=20):
    # Keras's JAX trainer path: the pure ``stateless_apply`` of the optimizer, jitted.
    leaves, tree = jax.tree.flatten(START[problem])
    variables = [keras.Variable(leaf) for leaf in leaves]
    opt.build(variables)
    apply = jax.jit(opt.stateless_apply)
    values, opt_values = [v.value for v in variables], [v.value for v in opt.variables]
    for _ in range(steps):
        grads = jax.tree.leaves(GRADS[problem](jax.tree.unflatten(tree, values)))
        values, opt_values = apply(opt_values, grads, values)
    return [np.asarray(v) for v in values]


def _schedule(module, spec):
    name, kwargs = spec
    return getattr(module.optimizers.schedules, name)(**kwargs)


CASES = [
    ("SGD", {"learning_rate": 0.05}, EXACT),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.9}, EXACT),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}, EXACT),
    ("SGD", {"learning_rate": 0.05, "clipvalue": 0.1, "weight_decay": 0.1}, EXACT),
    ("Adam", {"learning_rate": 0.05}, EPS),
    ("Adam", {"learning_rate": 0.05, "clipnorm": 0.5}, EPS),
    ("Adam", {"learning_rate": 0.05, "global_clipnorm": 0.5}, EPS),
    ("Adam", {"learning_rate": 0.05, "gradient_accumulation_steps": 3}, EPS),
    ("AdamW", {"learning_rate": 0.05}, EPS),
    ("AdamW", {"learning_rate": 0.05, "weight_decay": 0.1}, EPS),
    ("RMSprop", {"learning_rate": 0.01}, EXACT),
    ("RMSprop", {"learning_rate": 0.01, "momentum": 0.5, "centered": True}, EXACT),
    ("Adagrad", {"learning_rate": 0.1}, EXACT),
    ("Adadelta", {"learning_rate": 1.0}, EXACT),
    ("Adamax", {"learning_rate": 0.05}, EXACT),
    ("Nadam", {"learning_rate": 0.05}, EPS),
    ("Lion", {"learning_rate": 0.01}, EXACT),
    ("Lion", {"learning_rate": 0.01, "weight_decay": 0.1}, EXACT),
    ("Lamb", {"learning_rate": 0.05}, EXACT),
    ("Lamb", {"learning_rate": 0.05, "weight_decay": 0.1}, EXACT),
    ("Adafactor", {"learning_rate": 0.05}, EXACT),
    ("Adafactor", {"learning_rate": 0.05, "weight_decay": 0.1}, EXACT),
    # Schedules as learning rates (Keras reads them at its micro-step count when
    # accumulating gradients; fnn does the same).
    (
        "Adam",
        {
            "schedule": (
                "ExponentialDecay",
                dict(initial_learning_rate=0.05, decay_steps=5, decay_rate=0.5),
            )
        },
        EPS,
    ),
    (
        "SGD",
        {
            "schedule": (
                "ExponentialDecay",
                dict(initial_learning_rate=0.05, decay_steps=5, decay_rate=0.5),
            ),
            "momentum": 0.9,
            "nesterov": True,
        },
        EXACT,
    ),
    (
        "SGD",
        {
            "schedule": (
                "CosineDecay",
                dict(initial_learning_rate=0.0, decay_steps=10, warmup_target=0.1, warmup_steps=5),
            )
        },
        EXACT,
    ),
    (
        "Lamb",
        {
            "schedule": (
                "InverseTimeDecay",
                dict(initial_learning_rate=0.05, decay_steps=3, decay_rate=0.5),
            ),
            "weight_decay": 0.1,
        },
        EXACT,
    ),
    (
        "Adam",
        {
            "schedule": (
                "PiecewiseConstantDecay",
                dict(boundaries=[3, 8], values=[0.1, 0.05, 0.01]),
            ),
            "gradient_accumulation_steps": 2,
            "weight_decay": 0.1,
        },
        EPS,
    ),
]


@pytest.mark.parametrize("problem", ["quadratic", "mlp"])
@pytest.mark.parametrize(
    "name, kwargs, tol", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_trajectory_equals_keras(name, kwargs, tol, problem):
    def build(module):
        kw = dict(kwargs)
        if "schedule" in kw:
            kw["learning_rate"] = _schedule(module, kw.pop("schedule"))
        return getattr(module.optimizers, name)(**kw)

    ours, theirs = _fnn_path(build(fnn), problem), _keras_path(build(keras), problem)
    moved = max(np.max(np.abs(t - s)) for t, s in zip(theirs, jax.tree.leaves(START[problem])))
    assert moved > 0.02  # the 20 steps go somewhere
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


SCHEDULES = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.6)),
    (
        "ExponentialDecay",
        dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.6, staircase=True),
    ),
    ("PiecewiseConstantDecay", dict(boundaries=[5, 20], values=[1.0, 0.5, 0.1])),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=30, power=2.0)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=12, power=0.5, cycle=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=5, decay_rate=0.5)),
    (
        "InverseTimeDecay",
        dict(initial_learning_rate=0.1, decay_steps=5, decay_rate=0.5, staircase=True),
    ),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=30, alpha=0.1)),
    (
        "CosineDecay",
        dict(
            initial_learning_rate=0.0, decay_steps=30, alpha=0.1, warmup_target=0.2, warmup_steps=10
        ),
    ),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=6)),
    (
        "CosineDecayRestarts",
        dict(initial_learning_rate=0.1, first_decay_steps=6, t_mul=1.0, m_mul=0.5, alpha=0.1),
    ),
]


@pytest.mark.parametrize("spec", SCHEDULES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SCHEDULES)])
def test_schedules_equal_keras(spec):
    ours, theirs = _schedule(fnn, spec), _schedule(keras, spec)
    steps = jnp.asarray(list(range(0, 60)) + [100, 1000], jnp.int32)
    got = np.asarray(jax.jit(jax.vmap(ours))(steps))  # traceable, as optax needs
    want = np.asarray(jax.jit(jax.vmap(theirs))(steps))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    assert float(ours(20)) == pytest.approx(float(theirs(20)), rel=1e-6)  # plain ints too
    assert ours.get_config() == theirs.get_config()
    again = schedules.deserialize(json.loads(json.dumps(schedules.serialize(ours))))
    np.testing.assert_allclose(jax.jit(jax.vmap(again))(steps), got, rtol=0)


@pytest.mark.parametrize("name", sorted(optimizers._CLASSES))
def test_config_matches_keras_and_round_trips(name):
    ours, theirs = getattr(fnn.optimizers, name)(), getattr(keras.optimizers, name)()
    mine, keras_cfg = ours.get_config(), theirs.get_config()
    assert mine.keys() == keras_cfg.keys()
    for key in mine.keys() - {"name", "learning_rate"}:
        assert mine[key] == keras_cfg[key], key
    assert mine["learning_rate"] == pytest.approx(keras_cfg["learning_rate"], rel=1e-6)
    # Keras's own serialized form builds the fnn class (the format of Keras model files).
    rebuilt = optimizers.get(json.loads(json.dumps(keras.optimizers.serialize(theirs))))
    assert type(rebuilt) is type(ours)
    assert {k: v for k, v in rebuilt.get_config().items() if k != "name"} == {
        k: v for k, v in keras_cfg.items() if k != "name"
    }
    assert optimizers.get(optimizers.serialize(ours)).get_config() == mine


def test_classes_are_optax_transformations_for_get_chain_and_names():
    opt = fnn.optimizers.Adam(0.05)
    assert optimizers.get(opt) is opt
    assert isinstance(opt.transformation, optax.GradientTransformation)
    init, update = opt
    chained = optax.chain(optax.clip(1.0), opt)  # usable wherever optax takes one
    params = {"w": jnp.ones(3)}
    g = {"w": jnp.array([0.5, -0.2, 0.1])}
    u1, _ = chained.update(g, chained.init(params), params)
    u2, _ = update(g, init(params), params)
    np.testing.assert_allclose(u1["w"], u2["w"])
    # A name string resolves to the class with Keras's defaults; its first step is optax's.
    resolved = compile_utils.optimizer_object("adam")
    assert type(resolved) is fnn.optimizers.Adam and resolved.learning_rate == 0.001
    ref = optax.adam(1e-3, eps=1e-7)
    np.testing.assert_allclose(
        resolved.update(g, resolved.init(params), params)[0]["w"],
        ref.update(g, ref.init(params), params)[0]["w"],
        rtol=1e-6,
    )
    assert fnn.optimizers.Adam().name == "adam" and fnn.optimizers.AdamW().name == "adam_w"
    sched = fnn.optimizers.schedules.CosineDecay(0.1, 10)
    assert fnn.optimizers.SGD(sched).learning_rate is sched


@pytest.fixture(scope="module")
def tiny_data():
    x = _rng.normal(size=(16, 4)).astype(np.float32)
    y = _rng.normal(size=(16, 2)).astype(np.float32)
    return x, y


def _fitted_once(optimizer, x, y):
    model = fnn.Sequential([fnn.Input((4,)), fnn.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    p0 = jax.tree.map(np.asarray, model.params)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return model, p0


def test_fit_step_with_adam_class_equals_a_hand_written_optax_adam_step(tiny_data):
    x, y = tiny_data
    model, p0 = _fitted_once(fnn.optimizers.Adam(1e-3), x, y)
    (name,) = p0

    def mse(p):
        pred = x @ p[name]["kernel"] + p[name]["bias"]
        return jnp.mean(jnp.square(pred - y))

    ref = optax.adam(1e-3, eps=1e-7)
    updates, _ = ref.update(jax.grad(mse)(p0), ref.init(p0), p0)
    want = optax.apply_updates(p0, updates)
    for key in ("kernel", "bias"):
        np.testing.assert_allclose(model.params[name][key], want[name][key], rtol=1e-6, atol=1e-7)


def test_learning_rate_lives_in_the_model_state_and_is_settable_through_the_optimizer(tiny_data):
    x, y = tiny_data
    opt = fnn.optimizers.RMSprop(0.01)
    model, _ = _fitted_once(opt, x, y)
    assert model.learning_rate == pytest.approx(0.01)  # ReduceLROnPlateau & co. work
    sched = schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    scheduled = fnn.optimizers.Adam(sched)
    scheduled.attach(model)
    assert scheduled.get_config()["learning_rate"] == schedules.serialize(sched)
    opt.attach(model)  # what Model.compile does for model.optimizer
    assert opt.learning_rate == pytest.approx(0.01)
    opt.learning_rate = 0.002
    assert model.learning_rate == pytest.approx(0.002)
    model.learning_rate = 0.003  # as ReduceLROnPlateau does
    assert opt.get_config()["learning_rate"] == pytest.approx(0.003)
    # The next fit step uses it: from fresh state RMSprop moves by lr * g / sqrt(0.1 g^2 + eps).
    model.opt_state = None
    p0 = jax.tree.map(np.asarray, model.params)
    opt.learning_rate = 0.004  # before the state exists: the constructor value changes
    assert opt.learning_rate == 0.004
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    step = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(p0))]
    np.testing.assert_allclose(step, 0.004 / np.sqrt(0.1), rtol=1e-3)  # epsilon aside


def test_compile_settings_store_the_optimizer_and_a_saved_model_trains_the_same(
    tiny_data, tmp_path
):
    x, y = tiny_data
    sched = fnn.optimizers.schedules.ExponentialDecay(0.05, decay_steps=2, decay_rate=0.5)
    model, _ = _fitted_once(fnn.optimizers.Adam(sched, beta_1=0.8, clipnorm=1.0), x, y)
    model.save(tmp_path / "m")
    stored = fnn.saving.load_layer(tmp_path / "m").compile_config["optimizer"]
    assert stored["class_name"] == "Adam" and stored["config"]["beta_1"] == 0.8
    assert stored["config"]["learning_rate"] == schedules.serialize(sched)
    loaded = fnn.load_model(tmp_path / "m")
    for m in (model, loaded):
        m.opt_state = None
        m.params = jax.tree.map(jnp.zeros_like, m.params)
        m.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_errors():
    with pytest.raises(
        fnn.ConfigError,
        match=r"Adam: unknown argument\(s\) \['beta1'\]\. Valid arguments: learning_rate, beta_1",
    ):
        fnn.optimizers.Adam(beta1=0.5)
    with pytest.raises(
        fnn.ConfigError,
        match=r"SGD: expected at most one of clipnorm, clipvalue and global_clipnorm, got clipnorm=1.0, clipvalue=0.5",
    ):
        fnn.optimizers.SGD(clipnorm=1.0, clipvalue=0.5)
    with pytest.raises(fnn.ConfigError, match=r"Adam: use_ema=True is not supported"):
        fnn.optimizers.Adam(use_ema=True)
    with pytest.raises(fnn.ConfigError, match=r"Adam: loss_scale_factor is not supported"):
        fnn.optimizers.Adam(loss_scale_factor=128.0)
    with pytest.raises(
        fnn.ConfigError, match=r"expected gradient_accumulation_steps to be an int >= 2, got 1"
    ):
        fnn.optimizers.Lion(gradient_accumulation_steps=1)
    with pytest.raises(
        fnn.ConfigError, match=r"expected learning_rate to be a float or a schedule"
    ):
        fnn.optimizers.SGD("fast")
    with pytest.raises(fnn.ConfigError, match=r"Ftrl: not available in fnn \(optax has no FTRL"):
        fnn.optimizers.Ftrl(0.1)
    with pytest.raises(
        fnn.ConfigError, match=r"the learning rate can be set only when it is a float"
    ):
        fnn.optimizers.Adam(schedules.CosineDecay(0.1, 5)).learning_rate = 0.1
    with pytest.raises(fnn.ConfigError, match=r"cannot serialize learning_rate"):
        fnn.optimizers.Adam(optax.linear_schedule(0.1, 0.0, 5)).get_config()
    with pytest.raises(
        fnn.ConfigError, match=r"unknown optimizer class 'Adamm'\. Did you mean 'Adam'\?"
    ):
        optimizers.get({"class_name": "Adamm", "config": {}})
    with pytest.raises(fnn.ConfigError, match=r"apply to optimizer names only"):
        optimizers.get(fnn.optimizers.Adam(), learning_rate=0.1)
    with pytest.raises(fnn.ConfigError, match=r"ExponentialDecay: expected decay_steps > 0, got 0"):
        schedules.ExponentialDecay(0.1, 0, 0.5)
    with pytest.raises(
        fnn.ConfigError,
        match=r"PiecewiseConstant: expected one boundary less than values, got 2 boundaries and 2 values",
    ):
        schedules.PiecewiseConstantDecay([1, 2], [0.1, 0.2])
    with pytest.raises(fnn.ConfigError, match=r"unknown learning-rate schedule 'CosineDecayy'"):
        schedules.deserialize({"class_name": "CosineDecayy", "config": {}})
