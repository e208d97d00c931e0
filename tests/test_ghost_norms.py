"""Ghost-clipping norms (``fnn.training.ghost_norms``) against their definition: a Python
loop of ``jax.grad`` over single examples, in float64; and the DP-SGD step that uses them
against the two-pass step (``ghost_norms=False``) with the same keys."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.layers import Conv2D, Dense, Dropout, Flatten, LayerNormalization
from fnn.training.ghost_norms import ghost_pass

LOSS = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)


def _loss_of(layer):
    def loss(params, x, y):
        out, _ = layer.apply(params, {}, x[None])
        return LOSS(y[None], out)

    return loss


def _reference(loss, params, x, y, factors):
    """Per-example losses, squared gradient norms and ``sum_i factors_i g_i``, one example
    at a time (numpy sums)."""
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    values, grads = zip(*(value_and_grad(params, x[i], y[i]) for i in range(len(x))))
    grads = [[np.asarray(g) for g in jax.tree.leaves(gs)] for gs in grads]
    sq = np.array([sum(float((g**2).sum()) for g in gs) for gs in grads])
    summed = [sum(f * gs[k] for f, gs in zip(factors, grads)) for k in range(len(grads[0]))]
    return np.asarray(values), sq, summed


CASES = {
    # [batch, 5] -> 7 -> 3: one position per example (||x||^2 ||g||^2)
    "mlp": (fnn.serial(Dense(7, activation="tanh"), Dense(3)), (5,), (False,) * 4),
    # [batch, 3 positions, 6]: Dense(8) takes the Gram form (3 * 14 <= 6 * 8), Dense(2)
    # the product X^T G (3 * 10 > 8 * 2)
    "sequence": (fnn.serial(Dense(8, activation="relu"), Dense(2)), (3, 6), (False,) * 4),
    # conv kernel by per-example grad (no rule); conv bias, LayerNorm and Dense by rules
    "mixed": (
        fnn.serial(Conv2D(2, 3, activation="relu"), LayerNormalization(), Flatten(), Dense(3)),
        (5, 5, 1),
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ghost_norms_and_clipped_sum_equal_a_loop_over_examples(case):
    layer, shape, want_fallback = CASES[case]
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(6, *shape)))
        y_shape = (6, shape[0]) if case == "sequence" else (6,)
        y = jnp.asarray(rng.integers(0, 2 if case == "sequence" else 3, size=y_shape))
        params = layer.init(jax.random.key(0), x)[0]
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        loss = _loss_of(layer)
        factors = jnp.asarray(rng.uniform(0.1, 1.0, size=6))
        fallback = []

        @jax.jit
        def fast(p):
            out = ghost_pass(loss, p, (x, y))
            fallback.append(out.fallback)
            return out.values, out.sq_norms, out.weighted_sum(factors)

        values, sq_norms, summed = fast(params)
        values_loop, sq, want = _reference(loss, params, x, y, np.asarray(factors))
    assert sq_norms.dtype == jnp.float64
    np.testing.assert_allclose(sq_norms, sq, rtol=1e-10)
    np.testing.assert_allclose(values, values_loop, rtol=1e-12)
    (fallback,) = fallback
    leaves = jax.tree.leaves(params)
    if want_fallback is not None:
        assert fallback == want_fallback
    else:  # only the conv kernel has no rule
        names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        assert [n for n, f in zip(names, fallback) if f] == ["['conv2d']['kernel']"]
    for leaf, got, ref, no_rule in zip(leaves, summed, want, fallback):
        if no_rule:
            assert got is None
        else:
            assert got.shape == leaf.shape
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_a_weight_used_twice_falls_back_and_stays_exact():
    # Tied weights: the per-example gradient sums two uses, which no one-op rule covers.
    def loss(p, x, y):
        h = jnp.tanh(x @ p["w"] + p["b"])
        return jnp.sum((h @ p["w"].T - y) ** 2)

    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x, y = jnp.asarray(rng.normal(size=(5, 4))), jnp.asarray(rng.normal(size=(5, 4)))
        p = {"w": jnp.asarray(rng.normal(size=(4, 4))), "b": jnp.zeros(4, jnp.float64)}
        fast = ghost_pass(loss, p, (x, y))
        _, sq, _ = _reference(loss, p, x, y, np.ones(5))
    assert fast.fallback == (False, True)  # b (sorted first) has its rule, w does not
    np.testing.assert_allclose(fast.sq_norms, sq, rtol=1e-10)


DP_MODEL = fnn.serial(
    Conv2D(2, 2, activation="relu"), Flatten(), Dense(6, activation="tanh"), Dropout(0.3), Dense(3)
)


def test_dp_step_with_ghost_norms_is_the_two_pass_step():
    # Conv kernel by per-example grad, the rest by rules; dropout draws per-example keys.
    layer = DP_MODEL
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(12, 3, 3, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 3, size=12).astype(np.int32))
    ts = fnn.train.init_train_state(layer, optax.sgd(0.5), jax.random.key(3), x)

    def run(ghost):
        step = fnn.train.make_dp_train_step(
            layer,
            LOSS,
            optax.sgd(0.5),
            l2_norm_clip=2.0,
            noise_multiplier=1.1,
            ghost_norms=ghost,
        )
        return jax.jit(step)(ts, (x, y))

    # (chunked and padded batches through the ghost path: test_research's DP tests)
    (fast, fast_logs), (old, old_logs) = run(True), run(False)
    for a, b in zip(jax.tree.leaves(fast.params), jax.tree.leaves(old.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for k in old_logs:
        np.testing.assert_allclose(fast_logs[k], old_logs[k], rtol=1e-5)
    assert 0 < float(old_logs["clipped_fraction"]) < 1  # both sides of the clip
    moved = [
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(*map(jax.tree.leaves, (old.params, ts.params)))
    ]
    assert min(moved) > 0  # every leaf got a (noisy) update
