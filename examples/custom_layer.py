"""Writing a custom layer: an init/apply pair, registered so configs and saved models know it.

Run: python examples/custom_layer.py   (a few seconds)

``ScaledTanh`` learns a per-feature scale ``alpha``: ``y = alpha * tanh(x)``,
``[..., features] -> [..., features]``. It follows the protocol every fnn layer follows:
``init`` uses shapes only, ``apply`` is pure, errors name the layer and the shapes. It then
trains like any built-in layer with ``fnn.train``'s step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn.errors import check_last_dim, check_rank
from fnn.layers import Dense


@fnn.register_layer
def ScaledTanh(alpha_init: float = 1.0, name: str = "scaled_tanh") -> fnn.Layer:
    """``alpha * tanh(x)`` with a learned ``alpha [features]``: ``[..., f] -> [..., f]``."""

    def init(key, x):
        del key  # deterministic initial value
        check_rank(name, x, min_rank=1, layout="[..., features]")
        return {"alpha": jnp.full((x.shape[-1],), alpha_init, fnn.core.param_dtype(x))}, {}

    def apply(params, state, x, *, rng=None, train=False):
        del rng, train
        alpha = params["alpha"]
        check_last_dim(name, x, alpha.shape[0], param="alpha", param_shape=alpha.shape)
        return alpha * jnp.tanh(x), state

    return fnn.Layer(init, apply, name)


def main(steps: int = 300) -> float:
    """Fit ``y = 3 tanh(x w)`` and return the learned mean ``alpha`` (should approach 3)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    w = rng.normal(size=(4, 2)).astype(np.float32)
    y = 3.0 * np.tanh(x @ w)

    model = fnn.serial(Dense(2, use_bias=False), ScaledTanh())
    fnn.summary(model, x)
    optimizer = fnn.optimizers.get("adam", 0.05)
    ts = fnn.train.init_train_state(model, optimizer, jax.random.key(0), x)
    step = fnn.train.make_train_step(model, "mean_squared_error", optimizer)
    # All steps in one compiled call: make_multi_step scans the step over a leading axis,
    # here the whole (x, y) batch repeated ``steps`` times.
    repeated = tuple(np.broadcast_to(a, (steps, *a.shape)) for a in (x, y))
    ts, logs = jax.jit(fnn.train.make_multi_step(step))(ts, repeated)
    for i in range(0, steps, 100):
        print(f"step {i:4d}  mse {float(logs['loss'][i]):.5f}")
    params, state = ts.params, ts.state
    alpha = np.asarray(params["scaled_tanh"]["alpha"])
    print(f"learned alpha {alpha}, final mse {float(logs['loss'][-1]):.6f}")

    # Registered layers round-trip through saved architectures (no code is stored).
    config = fnn.saving.layer_to_config(model)
    rebuilt = fnn.saving.layer_from_config(config)
    same = np.allclose(rebuilt.apply(params, state, x)[0], model.apply(params, state, x)[0])
    print(f"rebuilt from its JSON config: {same}")
    return float(np.mean(np.abs(alpha)))


if __name__ == "__main__":
    main()
