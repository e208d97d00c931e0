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
  it (for ``adamw`` and ``lion`` the optax argument of the same meaning).
- ``gradient_accumulation_steps``: apply one update every ``k`` calls with the mean of
  the ``k`` gradients (``optax.MultiSteps``), as Keras 3.

Keras's classes (``fnn.optimizers.Adam(1e-3)``, ``SGD``, ``AdamW``, ``RMSprop``,
``Adagrad``, ``Adadelta``, ``Adamax``, ``Nadam``, ``Lion``, ``Lamb``, ``Adafactor``) take
Keras's arguments and *are* these transformations (``init``/``update``), with a readable
``learning_rate``, ``get_config``/``from_config`` and Keras's serialized form
(``serialize``/``deserialize``); ``fnn.optimizers.schedules`` holds Keras's learning-rate
schedules. ``Ftrl`` is not available (optax has no FTRL).

Mapping differences to Keras (documented, not hidden; tests/test_optimizer_classes.py
compares 20-step trajectories with Keras's):

- ``adam``/``adamw`` add ``epsilon`` to the bias-*corrected* ``sqrt(v_hat)`` (optax, the
  Adam paper); Keras adds it to the uncorrected ``sqrt(v)``, i.e. an effective
  ``epsilon / sqrt(1 - beta_2^t)``, slightly larger in early steps.
- ``amsgrad=True`` is optax's: the maximum of the bias-corrected ``v_hat``; Keras takes
  the maximum of the raw ``v`` and corrects afterwards (trajectories differ visibly).
- ``adamax`` follows optax: ``u = max(beta_2 u, |g| + epsilon)`` vs Keras's
  ``max(beta_2 u, |g|)`` with ``epsilon`` added in the denominator (~1e-7 relative).
- ``adafactor`` on arrays of rank > 2 factors the two largest axes (optax), Keras the last
  two.
- ``nadam`` is Keras's own rule (``scale_by_keras_nadam``, Dozat's momentum schedule),
  not ``optax.nadam``; ``lamb`` and ``adafactor`` with ``weight_decay`` see the decayed
  weights, as Keras; ``sgd``/``rmsprop``/``adagrad``/``adadelta``/``lion``/``lamb`` are
  Keras's update rules.

>>> import fnn, jax.numpy as jnp
>>> opt = fnn.optimizers.get("sgd", momentum=0.9)
>>> state = opt.init({"w": jnp.ones(2)})
>>> updates, state = opt.update({"w": jnp.ones(2)}, state)
>>> updates["w"]
Array([-0.01, -0.01], dtype=float32)
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fnn.core.errors import ConfigError, unknown_name
from fnn.training import schedules

# Keras default learning rates.
DEFAULT_LEARNING_RATE = {"sgd": 0.01}


def _sgd(lr, momentum=0.0, nesterov=False):
    if not momentum:
        return optax.sgd(lr)
    # Keras's order: the velocity accumulates lr_t * g_t (m = momentum * m - lr_t * g), so
    # a schedule or a changed rate scales new gradients only (optax.sgd scales it all).
    return optax.chain(
        optax.scale_by_learning_rate(lr), optax.trace(decay=momentum, nesterov=nesterov)
    )


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


class ScaleByKerasNadamState(NamedTuple):
    count: jax.Array  # int32 scalar: steps taken
    u_product: jax.Array  # float32 scalar: product of the momentum schedule u_1 ... u_t
    mu: optax.Updates  # first moments, shaped like params
    nu: optax.Updates  # second moments, shaped like params


def scale_by_keras_nadam(beta_1=0.9, beta_2=0.999, epsilon=1e-7) -> optax.GradientTransformation:
    """Keras's Nadam direction (Dozat's momentum schedule ``u_t = beta_1 (1 - 0.5 * 0.96^t)``);
    optax has no transform with this schedule (``optax.nadam`` uses a constant ``beta_1``)."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByKerasNadamState(jnp.zeros([], jnp.int32), jnp.ones([]), zeros, zeros)

    def update(updates, state, params=None):
        del params
        t = (state.count + 1).astype(jnp.float32)
        u_t = beta_1 * (1.0 - 0.5 * 0.96**t)
        u_next = beta_1 * (1.0 - 0.5 * 0.96 ** (t + 1))
        u_product = state.u_product * u_t
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - beta_1), state.mu, updates)
        nu = jax.tree.map(lambda v, g: v + (jnp.square(g) - v) * (1 - beta_2), state.nu, updates)

        def direction(m, v, g):
            m_hat = u_next * m / (1 - u_product * u_next) + (1 - u_t) * g / (1 - u_product)
            return m_hat / (jnp.sqrt(v / (1 - beta_2**t)) + epsilon)

        out = jax.tree.map(direction, mu, nu, updates)
        count = optax.safe_int32_increment(state.count)
        return out, ScaleByKerasNadamState(count, u_product, mu, nu)

    return optax.GradientTransformation(init, update)


def _nadam(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    return optax.chain(
        scale_by_keras_nadam(beta_1, beta_2, epsilon), optax.scale_by_learning_rate(lr)
    )


def _lion(lr, beta_1=0.9, beta_2=0.99, weight_decay=0.0):
    return optax.lion(lr, b1=beta_1, b2=beta_2, weight_decay=weight_decay)


def _lamb(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    # weight_decay is the common decoupled one (Keras), not optax's decay before the ratio.
    return optax.lamb(lr, b1=beta_1, b2=beta_2, eps=epsilon, weight_decay=0.0)


def _adadelta(lr, rho=0.95, epsilon=1e-7):
    return optax.adadelta(lr, rho=rho, eps=epsilon)


def _adafactor(
    lr, beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3, clip_threshold=1.0, relative_step=True
):
    # Keras's Adafactor, from optax's pieces: factored second moments for every array of
    # rank >= 2, per-array update clipping, step min(lr, 1/sqrt(t)) scaled by
    # max(epsilon_2, rms(w)). Keras caps the step at 1/sqrt(t) whatever relative_step says.
    del relative_step

    def step_size(count):
        rate = lr(count) if callable(lr) else lr
        return jnp.minimum(rate, jax.lax.rsqrt((count + 1).astype(jnp.float32)))

    return optax.chain(
        optax.scale_by_factored_rms(
            decay_rate=-beta_2_decay, min_dim_size_to_factor=0, epsilon=epsilon_1
        ),
        optax.clip_by_block_rms(clip_threshold),
        optax.scale_by_learning_rate(step_size),
        optax.scale_by_param_block_rms(epsilon_2),
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
_OWN_WEIGHT_DECAY = ("adamw", "lion")


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


class _DecayFirstState(NamedTuple):
    count: jax.Array  # int32 scalar: steps taken
    inner: Any  # the wrapped optimizer's state


def _sees_decayed_params(optimizer, weight_decay: float, learning_rate):
    """``optimizer`` updating from the decayed ``w - lr * weight_decay * w``, as Keras 3
    decays the weights before the step (it matters where the step reads ``w``: Lamb's trust
    ratio, Adafactor's ``rms(w)``); the decay itself is still added by
    ``decoupled_weight_decay`` after it."""

    def init(params):
        return _DecayFirstState(jnp.zeros([], jnp.int32), optimizer.init(params))

    def update(updates, state, params=None):
        if params is None:
            raise ConfigError("weight_decay needs params: call optimizer.update(g, s, params).")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        decayed = jax.tree.map(lambda p: p - lr * weight_decay * p, params)
        updates, inner = optimizer.update(updates, state.inner, decayed)
        return updates, _DecayFirstState(optax.safe_int32_increment(state.count), inner)

    return optax.GradientTransformation(init, update)


# Optimizers whose step reads the weights: they see the decayed ones (Keras's order).
_READS_WEIGHTS = ("lamb", "adafactor")


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
    """An optax transformation from a Keras optimizer name; an ``Optimizer`` instance or an
    optax transformation as is; an ``Optimizer`` from a ``serialize`` dict.

    ``learning_rate``: a float or an optax schedule; default 1e-3 (0.01 for ``sgd``), as
    Keras. ``kwargs`` are the Keras hyperparameters of that optimizer (``momentum``,
    ``nesterov``, ``beta_1``, ``beta_2``, ``epsilon``, ``rho``, ``amsgrad``, ...).

    >>> import fnn
    >>> opt = fnn.optimizers.get("adam", learning_rate=3e-4, global_clipnorm=1.0)
    """
    if isinstance(identifier, LossScaleOptimizer) and not kwargs and learning_rate is None:
        return identifier
    if isinstance(identifier, Optimizer | Mapping):
        common = (learning_rate, clipnorm, clipvalue, global_clipnorm, weight_decay)
        if kwargs or gradient_accumulation_steps or any(v is not None for v in common):
            raise ConfigError(
                "optimizers.get: learning_rate and hyperparameters apply to optimizer names "
                "only; set them in the optimizer class instead."
            )
        return identifier if isinstance(identifier, Optimizer) else deserialize(identifier)
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
            "expected an optimizer name, an fnn.optimizers class instance or an "
            f"optax.GradientTransformation, got {identifier!r}."
        )
    chain = []
    if clipvalue is not None:
        chain.append(optax.clip(clipvalue))
    if clipnorm is not None:
        chain.append(clip_by_norm(clipnorm))
    if global_clipnorm is not None:
        chain.append(optax.clip_by_global_norm(global_clipnorm))
    if weight_decay:
        if lr is None:
            raise ConfigError(
                "weight_decay= needs an optimizer name (to know the learning rate); chain "
                "optax.add_decayed_weights into your own transformation instead."
            )
        if name in _READS_WEIGHTS:
            base = _sees_decayed_params(base, weight_decay, lr)
        chain += [base, decoupled_weight_decay(weight_decay, lr)]
    else:
        chain.append(base)
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


# ---------------------------------------------------------------------- Keras classes


class Optimizer:
    """A Keras-style optimizer: Keras's constructor arguments over the builder of the same
    name in this module, used as an optax transformation (``init``/``update``).

    The transformation is ``optax.inject_hyperparams`` over ``get(name, ...)``, so the
    current learning rate lives in the optimizer state (``Model.learning_rate`` and the
    learning-rate callbacks change it without recompiling); ``gradient_accumulation_steps``
    wraps it in ``optax.MultiSteps``, so schedules count applied updates, as Keras's
    ``iterations``. ``learning_rate`` is a float or a schedule ``step -> lr``.

    Common arguments (Keras's): ``weight_decay`` (decoupled, ``w -= lr * wd * w``),
    ``clipnorm``/``clipvalue``/``global_clipnorm`` (at most one), and
    ``gradient_accumulation_steps`` (>= 2). ``use_ema=True`` and ``loss_scale_factor``
    are refused: fnn keeps no moving average of the weights, and loss scaling is
    ``LossScaleOptimizer``'s (a wrapper, as Keras's).
    """

    _key = ""  # the builder's name in _OPTIMIZERS
    _weight_decay_default = None

    def __init__(
        self,
        learning_rate,
        hyperparameters: Mapping[str, Any],
        *,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        cls = type(self).__name__
        if kwargs:
            raise ConfigError(
                f"{cls}: unknown argument(s) {sorted(kwargs)}. Valid arguments: learning_rate, "
                f"{', '.join(hyperparameters)}, {', '.join(_COMMON)}."
            )
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        if sum(v is not None for v in clips.values()) > 1:
            raise ConfigError(
                f"{cls}: expected at most one of clipnorm, clipvalue and global_clipnorm, got "
                f"{', '.join(f'{k}={v}' for k, v in clips.items() if v is not None)}."
            )
        if gradient_accumulation_steps and not (
            isinstance(gradient_accumulation_steps, int) and gradient_accumulation_steps >= 2
        ):
            raise ConfigError(
                f"{cls}: expected gradient_accumulation_steps to be an int >= 2, got "
                f"{gradient_accumulation_steps!r}."
            )
        if use_ema:
            raise ConfigError(
                f"{cls}: use_ema=True is not supported: fnn keeps no moving average of the "
                "weights. Leave use_ema=False (or average checkpoints yourself)."
            )
        if loss_scale_factor is not None:
            raise ConfigError(
                f"{cls}: loss_scale_factor is not supported, got {loss_scale_factor!r}. "
                "Leave it None; wrap the optimizer in fnn.mixed_precision.LossScaleOptimizer "
                "for dynamic loss scaling."
            )
        if not (callable(learning_rate) or isinstance(learning_rate, int | float)):
            raise ConfigError(
                f"{cls}: expected learning_rate to be a float or a schedule step -> lr, got "
                f"{learning_rate!r}."
            )
        # Keras's default name: the class name in snake case ("AdamW" -> "adam_w").
        snake = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", cls))
        self.name = name or snake.lower()
        self._learning_rate = learning_rate if callable(learning_rate) else float(learning_rate)
        self._hyper = dict(hyperparameters)
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.use_ema, self.ema_momentum = use_ema, ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps
        for key, value in self._hyper.items():  # readable as in Keras: opt.beta_1
            setattr(self, key, value)
        self._owner = None
        self._tx = self._build()  # wrong hyperparameters raise here, not at the first step

    @property
    def transformation(self) -> optax.GradientTransformation:
        """The optax transformation this optimizer is."""
        if self._tx is None:
            self._tx = self._build()
        return self._tx

    def _build(self) -> optax.GradientTransformation:
        key, hyper = self._key, dict(self._hyper)
        common = {
            "clipnorm": self.clipnorm,
            "clipvalue": self.clipvalue,
            "global_clipnorm": self.global_clipnorm,
            "weight_decay": self.weight_decay,
        }

        def make(learning_rate):
            return get(key, learning_rate=learning_rate, **common, **hyper)

        lr, k = self._learning_rate, self.gradient_accumulation_steps
        if k and callable(lr):
            # Keras reads the schedule at its micro-step count (k * n + k - 1 at the n-th
            # applied update), not at the count of applied updates.
            def lr(count, schedule=lr):
                return schedule(count * k + k - 1)

        tx = optax.inject_hyperparams(make)(learning_rate=lr)
        return accumulate_gradients(tx, k) if k else tx

    def init(self, params):
        """The optimizer state for ``params`` (``optax.GradientTransformation.init``)."""
        return self.transformation.init(params)

    def update(self, updates, state, params=None):
        """``(updates, new_state)`` from gradients (``optax.GradientTransformation.update``)."""
        return self.transformation.update(updates, state, params)

    def __iter__(self):  # ``init, update = optimizer`` as for an optax transformation
        return iter((self.init, self.update))

    # -- learning rate --------------------------------------------------------------

    def attach(self, owner) -> None:
        """Read and write ``learning_rate`` through ``owner`` (a compiled ``fnn.Model``:
        an object with ``opt_state`` and a settable ``learning_rate``) once it has state."""
        self._owner = weakref.ref(owner)

    def _live_owner(self):
        owner = self._owner() if self._owner is not None else None
        return owner if owner is not None and owner.opt_state is not None else None

    @property
    def learning_rate(self):
        """The learning rate: the model's current one once attached and training, else
        the constructor value (a float or the schedule)."""
        owner = self._live_owner()
        return float(owner.learning_rate) if owner is not None else self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        if callable(self._learning_rate) or callable(value):
            raise ConfigError(
                f"{self.name}: the learning rate can be set only when it is a float (this "
                "optimizer was built with a schedule, or got one); build a new optimizer."
            )
        owner = self._live_owner()
        if owner is not None:
            owner.learning_rate = float(value)
        self._learning_rate = float(value)
        self._tx = None

    # -- config ---------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """Keras's config dict: the constructor arguments (a schedule serialized; a float
        learning rate as it is now, e.g. after ``ReduceLROnPlateau``)."""
        lr = self._learning_rate if callable(self._learning_rate) else self.learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            lr = schedules.serialize(lr)
        elif callable(lr):
            raise ConfigError(
                f"{self.name}: cannot serialize learning_rate {lr!r}; use a schedule from "
                "fnn.optimizers.schedules to store it in a config."
            )
        return {
            "name": self.name,
            "learning_rate": lr,
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
            "use_ema": self.use_ema,
            "ema_momentum": self.ema_momentum,
            "ema_overwrite_frequency": self.ema_overwrite_frequency,
            "loss_scale_factor": self.loss_scale_factor,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            **self._hyper,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """The optimizer of ``get_config()``'s dict."""
        config = dict(config)
        if isinstance(config.get("learning_rate"), Mapping):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        return cls(**config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(learning_rate={self._learning_rate!r}, name={self.name!r})"


_COMMON = (
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
    "name",
)


class SGD(Optimizer):
    """Keras's SGD: ``m = momentum * m - lr_t * g``; ``w += m`` (``w += momentum * m -
    lr_t * g`` with ``nesterov``): ``optax.scale_by_learning_rate`` then ``optax.trace``.

    >>> import fnn
    >>> fnn.optimizers.SGD(0.1, momentum=0.9).get_config()["momentum"]
    0.9
    """

    _key = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **common):
        super().__init__(learning_rate, {"momentum": momentum, "nesterov": nesterov}, **common)


class Adam(Optimizer):
    """Keras's Adam. Known differences: optax adds ``epsilon`` to the bias-corrected
    ``sqrt(v_hat)``, Keras to ``sqrt(v)``, an effective ``epsilon / sqrt(1 - beta_2^t)``
    (relative differences ~1e-5 after 20 steps for gradients of order 1); ``amsgrad=True``
    keeps the maximum of the bias-corrected ``v_hat`` (optax), Keras of the raw ``v``.

    >>> import fnn
    >>> opt = fnn.optimizers.Adam(1e-3)
    >>> opt.learning_rate, opt.beta_1
    (0.001, 0.9)
    """

    _key = "adam"

    def __init__(
        self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, **common
    ):
        hyper = {"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon, "amsgrad": amsgrad}
        super().__init__(learning_rate, hyper, **common)


class AdamW(Optimizer):
    """Keras's AdamW: Adam plus decoupled ``weight_decay`` (default 0.004). Epsilon and
    ``amsgrad`` as in ``Adam``."""

    _key = "adamw"

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        **common,
    ):
        hyper = {"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon, "amsgrad": amsgrad}
        super().__init__(learning_rate, hyper, weight_decay=weight_decay, **common)


class RMSprop(Optimizer):
    """Keras's RMSprop (``epsilon`` inside the square root, ``momentum``, ``centered``)."""

    _key = "rmsprop"

    def __init__(
        self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, **common
    ):
        hyper = {"rho": rho, "momentum": momentum, "epsilon": epsilon, "centered": centered}
        super().__init__(learning_rate, hyper, **common)


class Adagrad(Optimizer):
    """Keras's Adagrad: ``a += g^2``; ``w -= lr * g / sqrt(a + epsilon)``."""

    _key = "adagrad"

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, **common):
        hyper = {"initial_accumulator_value": initial_accumulator_value, "epsilon": epsilon}
        super().__init__(learning_rate, hyper, **common)


class Adadelta(Optimizer):
    """Keras's Adadelta (``optax.adadelta``; the same formula)."""

    _key = "adadelta"

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, **common):
        super().__init__(learning_rate, {"rho": rho, "epsilon": epsilon}, **common)


class Adamax(Optimizer):
    """Keras's Adamax. Known difference: optax keeps ``u = max(beta_2 u, |g| + epsilon)``
    where Keras keeps ``max(beta_2 u, |g|)`` and divides by ``u + epsilon`` (~1e-7)."""

    _key = "adamax"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **common):
        hyper = {"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon}
        super().__init__(learning_rate, hyper, **common)


class Nadam(Optimizer):
    """Keras's Nadam, with Keras's momentum schedule ``u_t = beta_1 (1 - 0.5 * 0.96^t)``
    (``scale_by_keras_nadam``; ``optax.nadam`` has none, so it is not used). Keras's formula,
    ``epsilon`` on ``sqrt(v_hat)`` included; only float32 rounding differs."""

    _key = "nadam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **common):
        hyper = {"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon}
        super().__init__(learning_rate, hyper, **common)


class Lion(Optimizer):
    """Keras's Lion (``optax.lion``; ``weight_decay`` decoupled as Keras)."""

    _key = "lion"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, **common):
        super().__init__(learning_rate, {"beta_1": beta_1, "beta_2": beta_2}, **common)


class Lamb(Optimizer):
    """Keras's Lamb: Adam's direction scaled by the trust ratio ``|w| / |update|``
    (``optax.lamb``); with ``weight_decay`` the ratio sees the decayed ``w``, as in Keras."""

    _key = "lamb"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **common):
        hyper = {"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon}
        super().__init__(learning_rate, hyper, **common)


class Adafactor(Optimizer):
    """Keras's Adafactor from optax's pieces (factored second moments, update clipping,
    step ``min(lr, 1/sqrt(t)) * max(epsilon_2, rms(w))``). Known difference: for arrays of
    rank > 2 optax factors the two largest axes, Keras the last two. ``relative_step`` is
    accepted and, as in Keras 3, changes nothing.
    """

    _key = "adafactor"

    def __init__(
        self,
        learning_rate=0.001,
        beta_2_decay=-0.8,
        epsilon_1=1e-30,
        epsilon_2=1e-3,
        clip_threshold=1.0,
        relative_step=True,
        **common,
    ):
        hyper = {
            "beta_2_decay": beta_2_decay,
            "epsilon_1": epsilon_1,
            "epsilon_2": epsilon_2,
            "clip_threshold": clip_threshold,
            "relative_step": relative_step,
        }
        super().__init__(learning_rate, hyper, **common)


class LossScaleState(NamedTuple):
    """``LossScaleOptimizer`` state: the scale, finite steps since it last changed, and
    the wrapped optimizer's state."""

    dynamic_scale: jax.Array  # float32 scalar: the loss is multiplied by it
    step_counter: jax.Array  # int32 scalar: finite steps since the last change
    inner_state: Any  # the inner optimizer's state


class LossScaleOptimizer:
    """Dynamic loss scaling around ``inner_optimizer``, as Keras's ``LossScaleOptimizer``
    (float16 training: small gradients would underflow in float16).

    The training step multiplies the loss by ``state.dynamic_scale`` (found in the
    optimizer state, see ``loss_scale_state``); ``update`` gets the scaled gradients and
    - if one is not finite: returns zero updates, keeps the inner state, halves the scale
      and resets the counter (the step is skipped);
    - else: divides them by the scale, applies ``inner_optimizer`` and counts the step;
      after ``dynamic_growth_steps`` finite steps in a row the scale doubles.

    ``Model.compile`` wraps its optimizer in one when the model computes in float16
    (``compile(auto_scale_loss=True)``, Keras's default).

    >>> import fnn, jax.numpy as jnp
    >>> opt = fnn.mixed_precision.LossScaleOptimizer(fnn.optimizers.SGD(0.1), initial_scale=8.0)
    >>> state = opt.init({"w": jnp.ones(2)})
    >>> updates, state = opt.update({"w": jnp.array([8.0, jnp.inf])}, state)
    >>> updates["w"], float(state.dynamic_scale)
    (Array([0., 0.], dtype=float32), 4.0)
    """

    def __init__(
        self, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000, name=None
    ):
        if isinstance(inner_optimizer, LossScaleOptimizer):
            raise ConfigError("LossScaleOptimizer: the inner optimizer already scales the loss.")
        if not (isinstance(initial_scale, int | float) and initial_scale > 0):
            raise ConfigError(
                f"LossScaleOptimizer: expected initial_scale to be a positive float, got "
                f"{initial_scale!r}."
            )
        if not (
            isinstance(dynamic_growth_steps, int)
            and not isinstance(dynamic_growth_steps, bool)
            and dynamic_growth_steps >= 1
        ):
            raise ConfigError(
                f"LossScaleOptimizer: expected dynamic_growth_steps to be an int >= 1, got "
                f"{dynamic_growth_steps!r}."
            )
        # A name becomes its class (as compile does), so learning_rate stays readable.
        if isinstance(inner_optimizer, str):
            get(inner_optimizer)  # unknown names raise here, listing the valid ones
            inner_optimizer = by_name(inner_optimizer)
        self.inner_optimizer = get(inner_optimizer)
        self.initial_scale = float(initial_scale)
        self.dynamic_growth_steps = dynamic_growth_steps
        self.name = name or "loss_scale_optimizer"

    def init(self, params) -> LossScaleState:
        """``LossScaleState`` with ``initial_scale`` and the inner optimizer's state."""
        return LossScaleState(
            jnp.asarray(self.initial_scale, jnp.float32),
            jnp.zeros((), jnp.int32),
            self.inner_optimizer.init(params),
        )

    def update(self, updates, state: LossScaleState, params=None):
        """``(updates, new_state)`` from gradients of the *scaled* loss (shapes as params)."""
        leaves = jax.tree.leaves(updates)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))
        scale = state.dynamic_scale
        unscaled = jax.tree.map(lambda g: g / scale.astype(g.dtype), updates)
        inner_updates, inner_state = self.inner_optimizer.update(
            unscaled, state.inner_state, params
        )
        inner_updates = jax.tree.map(
            lambda u: jnp.where(finite, u, jnp.zeros_like(u)), inner_updates
        )
        inner_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), inner_state, state.inner_state
        )
        grow = finite & (state.step_counter == self.dynamic_growth_steps - 1)
        new_scale = jnp.where(finite, jnp.where(grow, scale * 2.0, scale), scale * 0.5)
        counter = jnp.where(finite & ~grow, state.step_counter + 1, 0)
        new_state = LossScaleState(
            new_scale.astype(jnp.float32), counter.astype(jnp.int32), inner_state
        )
        return inner_updates, new_state

    def __iter__(self):  # ``init, update = optimizer`` as for an optax transformation
        return iter((self.init, self.update))

    def attach(self, owner) -> None:
        """Let the inner optimizer read ``learning_rate`` through ``owner`` (see
        ``Optimizer.attach``)."""
        if isinstance(self.inner_optimizer, Optimizer):
            self.inner_optimizer.attach(owner)

    @property
    def learning_rate(self):
        """The inner optimizer's learning rate."""
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        self.inner_optimizer.learning_rate = value

    def get_config(self) -> dict[str, Any]:
        """Keras's config: ``name``, ``inner_optimizer`` (serialized), ``initial_scale``,
        ``dynamic_growth_steps``."""
        return {
            "name": self.name,
            "inner_optimizer": serialize(self.inner_optimizer),
            "initial_scale": self.initial_scale,
            "dynamic_growth_steps": self.dynamic_growth_steps,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """The optimizer of ``get_config()``'s dict."""
        config = dict(config)
        config["inner_optimizer"] = deserialize(config["inner_optimizer"])
        return cls(**config)

    def __repr__(self) -> str:
        return (
            f"LossScaleOptimizer({self.inner_optimizer!r}, initial_scale={self.initial_scale!r}, "
            f"dynamic_growth_steps={self.dynamic_growth_steps!r})"
        )


def find_states(opt_state, match) -> list:
    """The nodes of ``opt_state`` (nested tuples, lists and mappings, at any depth) for
    which ``match(node)`` is true, in order; a matching node is not searched further."""
    found = []

    def visit(node):
        if match(node):
            found.append(node)
        elif isinstance(node, tuple | list):
            for child in node:
                visit(child)
        elif isinstance(node, Mapping):
            for child in node.values():
                visit(child)

    visit(opt_state)
    return found


def loss_scale_state(opt_state) -> LossScaleState | None:
    """The ``LossScaleState`` inside ``opt_state`` (at any depth: an optimizer wrapped by
    ``freeze`` keeps it nested), or None when the optimizer scales no loss."""
    found = find_states(opt_state, lambda node: isinstance(node, LossScaleState))
    if len(found) > 1:
        raise ConfigError(
            f"expected at most one LossScaleOptimizer in the optimizer, got {len(found)}; "
            "wrap the whole optimizer once."
        )
    return found[0] if found else None


class Ftrl:
    """Not available: optax has no FTRL transformation (constructing one raises)."""

    def __init__(self, *args, **kwargs):
        del args, kwargs
        raise ConfigError(
            "Ftrl: not available in fnn (optax has no FTRL transformation). Use another "
            f"optimizer: {', '.join(sorted(_CLASSES))}."
        )


_CLASSES: dict[str, type[Optimizer]] = {
    cls.__name__: cls
    for cls in (SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Adamax, Nadam, Lion, Lamb, Adafactor)
}
# Keras's lower-case names for the classes.
_CLASS_BY_NAME = {cls._key: cls for cls in _CLASSES.values()}


def by_name(name: str, **kwargs) -> Optimizer:
    """The ``Optimizer`` instance of a Keras optimizer name (``"adam"`` -> ``Adam()``)."""
    cls = _CLASS_BY_NAME.get(name.lower())
    if cls is None:
        raise unknown_name("optimizer", name, _CLASS_BY_NAME)
    return cls(**kwargs)


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    """``{"module", "class_name", "config", "registered_name"}`` as Keras writes it."""
    if isinstance(optimizer, LossScaleOptimizer):
        return {
            "module": "keras.optimizers",
            "class_name": "LossScaleOptimizer",
            "config": optimizer.get_config(),
            "registered_name": None,
        }
    if not isinstance(optimizer, Optimizer) or type(optimizer).__name__ not in _CLASSES:
        raise ConfigError(
            f"cannot serialize optimizer {optimizer!r}; only fnn.optimizers classes "
            f"({', '.join(_CLASSES)})."
        )
    return {
        "module": "keras.optimizers",
        "class_name": type(optimizer).__name__,
        "config": optimizer.get_config(),
        "registered_name": None,
    }


def deserialize(config: Mapping[str, Any]) -> Optimizer:
    """The ``Optimizer`` of ``serialize``'s dict (``{"class_name", "config"}``)."""
    if "class_name" not in config:
        raise ConfigError(f"expected an optimizer config with 'class_name', got {config!r}.")
    name = config["class_name"]
    if name == "LossScaleOptimizer":
        return LossScaleOptimizer.from_config(config.get("config", {}))
    cls = _CLASSES.get(name) or _CLASS_BY_NAME.get(str(name).lower())
    if cls is None:
        raise unknown_name("optimizer class", name, _CLASSES)
    return cls.from_config(config.get("config", {}))
