"""Training: losses, metrics (init/update/compute), optimizers and the pure steps
(``fnn.train``). Imports only ``fnn.core`` and ``fnn.layers``."""

from fnn.training import losses, metrics, optimizers, step

__all__ = ["losses", "metrics", "optimizers", "step"]
