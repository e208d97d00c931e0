"""Files and data: checkpoints (the one storage format: safetensors + JSON), model files,
datasets, the input adapters of ``fit`` and export for serving. Below the shell: imports core,
layers, training and distributed, never ``fnn.shell`` or ``fnn.cli``."""

from fnn.io import checkpoint, data_adapter, datasets, export, saving

__all__ = ["checkpoint", "data_adapter", "datasets", "export", "saving"]
