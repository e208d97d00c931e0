"""Keras-style calls of layers on arrays (``Dense(3)(x)``) and the scope that routes a
subclassed layer's calls of its sublayers to their slice of the parameters.

Outside any scope, the first call of a layer on arrays initialises its weights (from a
key drawn from ``set_seed``'s sequence) and keeps them on the layer object, as Keras
does; later calls reuse them, and a model built from the layer starts from them. Inside
the pure ``apply`` of a subclassed layer (``fnn.core.subclass``) the same call reads the
parent's ``params`` instead and keeps nothing, so the parent stays a pure function.

>>> import numpy as np, fnn
>>> layer = fnn.layers.Dense(3)
>>> y = layer(np.ones((2, 4), "float32"))
>>> y.shape, [w.shape for w in layer.get_weights()]
((2, 3), [(4, 3), (3,)])
"""

from __future__ import annotations

import contextvars
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import weights as weights_lib
from fnn.core.errors import ConfigError
from fnn.core.layer import as_shape_struct

_SEED = [0]
_COUNT = [itertools.count()]

# The active subclass scope (``fnn.core.subclass.Scope``) or None.
SCOPE: contextvars.ContextVar[Any] = contextvars.ContextVar("fnn_scope", default=None)


def set_seed(seed: int) -> None:
    """Restart the sequence of keys that eager calls initialise weights from."""
    _SEED[0] = int(seed)
    _COUNT[0] = itertools.count()


def next_key() -> jax.Array:
    """The next key of the eager sequence (fresh weights for each new layer)."""
    return jax.random.fold_in(jax.random.key(_SEED[0]), next(_COUNT[0]))


def stored(layer) -> tuple | None:
    """``(params, state)`` a layer keeps from eager calls or ``set_weights``, or None."""
    return getattr(layer, "__dict__", {}).get("_fnn_weights")


def store(layer, params, state, inputs=None) -> None:
    """Keep ``(params, state)`` on the layer object (never for traced values); ``inputs``
    (abstract) records what they were built for, which Keras's weight order needs."""
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((params, state))):
        return
    object.__setattr__(layer, "_fnn_weights", (params, state))
    if inputs is not None:
        object.__setattr__(layer, "_fnn_weight_inputs", as_shape_struct(inputs))


def _as_arrays(tree):
    return jax.tree.map(
        lambda a: a if isinstance(a, jax.Array | jax.core.Tracer) else jnp.asarray(a), tree
    )


def split_call(layer, args: tuple, kwargs: dict) -> tuple[tuple, dict, bool | None]:
    """Keras call conventions: a single list argument holds several inputs; ``training=``
    and ``mask=`` keywords are taken out."""
    kwargs = dict(kwargs)
    training = kwargs.pop("training", None)
    kwargs.pop("mask", None)
    # fnn's own layers take several inputs positionally; a subclass's call gets the list
    # (or tuple) itself, as in Keras (``self.sampling((z_mean, z_log_var))``).
    keep = getattr(layer, "_fnn_keeps_list_argument", False)
    if len(args) == 1 and isinstance(args[0], list | tuple) and not keep:
        args = tuple(args[0])
    if training is not None and not isinstance(training, bool | np.bool_):
        raise ConfigError(f"{layer.name}: expected training=True/False/None, got {training!r}.")
    return args, kwargs, None if training is None else bool(training)


def call(layer, args: tuple, kwargs: dict, owner: Any = None) -> Any:
    """``layer(*args)`` on arrays: inside a subclass scope through the parent's params,
    otherwise with the layer's own (created on first use). ``owner`` is the object the
    user called (a layer or a Keras-style model), used to find its key in the scope."""
    args, kwargs, training = split_call(layer, args, kwargs)
    args, kwargs = _as_arrays(args), _as_arrays(kwargs)
    scope = SCOPE.get()
    if scope is not None:
        return scope.call(owner if owner is not None else layer, layer, args, kwargs, training)
    weights = stored(layer)
    if weights is None:
        weights = layer.init(next_key(), *args)
        store(layer, *weights, inputs=args)
    params, state = weights
    train = bool(training)
    out, new_state = layer.apply(
        params, state, *args, rng=next_key() if train else None, train=train, **kwargs
    )
    if jax.tree.structure(new_state) == jax.tree.structure(state):
        store(layer, params, new_state)  # assign() in a subclass's call persists, as in Keras
    return out


def layer_weights(layer, what: str = "get_weights") -> tuple:
    """The ``(params, state)`` a layer stored at its first eager call; ``ConfigError`` if none."""
    weights = stored(layer)
    if weights is None:
        raise ConfigError(
            f"{layer.name}: {what} needs weights; call the layer on an array first (or read "
            "them from the model: model.get_layer(name).get_weights())."
        )
    return weights


def get_weights(layer, inputs=None) -> list[np.ndarray]:
    """The layer's eager weights in Keras's order (``[]`` before its first call)."""
    weights = stored(layer)
    if weights is None:
        return []
    params, state = weights
    paths = _paths(layer, params, state)
    return weights_lib.get_weights(params, state, paths)


def set_weights(layer, values) -> None:
    """Replace the layer's eager weights from a list in Keras's order."""
    params, state = layer_weights(layer, "set_weights")
    paths = _paths(layer, params, state)
    store(layer, *weights_lib.set_weights(params, state, paths, values, layer.name))


def _paths(layer, params, state):
    inputs = layer.__dict__.get("_fnn_weight_inputs")
    if inputs is None:
        raise ConfigError(f"{layer.name}: its weights were set without input shapes.")
    return weights_lib.weight_paths(layer, params, state, *inputs)
