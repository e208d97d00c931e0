"""fnn: a functional neural-network framework on JAX.

Models are pure ``init``/``apply`` pairs over explicit parameter pytrees; training
uses ``jax.grad`` and optax.
"""

from fnn import (
    activations,
    callbacks,
    checkpoint,
    datasets,
    errors,
    initializers,
    layers,
    losses,
    metrics,
    optimizers,
    saving,
    train,
)
from fnn.combinators import Lambda, fan_out, parallel, residual, serial
from fnn.core import Layer, LayerSpec, register_layer
from fnn.errors import ConfigError, FnnError, ShapeError
from fnn.model import Input, Model, Sequential
from fnn.saving import load_model, load_weights, save_model, save_weights
from fnn.summary import summary

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FnnError",
    "Input",
    "Lambda",
    "Layer",
    "LayerSpec",
    "Model",
    "Sequential",
    "ShapeError",
    "activations",
    "callbacks",
    "checkpoint",
    "datasets",
    "errors",
    "fan_out",
    "initializers",
    "layers",
    "load_model",
    "load_weights",
    "losses",
    "metrics",
    "optimizers",
    "parallel",
    "register_layer",
    "residual",
    "save_model",
    "save_weights",
    "saving",
    "serial",
    "summary",
    "train",
]
