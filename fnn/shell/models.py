"""``fnn.models``: Keras's ``keras.models`` namespace (model classes, JSON configs,
cloning, files).

>>> import fnn
>>> from fnn.layers import Dense
>>> x = fnn.Input((3,))
>>> model = fnn.Model(x, Dense(2)(x))
>>> twin = fnn.models.model_from_json(model.to_json())
>>> twin.output_shape, twin.count_params() == model.count_params()
((None, 2), True)
"""

from __future__ import annotations

import json

from fnn.core.errors import ConfigError
from fnn.shell.model import Model, Sequential
from fnn.shell.saving import load_model, save_model

__all__ = ["Model", "Sequential", "clone_model", "load_model", "model_from_json", "save_model"]


def model_from_json(text: str) -> Model:
    """A new, unbuilt model from ``model.to_json()`` (no code is run from the text)."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise ConfigError(f"model_from_json: expected JSON text, got an error: {err}.") from None
    if not isinstance(data, dict) or "config" not in data:
        raise ConfigError("model_from_json: expected the output of model.to_json().")
    return Model.from_config(data["config"])


def clone_model(model: Model) -> Model:
    """The same architecture with fresh weights (Keras's ``clone_model``)."""
    if not isinstance(model, Model):
        raise ConfigError(f"clone_model: expected an fnn Model, got {type(model).__name__}.")
    return Model.from_config(model.get_config())
