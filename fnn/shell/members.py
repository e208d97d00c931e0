"""What ``Model.fit(ensemble=n)`` and ``Model.fit(dp=...)`` add to the shell: the
stacked member ``TrainState``, each member's epoch order, the combined predict step and
the DP-SGD epsilon of an epoch's logs. The training itself is ``fnn.training.loop``'s
(its ``Trainer`` with ``members``/``dp``).

Member i of an ensemble is the model ``compile(seed=seed + i)`` would build and train:
its initialisation and dropout keys come from ``seed + i`` and, with
``ensemble_batches="own"``, its shuffle too.

>>> import numpy as np
>>> orders = member_orders(5, 2, seed=0, epoch=0, shuffle=False)
>>> orders.tolist()
[[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError
from fnn.training import ensemble as ensemble_lib
from fnn.training import loop as loop_lib
from fnn.training import privacy
from fnn.training import step as train_lib

__all__ = ["dp_epoch_logs", "init_members", "member_orders", "members_predict", "strip_members"]

# Losses whose outputs are class scores: their members are combined as probabilities.
_CATEGORICAL = ("SparseCategoricalCrossentropy", "CategoricalCrossentropy")


def init_members(layer, optimizer, metrics, inputs, *, seed: int, n: int):
    """``TrainState`` with a leading ``[n]`` axis on every leaf; member i is what
    ``Model._build`` (seed ``seed + i``) then ``optimizer.init`` give.
    ``inputs``: abstract example inputs (``jax.ShapeDtypeStruct``, batch axis included)."""

    def one(seed_i):
        init_key, rng = jax.random.split(jax.random.key(seed_i))
        params, state = layer.init(init_key, *inputs)
        return train_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            state=state,
            opt_state=optimizer.init(params),
            rng=rng,
            metric_states=train_lib.init_metric_states(metrics),
        )

    return jax.jit(jax.vmap(one))(jnp.arange(seed, seed + n, dtype=jnp.uint32))


def strip_members(tree):
    """Shape structs of ``tree`` without its leading member axis."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)


def member_orders(num_examples: int, n: int, *, seed: int, epoch: int, shuffle: bool = True):
    """``[n, num_examples]`` epoch orders: member i's is a single run's with seed
    ``seed + i`` (``fnn.training.loop.epoch_order``)."""
    return np.stack(
        [
            loop_lib.epoch_order(num_examples, seed=seed + i, epoch=epoch, shuffle=shuffle)
            for i in range(n)
        ]
    )


def members_predict(layer, loss, *, stats: bool):
    """``fn(params [n, ...], state [n, ...], x) -> combined prediction``.

    Class scores (a categorical crossentropy loss) -> ``probs [batch, classes]``, the mean of
    the members' probabilities; with ``stats`` the dict of
    ``fnn.train.predictive_stats`` (``probs``, ``entropy``, ``mutual_information``,
    ``variance``). Any other loss -> the members' mean output; with ``stats``
    ``{"mean", "variance"}`` over the members.
    """
    predict = train_lib.make_predict_step(layer)
    categorical = type(loss).__name__ in _CATEGORICAL
    from_logits = bool(getattr(loss, "config", {}).get("from_logits", False))

    def fn(params, state, x):
        out = jax.vmap(predict, in_axes=(0, 0, None))(params, state, x)
        if not isinstance(out, jax.Array):
            raise ConfigError(
                f"{layer.name}: an ensemble's predict combines one output array, got "
                f"{type(out).__name__}; predict each member with fnn.train.ensemble."
            )
        if categorical:
            values = ensemble_lib.predictive_stats(out, from_logits=from_logits)
            return values if stats else values["probs"]
        mean = jnp.mean(out, axis=0)
        return {"mean": mean, "variance": jnp.var(out, axis=0)} if stats else mean

    return fn


def dp_epoch_logs(dp: privacy.DPConfig, *, num_examples: int, batch_size: int):
    """``epoch_logs(train_state) -> {"epsilon": ...}`` for ``fnn.training.loop.fit``:
    ``dp_epsilon`` of every step the state has taken (all counted as DP-SGD steps; an
    ensemble's, each member's)."""

    def logs(train_state):
        steps = int(np.max(train_state.step))  # an ensemble's members step together
        eps = dp.epsilon(num_examples=num_examples, batch_size=batch_size, steps=steps)
        return {"epsilon": eps if math.isfinite(eps) else float("inf")}

    return logs
