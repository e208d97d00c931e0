"""Weights and whole-model saving without pickle or stored code.

- ``save_weights(path, params, state)`` / ``load_weights(path, params, state)``: a
  :mod:`fnn.checkpoint` directory holding ``{"params": ..., "state": ...}``, matched by
  path on loading. ``Model.save_weights`` / ``Model.load_weights`` write and read it too.
- ``layer_to_config(layer)`` / ``layer_from_config(config)``: the architecture as JSON,
  ``{"class_name": "Dense", "config": {"units": 10, ...}}`` from ``Layer.spec`` (the
  registered factory name and the arguments the user passed), nested layers recursively.
  Loading decodes the JSON and builds the layer with :func:`fnn.core.spec.build` (the
  registered factory, the arguments checked); no stored code runs. Custom layers must be registered with ``@fnn.register_layer``.
- ``save_model(path, layer, params, state, inputs=...)`` / ``load_layer(path)`` for a
  functional layer: architecture, input specs, compile settings and weights in one atomic
  checkpoint directory. The Keras-style ``model.save(path)`` / ``fnn.load_model(path)``
  (``fnn.shell.saving``) write and read the same directory.

>>> import tempfile, jax, fnn
>>> from fnn.layers import Dense
>>> model = fnn.serial(Dense(4, activation="relu"), Dense(2))
>>> fnn.saving.layer_to_config(model)["config"]["layers"][0]
{'class_name': 'Dense', 'config': {'units': 4, 'activation': 'relu'}}
>>> params, state = model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 3), "float32"))
>>> path = fnn.saving.save_model(tempfile.mkdtemp() + "/m", model, params, state,
...                              inputs=[jax.ShapeDtypeStruct((1, 3), "float32")])
>>> loaded = fnn.saving.load_layer(path)
>>> loaded.layer.spec.class_name, loaded.params["dense_1"]["kernel"].shape
('serial', (4, 2))
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fnn.core import activations, initializers, regularizers, spec
from fnn.core.errors import ConfigError
from fnn.core.layer import Layer, LayerSpec, get_layer_factory, registered_name
from fnn.core.subclass import SubclassLayer
from fnn.io import checkpoint

__all__ = [
    "LoadedModel",
    "layer_from_config",
    "layer_to_config",
    "load_layer",
    "load_weights",
    "save_model",
    "save_weights",
]

_MODEL_KEY = "fnn_model"
_WEIGHTS_KEY = "fnn_weights"


# ---------------------------------------------------------------------------------------
# Weights


def save_weights(path: str | os.PathLike, params: Any, state: Any = None) -> Path:
    """Save ``params`` and ``state`` (default ``{}``) to the checkpoint directory ``path``
    (replaced atomically if it exists)."""
    checkpoint.check_directory_path(path, "save_weights")
    tree = {"params": params, "state": {} if state is None else state}
    return checkpoint.save(path, tree, metadata={_WEIGHTS_KEY: 1}, overwrite=True)


def load_weights(path: str | os.PathLike, params: Any = None, state: Any = None) -> tuple:
    """``(params, state)`` from ``path``. ``params``/``state`` (arrays or
    ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape(model.init, ...)``) are the target:
    a different architecture raises :class:`fnn.checkpoint.CheckpointError` naming every
    mismatched path (missing or extra arrays, other shapes or dtypes): arrays are matched
    by their path (``params/dense/kernel``), never by position."""
    checkpoint.check_directory_path(path, "load_weights", action="read")
    if params is None:
        if state is not None:
            raise ConfigError("load_weights: pass params too when passing state as the target.")
        tree = checkpoint.restore(path)
    else:
        target = {"params": params, "state": {} if state is None else state}
        tree = checkpoint.restore(path, target=target)
    return tree["params"], tree["state"]


# ---------------------------------------------------------------------------------------
# Architecture


def _callable_name(fn: Any) -> str | None:
    for registry in (activations._BY_NAME, initializers._BY_NAME):
        for name, value in registry.items():
            if value is fn:
                return name
    return None


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, Layer):
        return layer_to_config(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, f"{where}.{k}") for k, v in value.items()}}
    if isinstance(value, type | np.dtype) or type(value).__name__ == "_ScalarMeta":
        try:
            return {"__dtype__": np.dtype(value).name}
        except TypeError:
            pass
    if isinstance(value, regularizers.L1 | regularizers.L2 | regularizers.L1L2):
        return {"__regularizer__": regularizers.config_of(value)}
    if callable(value):
        name = _callable_name(value)
        if name is not None:
            return name
        raise ConfigError(
            f"{where}: cannot save the callable {getattr(value, '__name__', value)!r}; only "
            "registered activation/initializer names can be stored. Pass the name (e.g. "
            "activation='relu') or wrap the layer in a factory decorated with "
            "@fnn.register_layer."
        )
    raise ConfigError(
        f"{where}: cannot save an argument of type {type(value).__name__} ({value!r}); expected "
        "JSON values, tuples, dtypes, registered names or layers."
    )


def _subclass_config(layer) -> dict:
    """A subclassed layer: its class's registry name (else its class name, which loading
    then needs as ``custom_objects`` or ``@fnn.register_layer``) and ``get_config()``."""
    key = registered_name(layer) or type(layer).__name__
    where = f"{layer.name} ({key})"
    config = {k: _encode(v, f"{where}.{k}") for k, v in layer.get_config().items()}
    return {"class_name": key, "config": config}


def layer_to_config(layer: Layer) -> dict:
    """``{"class_name": ..., "config": {...}}`` for ``layer`` and, recursively, its children.

    Raises ``ConfigError`` naming the layer if it was not built by a registered factory or
    an argument cannot be stored (arbitrary callables)."""
    if not isinstance(layer, Layer):
        raise ConfigError(f"expected an fnn Layer, got {type(layer).__name__}.")
    if layer.spec is None and isinstance(layer, SubclassLayer):
        return _subclass_config(layer)
    if layer.spec is None:
        raise ConfigError(
            f"cannot save layer {layer.name!r}: it was not built by a registered factory "
            "(e.g. fnn.Lambda or a hand-made Layer). Write a factory for it decorated with "
            "@fnn.register_layer."
        )
    where = f"{layer.name} ({layer.spec.class_name})"
    factory = get_layer_factory(layer.spec.class_name)
    signature = getattr(factory, "signature", None) or inspect.signature(factory)
    config = {}
    for key, value in layer.spec.config.items():
        param = signature.parameters.get(key)
        if param is not None and param.kind is param.VAR_POSITIONAL:
            value = list(value)  # *layers: a plain JSON list
        config[key] = _encode(value, f"{where}.{key}")
    return {"class_name": layer.spec.class_name, "config": config}


def _decode(value: Any, where: str) -> Any:
    """A saved JSON value as the Python value it encodes; nested layer configs become
    ``LayerSpec`` entries that :func:`fnn.core.spec.build` builds."""
    if isinstance(value, list):
        return [_decode(v, spec.join_path(where, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if "class_name" in value and "config" in value:
            return LayerSpec(*_layer_config(value, where))
        if "__tuple__" in value:
            items = value["__tuple__"]
            return tuple(_decode(v, spec.join_path(where, i)) for i, v in enumerate(items))
        if "__dict__" in value:
            return {k: _decode(v, spec.join_path(where, k)) for k, v in value["__dict__"].items()}
        if "__dtype__" in value:
            return np.dtype(value["__dtype__"])
        if "__regularizer__" in value:
            return regularizers.get(value["__regularizer__"])
        raise ConfigError(
            f"{where + ': ' if where else ''}unrecognised entry {value!r} in a saved layer config."
        )
    return value


def _layer_config(config: Any, where: str) -> tuple[str, dict]:
    """``(class_name, decoded arguments)`` of a saved ``{"class_name": ..., "config": ...}``."""
    try:
        class_name, arguments = config["class_name"], config["config"]
        items = arguments.items()
    except (KeyError, TypeError, AttributeError):
        raise ConfigError(
            f"{where + ': ' if where else ''}expected a layer config {{'class_name': ..., "
            f"'config': {{...}}}}, got {config!r}."
        ) from None
    return class_name, {k: _decode(v, spec.join_path(where, k)) for k, v in items}


def layer_from_config(config: Mapping[str, Any]) -> Layer:
    """Rebuild a layer from :func:`layer_to_config` output through
    :func:`fnn.core.spec.build`; errors in nested layers start with their key path
    (``layers[2].units: ...``)."""
    class_name, arguments = _layer_config(config, "")
    return spec.build(class_name, arguments, source="saved", check_types=False)


# ---------------------------------------------------------------------------------------
# Whole model


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """What :func:`load_layer` returns: the rebuilt layer, its weights, the input specs it
    was built for, the compile settings and any extra metadata."""

    layer: Layer
    params: Any
    state: Any
    inputs: list[jax.ShapeDtypeStruct]
    compile_config: dict | None
    metadata: dict


def _spec_to_json(spec: Any) -> dict:
    return {"shape": list(spec.shape), "dtype": np.dtype(spec.dtype).name}


def save_model(
    path: str | os.PathLike,
    model: Any,
    params: Any = None,
    state: Any = None,
    *,
    inputs: list[Any] | None = None,
    compile_config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save architecture (JSON), input specs, compile settings and weights to the checkpoint
    directory ``path``, atomically.

    ``model`` is a ``Layer`` with its ``params``, ``state``, ``inputs`` (arrays or
    ``jax.ShapeDtypeStruct``, batch dimension included) and a JSON ``compile_config``
    (``fnn.save_model`` also takes a Keras-style ``fnn.Model``).
    The optimizer *state* is not saved (use :mod:`fnn.checkpoint` to resume training).
    """
    if not isinstance(model, Layer):
        raise ConfigError(
            f"save_model: expected a Layer with its params, got {type(model).__name__}; save a "
            "Keras-style fnn.Model with model.save(path) or fnn.save_model(path, model)."
        )
    checkpoint.check_directory_path(path, "save_model")
    layer, extra = model, dict(metadata or {})
    if params is None:
        raise ConfigError("save_model: expected the params of the layer, got None.")
    record = {
        "architecture": layer_to_config(layer),
        "inputs": [_spec_to_json(x) for x in (inputs or [])],
        "compile": dict(compile_config) if compile_config is not None else None,
        "extra": extra,
    }
    tree = {"params": params, "state": {} if state is None else state}
    return checkpoint.save(path, tree, metadata={_MODEL_KEY: record}, overwrite=True)


def load_layer(path: str | os.PathLike) -> LoadedModel:
    """Rebuild the layer saved by :func:`save_model` and restore its weights, checked
    against the rebuilt layer's own parameter shapes when its input specs were saved."""
    checkpoint.check_directory_path(path, "load_layer", action="read")
    info = checkpoint.read_info(path)
    model = info["metadata"].get(_MODEL_KEY)
    if not isinstance(model, dict) or "architecture" not in model:
        raise checkpoint.CheckpointError(
            f"{path} holds weights only, not a saved model; use load_weights with the model "
            "rebuilt in code."
        )
    layer = layer_from_config(model["architecture"])
    inputs = [jax.ShapeDtypeStruct(tuple(x["shape"]), x["dtype"]) for x in model["inputs"]]
    if inputs:
        params, state = jax.eval_shape(layer.init, jax.random.key(0), *inputs)
        params, state = load_weights(path, params, state)
    else:
        params, state = load_weights(path)
    return LoadedModel(layer, params, state, inputs, model["compile"], model["extra"])
