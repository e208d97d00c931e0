"""Dtype policies (Keras 3's ``keras.mixed_precision``): the dtype a layer keeps its
params in (``variable_dtype``) and the dtype it computes in (``compute_dtype``).

A layer's policy is fixed when it is constructed: its ``dtype=`` argument, else the
global policy of that moment (``set_global_policy``). ``register_layer`` resolves it and
wraps the layer's ``apply`` once (:func:`with_policy`), so ``apply`` reads no global
state and the same model traced twice gives the same program. Under
``"mixed_bfloat16"``: params float32, floating inputs (and params, unless the layer
opts out with ``autocast=False``, as normalization and Embedding do) cast to bfloat16,
floating outputs bfloat16. Losses always compute in float32 (``fnn.losses``).

>>> import jax, jax.numpy as jnp, fnn
>>> fnn.mixed_precision.set_global_policy("mixed_bfloat16")
>>> dense = fnn.layers.Dense(3)
>>> fnn.mixed_precision.set_global_policy("float32")
>>> dense.dtype_policy
<DTypePolicy "mixed_bfloat16">
>>> params, state = dense.init(jax.random.key(0), jnp.ones((2, 4)))
>>> params["kernel"].dtype, dense.apply(params, state, jnp.ones((2, 4)))[0].dtype
(dtype('float32'), dtype(bfloat16))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fnn.core.errors import ConfigError

__all__ = [
    "DTypePolicy",
    "Policy",
    "dtype_policy",
    "global_policy",
    "set_dtype_policy",
    "set_global_policy",
]

_MIXED = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _parse(name: Any) -> tuple[str, str, str]:
    """``(name, compute_dtype, variable_dtype)`` of a policy name or a float dtype."""
    if isinstance(name, str) and name in _MIXED:
        return name, _MIXED[name], "float32"
    try:
        dtype = jnp.dtype(name).name
    except TypeError:
        dtype = None
    if dtype not in _FLOATS:
        raise ConfigError(
            f"unknown dtype policy {name!r}. Valid policies: mixed_float16, mixed_bfloat16, "
            f"{', '.join(_FLOATS)} (or a DTypePolicy)."
        )
    return dtype, dtype, dtype


@dataclasses.dataclass(frozen=True, init=False)
class DTypePolicy:
    """A named pair of dtypes, as Keras's ``DTypePolicy``: ``"mixed_bfloat16"`` computes
    in bfloat16 with float32 params, ``"mixed_float16"`` in float16 (train it with
    ``LossScaleOptimizer``), a float dtype name uses it for both. ``None``: float32.

    >>> import fnn
    >>> p = fnn.mixed_precision.DTypePolicy("mixed_float16")
    >>> p.name, p.compute_dtype, p.variable_dtype
    ('mixed_float16', 'float16', 'float32')
    """

    name: str
    compute_dtype: str
    variable_dtype: str

    def __init__(self, name: Any = None):
        if isinstance(name, DTypePolicy):
            name = name.name
        parsed = _parse("float32" if name is None else name)
        for field, value in zip(("name", "compute_dtype", "variable_dtype"), parsed):
            object.__setattr__(self, field, value)

    def __repr__(self) -> str:
        return f'<DTypePolicy "{self.name}">'


Policy = DTypePolicy  # Keras's older name, still exported by keras.mixed_precision

# The policy of layers built while none other is set: float32 params (float64 for
# float64 inputs) computing in their inputs' dtype, with no casts. ``is``-compared, so an
# explicit ``DTypePolicy("float32")`` (which casts, as Keras) stays distinct from it.
DEFAULT = DTypePolicy("float32")
_GLOBAL: list[DTypePolicy] = [DEFAULT]


def set_global_policy(policy: Any) -> None:
    """Set the policy of layers constructed from now on without a ``dtype=`` argument
    (a name such as ``"mixed_bfloat16"``, a float dtype, a ``DTypePolicy``; ``None`` or
    ``"float32"`` restores the default). Layers built before keep theirs."""
    resolved = DEFAULT if policy is None else DTypePolicy(policy)
    _GLOBAL[0] = DEFAULT if resolved.name == "float32" else resolved


def global_policy() -> DTypePolicy:
    """The policy that layers constructed now without ``dtype=`` get."""
    return _GLOBAL[0]


set_dtype_policy = set_global_policy  # Keras's aliases
dtype_policy = global_policy


def resolve(who: str, dtype: Any) -> DTypePolicy:
    """The policy of a layer constructed now with ``dtype`` (``None``: the global one)."""
    if dtype is None:
        return global_policy()
    if isinstance(dtype, DTypePolicy):
        return dtype
    try:
        return DTypePolicy(dtype)
    except ConfigError as err:
        raise ConfigError(f"{who}: dtype={dtype!r}: {err}") from None


def applies(policy: DTypePolicy | None) -> bool:
    """True when ``policy`` casts anything (every policy but the default)."""
    return policy is not None and policy is not DEFAULT


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    """Floating leaves of ``tree`` (arrays or ``ShapeDtypeStruct``) as ``dtype``."""

    def cast(x):
        x_dtype = getattr(x, "dtype", None)
        if x_dtype is None or not jnp.issubdtype(x_dtype, jnp.floating) or x_dtype == dtype:
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, dtype)
        return jnp.asarray(x).astype(dtype)

    return jax.tree.map(cast, tree)


def _keep_dtypes(new: Any, old: Any) -> Any:
    # State (moving statistics, added losses) keeps its dtype whatever the compute dtype,
    # so a scan or a jitted loop sees the same state types on every step.
    if jax.tree.structure(new) != jax.tree.structure(old):
        return new
    return jax.tree.map(
        lambda n, o: n.astype(o.dtype) if getattr(n, "dtype", o.dtype) != o.dtype else n, new, old
    )


def with_policy(layer: Any, policy: DTypePolicy, *, autocast: bool = True) -> Any:
    """``layer`` computing under ``policy``: its floating inputs (positional and keyword)
    cast to ``policy.compute_dtype``, its floating params too when ``autocast`` (Keras's
    flag: normalization layers keep float32 params and compute their statistics in
    float32), its floating outputs in the compute dtype, its state in its own dtypes.
    Shapes are unchanged: ``[...] -> [...]``."""
    compute = jnp.dtype(policy.compute_dtype)
    inner_init, inner_apply = layer.init, layer.apply

    def init(key, *inputs):
        return inner_init(key, *_cast(inputs, compute))

    def apply(params, state, *inputs, rng=None, train=False, **kwargs):
        inputs, kwargs = _cast((inputs, kwargs), compute)
        if autocast:
            params = _cast(params, compute)
        out, new_state = inner_apply(params, state, *inputs, rng=rng, train=train, **kwargs)
        return _cast(out, compute), _keep_dtypes(new_state, state)

    return dataclasses.replace(layer, init=init, apply=apply, dtype_policy=policy)


def computes_in_float16(jaxpr: Any) -> bool:
    """True when a (closed) jaxpr, sub-jaxprs included (``scan`` bodies), produces float16
    values: the model it traces needs loss scaling to train."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if any(getattr(v.aval, "dtype", None) == jnp.float16 for v in eqn.outvars):
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                is_jaxpr = hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns")
                if is_jaxpr and computes_in_float16(sub):
                    return True
    return False
