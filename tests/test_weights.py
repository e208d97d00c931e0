"""fnn.core.weights: Keras's get_weights order from the call order and the layers' own
declarations, and the list <-> params/state conversion."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.core import weights
from fnn.core.combinators import call_child
from fnn.errors import ShapeError
from fnn.layers import BatchNormalization, Dense

X = jax.ShapeDtypeStruct((2, 3), jnp.float32)


def paths_of(layer, x=X):
    params, state = jax.eval_shape(layer.init, jax.random.key(0), x)
    return weights.weight_paths(layer, params, state, x)


def two_children(first: str, order=None):
    """A hand-made layer with children ``a`` and ``z`` (called ``first`` first) and its own
    ``scale``/``offset`` arrays beside them."""
    children = {"a": Dense(3, name="a"), "z": Dense(3, name="z")}
    second = "z" if first == "a" else "a"

    def init(key, x):
        ka, kz = jax.random.split(key)
        params = {
            "a": children["a"].init(ka, x)[0],
            "z": children["z"].init(kz, x)[0],
            "scale": jnp.ones(3),
            "offset": jnp.zeros(3),
        }
        return params, {}

    def apply(params, state, x, *, rng=None, train=False):
        for k in (first, second):
            x, _ = call_child(k, children[k], params[k], {}, (x,), None, train)
        return x * params["scale"] + params["offset"], state

    return fnn.Layer(init, apply, "pair", weight_order=order)


def test_the_parents_own_arrays_then_children_in_call_order():
    # Keras's Layer.weights: the layer's own variables, then each sublayer's weights.
    dense = ["kernel", "bias"]  # Dense's declared order
    for first, second in (("a", "z"), ("z", "a")):
        got = weights.weight_names(paths_of(two_children(first)))
        # Undeclared own arrays keep their stored (here: sorted, from eval_shape) order.
        own = sorted(["scale", "offset"])
        assert got == own + [f"{first}/{k}" for k in dense] + [f"{second}/{k}" for k in dense]
    got = weights.weight_names(paths_of(two_children("z", order=("scale", "offset"))))
    assert got[:2] == ["scale", "offset"]


def test_declared_order_ranks_patterns_at_every_depth_and_state_after_params():
    def init(key, x):
        del key, x
        branch = {"bias": jnp.zeros(2), "kernel": jnp.ones((3, 2)), "extra": jnp.ones(1)}
        params = {"back_x": branch, "fwd_x": branch}
        return params, {"count": jnp.zeros(()), "avg": jnp.zeros(())}

    def apply(params, state, x, *, rng=None, train=False):
        return x, state

    layer = fnn.Layer(init, apply, "bi", weight_order=("fwd_*", "kernel", "bias", "count"))
    got = weights.weight_names(paths_of(layer))
    branch = ["kernel", "bias", "extra"]  # named keys first, then the rest as stored
    assert got == [f"fwd_x/{k}" for k in branch] + [f"back_x/{k}" for k in branch] + [
        "count",
        "avg",
    ]
    assert [kind for kind, _ in paths_of(layer)] == ["params"] * 6 + ["state"] * 2


def test_get_and_set_weights_round_trip_and_name_bad_input():
    model = fnn.serial(Dense(4), BatchNormalization(), name="net")
    params, state = model.init(jax.random.key(0), X)
    paths = weights.weight_paths(model, params, state, X)
    rng = np.random.default_rng(0)
    new = [rng.normal(size=w.shape) for w in weights.get_weights(params, state, paths)]
    params2, state2 = weights.set_weights(params, state, paths, new, "net")
    got = weights.get_weights(params2, state2, paths)
    for g, w in zip(got, new, strict=True):
        assert g.dtype == np.float32  # cast to the current dtype
        np.testing.assert_allclose(g, w, rtol=1e-6)
    np.testing.assert_allclose(state2["batch_normalization"]["moving_mean"], new[4], rtol=1e-6)
    assert params["dense"]["kernel"] is not params2["dense"]["kernel"]  # inputs untouched
    with pytest.raises(ShapeError, match=r"net: set_weights expected 6 arrays \(dense/kernel, "):
        weights.set_weights(params, state, paths, new[:2], "net")
    with pytest.raises(ShapeError, match=r"net: set_weights expected dense/bias of shape \(4,\)"):
        weights.set_weights(params, state, paths, [new[0], np.zeros(5), *new[2:]], "net")
