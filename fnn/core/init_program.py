"""One-off initialisation programs, compiled for compile time rather than run time.

A model's ``init`` runs once per build, but XLA:CPU spends 1-3 s compiling the threefry
and uniform/normal kernels of a few small layers at the default backend optimisation
level, more than the training step itself. ``jit_init`` compiles such a program at level
0 when it runs on CPU and its outputs are small (measured on the 2-core CI machine:
Dense 64-64-10 init 1.3-1.6 s -> 0.35-0.4 s, a 2-conv CNN 2.6 s -> 0.45 s; the level-0
program runs ~3-4x slower, 40 ms instead of 12 ms for 0.67 M parameters, so above
``FAST_INIT_MAX_ELEMENTS`` the default level is kept). Values may differ from an eager
``layer.init`` in the last bit (no fused multiply-add); every path that builds a model's
or a member's params goes through here, so builds agree with each other bit for bit.

>>> import jax, jax.numpy as jnp, fnn
>>> layer = fnn.layers.Dense(3)
>>> x = jax.ShapeDtypeStruct((1, 2), jnp.float32)
>>> params, state = jit_init(lambda key: layer.init(key, x), jax.random.key(0))
>>> params["kernel"].shape
(2, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax

__all__ = ["FAST_INIT_MAX_ELEMENTS", "jit_init", "lower_init"]

# Above this many output elements the slower level-0 program would cost more than the
# compile time it saves (~70 ns per element at level 0 vs ~20 ns at the default).
FAST_INIT_MAX_ELEMENTS = 4_000_000

_FAST = {"xla_backend_optimization_level": 0}


def _on_cpu(out_shardings) -> bool:
    if out_shardings is None:
        return jax.default_backend() == "cpu"
    devices = set()
    for sharding in jax.tree.leaves(out_shardings):
        devices |= set(getattr(sharding, "device_set", ()))
    return bool(devices) and all(d.platform == "cpu" for d in devices)


def lower_init(fn: Callable, *args, out_shardings=None):
    """``(outputs, run)``: ``fn`` traced for ``args`` as ``jit_init`` does, its outputs'
    ``jax.ShapeDtypeStruct``s, and ``run()``, which compiles and calls it (``jit_init``'s
    result). In between, the caller may start other work that needs the output shapes."""
    lowered = jax.jit(fn, out_shardings=out_shardings).lower(*args)
    outs = jax.tree.leaves(lowered.out_info, is_leaf=lambda x: hasattr(x, "shape"))
    size = sum(math.prod(o.shape) for o in outs)
    options = _FAST if size <= FAST_INIT_MAX_ELEMENTS and _on_cpu(out_shardings) else None
    return lowered.out_info, lambda: lowered.compile(options)(*args)


def jit_init(fn: Callable, *args, out_shardings=None):
    """``jax.jit(fn, out_shardings=...)(*args)``, compiled at XLA backend optimisation level
    0 on CPU when the outputs hold at most ``FAST_INIT_MAX_ELEMENTS`` elements.

    ``fn``: a pure function of ``args`` (PRNG keys, arrays) returning a pytree of arrays,
    e.g. ``lambda key: layer.init(key, *abstract_inputs)`` -> ``(params, state)``."""
    return lower_init(fn, *args, out_shardings=out_shardings)[1]()
