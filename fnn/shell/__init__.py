"""The Keras-style shell: ``Model``/``Sequential``, compile resolution, callbacks and the
progress bar, thin over ``fnn.training``'s pure steps and loop."""

from fnn.shell import callbacks, model, progress
from fnn.shell.model import Input, Model, Sequential

__all__ = ["Input", "Model", "Sequential", "callbacks", "model", "progress"]
