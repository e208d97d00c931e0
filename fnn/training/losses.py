"""Losses with Keras names: ``loss(y_true, y_pred, sample_weight=None) -> scalar``.

Each loss's ``call(y_true, y_pred)`` returns one value per example: the elementwise loss
(cross-entropies over the class axis) averaged over the remaining non-batch axes, like
Keras. Calling the loss reduces those values (``reduce``), by default with Keras's
``"sum_over_batch_size"`` semantics. Subclass ``Loss`` and define ``call`` for your own.

Low-precision inputs (bfloat16, float16) are upcast to float32 inside each loss, so
losses are always computed and returned in float32 (or float64 under x64): the
cross-entropies use ``log_softmax`` / ``log_sigmoid`` for logits and clip probabilities
to ``[EPSILON, 1 - EPSILON]`` as Keras does.

>>> import jax.numpy as jnp, fnn
>>> loss = fnn.losses.get("sparse_categorical_crossentropy")
>>> loss.name
'sparse_categorical_crossentropy'
>>> ce = fnn.losses.SparseCategoricalCrossentropy(from_logits=True)
>>> labels, logits = jnp.array([0, 1]), jnp.array([[2.0, 0.0], [0.0, 2.0]])
>>> ce.call(labels, logits).shape
(2,)
>>> round(float(ce(labels, logits)), 4)
0.1269
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError, ShapeError, shape_of, unknown_name

# Keras's backend.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON].
EPSILON = 1e-7


_REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Loss:
    """A loss with Keras's interface: ``loss(y_true, y_pred, sample_weight=None)`` is the
    reduced scalar, ``loss.call(y_true, y_pred)`` the unreduced values ``[batch, ...]``.

    Subclass it the Keras way (define ``call``), or wrap a function with
    ``Loss(fn=f, name=...)``. ``reduction``: ``"sum_over_batch_size"`` (Keras's default;
    ``"mean"`` is the same), ``"sum"``, ``"mean_with_sample_weight"`` or ``None``/``"none"``.
    ``config`` holds the constructor arguments and ``class_name`` the constructor (for
    ``serialize``); ``mask(y_true) -> [batch]`` gives each example's weight in the
    reduction (used by ``ignore_class``).

    >>> import jax.numpy as jnp, fnn
    >>> class Doubled(fnn.losses.Loss):
    ...     def call(self, y_true, y_pred):
    ...         return 2.0 * jnp.mean(jnp.abs(y_true - y_pred), axis=-1)
    >>> loss = Doubled()
    >>> loss.name, float(loss(jnp.zeros((2, 1)), jnp.ones((2, 1))))
    ('doubled', 2.0)
    """

    def __init__(
        self,
        name: str | None = None,
        reduction: str | None = "sum_over_batch_size",
        dtype=None,
        *,
        fn: Callable[[Any, Any], jax.Array] | None = None,
        config: Mapping[str, Any] | None = None,
        mask_fn: Callable[[Any], jax.Array] | None = None,
        class_name: str | None = None,
    ):
        if name is None:
            name = getattr(fn, "__name__", "loss") if fn is not None else None
            name = name or _snake_case(type(self).__name__)
        if reduction not in _REDUCTIONS:
            raise ConfigError(
                f"{name}: expected reduction in {list(_REDUCTIONS)}, got {reduction!r}."
            )
        self.name = name
        self.reduction = reduction
        self.dtype = dtype
        self.fn = fn
        self.config = dict(config or {})
        self.mask_fn = mask_fn
        self.class_name = class_name if class_name is not None or fn else type(self).__name__

    def call(self, y_true, y_pred) -> jax.Array:
        """Unreduced loss values ``[batch, ...]`` (override this in a subclass)."""
        if self.fn is None:
            raise ConfigError(
                f"{self.name}: expected a subclass of fnn.losses.Loss to define "
                "call(self, y_true, y_pred), or Loss(fn=...), got neither."
            )
        return self.fn(y_true, y_pred)

    def __call__(self, y_true, y_pred, sample_weight=None) -> jax.Array:
        """The loss reduced with ``self.reduction``: a scalar (``[batch, ...]`` for
        ``reduction=None``), weighted by ``sample_weight`` ``[batch]``."""
        return reduce(
            self.call(y_true, y_pred), sample_weight, self.mask(y_true), reduction=self.reduction
        )

    def per_example(self, y_true, y_pred) -> jax.Array:
        """``call``'s values averaged over every non-batch axis: ``[batch]``."""
        return per_example_mean(jnp.asarray(self.call(y_true, y_pred)))

    def mask(self, y_true) -> jax.Array | None:
        """Per-example reduction weights ``[batch]`` (``None``: every example counts)."""
        return None if self.mask_fn is None else self.mask_fn(y_true)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, Keras's ``get_config`` (``name`` and ``reduction`` too)."""
        return {"name": self.name, "reduction": self.reduction, **self.config}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Loss:
        """``cls(**config)``, Keras's inverse of ``get_config``."""
        return cls(**config)

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
    """Raise ``ConfigError`` if concrete integer labels (``y_true`` of any shape) fall outside
    ``[0, num_classes)``.

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
            f"{num_classes} classes, got label {bad.flat[0].item()!r}: label out of range (labels range "
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
    if _smooths(label_smoothing):
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
    if _smooths(label_smoothing):
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
    if _smooths(label_smoothing):
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


def binary_focal_crossentropy(
    y_true,
    y_pred,
    apply_class_balancing=False,
    alpha=0.25,
    gamma=2.0,
    from_logits=False,
    label_smoothing=0.0,
):
    """Binary cross-entropy scaled by ``(1 - p_t) ** gamma`` (and ``alpha`` for positives,
    ``1 - alpha`` for negatives with ``apply_class_balancing``), averaged to ``[batch]``."""
    name = "binary_focal_crossentropy"
    check_batch_axis(name, y_pred)
    y_true, y_pred = match_ranks(name, y_true, y_pred)
    y_pred = _float(y_pred)
    y_true = _float(y_true).astype(y_pred.dtype)
    if _smooths(label_smoothing):
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        y_pred = jax.nn.sigmoid(y_pred)
    p = jnp.clip(y_pred, EPSILON, 1.0 - EPSILON)
    bce = -(y_true * jnp.log(p) + (1 - y_true) * jnp.log(1 - p))
    p_t = y_true * y_pred + (1 - y_true) * (1 - y_pred)
    loss = jnp.power(1.0 - p_t, gamma) * bce
    if apply_class_balancing:
        loss = (y_true * alpha + (1 - y_true) * (1 - alpha)) * loss
    return per_example_mean(loss)


# --------------------------------------------------------------------------- classes

_DEFAULT_REDUCTION = "sum_over_batch_size"


def _smooths(label_smoothing) -> bool:
    """A traced value (a sweep member's, ``fnn.train.make_hyper_steps``) always applies."""
    return isinstance(label_smoothing, jax.core.Tracer) or bool(label_smoothing)


def _check_smoothing(name, label_smoothing):
    if isinstance(label_smoothing, jax.core.Tracer):  # checked by whoever traced it
        return
    if not isinstance(label_smoothing, int | float) or not 0.0 <= label_smoothing <= 1.0:
        raise ConfigError(f"{name}: expected label_smoothing in [0, 1], got {label_smoothing!r}.")


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy with integer labels ``[batch, ...]`` and scores ``[batch, ..., C]``.

    ``ignore_class``: positions with that label contribute nothing; the per-example value
    averages the remaining positions and ``mask`` weights each example by its fraction of
    valid positions, so the reduction gives Keras's mean over all valid positions.
    ``label_smoothing`` (keyword, an fnn extension) smooths towards the uniform
    distribution.
    """

    def __init__(
        self,
        from_logits: bool = False,
        ignore_class: int | None = None,
        reduction: str | None = _DEFAULT_REDUCTION,
        axis: int = -1,
        name: str = "sparse_categorical_crossentropy",
        dtype=None,
        *,
        label_smoothing: float = 0.0,
    ):
        _check_smoothing(name, label_smoothing)
        if axis != -1:
            raise ConfigError(f"{name}: expected axis=-1 (the class axis last), got {axis!r}.")
        config = {"from_logits": from_logits, "label_smoothing": label_smoothing}
        if ignore_class is not None:
            config["ignore_class"] = ignore_class
        super().__init__(name, reduction, dtype, config=config)
        self.from_logits, self.ignore_class = from_logits, ignore_class
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        return sparse_categorical_crossentropy(
            y_true, y_pred, self.from_logits, self.label_smoothing, self.ignore_class
        )

    def mask(self, y_true):
        if self.ignore_class is None:
            return None
        return per_example_mean((jnp.asarray(y_true) != self.ignore_class).astype(jnp.float32))


class CategoricalCrossentropy(Loss):
    """Cross-entropy with one-hot (or soft) targets of the predictions' shape ``[batch, ..., C]``."""

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = _DEFAULT_REDUCTION,
        name: str = "categorical_crossentropy",
        dtype=None,
    ):
        _check_smoothing(name, label_smoothing)
        config = {"from_logits": from_logits, "label_smoothing": label_smoothing, "axis": axis}
        super().__init__(name, reduction, dtype, config=config)

    def call(self, y_true, y_pred):
        return categorical_crossentropy(y_true, y_pred, **self.config)


class BinaryCrossentropy(Loss):
    """Binary cross-entropy with 0/1 targets, elementwise (multi-label), ``[batch, ...]``."""

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = _DEFAULT_REDUCTION,
        name: str = "binary_crossentropy",
        dtype=None,
    ):
        _check_smoothing(name, label_smoothing)
        if axis != -1:
            raise ConfigError(f"{name}: expected axis=-1, got {axis!r}.")
        config = {"from_logits": from_logits, "label_smoothing": label_smoothing}
        super().__init__(name, reduction, dtype, config=config)

    def call(self, y_true, y_pred):
        return binary_crossentropy(y_true, y_pred, **self.config)


class BinaryFocalCrossentropy(Loss):
    """Focal binary cross-entropy (Lin et al. 2017), Keras's arguments."""

    def __init__(
        self,
        apply_class_balancing: bool = False,
        alpha: float = 0.25,
        gamma: float = 2.0,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = _DEFAULT_REDUCTION,
        name: str = "binary_focal_crossentropy",
        dtype=None,
    ):
        _check_smoothing(name, label_smoothing)
        if axis != -1:
            raise ConfigError(f"{name}: expected axis=-1, got {axis!r}.")
        config = {
            "apply_class_balancing": apply_class_balancing,
            "alpha": alpha,
            "gamma": gamma,
            "from_logits": from_logits,
            "label_smoothing": label_smoothing,
        }
        super().__init__(name, reduction, dtype, config=config)

    def call(self, y_true, y_pred):
        return binary_focal_crossentropy(y_true, y_pred, **self.config)


class Huber(Loss):
    """Huber loss, quadratic below ``delta`` and linear above."""

    def __init__(
        self,
        delta: float = 1.0,
        reduction: str | None = _DEFAULT_REDUCTION,
        name: str = "huber_loss",
        dtype=None,
    ):
        if not isinstance(delta, int | float) or delta <= 0:
            raise ConfigError(f"{name}: expected delta > 0, got {delta!r}.")
        super().__init__(name, reduction, dtype, config={"delta": delta})

    def call(self, y_true, y_pred):
        return huber(y_true, y_pred, self.config["delta"])


class CosineSimilarity(Loss):
    """Negative cosine similarity along ``axis``."""

    def __init__(
        self,
        axis: int = -1,
        reduction: str | None = _DEFAULT_REDUCTION,
        name: str = "cosine_similarity",
        dtype=None,
    ):
        super().__init__(name, reduction, dtype, config={"axis": axis})

    def call(self, y_true, y_pred):
        return cosine_similarity(y_true, y_pred, self.config["axis"])


class _NoOptions(Loss):
    """A Keras loss without options: ``Cls(reduction=..., name=..., dtype=None)``."""

    _fn: Callable = staticmethod(lambda y_true, y_pred: None)
    _default_name = "loss"

    def __init__(self, reduction: str | None = _DEFAULT_REDUCTION, name=None, dtype=None):
        super().__init__(name or self._default_name, reduction, dtype)

    def call(self, y_true, y_pred):
        return type(self)._fn(y_true, y_pred)


def _simple(class_name, fn, default_name):
    attrs = {"_fn": staticmethod(fn), "_default_name": default_name, "__doc__": fn.__doc__}
    return type(class_name, (_NoOptions,), {**attrs, "__module__": __name__})


MeanSquaredError = _simple("MeanSquaredError", mean_squared_error, "mean_squared_error")
MeanAbsoluteError = _simple("MeanAbsoluteError", mean_absolute_error, "mean_absolute_error")
MeanAbsolutePercentageError = _simple(
    "MeanAbsolutePercentageError", mean_absolute_percentage_error, "mean_absolute_percentage_error"
)
MeanSquaredLogarithmicError = _simple(
    "MeanSquaredLogarithmicError", mean_squared_logarithmic_error, "mean_squared_logarithmic_error"
)
KLDivergence = _simple("KLDivergence", kl_divergence, "kl_divergence")
LogCosh = _simple("LogCosh", log_cosh, "log_cosh")
Poisson = _simple("Poisson", poisson, "poisson")
Hinge = _simple("Hinge", hinge, "hinge")
SquaredHinge = _simple("SquaredHinge", squared_hinge, "squared_hinge")
CategoricalHinge = _simple("CategoricalHinge", categorical_hinge, "categorical_hinge")


_CONSTRUCTORS: dict[str, type[Loss]] = {
    "SparseCategoricalCrossentropy": SparseCategoricalCrossentropy,
    "CategoricalCrossentropy": CategoricalCrossentropy,
    "BinaryCrossentropy": BinaryCrossentropy,
    "BinaryFocalCrossentropy": BinaryFocalCrossentropy,
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
    "binary_focal_crossentropy": "BinaryFocalCrossentropy",
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
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if callable(identifier):
        return Loss(fn=identifier, name=getattr(identifier, "__name__", "loss"))
    raise ConfigError(
        f"expected a loss name, Loss or callable fn(y_true, y_pred), got {identifier!r}."
    )


def from_entry(entry: Mapping) -> str | Loss:
    """A config entry ``{"name": ..., **options}`` as a loss: the name alone, or the
    configured ``Loss`` (``{"name": "sparse_categorical_crossentropy", "from_logits": True}``).

    >>> from_entry({"name": "mse"})
    'mse'
    """
    options = {k: v for k, v in entry.items() if k != "name"}
    if not options:
        return entry["name"]
    return get({"class_name": get(entry["name"]).class_name, "config": options})


def serialize(loss: Loss) -> dict[str, Any]:
    """``{"class_name", "config"}`` for a built-in ``Loss`` (inverse of ``get``)."""
    if loss.class_name in _CONSTRUCTORS and type(loss) is _CONSTRUCTORS[loss.class_name]:
        config = {**loss.config, "name": loss.name}
        if loss.reduction != _DEFAULT_REDUCTION:
            config["reduction"] = loss.reduction
        return {"class_name": loss.class_name, "config": config}
    raise ConfigError(f"cannot serialize custom loss {loss.name!r}; only built-in losses.")


def reduce(
    per_example, sample_weight=None, mask=None, *, reduction: str | None = _DEFAULT_REDUCTION
) -> jax.Array:
    """Reduce loss values ``[batch, ...]`` (usually per-example ``[batch]``) as Keras does.

    ``"sum_over_batch_size"`` (default; ``"mean"`` is the same):
    ``sum(loss * sample_weight * mask) / n`` where ``n`` is the number of values, or
    ``sum(mask)`` when a mask is given (Keras rescales masked weights so only valid
    entries count); sample weights do not change the denominator. ``"sum"``: the weighted
    sum. ``"mean_with_sample_weight"``: divided by the sum of the (masked) weights.
    ``None``/``"none"``: the weighted values. ``sample_weight`` and ``mask`` are
    ``[batch]`` (broadcast over trailing axes) or the values' shape. An all-masked batch
    gives 0.

    >>> import jax.numpy as jnp, fnn
    >>> float(fnn.losses.reduce(jnp.array([1.0, 3.0]), sample_weight=jnp.array([1.0, 0.0])))
    0.5
    """
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduce: expected reduction in {list(_REDUCTIONS)}, got {reduction!r}.")
    values = jnp.asarray(per_example)
    if values.ndim < 1:
        raise ShapeError(
            f"reduce: expected per-example losses of shape [batch], got shape {values.shape}."
        )
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = _float(values)
    batch = values.shape[0]
    factors = {}
    for arg_name, arg in (("sample_weight", sample_weight), ("mask", mask)):
        if arg is None:
            continue
        arg = jnp.asarray(arg).astype(values.dtype)
        if arg.ndim == 2 and arg.shape[-1] == 1 and values.ndim == 1:
            arg = arg[:, 0]
        if arg.shape not in ((), (batch,), values.shape):
            raise ShapeError(
                f"reduce: expected {arg_name} of shape ({batch},) (one per example), "
                f"got shape {arg.shape}."
            )
        factors[arg_name] = jnp.broadcast_to(
            arg.reshape(arg.shape + (1,) * (values.ndim - arg.ndim)), values.shape
        )
    weights = jnp.ones_like(values)
    for factor in factors.values():
        weights = weights * factor
    weighted = values * weights
    if reduction in (None, "none"):
        return weighted
    total = jnp.sum(weighted)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and factors:
        count = jnp.sum(weights)
    elif "mask" in factors:
        count = jnp.sum(factors["mask"])
    else:
        return total / values.size
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)
