"""Learning-rate schedules with Keras's names and formulas (``fnn.optimizers.schedules``).

Each schedule is a callable ``step -> learning rate`` (a float32 scalar), usable as an
optax schedule and as the ``learning_rate`` of any ``fnn.optimizers`` class or name.
``ExponentialDecay``, ``PolynomialDecay`` (``cycle=False``) and ``CosineDecay`` call the
optax schedule of the same formula; ``PiecewiseConstantDecay``, ``InverseTimeDecay``,
``PolynomialDecay(cycle=True)`` and ``CosineDecayRestarts`` have no optax twin with
Keras's semantics and are written out here. Steps are cast to float32 first, as Keras
does with a float learning rate.

>>> import fnn
>>> schedule = fnn.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
>>> round(float(schedule(10)), 6)
0.05
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from fnn.core.errors import ConfigError, unknown_name


class LearningRateSchedule:
    """Base class: ``__call__(step) -> lr`` plus ``get_config``/``from_config`` (Keras).

    Subclass it for your own schedule; ``__call__`` must be traceable by JAX.
    """

    def __call__(self, step):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(step).")

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_config().")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """The schedule rebuilt from ``get_config()``'s dict."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _positive(owner: str, what: str, value) -> None:
    if not value > 0:
        raise ConfigError(f"{owner}: expected {what} > 0, got {value!r}.")


def _float_step(step):
    return jnp.asarray(step, jnp.float32)


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase``
    the exponent is floored (``optax.exponential_decay``)."""

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        decay_rate,
        staircase=False,
        name="ExponentialDecay",
    ):
        _positive(name, "decay_steps", decay_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name
        self._fn = optax.exponential_decay(
            initial_learning_rate, decay_steps, decay_rate, staircase=staircase
        )

    def __call__(self, step):
        if self.decay_rate == 0:  # optax returns a constant here; Keras gives 0 after step 0
            return jnp.where(_float_step(step) > 0, 0.0, self.initial_learning_rate)
        return jnp.asarray(self._fn(_float_step(step)), jnp.float32)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` for ``step <= boundaries[0]``, ``values[i]`` for
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if len(boundaries) != len(values) - 1:
            raise ConfigError(
                f"{name}: expected one boundary less than values, got {len(boundaries)} "
                f"boundaries and {len(values)} values."
            )
        self.boundaries = list(boundaries)
        self.values = list(values)
        self.name = name

    def __call__(self, step):
        step = jnp.asarray(step)
        index = sum((step > b).astype(jnp.int32) for b in self.boundaries)
        return jnp.asarray(self.values, jnp.float32)[index]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """``(initial - end) * (1 - step / decay_steps) ** power + end``, holding ``end`` after
    ``decay_steps`` (``optax.polynomial_schedule``); ``cycle=True`` restarts with
    ``decay_steps`` stretched to the next multiple above ``step`` (Keras)."""

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        end_learning_rate=0.0001,
        power=1.0,
        cycle=False,
        name="PolynomialDecay",
    ):
        _positive(name, "decay_steps", decay_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name
        self._fn = optax.polynomial_schedule(
            initial_learning_rate, end_learning_rate, power, decay_steps
        )

    def __call__(self, step):
        step = _float_step(step)
        if not self.cycle:
            return jnp.asarray(self._fn(step), jnp.float32)
        multiplier = jnp.where(step == 0, 1.0, jnp.ceil(step / self.decay_steps))
        p = step / (self.decay_steps * multiplier)
        delta = self.initial_learning_rate - self.end_learning_rate
        return delta * (1 - p) ** self.power + self.end_learning_rate

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class InverseTimeDecay(LearningRateSchedule):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)``; with
    ``staircase`` the ratio ``step / decay_steps`` is floored."""

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        decay_rate,
        staircase=False,
        name="InverseTimeDecay",
    ):
        _positive(name, "decay_steps", decay_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    def __call__(self, step):
        p = _float_step(step) / self.decay_steps
        if self.staircase:
            p = jnp.floor(p)
        return self.initial_learning_rate / (1.0 + self.decay_rate * p)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class CosineDecay(LearningRateSchedule):
    """Cosine decay from ``initial_learning_rate`` to ``alpha * initial`` over
    ``decay_steps`` (``optax.cosine_decay_schedule``). With ``warmup_target``: a linear
    warmup from ``initial_learning_rate`` to ``warmup_target`` over ``warmup_steps``, then
    the cosine decay from ``warmup_target`` (``optax.warmup_cosine_decay_schedule``)."""

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        alpha=0.0,
        name="CosineDecay",
        warmup_target=None,
        warmup_steps=0,
    ):
        _positive(name, "decay_steps", decay_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps
        if warmup_target is None:
            self._fn = optax.cosine_decay_schedule(initial_learning_rate, decay_steps, alpha)
        elif warmup_steps <= 0:  # Keras: straight to the decay from warmup_target
            self._fn = optax.cosine_decay_schedule(warmup_target, decay_steps, alpha)
        else:
            self._fn = optax.warmup_cosine_decay_schedule(
                initial_learning_rate,
                warmup_target,
                warmup_steps,
                warmup_steps + decay_steps,
                end_value=alpha * warmup_target,
            )

    def __call__(self, step):
        return jnp.asarray(self._fn(_float_step(step)), jnp.float32)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class CosineDecayRestarts(LearningRateSchedule):
    """SGDR: cosine decay over ``first_decay_steps``, restarting with periods multiplied by
    ``t_mul`` and peaks by ``m_mul`` each time, floor ``alpha * initial`` (Keras's formula;
    optax's ``sgdr_schedule`` takes explicit periods instead)."""

    def __init__(
        self,
        initial_learning_rate,
        first_decay_steps,
        t_mul=2.0,
        m_mul=1.0,
        alpha=0.0,
        name="SGDRDecay",
    ):
        _positive(name, "first_decay_steps", first_decay_steps)
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self.t_mul = t_mul
        self.m_mul = m_mul
        self.alpha = alpha
        self.name = name

    def __call__(self, step):
        fraction = _float_step(step) / self.first_decay_steps
        if self.t_mul == 1.0:
            restart = jnp.floor(fraction)
            fraction = fraction - restart
        else:
            restart = jnp.floor(jnp.log(1.0 - fraction * (1.0 - self.t_mul)) / math.log(self.t_mul))
            done = (1.0 - self.t_mul**restart) / (1.0 - self.t_mul)
            fraction = (fraction - done) / self.t_mul**restart
        cosine = 0.5 * self.m_mul**restart * (1.0 + jnp.cos(jnp.pi * fraction))
        return self.initial_learning_rate * ((1 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }


_SCHEDULES = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        InverseTimeDecay,
        CosineDecay,
        CosineDecayRestarts,
    )
}


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """``{"module", "class_name", "config", "registered_name"}`` as Keras writes it."""
    if type(schedule).__name__ not in _SCHEDULES:
        raise ConfigError(
            f"cannot serialize learning-rate schedule {schedule!r}; only the built-in "
            f"schedules ({', '.join(_SCHEDULES)})."
        )
    return {
        "module": "keras.optimizers.schedules",
        "class_name": type(schedule).__name__,
        "config": schedule.get_config(),
        "registered_name": None,
    }


def deserialize(config: Mapping[str, Any]) -> LearningRateSchedule:
    """The schedule of ``serialize``'s dict (``{"class_name", "config"}``)."""
    if not isinstance(config, Mapping) or "class_name" not in config:
        raise ConfigError(f"expected a schedule config with 'class_name', got {config!r}.")
    name = config["class_name"]
    if name not in _SCHEDULES:
        raise unknown_name("learning-rate schedule", name, _SCHEDULES)
    return _SCHEDULES[name].from_config(dict(config.get("config", {})))


__all__ = [
    "CosineDecay",
    "CosineDecayRestarts",
    "ExponentialDecay",
    "InverseTimeDecay",
    "LearningRateSchedule",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "deserialize",
    "serialize",
]
