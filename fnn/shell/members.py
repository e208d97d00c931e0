"""What ``Model.fit(ensemble=n)`` and ``Model.fit(dp=...)`` add to the shell: the
stacked member ``TrainState``, the combined predict step and the DP-SGD epsilon of an
epoch's logs (each member's epoch order is ``fnn.train.member_orders``, fed by
``fnn.io.data_adapter.ArrayData.epoch_data``). The training itself is ``fnn.training.loop``'s
(its ``Trainer`` with ``members``/``dp``).

Member i of an ensemble is the model ``compile(seed=seed + i)`` would build and train:
its initialisation and dropout keys come from ``seed + i`` and, with
``ensemble_batches="own"``, its shuffle too.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError
from fnn.core.init_program import jit_init
from fnn.training import ensemble as ensemble_lib
from fnn.training import privacy
from fnn.training import step as train_lib

__all__ = [
    "combined_kind",
    "dp_epoch_logs",
    "from_logits",
    "init_members",
    "members_predict",
    "strip_members",
]

# Losses whose outputs are class scores: their members are combined as probabilities.
_CATEGORICAL = ("SparseCategoricalCrossentropy", "CategoricalCrossentropy")
# Losses of one probability per label: members are combined as those probabilities.
_BINARY = ("BinaryCrossentropy", "BinaryFocalCrossentropy")


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

    return jit_init(jax.vmap(one), jnp.arange(seed, seed + n, dtype=jnp.uint32))


def strip_members(tree):
    """Shape structs of ``tree`` without its leading member axis."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)


def combined_kind(loss) -> str:
    """How an ensemble of models trained with ``loss`` (a ``Loss``, a name or a config)
    combines its members: ``"categorical"`` (class scores: the mean of the members'
    softmax probabilities), ``"binary"`` (one score per label: the mean of their sigmoid
    probabilities) or ``"mean"`` (the mean output)."""
    name = type(_resolved(loss)).__name__
    if name in _CATEGORICAL:
        return "categorical"
    return "binary" if name in _BINARY else "mean"


def from_logits(loss) -> bool:
    """Whether ``loss`` (a ``Loss``, a name or a config; ``None``) reads logits."""
    return bool(getattr(_resolved(loss), "config", {}).get("from_logits", False))


def _resolved(loss):
    """``loss`` as a ``Loss``, or ``None`` for none, a loss per output or a custom callable
    (those are combined as plain outputs and read no logits)."""
    from fnn.training import losses as losses_lib

    try:
        return losses_lib.get(loss) if loss is not None else None
    except ConfigError:
        return None


def members_predict(layer, loss, *, stats: bool):
    """``fn(params [n, ...], state [n, ...], x) -> combined prediction``.

    Class scores (a categorical crossentropy loss) -> ``probs [batch, classes]``, the mean of
    the members' probabilities; with ``stats`` the dict of
    ``fnn.train.predictive_stats`` (``probs``, ``entropy``, ``mutual_information``,
    ``variance``). Binary scores (binary crossentropy, ``[batch, k]``) -> the mean of the
    members' probabilities of the positive class, ``[batch, k]``; with ``stats`` the same
    dict over each label's two classes (``probs`` and ``variance`` of the positive class,
    ``entropy``/``mutual_information`` of the Bernoulli). Any other loss -> the members'
    mean output; with ``stats`` ``{"mean", "variance"}`` over the members.
    """
    predict = train_lib.make_predict_step(layer)
    kind = combined_kind(loss)
    logits = from_logits(loss)

    def fn(params, state, x):
        out = jax.vmap(predict, in_axes=(0, 0, None))(params, state, x)
        if not isinstance(out, jax.Array):
            raise ConfigError(
                f"{layer.name}: an ensemble's predict combines one output array, got "
                f"{type(out).__name__}; predict each member with fnn.train.ensemble."
            )
        if kind == "categorical":
            values = ensemble_lib.predictive_stats(out, from_logits=logits)
            return values if stats else values["probs"]
        if kind == "binary":
            p = jax.nn.sigmoid(out) if logits else out
            two = ensemble_lib.predictive_stats(jnp.stack([1 - p, p], -1), from_logits=False)
            # Back to one column per label: the positive class's probability and variance.
            values = {k: v[..., 1] if k in ("probs", "variance") else v for k, v in two.items()}
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
