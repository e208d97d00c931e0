"""Per-example gradients and DP-SGD, vmapped ensembles and sweeps, attributions and weight
averaging, each against its definition (a loop over examples or members, a formula, the
dp-accounting accountant)."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.core.spec import rebuild
from fnn.layers import Dense, Flatten

LOSS = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
MLP = fnn.serial(Dense(8, activation="tanh"), Dense(3))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=16).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


@pytest.fixture(scope="module")
def mlp_params(data):
    return MLP.init(jax.random.key(1), data[0])[0]


def _example_loss(params, x, y):
    return LOSS(y[None], MLP.apply(params, {}, x[None])[0])


_GRAD1 = jax.jit(jax.grad(_example_loss))  # the reference: one example at a time


def _close(a, b, **kw):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **kw), a, b)


# --------------------------------------------------------------------------- privacy


def test_per_example_grads_equal_a_loop_over_examples(data, mlp_params):
    x, y = data
    loop = [_GRAD1(mlp_params, x[i], y[i]) for i in range(len(x))]
    want = jax.tree.map(lambda *g: np.stack(g), *loop)
    _close(fnn.train.per_example_grads(_example_loss, mlp_params, x, y), want, atol=1e-6)
    chunked = jax.jit(lambda p: fnn.train.per_example_grads(_example_loss, p, x, y, chunk_size=4))
    _close(chunked(mlp_params), want, atol=1e-6)
    with pytest.raises(fnn.ConfigError, match="chunk_size dividing the batch size 16"):
        fnn.train.per_example_grads(_example_loss, mlp_params, x, y, chunk_size=5)


@jax.jit
def _dp_step(ts, batch, clip, noise):
    # clip and noise traced: one compiled DP step serves every test below.
    step = fnn.train.make_dp_train_step(
        MLP, LOSS, optax.sgd(1.0), l2_norm_clip=clip, noise_multiplier=noise, chunk_size=8
    )
    return step(ts, batch)


def _dp_one_step(data, clip, noise):
    x, y = data
    ts = fnn.train.init_train_state(MLP, optax.sgd(1.0), jax.random.key(1), x)
    return ts, *_dp_step(ts, (x, y), clip, noise)


def test_dp_step_clips_every_example_then_averages(data, mlp_params):
    x, y = data
    clip = 0.05
    ts, new, logs = _dp_one_step(data, clip, 0.0)
    # Reference: clip each example's flattened gradient in numpy, average, one SGD step.
    flat = []
    for i in range(len(x)):
        g = _GRAD1(ts.params, x[i], y[i])
        leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(g)]
        norm = math.sqrt(sum(float((v**2).sum()) for v in leaves))
        assert norm > clip  # so clipping is exercised for every example
        flat.append([v * min(1.0, clip / norm) for v in leaves])
        # every contribution is bounded by the clip norm
        assert math.sqrt(sum(float((v**2).sum()) for v in flat[-1])) <= clip * (1 + 1e-6)
    mean = [np.mean(vs, axis=0) for vs in zip(*flat)]
    want = [p - m for p, m in zip(jax.tree.leaves(ts.params), mean)]
    _close(jax.tree.leaves(new.params), want, atol=1e-6)
    assert float(logs["clipped_fraction"]) == 1.0


def test_dp_step_without_noise_and_large_clip_is_the_ordinary_step(data):
    x, y = data
    ts, new, logs = _dp_one_step(data, 1e6, 0.0)
    plain = jax.jit(fnn.train.make_train_step(MLP, LOSS, optax.sgd(1.0)))(ts, (x, y))
    _close(new.params, plain[0].params, atol=1e-6)
    np.testing.assert_allclose(logs["loss"], plain[1]["loss"], rtol=1e-6)


def test_dp_noise_has_std_noise_multiplier_times_clip_over_batch(data):
    clip, noise, n = 0.05, 2.0, len(data[0])
    ts, new, _ = _dp_one_step(data, clip, noise)
    _, exact, _ = _dp_one_step(data, clip, 0.0)
    # Same clipped mean in both; what is left is the Gaussian noise / batch size.
    resid = np.concatenate(
        [
            np.ravel(a - b)
            for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(exact.params))
        ]
    )
    assert resid.size == 4 * 8 + 8 + 8 * 3 + 3
    # std of a sample of 67 normals: within 25% with probability > 0.99
    np.testing.assert_allclose(resid.std() * n, noise * clip, rtol=0.25)
    assert abs(resid.mean() * n) < 4 * noise * clip / math.sqrt(resid.size)


def test_epsilon_of_published_settings():
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    # TF-Privacy's MNIST tutorial (Abadi et al.'s setting): N=60000, batch 256, noise 1.1,
    # 60 epochs, delta 1e-5 -> eps = 3.01 with the classic RDP -> (eps, delta) conversion
    # eps = min_a rdp(a) - log(delta) / (a - 1) over TF-Privacy's orders.
    q, steps = 256 / 60000, math.ceil(60 * 60000 / 256)
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
    curve = rdp._compute_rdp_poisson_subsampled_gaussian(q, 1.1, orders) * steps
    assert round(float(np.min(curve - math.log(1e-5) / (orders - 1))), 2) == 3.01
    setting = dict(num_examples=60000, batch_size=256, noise_multiplier=1.1, delta=1e-5)
    eps_rdp = fnn.train.dp_epsilon(epochs=60, **setting)
    eps_pld = fnn.train.dp_epsilon(epochs=60, accountant="pld", **setting)
    # dp-accounting's conversion is tighter than the classic one, PLD tighter still.
    assert eps_pld < eps_rdp < 3.01
    assert fnn.train.dp_epsilon(steps=steps, **setting) == eps_rdp
    # dp-accounting's documented Gaussian: sigma 4.530877117, one full-batch step is
    # (1, 1e-6)-DP by RDP (rdp_privacy_accountant_test); PLD's exact value is smaller.
    one = dict(num_examples=10, batch_size=10, noise_multiplier=4.530877117, delta=1e-6, steps=1)
    np.testing.assert_allclose(fnn.train.dp_epsilon(**one), 1.0, atol=1e-5)
    assert fnn.train.dp_epsilon(accountant="pld", **one) < 1.0
    with pytest.raises(fnn.ConfigError, match="exactly one of epochs= or steps="):
        fnn.train.dp_epsilon(**setting)


# --------------------------------------------------------------------------- ensembles


_SOLO_STEPS = {}


def _solo_runs(opt, keys, batches, steps):
    if opt not in _SOLO_STEPS:  # one compiled reference step per optimizer
        _SOLO_STEPS[opt] = jax.jit(fnn.train.make_train_step(MLP, LOSS, opt, ["accuracy"]))
    step = _SOLO_STEPS[opt]
    out = []
    for i, key in enumerate(keys):
        ts = fnn.train.init_train_state(
            MLP, opt, key, batches(i, 0)[0], metrics=["accuracy"], loss=LOSS
        )
        for s in range(steps):
            ts, _ = step(ts, batches(i, s))
        out.append(ts)
    return out


@pytest.mark.parametrize("same_batch", [True, False])
def test_ensemble_members_equal_training_each_alone(data, same_batch):
    x, y = data
    n, steps, bs = 3, 3, 8
    orders = fnn.train.member_orders(len(x), n, seed=5, epoch=0)

    def batches(i, s):
        if same_batch:
            return x[s * 4 : s * 4 + bs], y[s * 4 : s * 4 + bs]
        idx = orders[i, s * 4 : s * 4 + bs]
        return x[idx], y[idx]

    key = jax.random.key(3)
    ts = fnn.train.init_ensemble_train_state(
        MLP, "adam", key, n, x[:bs], metrics=["accuracy"], loss=LOSS
    )
    step = jax.jit(
        fnn.train.make_ensemble_train_step(MLP, LOSS, "adam", ["accuracy"], same_batch=same_batch)
    )
    for s in range(steps):
        if same_batch:
            batch = batches(0, s)
        else:
            batch = tuple(jnp.stack(b) for b in zip(*[batches(i, s) for i in range(n)]))
        ts, logs = step(ts, batch)
    assert logs["loss"].shape == (n,)
    solo = _solo_runs("adam", jax.random.split(key, n), batches, steps)
    for i, one in enumerate(solo):
        _close(jax.tree.map(lambda a: a[i], ts.params), one.params, atol=2e-6)
    member_metrics = fnn.train.compute_member_metrics(ts.metric_states, ["accuracy"])
    want = [fnn.train.compute_metrics(one.metric_states, ["accuracy"]) for one in solo]
    np.testing.assert_allclose(member_metrics["loss"], [w["loss"] for w in want], rtol=1e-5)
    np.testing.assert_allclose(member_metrics["accuracy"], [w["accuracy"] for w in want])
    # Order check: member i shuffles as epoch_order with seed 5 + i.
    np.testing.assert_array_equal(orders[2], fnn.training.loop.epoch_order(16, seed=7, epoch=0))


def test_ensemble_layer_and_predictive_stats(data):
    x, _ = data
    members = fnn.ensemble(MLP, 4)
    params, state = members.init(jax.random.key(0), x)
    abstract = jax.eval_shape(members.init, jax.random.key(0), x)[0]
    assert jax.tree.map(jnp.shape, abstract) == jax.tree.map(jnp.shape, params)
    keys = jax.random.split(jax.random.key(0), 4)
    out, _ = jax.jit(members.apply)(params, state, x)
    alone = jax.jit(lambda k: MLP.apply(MLP.init(k, x)[0], {}, x)[0])
    for i in range(4):
        np.testing.assert_allclose(out[i], alone(keys[i]), atol=1e-6)
    stats = jax.jit(fnn.train.predictive_stats)(out)
    p = np.exp(out - out.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    mean = p.mean(0)
    entropy = -(mean * np.log(mean)).sum(-1)
    np.testing.assert_allclose(stats["probs"], mean, atol=1e-6)
    np.testing.assert_allclose(stats["entropy"], entropy, atol=1e-5)
    np.testing.assert_allclose(
        stats["mutual_information"], entropy + (p * np.log(p)).sum(-1).mean(0), atol=1e-5
    )
    np.testing.assert_allclose(stats["variance"], p.var(0), atol=1e-6)
    with pytest.raises(fnn.ShapeError, match="leading member axis of size 4"):
        members.apply(jax.tree.map(lambda a: a[:2], params), state, x)


def test_lr_sweep_members_equal_single_runs_and_new_values_do_not_recompile(data):
    x, y = data
    lrs = [1e-3, 1e-2, 1e-1]
    key = jax.random.key(4)
    ts, tx = fnn.train.init_sweep_train_state(
        MLP, "adam", key, x[:8], hyperparams={"learning_rate": lrs}
    )
    step = jax.jit(fnn.train.make_ensemble_train_step(MLP, LOSS, tx))

    def batches(i, s):
        del i
        return x[s * 8 : s * 8 + 8], y[s * 8 : s * 8 + 8]

    def run(state):
        for s in range(2):
            state, _ = step(state, batches(0, s))
        return state

    swept = run(ts)
    for i, lr in enumerate(lrs):
        solo = _solo_runs(fnn.optimizers.get("adam", lr), [key], batches, 2)[0]
        _close(jax.tree.map(lambda a: a[i], swept.params), solo.params, atol=2e-6)
    other, _ = fnn.train.init_sweep_train_state(
        MLP, "adam", key, x[:8], hyperparams={"learning_rate": [3e-3, 3e-2, 0.3]}
    )
    with fnn.train.CompileCounter() as compiles:
        other = run(other)
    assert compiles.count == 0
    assert not np.allclose(jax.tree.leaves(other.params)[0], jax.tree.leaves(swept.params)[0])
    table = fnn.train.sweep_table({"learning_rate": lrs}, {"loss": [0.5, 0.25, 0.125]})
    assert table.splitlines()[2] == "| 0 | 0.001 | 0.5000 |"
    with pytest.raises(fnn.ConfigError, match="one value per member"):
        fnn.train.init_sweep_train_state(
            MLP, "adam", key, x, hyperparams={"learning_rate": [1.0], "beta_1": [0.9, 0.8]}
        )


def test_hyper_steps_members_equal_steps_with_constant_values(data):
    """A dropout rate and label smoothing as traced member values (``make_hyper_steps``):
    member i trains and evaluates as ``make_train_step``/``make_eval_step`` of the layer and
    loss built with member i's values as Python constants."""
    x, y = data
    model = fnn.serial(Dense(8, activation="tanh"), fnn.layers.Dropout(0.1), Dense(3))
    dense, drop, head = (child for _, child in model.children)

    def make(rate, smoothing):
        layer = rebuild(model, layers=(dense, rebuild(drop, rate=rate), head))
        loss = fnn.losses.SparseCategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
        return layer, loss

    train, evaluate = fnn.train.make_hyper_steps(
        lambda v: make(v["rate"], v["smoothing"]), "adam", ["accuracy"]
    )
    ts = fnn.train.init_train_state(
        model, "adam", jax.random.key(2), x, metrics=["accuracy"], loss=LOSS
    )
    rates, smoothing = [0.0, 0.5], [0.2, 0.0]
    values = {"rate": jnp.array(rates), "smoothing": jnp.array(smoothing)}
    members = jax.vmap(fnn.train.hyper_state, in_axes=(None, 0))(ts, values)
    step = jax.jit(jax.vmap(train, in_axes=(0, None)))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    for batch in batches:
        members, _ = step(members, batch)
    fresh = jax.tree.map(lambda a: jnp.stack([a, a]), ts.metric_states)
    scores = jax.jit(jax.vmap(evaluate, in_axes=(0, 0, 0, None)))(
        fresh, members.params, members.state, (x, y)
    )
    np.testing.assert_array_equal(members.state["hyper"]["rate"], rates)
    for i in range(2):
        layer, loss = make(rates[i], smoothing[i])
        solo, solo_step = ts, jax.jit(fnn.train.make_train_step(layer, loss, "adam", ["accuracy"]))
        for batch in batches:
            solo, _ = solo_step(solo, batch)
        _close(jax.tree.map(lambda a: a[i], members.params), solo.params, atol=1e-6)
        want = fnn.train.make_eval_step(layer, loss, ["accuracy"])(
            ts.metric_states, solo.params, solo.state, (x, y)
        )
        _close(jax.tree.map(lambda a: a[i], scores), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        members.params["dense"]["kernel"][0], members.params["dense"]["kernel"][1]
    )


# --------------------------------------------------------------------------- explain

LINEAR = fnn.serial(Flatten(), Dense(3))


@pytest.fixture(scope="module")
def linear():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 1)).astype(np.float32))
    params, state = LINEAR.init(jax.random.key(2), x)
    paths = fnn.train.tree_paths(params)
    kernel = jax.tree.leaves(params)[[p.endswith("kernel") for p in paths].index(True)]
    return x, params, state, np.asarray(kernel)


def test_gradient_attributions_of_a_linear_model_match_the_weights(linear):
    x, params, state, kernel = linear
    target = jnp.array([0, 2])
    w = np.stack([kernel[:, t].reshape(4, 4, 1) for t in [0, 2]])
    kw = dict(target=target, params=params, state=state)

    @jax.jit
    def all_methods(x):
        return (
            fnn.explain.saliency(LINEAR, x, **kw),
            fnn.explain.gradient_x_input(LINEAR, x, **kw),
            fnn.explain.smoothgrad(LINEAR, x, key=jax.random.key(0), samples=4, **kw),
            fnn.explain.occlusion(LINEAR, x, window=(2, 2, 1), stride=(1, 1, 1), **kw),
        )

    sal, gxi, sg, occ = all_methods(x)
    np.testing.assert_allclose(sal, np.abs(w), atol=1e-6)
    np.testing.assert_allclose(gxi, x * w, atol=1e-6)
    np.testing.assert_allclose(sg, w, atol=1e-6)  # a linear model's gradient is constant
    # Occlusion against a loop over 2x2 windows at stride 1 (drop = sum of x*w inside).
    want = np.zeros((2, 4, 4, 1))
    cover = np.zeros((4, 4, 1))
    for a in range(3):
        for b in range(3):
            drop = (np.asarray(x) * w)[:, a : a + 2, b : b + 2].sum(axis=(1, 2, 3))
            want[:, a : a + 2, b : b + 2] += drop[:, None, None, None]
            cover[a : a + 2, b : b + 2] += 1
    np.testing.assert_allclose(occ, want / cover, atol=1e-5)
    with pytest.raises(fnn.ShapeError, match="one per non-batch axis"):
        fnn.explain.occlusion(LINEAR, x, window=(2, 2), **kw)


def test_integrated_gradients_are_complete(data, mlp_params):
    x, _ = data
    x = x[:4]
    baseline = jnp.full_like(x, 0.5)
    attr = jax.jit(
        lambda v: fnn.explain.integrated_gradients(
            MLP, v, baseline=baseline, steps=128, params=mlp_params
        )
    )(x)
    logits = MLP.apply(mlp_params, {}, x)[0]
    target = np.argmax(logits, -1)
    base = MLP.apply(mlp_params, {}, baseline)[0]
    gap = np.take_along_axis(np.asarray(logits - base), target[:, None], 1)[:, 0]
    np.testing.assert_allclose(attr.sum(axis=1), gap, atol=2e-4 * max(1.0, np.abs(gap).max()))
    with pytest.raises(fnn.ConfigError, match="params="):
        fnn.explain.saliency(MLP, x)


# --------------------------------------------------------------------------- averaging


def test_ema_and_swa_follow_their_formulas():
    target = np.array([1.0, -2.0, 0.5], np.float32)
    params = {"w": jnp.zeros(3)}

    def grads(p):
        return {"w": p["w"] - target}

    for opt, kind in [
        (fnn.train.with_ema(optax.sgd(0.3), decay=0.8), "ema"),
        (fnn.train.with_swa(optax.sgd(0.3), start=2, every=2), "swa"),
    ]:
        state, p = opt.init(params), params
        history, ema = [], np.zeros(3)
        for _ in range(7):
            updates, state = opt.update(grads(p), state, p)
            p = optax.apply_updates(p, updates)
            history.append(np.asarray(p["w"]))
            ema = 0.8 * ema + 0.2 * history[-1]
        if kind == "ema":
            want = ema
        else:  # updates 2, 4, 6
            want = np.mean([history[1], history[3], history[5]], axis=0)
        np.testing.assert_allclose(fnn.train.averaged_params(state)["w"], want, atol=1e-6)
    with pytest.raises(fnn.ConfigError, match="with_ema"):
        fnn.train.averaged_params(optax.sgd(0.1).init(params))


def test_uniform_soup(data):
    members = fnn.ensemble(MLP, 3)
    params, _ = members.init(jax.random.key(0), data[0])
    one = jax.tree.map(lambda a: a[0], params)
    _close(fnn.train.uniform_soup([one, one, one]), one, rtol=1e-6, atol=1e-7)
    same = jax.tree.map(lambda a: jnp.stack([a[0]] * 3), params)
    _close(fnn.train.uniform_soup(same), one, atol=1e-7)
    _close(fnn.train.uniform_soup(params), jax.tree.map(lambda a: np.mean(a, 0), params), atol=1e-7)


# --------------------------------------------------------------------------- Model.fit


def _keras_mlp(seed, dropout=0.0):
    model = fnn.Sequential(
        [fnn.Input((4,)), Dense(8, activation="tanh"), fnn.layers.Dropout(dropout), Dense(3)]
    )
    model.compile("sgd", LOSS, metrics=["accuracy"], seed=seed)
    return model


@pytest.fixture(scope="module")
def fit_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 4)).astype(np.float32)  # batch 16: two full batches and 8 left
    return x, rng.integers(0, 3, size=40).astype(np.int32)


_FIT = dict(batch_size=16, epochs=2, verbose=0)


@pytest.fixture(scope="module")
def solo6(fit_data):
    """Seed 6's model fit unshuffled on the first 32 examples (two batches of 16)."""
    x, y = fit_data[0][:32], fit_data[1][:32]
    model = _keras_mlp(6)
    return model, model.fit(x, y, shuffle=False, **_FIT).history


def _member(model, i):
    return jax.tree.map(lambda a: a[i], model.params), jax.tree.map(lambda a: a[i], model.state)


def test_fit_ensemble_members_equal_single_fits_on_their_own_shuffles(fit_data):
    x, y = fit_data
    ens = _keras_mlp(5, dropout=0.3)
    hist = ens.fit(x, y, ensemble=2, validation_data=(x[:8], y[:8]), **_FIT).history
    assert ens.members == 2
    solo = _keras_mlp(6, dropout=0.3)  # member 1: seed 5 + 1 (init, dropout keys, shuffle)
    want = solo.fit(x, y, **_FIT).history
    _close(_member(ens, 1)[0], solo.params, atol=1e-6)
    for k in want:
        np.testing.assert_allclose(hist[f"{k}_member_1"], want[k], rtol=1e-5)
    for i in range(2):  # validation: member i's loss on the validation rows, computed eagerly
        logits = ens.layer.apply(*_member(ens, i), jnp.asarray(x[:8]))[0]
        np.testing.assert_allclose(hist[f"val_loss_member_{i}"][-1], LOSS(y[:8], logits), rtol=1e-5)
    for k in ("loss", "accuracy", "val_loss"):
        np.testing.assert_allclose(
            hist[k], np.mean([hist[f"{k}_member_0"], hist[f"{k}_member_1"]], axis=0), rtol=1e-6
        )
    # The combined prediction: the mean of the members' softmax and its entropy, in numpy.
    probs = np.stack(
        [jax.nn.softmax(ens.layer.apply(*_member(ens, i), jnp.asarray(x))[0]) for i in range(2)]
    )
    mean = probs.mean(0)
    np.testing.assert_allclose(ens.predict(x, batch_size=16, verbose=0), mean, atol=1e-6)
    stats = ens.predict_uncertainty(x, batch_size=16, verbose=0)
    np.testing.assert_allclose(stats["entropy"], -(mean * np.log(mean)).sum(-1), atol=1e-5)
    np.testing.assert_allclose(stats["variance"], probs.var(0), atol=1e-6)
    ens.fit(x, y, batch_size=16, epochs=3, initial_epoch=2, verbose=0)  # continues the ensemble
    assert ens.members == 2 and ens.train_state.step.tolist() == [9, 9]
    with pytest.raises(fnn.ConfigError, match="holds a 2-member ensemble"):
        ens.get_weights()


def test_fit_ensemble_on_the_same_batches(fit_data, solo6):
    x, y = fit_data[0][:32], fit_data[1][:32]
    ens = _keras_mlp(5)
    hist = ens.fit(x, y, ensemble=2, ensemble_batches="same", shuffle=False, **_FIT).history
    solo, want = solo6  # member 1: seed 6's init on the (here unshuffled) shared batches
    _close(_member(ens, 1)[0], solo.params, atol=1e-6)
    np.testing.assert_allclose(hist["loss_member_1"], want["loss"], rtol=1e-5)


def test_fit_ensemble_and_dp_bad_arguments(fit_data):
    x, y = fit_data
    model = _keras_mlp(0)
    with pytest.raises(fnn.ConfigError, match="ensemble_batches 'own' or 'same', got 'mine'"):
        model.fit(x, y, ensemble=2, ensemble_batches="mine", verbose=0)
    with pytest.raises(fnn.ConfigError, match="expected ensemble to be an int >= 1, got 0"):
        model.fit(x, y, ensemble=0, verbose=0)
    with pytest.raises(fnn.ConfigError, match="predict_uncertainty needs an ensemble"):
        model.predict_uncertainty(x)
    bad = [
        ({"l2_norm_clip": 0, "noise_multiplier": 1.0}, "expected l2_norm_clip > 0, got 0"),
        ({"noise_multiplier": 1.0}, r"missing keys \['l2_norm_clip'\]"),
        ({"l2_norm_clip": 1, "noise_multiplier": 1, "clip": 2}, r"unknown keys \['clip'\]"),
        ({"l2_norm_clip": 1, "noise_multiplier": 1, "delta": 2}, r"delta in \(0, 1\), got 2"),
        ({"l2_norm_clip": 1, "noise_multiplier": 1, "chunk_size": 0}, "chunk_size an int >= 1"),
        (3, "expected a mapping with l2_norm_clip"),
    ]
    for dp, match in bad:
        with pytest.raises(fnn.ConfigError, match=match):
            model.fit(x, y, dp=dp, verbose=0)
    with pytest.raises(fnn.ConfigError, match="no sample_weight"):
        model.fit(x, y, dp={"l2_norm_clip": 1, "noise_multiplier": 1}, sample_weight=y * 1.0)


def test_fit_dp_without_noise_is_fit_and_reports_the_accountants_epsilon(fit_data, solo6):
    x, y = fit_data[0][:32], fit_data[1][:32]
    fit = dict(shuffle=False, **_FIT)
    plain, want = solo6
    private = _keras_mlp(6)
    # chunk_size 5 does not divide the batch of 16: the last chunk is padded
    dp = {"l2_norm_clip": 1e6, "noise_multiplier": 0.0, "chunk_size": 5}
    got = private.fit(x, y, dp=dp, **fit).history
    _close(private.params, plain.params, atol=1e-6)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
    assert got["epsilon"] == [math.inf, math.inf]
    dp = fnn.train.DPConfig(l2_norm_clip=1.0, noise_multiplier=1.3, delta=1e-3)
    eps = _keras_mlp(6).fit(x, y, dp=dp, **fit).history["epsilon"]
    setting = dict(num_examples=32, batch_size=16, noise_multiplier=1.3, delta=1e-3)
    assert eps == [fnn.train.dp_epsilon(steps=2 * e, **setting) for e in (1, 2)]
    assert eps[0] < eps[1]


def test_recompiling_an_ensemble_keeps_its_members(fit_data):
    """As Keras keeps the weights on ``compile``: the members stay, each gets a fresh
    optimizer state, and training on is member i's single model recompiled and fit on."""
    x, y = fit_data[0][:32], fit_data[1][:32]  # full batches only: fewer programs to compile
    ens = _keras_mlp(5)
    ens.fit(x, y, ensemble=2, **_FIT)
    trained = jax.tree.map(np.array, ens.params)
    ens.compile("adam", LOSS, metrics=["accuracy"], seed=5)
    assert ens.members == 2
    _close(ens.params, trained, atol=0)
    # predict before any new fit: the combined prediction of the kept members
    logits = np.stack([ens.layer.apply(*_member(ens, i), jnp.asarray(x))[0] for i in range(2)])
    np.testing.assert_allclose(
        ens.predict(x, batch_size=16, verbose=0), jax.nn.softmax(logits).mean(0), atol=1e-6
    )
    hist = ens.fit(x, y, **_FIT).history
    solo = _keras_mlp(6)  # member 1: seed 5 + 1, fit, recompiled with adam, fit on
    solo.fit(x, y, **_FIT)
    solo.compile("adam", LOSS, metrics=["accuracy"], seed=6)
    want = solo.fit(x, y, **_FIT).history
    _close(_member(ens, 1)[0], solo.params, atol=1e-6)
    np.testing.assert_allclose(hist["loss_member_1"], want["loss"], rtol=1e-5)


def test_binary_ensemble_combines_probabilities_and_its_group_report(fit_data):
    """A binary crossentropy (logits) ensemble: ``predict`` is the members' mean sigmoid
    probability, ``predict_uncertainty`` the Bernoulli entropies, and
    ``evaluate(groups=...)`` thresholds those probabilities at 0.5 (fairlearn's report of
    the same predictions)."""
    fairlearn = pytest.importorskip("fairlearn.metrics")
    x = fit_data[0][:32]
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)[:, None]
    groups = np.where(x[:, 2] > 0, "a", "b")
    model = fnn.Sequential([fnn.Input((4,)), Dense(8, activation="tanh"), Dense(1)])
    model.compile("adam", fnn.losses.BinaryCrossentropy(from_logits=True), seed=1)
    model.fit(x, y, ensemble=3, batch_size=16, epochs=2, verbose=0)
    logits = np.stack([model.layer.apply(*_member(model, i), jnp.asarray(x))[0] for i in range(3)])
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))  # [members, batch, 1]
    mean = p.mean(0)
    np.testing.assert_allclose(model.predict(x, batch_size=16, verbose=0), mean, atol=1e-6)

    def bernoulli(q):
        return -(q * np.log(q) + (1 - q) * np.log(1 - q))

    stats = model.predict_uncertainty(x, batch_size=16, verbose=0)
    np.testing.assert_allclose(stats["probs"], mean, atol=1e-6)
    np.testing.assert_allclose(stats["variance"], p.var(0), atol=1e-6)
    np.testing.assert_allclose(stats["entropy"], bernoulli(mean), atol=1e-5)
    np.testing.assert_allclose(
        stats["mutual_information"], bernoulli(mean) - bernoulli(p).mean(0), atol=1e-5
    )
    report = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True, groups=groups)
    y_hat = (mean[:, 0] > 0.5).astype(int)
    assert 0 < y_hat.sum() < len(y_hat)  # both classes predicted: the threshold matters
    frame = fairlearn.MetricFrame(
        metrics={"selection_rate": fairlearn.selection_rate, "tpr": fairlearn.true_positive_rate},
        y_true=y[:, 0].astype(int),
        y_pred=y_hat,
        sensitive_features=groups,
    )
    for group, row in frame.by_group.iterrows():
        for key, value in row.items():
            np.testing.assert_allclose(report["fairness"]["groups"][group][key], value, atol=1e-6)
    want = fairlearn.demographic_parity_difference(
        y[:, 0].astype(int), y_hat, sensitive_features=groups
    )
    np.testing.assert_allclose(report["fairness"]["demographic_parity_difference"], want, atol=1e-6)
    # predict's public signature is Keras's (no private keyword)
    params = list(inspect.signature(fnn.Model.predict).parameters)
    assert params == ["self", "x", "batch_size", "verbose", "steps", "callbacks"]


def test_fit_ensemble_with_dp_members_equal_single_dp_fits(fit_data):
    x, y = fit_data[0][:32], fit_data[1][:32]  # two full batches: one program per fit
    dp = {"l2_norm_clip": 0.5, "noise_multiplier": 1.1, "delta": 1e-3}
    ens = _keras_mlp(5, dropout=0.3)
    hist = ens.fit(x, y, ensemble=2, dp=dp, **_FIT).history
    solo = _keras_mlp(6, dropout=0.3)  # member 1: seed 5 + 1 (init, dropout and noise keys)
    want = solo.fit(x, y, dp=dp, **_FIT).history
    _close(_member(ens, 1)[0], solo.params, atol=1e-6)
    for k in ("loss", "accuracy"):
        np.testing.assert_allclose(hist[f"{k}_member_1"], want[k], rtol=1e-5)
    assert hist["epsilon"] == want["epsilon"]  # each member's epsilon, the same for all
    assert math.isfinite(want["epsilon"][-1])


def test_ensemble_dp_step_draws_each_members_noise_from_its_own_key(data):
    from fnn.training import loop

    x, y = data
    cfg = fnn.train.DPConfig(l2_norm_clip=0.05, noise_multiplier=2.0)
    ts = fnn.train.init_train_state(MLP, optax.sgd(1.0), jax.random.key(1), x)
    # Two members with the same params, batch and step, keys 1 and 2: they differ by noise.
    other = fnn.train.init_train_state(MLP, optax.sgd(1.0), jax.random.key(2), x).rng
    pair = jax.tree.map(lambda a: jnp.stack([a, a]), ts)
    pair = pair._replace(rng=jnp.stack([ts.rng, other]))
    trainer = loop.Trainer(MLP, LOSS, optax.sgd(1.0)).variant(members=2, dp=cfg)
    new, _ = trainer.step(pair, (x, y))
    for i, rng in enumerate((ts.rng, other)):
        alone, _ = _dp_step(ts._replace(rng=rng), (x, y), 0.05, 2.0)
        _close(jax.tree.map(lambda a: a[i], new.params), alone.params, atol=1e-6)
    # The members differ by (z_0 - z_1) * noise * clip / batch: std sqrt(2) * 2.0 * 0.05 / 16.
    diff = np.concatenate([np.ravel(a[0] - a[1]) for a in jax.tree.leaves(new.params)])
    np.testing.assert_allclose(diff.std(), math.sqrt(2) * 2.0 * 0.05 / len(x), rtol=0.3)
