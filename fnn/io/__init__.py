"""Files and data: checkpoints (the one storage format: safetensors + JSON), model files,
datasets and the input adapters of ``fit``. Below the shell: imports core, layers,
training and distributed, never ``fnn.shell`` or ``fnn.cli``."""

from fnn.io import checkpoint, data_adapter, datasets, saving

__all__ = ["checkpoint", "data_adapter", "datasets", "saving"]
