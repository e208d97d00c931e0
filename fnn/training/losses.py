"""Pure per-example losses with Keras names: ``loss(y_true, y_pred) -> [batch]``.

Every loss returns one value per example: the elementwise loss (cross-entropies over the
class axis) averaged over the remaining non-batch axes, like Keras. ``reduce`` turns that
into the scalar you differentiate, with Keras's ``"sum_over_batch_size"`` semantics.

Low-precision inputs (bfloat16, float16) are upcast to float32 inside each loss, so
losses are always computed and returned in float32 (or float64 under x64): the
cross-entropies use ``log_softmax`` / ``log_sigmoid`` for logits and clip probabilities
to ``[EPSILON, 1 - EPSILON]`` as Keras does.

>>> import jax.numpy as jnp, fnn
>>> loss = fnn.losses.get("sparse_categorical_crossentropy")
>>> loss.name
'sparse_categorical_crossentropy'
>>> ce = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
>>> per_example = ce(jnp.array([0, 1]), jnp.array([[2.0, 0.0], [0.0, 2.0]]))
>>> per_example.shape
(2,)
>>> round(float(fnn.losses.reduce(per_example)), 4)
0.1269
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError, ShapeError, shape_of, unknown_name

# Keras's backend.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON].
EPSILON = 1e-7


@dataclasses.dataclass(frozen=True, eq=False)
class Loss:
    """A per-example loss ``fn(y_true, y_pred) -> [batch]`` with a Keras snake-case ``name``.

    ``config`` holds the constructor arguments and ``class_name`` the constructor (for
    ``serialize``); ``mask_fn(y_true) -> [batch]`` (optional) gives each example's weight
    in the reduction (used by ``ignore_class``).
    """

    fn: Callable[[Any, Any], jax.Array]
    name: str
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mask_fn: Callable[[Any], jax.Array] | None = None
    class_name: str | None = None

    def __call__(self, y_true, y_pred) -> jax.Array:
        return self.fn(y_true, y_pred)

    def mask(self, y_true) -> jax.Array | None:
        """Per-example reduction weights ``[batch]`` (``None``: every example counts)."""
        return None if self.mask_fn is None else self.mask_fn(y_true)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"Loss({self.name!r}{', ' if args else ''}{args})"


# --------------------------------------------------------------------------- helpers


def _float(x) -> jax.Array:
    """``x`` as a float array of at least float32 precision (bf16/f16/int are upcast)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits >= 32:
        return x
    return x.astype(jnp.promote_types(jnp.float32, jnp.result_type(float)))


def per_example_mean(values: jax.Array) -> jax.Array:
    """Mean over every non-batch axis: ``[batch, ...] -> [batch]`` (rank 0/1 pass through)."""
    if values.ndim <= 1:
        return values
    return jnp.mean(values, axis=tuple(range(1, values.ndim)))


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def match_ranks(name: str, y_true, y_pred, *, what: str = "targets"):
    """Squeeze a trailing size-1 axis so ranks agree (Keras does the same), then require
    equal shapes."""
    t, p = shape_of(y_true), shape_of(y_pred)
    if len(p) == len(t) + 1 and p[-1:] == (1,):
        y_pred = jnp.squeeze(y_pred, -1)
    elif len(t) == len(p) + 1 and t[-1:] == (1,):
        y_true = jnp.squeeze(y_true, -1)
    if shape_of(y_true) != shape_of(y_pred):
        raise ShapeError(
            f"{name}: expected {what} of the same shape as the predictions {p}, got shape {t}."
        )
    return y_true, y_pred


def check_batch_axis(name: str, y_pred) -> None:
    """Raise ``ShapeError`` if ``y_pred`` has no batch axis (a scalar)."""
    if len(shape_of(y_pred)) < 1:
        raise ShapeError(
            f"{name}: expected predictions with a batch axis [batch, ...], got a scalar "
            f"(shape {shape_of(y_pred)})."
        )


def check_sparse_labels(name: str, y_true, num_classes: int, *, ignore_class=None) -> None:
    """Raise ``ConfigError`` if concrete integer labels fall outside ``[0, num_classes)``.

    Only concrete arrays are checked (inside ``jit`` labels are tracers, and an
    out-of-range label would silently give a one-hot row of zeros): call it on the host
    before training, or use ``fnn.train.check_batch``.
    """
    if not _is_concrete(y_true):
        return
    labels = np.asarray(y_true)
    if labels.size == 0:
        return
    if np.issubdtype(labels.dtype, np.floating) and not np.all(labels == np.round(labels)):
        raise ConfigError(
            f"{name}: expected integer class labels, got non-integer values such as "
            f"{labels[labels != np.round(labels)].flat[0].item()!r}."
        )
    valid = labels if ignore_class is None else labels[labels != ignore_class]
    if valid.size and (valid.min() < 0 or valid.max() >= num_classes):
        bad = valid[(valid < 0) | (valid >= num_classes)]
        raise ConfigError(
            f"{name}: expected labels in [0, {num_classes}) for predictions with "
            f"{num_classes} classes, got label {bad.flat[0].item()!r} (labels range "
            f"{valid.min().item()!r}..{valid.max().item()!r}). Check the number of output units."
        )


def _sparse_labels(name, y_true, y_pred, ignore_class):
    """Validate sparse labels ``[batch, ...]`` against scores ``[batch, ..., classes]``."""
    check_batch_axis(name, y_pred)
    t, p = shape_of(y_true), shape_of(y_pred)
    labels = y_true
    if len(t) == len(p) and t[-1:] == (1,) and len(p) >= 2:
        y_true = jnp.squeeze(jnp.asarray(y_true), -1)
        t = t[:-1]
    if t != p[:-1]:
        hint = (
            " One-hot labels need 'categorical_crossentropy'."
            if t == p
            else " Labels are class indices, one per example."
        )
        raise ShapeError(
            f"{name}: expected integer labels of shape {p[:-1]} for predictions of shape {p} "
            f"[batch, ..., classes], got labels of shape {t}.{hint}"
        )
    check_sparse_labels(name, labels, p[-1], ignore_class=ignore_class)
    return y_true


def _log_probs(y_pred, from_logits: bool, axis: int = -1):
    y_pred = _float(y_pred)
    if from_logits:
        return jax.nn.log_softmax(y_pred, axis=axis)
    # Keras: renormalise, then clip before the log.
    y_pred = y_pred / jnp.sum(y_pred, axis=axis, keepdims=True)
    return jnp.log(jnp.clip(y_pred, EPSILON, 1.0 - EPSILON))


# --------------------------------------------------------------------------- functions


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """``-sum(y_true * log p)`` over the class axis: ``[batch, ..., C] x2 -> [batch]``.

    Label smoothing: ``y_true * (1 - ls) + ls / C``.
    """
    name = "categorical_crossentropy"
    check_batch_axis(name, y_pred)
    if shape_of(y_true) != shape_of(y_pred):
        t, p = shape_of(y_true), shape_of(y_pred)
        hint = " Integer labels need 'sparse_categorical_crossentropy'." if t == p[:-1] else ""
        raise ShapeError(
            f"{name}: expected one-hot targets of the same shape as the predictions {p}, "
            f"got shape {t}.{hint}"
        )
    logp = _log_probs(y_pred, from_logits, axis)
    y_true = _float(y_true).astype(logp.dtype)
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / y_pred.shape[axis]
    return per_example_mean(-jnp.sum(y_true * logp, axis=axis))


def sparse_categorical_crossentropy(
    y_true, y_pred, from_logits=False, label_smoothing=0.0, ignore_class=None
):
    """``-log p[label]``: labels ``[batch, ...]`` (ints), scores ``[batch, ..., C]`` -> ``[batch]``.

    With ``ignore_class`` the per-example value averages only the other positions.
    """
    name = "sparse_categorical_crossentropy"
    y_true = _sparse_labels(name, y_true, y_pred, ignore_class)
    labels = jnp.asarray(y_true).astype(jnp.int32)
    logp = _log_probs(y_pred, from_logits)
    num_classes = y_pred.shape[-1]
    picked = jnp.take_along_axis(logp, jnp.clip(labels, 0, num_classes - 1)[..., None], -1)[..., 0]
    loss = -picked
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * jnp.mean(logp, axis=-1)
    if ignore_class is None:
        return per_example_mean(loss)
    valid = (labels != ignore_class).astype(loss.dtype)
    loss = loss * valid
    if loss.ndim <= 1:
        return loss
    axes = tuple(range(1, loss.ndim))
    return jnp.sum(loss, axes) / jnp.maximum(jnp.sum(valid, axes), 1.0)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    """Elementwise ``-(y log p + (1 - y) log(1 - p))`` averaged to ``[batch]``.

    Label smoothing: ``y_true * (1 - ls) + ls / 2``.
    """
    name = "binary_crossentropy"
    check_batch_axis(name, y_pred)
    y_true, y_pred = match_ranks(name, y_true, y_pred)
    y_pred = _float(y_pred)
    y_true = _float(y_true).astype(y_pred.dtype)
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        loss = -(y_true * jax.nn.log_sigmoid(y_pred) + (1 - y_true) * jax.nn.log_sigmoid(-y_pred))
    else:
        p = jnp.clip(y_pred, EPSILON, 1.0 - EPSILON)
        loss = -(y_true * jnp.log(p) + (1 - y_true) * jnp.log1p(-p))
    return per_example_mean(loss)


def _regression(name, elementwise):
    def fn(y_true, y_pred):
        check_batch_axis(name, y_pred)
        y_true, y_pred = match_ranks(name, y_true, y_pred)
        y_pred = _float(y_pred)
        return per_example_mean(elementwise(_float(y_true).astype(y_pred.dtype), y_pred))

    fn.__name__ = name
    fn.__doc__ = f"Keras ``{name}``, elementwise then averaged to ``[batch]``."
    return fn


mean_squared_error = _regression("mean_squared_error", lambda t, p: jnp.square(p - t))
mean_absolute_error = _regression("mean_absolute_error", lambda t, p: jnp.abs(p - t))
mean_absolute_percentage_error = _regression(
    "mean_absolute_percentage_error",
    lambda t, p: 100.0 * jnp.abs((t - p) / jnp.maximum(jnp.abs(t), EPSILON)),
)
mean_squared_logarithmic_error = _regression(
    "mean_squared_logarithmic_error",
    lambda t, p: jnp.square(
        jnp.log(jnp.maximum(p, EPSILON) + 1.0) - jnp.log(jnp.maximum(t, EPSILON) + 1.0)
    ),
)
# log(cosh(x)) = x + softplus(-2x) - log 2, which does not overflow for large |x|.
log_cosh = _regression(
    "log_cosh", lambda t, p: (p - t) + jax.nn.softplus(-2.0 * (p - t)) - jnp.log(2.0)
)
poisson = _regression("poisson", lambda t, p: p - t * jnp.log(p + EPSILON))


def _hinge_targets(t):
    # Keras converts {0, 1} targets to {-1, 1}; {-1, 1} targets stay as they are.
    return jnp.where(t == 0, -1.0, t)


hinge = _regression("hinge", lambda t, p: jnp.maximum(1.0 - _hinge_targets(t) * p, 0.0))
squared_hinge = _regression(
    "squared_hinge", lambda t, p: jnp.square(jnp.maximum(1.0 - _hinge_targets(t) * p, 0.0))
)


def huber(y_true, y_pred, delta=1.0):
    """``0.5 e^2`` if ``|e| <= delta`` else ``delta (|e| - 0.5 delta)``, averaged to ``[batch]``."""
    name = "huber"
    check_batch_axis(name, y_pred)
    y_true, y_pred = match_ranks(name, y_true, y_pred)
    y_pred = _float(y_pred)
    err = y_pred - _float(y_true).astype(y_pred.dtype)
    abs_err = jnp.abs(err)
    loss = jnp.where(abs_err <= delta, 0.5 * jnp.square(err), delta * abs_err - 0.5 * delta**2)
    return per_example_mean(loss)


def kl_divergence(y_true, y_pred):
    """``sum(y_true * log(y_true / y_pred))`` over the last axis (both clipped to
    ``[EPSILON, 1]``), averaged to ``[batch]``."""
    name = "kl_divergence"
    check_batch_axis(name, y_pred)
    y_true, y_pred = match_ranks(name, y_true, y_pred, what="target distributions")
    y_pred = jnp.clip(_float(y_pred), EPSILON, 1.0)
    y_true = jnp.clip(_float(y_true).astype(y_pred.dtype), EPSILON, 1.0)
    kl = jnp.sum(y_true * jnp.log(y_true / y_pred), axis=-1)
    return per_example_mean(kl)


def _l2_normalize(x, axis=-1):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis, keepdims=True), 1e-12))


def cosine_similarity(y_true, y_pred, axis=-1):
    """Negative cosine similarity over ``axis`` (Keras's loss sign: -1 is best), to ``[batch]``."""
    name = "cosine_similarity"
    check_batch_axis(name, y_pred)
    y_true, y_pred = match_ranks(name, y_true, y_pred)
    y_pred = _float(y_pred)
    y_true = _float(y_true).astype(y_pred.dtype)
    sim = jnp.sum(_l2_normalize(y_true, axis) * _l2_normalize(y_pred, axis), axis=axis)
    return per_example_mean(-sim)


def categorical_hinge(y_true, y_pred):
    """``max(0, 1 + max_{wrong} p - p_true)`` for one-hot targets, to ``[batch]``."""
    name = "categorical_hinge"
    check_batch_axis(name, y_pred)
    y_true, y_pred = match_ranks(name, y_true, y_pred)
    y_pred = _float(y_pred)
    y_true = _float(y_true).astype(y_pred.dtype)
    pos = jnp.sum(y_true * y_pred, axis=-1)
    neg = jnp.max((1.0 - y_true) * y_pred, axis=-1)
    return per_example_mean(jnp.maximum(0.0, neg - pos + 1.0))


# --------------------------------------------------------------------------- constructors


def _check_smoothing(name, label_smoothing):
    if not isinstance(label_smoothing, int | float) or not 0.0 <= label_smoothing <= 1.0:
        raise ConfigError(f"{name}: expected label_smoothing in [0, 1], got {label_smoothing!r}.")


def SparseCategoricalCrossentropy(
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    ignore_class: int | None = None,
    name: str = "sparse_categorical_crossentropy",
) -> Loss:
    """Cross-entropy with integer labels ``[batch, ...]`` and scores ``[batch, ..., C]``.

    ``ignore_class``: positions with that label contribute nothing; the per-example value
    averages the remaining positions and ``mask`` weights each example by its fraction of
    valid positions, so ``reduce`` gives Keras's mean over all valid positions.
    """
    _check_smoothing(name, label_smoothing)

    def fn(y_true, y_pred):
        return sparse_categorical_crossentropy(
            y_true, y_pred, from_logits, label_smoothing, ignore_class
        )

    mask_fn = None
    if ignore_class is not None:

        def mask_fn(y_true):
            return per_example_mean((jnp.asarray(y_true) != ignore_class).astype(jnp.float32))

    config = {"from_logits": from_logits, "label_smoothing": label_smoothing}
    if ignore_class is not None:
        config["ignore_class"] = ignore_class
    return Loss(fn, name, config, mask_fn, "SparseCategoricalCrossentropy")


def CategoricalCrossentropy(
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    axis: int = -1,
    name: str = "categorical_crossentropy",
) -> Loss:
    """Cross-entropy with one-hot (or soft) targets of the predictions' shape ``[batch, ..., C]``."""
    _check_smoothing(name, label_smoothing)
    return Loss(
        lambda t, p: categorical_crossentropy(t, p, from_logits, label_smoothing, axis),
        name,
        {"from_logits": from_logits, "label_smoothing": label_smoothing, "axis": axis},
        class_name="CategoricalCrossentropy",
    )


def BinaryCrossentropy(
    from_logits: bool = False, label_smoothing: float = 0.0, name: str = "binary_crossentropy"
) -> Loss:
    """Binary cross-entropy with 0/1 targets, elementwise (multi-label), ``[batch, ...]``."""
    _check_smoothing(name, label_smoothing)
    return Loss(
        lambda t, p: binary_crossentropy(t, p, from_logits, label_smoothing),
        name,
        {"from_logits": from_logits, "label_smoothing": label_smoothing},
        class_name="BinaryCrossentropy",
    )


def Huber(delta: float = 1.0, name: str = "huber_loss") -> Loss:
    """Huber loss, quadratic below ``delta`` and linear above."""
    if not isinstance(delta, int | float) or delta <= 0:
        raise ConfigError(f"{name}: expected delta > 0, got {delta!r}.")
    return Loss(lambda t, p: huber(t, p, delta), name, {"delta": delta}, class_name="Huber")


def CosineSimilarity(axis: int = -1, name: str = "cosine_similarity") -> Loss:
    """Negative cosine similarity along ``axis``."""
    return Loss(
        lambda t, p: cosine_similarity(t, p, axis),
        name,
        {"axis": axis},
        class_name="CosineSimilarity",
    )


def _simple(fn, default_name, class_name):
    def make(name: str = default_name) -> Loss:
        return Loss(fn, name, class_name=class_name)

    make.__doc__ = fn.__doc__
    return make


MeanSquaredError = _simple(mean_squared_error, "mean_squared_error", "MeanSquaredError")
MeanAbsoluteError = _simple(mean_absolute_error, "mean_absolute_error", "MeanAbsoluteError")
MeanAbsolutePercentageError = _simple(
    mean_absolute_percentage_error, "mean_absolute_percentage_error", "MeanAbsolutePercentageError"
)
MeanSquaredLogarithmicError = _simple(
    mean_squared_logarithmic_error, "mean_squared_logarithmic_error", "MeanSquaredLogarithmicError"
)
KLDivergence = _simple(kl_divergence, "kl_divergence", "KLDivergence")
LogCosh = _simple(log_cosh, "log_cosh", "LogCosh")
Poisson = _simple(poisson, "poisson", "Poisson")
Hinge = _simple(hinge, "hinge", "Hinge")
SquaredHinge = _simple(squared_hinge, "squared_hinge", "SquaredHinge")
CategoricalHinge = _simple(categorical_hinge, "categorical_hinge", "CategoricalHinge")


_CONSTRUCTORS: dict[str, Callable[..., Loss]] = {
    "SparseCategoricalCrossentropy": SparseCategoricalCrossentropy,
    "CategoricalCrossentropy": CategoricalCrossentropy,
    "BinaryCrossentropy": BinaryCrossentropy,
    "MeanSquaredError": MeanSquaredError,
    "MeanAbsoluteError": MeanAbsoluteError,
    "MeanAbsolutePercentageError": MeanAbsolutePercentageError,
    "MeanSquaredLogarithmicError": MeanSquaredLogarithmicError,
    "Huber": Huber,
    "KLDivergence": KLDivergence,
    "CosineSimilarity": CosineSimilarity,
    "LogCosh": LogCosh,
    "Poisson": Poisson,
    "Hinge": Hinge,
    "SquaredHinge": SquaredHinge,
    "CategoricalHinge": CategoricalHinge,
}

# Keras's string names (functions and their short aliases) -> constructor.
_ALIASES: dict[str, str] = {
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "binary_crossentropy": "BinaryCrossentropy",
    "mean_squared_error": "MeanSquaredError",
    "mse": "MeanSquaredError",
    "mean_absolute_error": "MeanAbsoluteError",
    "mae": "MeanAbsoluteError",
    "mean_absolute_percentage_error": "MeanAbsolutePercentageError",
    "mape": "MeanAbsolutePercentageError",
    "mean_squared_logarithmic_error": "MeanSquaredLogarithmicError",
    "msle": "MeanSquaredLogarithmicError",
    "huber": "Huber",
    "huber_loss": "Huber",
    "kl_divergence": "KLDivergence",
    "kld": "KLDivergence",
    "kullback_leibler_divergence": "KLDivergence",
    "cosine_similarity": "CosineSimilarity",
    "log_cosh": "LogCosh",
    "logcosh": "LogCosh",
    "poisson": "Poisson",
    "hinge": "Hinge",
    "squared_hinge": "SquaredHinge",
    "categorical_hinge": "CategoricalHinge",
}


def get(identifier) -> Loss:
    """A ``Loss`` from a Keras name (``"mse"``, ``"sparse_categorical_crossentropy"``,
    ``"SparseCategoricalCrossentropy"``), a ``{"class_name", "config"}`` dict, a ``Loss``,
    or any callable ``fn(y_true, y_pred) -> [batch]``.

    >>> import fnn
    >>> fnn.losses.get("mse").name
    'mean_squared_error'
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        key = _ALIASES.get(identifier, _ALIASES.get(identifier.lower(), identifier))
        if key not in _CONSTRUCTORS:
            raise unknown_name("loss function", identifier, _ALIASES)
        loss = _CONSTRUCTORS[key]()
        return loss
    if isinstance(identifier, Mapping) and "class_name" in identifier:
        key = identifier["class_name"]
        if key not in _CONSTRUCTORS:
            raise unknown_name("loss class", key, _CONSTRUCTORS)
        return _CONSTRUCTORS[key](**dict(identifier.get("config", {})))
    if callable(identifier):
        return Loss(identifier, getattr(identifier, "__name__", "loss"))
    raise ConfigError(
        f"expected a loss name, Loss or callable fn(y_true, y_pred), got {identifier!r}."
    )


def serialize(loss: Loss) -> dict[str, Any]:
    """``{"class_name", "config"}`` for a built-in ``Loss`` (inverse of ``get``)."""
    if loss.class_name in _CONSTRUCTORS:
        return {"class_name": loss.class_name, "config": {**loss.config, "name": loss.name}}
    raise ConfigError(f"cannot serialize custom loss {loss.name!r}; only built-in losses.")


def reduce(per_example, sample_weight=None, mask=None) -> jax.Array:
    """Scalar loss from per-example values ``[batch]``, Keras's ``"sum_over_batch_size"``.

    ``sum(loss * sample_weight * mask) / denominator`` where the denominator is the batch
    size, or ``sum(mask)`` when a mask is given (Keras rescales masked weights so only
    valid entries count). Sample weights do not change the denominator: Keras divides by
    the number of examples, not by the sum of weights. An all-masked batch gives 0.

    >>> import jax.numpy as jnp, fnn
    >>> float(fnn.losses.reduce(jnp.array([1.0, 3.0]), sample_weight=jnp.array([1.0, 0.0])))
    0.5
    """
    per_example = jnp.asarray(per_example)
    if per_example.ndim != 1:
        raise ShapeError(
            f"reduce: expected per-example losses of shape [batch], got shape {per_example.shape}."
        )
    weights = jnp.ones_like(per_example)
    for arg_name, arg in (("sample_weight", sample_weight), ("mask", mask)):
        if arg is None:
            continue
        arg = jnp.asarray(arg)
        if arg.ndim == 2 and arg.shape[-1] == 1:
            arg = arg[:, 0]
        if arg.shape not in ((), per_example.shape):
            raise ShapeError(
                f"reduce: expected {arg_name} of shape {per_example.shape} (one per example), "
                f"got shape {arg.shape}."
            )
        weights = weights * arg.astype(per_example.dtype)
    total = jnp.sum(per_example * weights)
    if mask is None:
        return total / per_example.shape[0]
    count = jnp.sum(jnp.broadcast_to(jnp.asarray(mask, per_example.dtype), per_example.shape))
    return jnp.where(count > 0, total / jnp.maximum(count, EPSILON), 0.0)
