"""Saving and loading Keras-style models: ``fnn.save_model`` / ``fnn.load_model``.

The files are :mod:`fnn.io.saving`'s (architecture JSON + weights in one checkpoint
directory); this module only adds the ``Model``/``Sequential`` around them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fnn.core.errors import ConfigError
from fnn.core.layer import Layer
from fnn.io import checkpoint
from fnn.io import saving as io_saving
from fnn.shell.model import Model, Sequential

__all__ = ["load_model", "save_model"]


def save_model(
    path: str | os.PathLike, model: Any, params: Any = None, state: Any = None, **kwargs
) -> Path:
    """``model.save(path)`` for a ``fnn.Model``; for a ``Layer``, ``fnn.saving.save_model``
    with its ``params``, ``state`` and ``inputs=``."""
    if isinstance(model, Model):
        return model.save(path)
    if isinstance(model, Layer):
        return io_saving.save_model(path, model, params, state, **kwargs)
    raise ConfigError(f"save_model: expected an fnn.Model or a Layer, got {type(model).__name__}.")


def load_model(path: str | os.PathLike, compile: bool = True) -> Any:
    """Rebuild the ``fnn.Model``/``fnn.Sequential`` saved by ``model.save(path)``: layers
    from the registry, weights checked against them, and ``compile`` with the saved
    settings (when there are any and ``compile=True``). No stored code runs."""
    checkpoint.check_directory_path(path, "load_model", action="read")
    loaded = io_saving.load_layer(path)
    extra = loaded.metadata
    name = extra.get("name")
    layer = loaded.layer
    if extra.get("model_class") == "Sequential" and layer.spec.class_name == "serial":
        model = Sequential(list(layer.spec.config.get("layers", ())), name=name)
    else:
        model = Model(layer, name=name)
    if not loaded.inputs:
        raise checkpoint.CheckpointError(
            f"{path} has no input specs; rebuild the model in code and use load_weights."
        )
    model._build(tuple(loaded.inputs))
    model.params = loaded.params
    model.state = loaded.state
    if compile and loaded.compile_config:
        settings = dict(loaded.compile_config)
        loss = settings.get("loss")
        if isinstance(loss, dict) and "class_name" in loss:
            from fnn.training import losses

            settings["loss"] = losses.get(loss)  # a configured Loss (e.g. from_logits=True)
        model.compile(**settings)
    return model
