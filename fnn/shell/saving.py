"""Saving and loading Keras-style models: ``fnn.save_model`` / ``fnn.load_model``.

Paths ending in ``.keras`` (and ``.h5``/``.hdf5`` for loading) are Keras model files
(:mod:`fnn.io.keras_file`: Keras 3 archives both ways, legacy Keras HDF5 files read);
every other path is :mod:`fnn.io.saving`'s checkpoint directory (architecture JSON +
weights), fnn's own format. This module only adds the ``Model``/``Sequential`` around them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

from fnn.core.errors import ConfigError
from fnn.core.graph import Input
from fnn.core.layer import Layer
from fnn.io import checkpoint, keras_file
from fnn.io import saving as io_saving
from fnn.shell.model import Model, Sequential

__all__ = ["load_keras", "load_model", "save_model"]


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
    settings (when there are any and ``compile=True``). No stored code runs.

    A ``.keras`` / ``.h5`` / ``.hdf5`` path opens a Keras model file instead (see
    :func:`load_keras`)."""
    if keras_file.is_keras_path(path):
        return load_keras(path, compile=compile)
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


def _set_file_weights(model: Model, by_layer: dict, where: str) -> None:
    """``model.set_weights`` from a Keras file's arrays by layer name."""
    names = model.weight_names()
    shapes = [w.shape for w in model.get_weights()]
    model.set_weights(keras_file.arrange_weights(names, shapes, by_layer, where))


def load_keras(path: str | os.PathLike, compile: bool = True) -> Model:
    """An fnn ``Sequential`` (or functional ``Model``) from a Keras 3 ``.keras`` archive or
    a legacy Keras ``.h5`` full-model file, with Keras's weights; uncompiled (Keras's
    optimizer and loss objects are not read). Layers outside fnn's catalogue, Lambda layers
    and custom classes raise one ``ConfigError`` that lists them all."""
    loaded = keras_file.read_model(path)
    where = os.path.basename(os.fspath(path))
    if loaded.kind == "Sequential":
        model = Sequential(loaded.layers, name=loaded.name)
        model._build(loaded.inputs)
    else:
        inputs, outputs = keras_file.functional_graph(loaded, Input, where)
        model = Model(inputs=inputs, outputs=outputs, name=loaded.name)

        def struct(t):
            return jax.ShapeDtypeStruct(tuple(1 if d is None else d for d in t.shape), t.dtype)

        if isinstance(inputs, dict):  # a dict-input graph takes one dict
            model._build(({k: struct(t) for k, t in inputs.items()},))
        else:
            model._build(tuple(map(struct, inputs if isinstance(inputs, list) else [inputs])))
    _set_file_weights(model, loaded.weights, where)
    if compile and loaded.compile_config:
        _compile_as_keras(model, loaded.compile_config, where)
    return model


def _compile_as_keras(model: Model, config: dict, where: str) -> None:
    """``model.compile`` with a Keras file's ``compile_config`` (optimizer, loss, metrics
    and loss weights by Keras name or serialized object); settings fnn cannot read leave
    the model uncompiled, with a warning that names them."""
    import warnings

    from fnn.training import losses, optimizers

    def plain(value):
        if isinstance(value, dict) and "class_name" in value:
            return {"class_name": value["class_name"], "config": value.get("config") or {}}
        return value

    try:
        loss = config.get("loss")
        loss = losses.get(plain(loss)) if isinstance(loss, dict) else loss
        metrics = config.get("metrics")
        if isinstance(metrics, list):
            metrics = [m["config"]["name"] if isinstance(m, dict) else m for m in metrics]
        model.compile(
            optimizer=optimizers.get(config.get("optimizer") or "rmsprop"),
            loss=loss,
            metrics=metrics,
            loss_weights=config.get("loss_weights"),
        )
    except (ConfigError, KeyError, TypeError) as err:
        warnings.warn(
            f"{where}: loaded uncompiled; its compile settings could not be read ({err}). "
            "Call model.compile(...) again.",
            stacklevel=3,
        )
