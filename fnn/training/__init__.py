"""Training: losses, metrics (init/update/compute), optimizers, the pure steps
(``fnn.train``) and the one host-side loop over them (``loop``). Imports only
``fnn.core`` and ``fnn.layers``."""

from fnn.training import (
    averaging,
    ensemble,
    explain,
    loop,
    losses,
    metrics,
    mixed_precision,
    optimizers,
    privacy,
    step,
)

# ``fnn.train`` (the ``step`` module) is the one functional namespace: it also offers the
# helpers built on top of it (per-example gradients and DP-SGD, vmapped ensembles and
# sweeps, weight averaging), which import ``step`` and so cannot be imported by it.
for _module in (averaging, ensemble, privacy):
    for _name in _module.__all__:
        setattr(step, _name, getattr(_module, _name))
del _module, _name

__all__ = [
    "averaging",
    "ensemble",
    "explain",
    "loop",
    "losses",
    "metrics",
    "mixed_precision",
    "optimizers",
    "privacy",
    "step",
]
