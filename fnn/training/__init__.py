"""Training: losses, metrics (init/update/compute), optimizers, the pure steps
(``fnn.train``) and the one host-side loop over them (``loop``). Imports only
``fnn.core`` and ``fnn.layers``."""

from fnn.training import loop, losses, metrics, optimizers, step

__all__ = ["loop", "losses", "metrics", "optimizers", "step"]
