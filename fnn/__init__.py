"""fnn: a functional neural-network framework on JAX.

Models are pure ``init``/``apply`` pairs over explicit parameter pytrees; training
uses ``jax.grad`` and optax.
"""

from fnn import (
    activations,
    callbacks,
    errors,
    initializers,
    layers,
    losses,
    metrics,
    optimizers,
    train,
)
from fnn.combinators import Lambda, fan_out, parallel, residual, serial
from fnn.core import Layer, LayerSpec, register_layer
from fnn.errors import ConfigError, FnnError, ShapeError
from fnn.model import Input, Model, Sequential
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
    "errors",
    "fan_out",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "optimizers",
    "parallel",
    "register_layer",
    "residual",
    "serial",
    "summary",
    "train",
]
