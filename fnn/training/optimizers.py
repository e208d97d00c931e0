"""Optimizers by Keras name, as optax transformations.

``fnn.optimizers.get("adam", learning_rate=1e-3)`` returns an
``optax.GradientTransformation`` with Keras's default hyperparameters and Keras's
argument names (``beta_1``, ``epsilon``, ``rho``, ...). Any optax transformation is
returned as is, and ``learning_rate`` may be an optax schedule ``step -> lr``.

Keyword arguments common to every Keras optimizer:

- ``clipnorm``: clip each gradient array to this L2 norm; ``global_clipnorm``: clip all
  gradients together to this global norm; ``clipvalue``: clip each entry to
  ``[-clipvalue, clipvalue]`` (applied first, in that order).
- ``weight_decay``: decoupled decay ``w <- w - lr * weight_decay * w`` as Keras 3 applies
  it (for ``adamw``, ``lion`` and ``lamb`` the optax argument of the same meaning).
- ``gradient_accumulation_steps``: apply one update every ``k`` calls with the mean of
  the ``k`` gradients (``optax.MultiSteps``), as Keras 3.

Mapping differences to Keras (documented, not hidden):

- ``adam``/``adamw``/``nadam``/``adamax``/``lamb`` add ``epsilon`` to the bias-*corrected*
  ``sqrt(v_hat)`` (optax, the Adam paper); Keras adds it to the uncorrected ``sqrt(v)``,
  i.e. an effective ``epsilon / sqrt(1 - beta_2^t)``, slightly larger in early steps.
- ``nadam`` is optax's (Dozat's simplified) NAdam; Keras additionally decays the
  momentum with a ``0.96^(0.004 t)`` schedule.
- ``adamax`` follows optax: ``u = max(beta_2 u, |g| + epsilon)`` vs Keras's
  ``max(beta_2 u, |g|)`` with ``epsilon`` added in the denominator.
- ``sgd``/``rmsprop``/``adagrad``/``adamw``/``lion`` match Keras's update rules for a
  constant learning rate (``rmsprop`` with ``epsilon`` inside the square root).

>>> import fnn, jax.numpy as jnp
>>> opt = fnn.optimizers.get("sgd", momentum=0.9)
>>> state = opt.init({"w": jnp.ones(2)})
>>> updates, state = opt.update({"w": jnp.ones(2)}, state)
>>> updates["w"]
Array([-0.01, -0.01], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fnn.core.errors import ConfigError, unknown_name

# Keras default learning rates.
DEFAULT_LEARNING_RATE = {"sgd": 0.01}


def _sgd(lr, momentum=0.0, nesterov=False):
    return optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)


def _adam(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False):
    if amsgrad:
        return optax.amsgrad(lr, b1=beta_1, b2=beta_2, eps=epsilon)
    return optax.adam(lr, b1=beta_1, b2=beta_2, eps=epsilon)


def _adamw(lr, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False):
    if amsgrad:
        return optax.chain(
            optax.scale_by_amsgrad(b1=beta_1, b2=beta_2, eps=epsilon),
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_learning_rate(lr),
        )
    return optax.adamw(lr, b1=beta_1, b2=beta_2, eps=epsilon, weight_decay=weight_decay)


def _rmsprop(lr, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    return optax.rmsprop(
        lr, decay=rho, eps=epsilon, centered=centered, momentum=momentum or None, eps_in_sqrt=True
    )


def _adagrad(lr, initial_accumulator_value=0.1, epsilon=1e-7):
    return optax.adagrad(lr, initial_accumulator_value=initial_accumulator_value, eps=epsilon)


def _adamax(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    return optax.adamax(lr, b1=beta_1, b2=beta_2, eps=epsilon)


def _nadam(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    return optax.nadam(lr, b1=beta_1, b2=beta_2, eps=epsilon)


def _lion(lr, beta_1=0.9, beta_2=0.99, weight_decay=0.0):
    return optax.lion(lr, b1=beta_1, b2=beta_2, weight_decay=weight_decay)


def _lamb(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
    return optax.lamb(lr, b1=beta_1, b2=beta_2, eps=epsilon, weight_decay=weight_decay)


def _adadelta(lr, rho=0.95, epsilon=1e-7):
    return optax.adadelta(lr, rho=rho, eps=epsilon)


def _adafactor(lr, beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3, clip_threshold=1.0):
    return optax.adafactor(
        lr,
        decay_rate=-beta_2_decay,
        eps=epsilon_1,
        clipping_threshold=clip_threshold,
        multiply_by_parameter_scale=False,
    )


_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "rmsprop": _rmsprop,
    "adagrad": _adagrad,
    "adamax": _adamax,
    "nadam": _nadam,
    "lion": _lion,
    "lamb": _lamb,
    "adadelta": _adadelta,
    "adafactor": _adafactor,
}
# Optimizers whose optax alias takes weight_decay itself.
_OWN_WEIGHT_DECAY = ("adamw", "lion", "lamb")


class _CountState(NamedTuple):
    count: jax.Array  # int32 scalar: steps taken


def clip_by_norm(max_norm: float) -> optax.GradientTransformation:
    """Clip each gradient array separately to L2 norm ``max_norm`` (Keras ``clipnorm``)."""

    def update(updates, state, params=None):
        del params

        def clip(g):
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))
            return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12)).astype(g.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def decoupled_weight_decay(weight_decay: float, learning_rate) -> optax.GradientTransformation:
    """Add ``-lr(step) * weight_decay * w`` to the updates (Keras 3's ``weight_decay``)."""

    def init(params):
        del params
        return _CountState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ConfigError("weight_decay needs params: call optimizer.update(g, s, params).")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        updates = jax.tree.map(lambda u, p: u - lr * weight_decay * p, updates, params)
        return updates, _CountState(optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def get(
    identifier,
    learning_rate=None,
    *,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    weight_decay: float | None = None,
    gradient_accumulation_steps: int | None = None,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """An optax transformation from a Keras optimizer name (or an optax transformation).

    ``learning_rate``: a float or an optax schedule; default 1e-3 (0.01 for ``sgd``), as
    Keras. ``kwargs`` are the Keras hyperparameters of that optimizer (``momentum``,
    ``nesterov``, ``beta_1``, ``beta_2``, ``epsilon``, ``rho``, ``amsgrad``, ...).

    >>> import fnn
    >>> opt = fnn.optimizers.get("adam", learning_rate=3e-4, global_clipnorm=1.0)
    """
    if isinstance(identifier, optax.GradientTransformation):
        base = identifier
        extra = dict(kwargs)
        if learning_rate is not None or extra:
            raise ConfigError(
                "optimizers.get: learning_rate and hyperparameters apply to optimizer names "
                f"only; got an optax transformation with {sorted(extra) or ['learning_rate']}."
            )
        lr = None
        name = None
    elif isinstance(identifier, str):
        name = identifier.lower()
        if name not in _OPTIMIZERS:
            raise unknown_name("optimizer", identifier, _OPTIMIZERS)
        lr = DEFAULT_LEARNING_RATE.get(name, 1e-3) if learning_rate is None else learning_rate
        make = _OPTIMIZERS[name]
        if weight_decay is not None and name in _OWN_WEIGHT_DECAY:
            kwargs["weight_decay"] = weight_decay
            weight_decay = None
        try:
            base = make(lr, **kwargs)
        except TypeError as err:
            import inspect

            valid = list(inspect.signature(make).parameters)[1:]
            raise ConfigError(
                f"optimizer {identifier!r}: {err}. Valid arguments: {', '.join(valid)}, "
                "clipnorm, clipvalue, global_clipnorm, weight_decay, "
                "gradient_accumulation_steps."
            ) from None
    else:
        raise ConfigError(
            f"expected an optimizer name or an optax.GradientTransformation, got {identifier!r}."
        )
    chain = []
    if clipvalue is not None:
        chain.append(optax.clip(clipvalue))
    if clipnorm is not None:
        chain.append(clip_by_norm(clipnorm))
    if global_clipnorm is not None:
        chain.append(optax.clip_by_global_norm(global_clipnorm))
    chain.append(base)
    if weight_decay:
        if lr is None:
            raise ConfigError(
                "weight_decay= needs an optimizer name (to know the learning rate); chain "
                "optax.add_decayed_weights into your own transformation instead."
            )
        chain.append(decoupled_weight_decay(weight_decay, lr))
    opt = chain[0] if len(chain) == 1 else optax.chain(*chain)
    if gradient_accumulation_steps:
        opt = accumulate_gradients(opt, gradient_accumulation_steps)
    return opt


def accumulate_gradients(optimizer, every_k: int) -> optax.GradientTransformation:
    """Average gradients over ``every_k`` calls, then apply one update of ``optimizer``
    (zero updates in between): K micro-batches equal one K-times larger batch.

    >>> import fnn
    >>> opt = fnn.optimizers.accumulate_gradients("adam", 4)
    """
    if not isinstance(every_k, int) or every_k < 1:
        raise ConfigError(f"expected gradient accumulation steps >= 1, got {every_k!r}.")
    optimizer = get(optimizer)
    return optax.MultiSteps(optimizer, every_k_schedule=every_k).gradient_transformation()


def names() -> tuple[str, ...]:
    """The Keras optimizer names ``get`` accepts."""
    return tuple(sorted(_OPTIMIZERS))
