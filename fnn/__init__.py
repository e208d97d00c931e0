"""fnn: a functional neural-network framework on JAX.

Models are pure ``init``/``apply`` pairs over explicit parameter pytrees; training
uses ``jax.grad`` and optax.

The package is layered; each folder imports only the folders before it:
``core`` (layer protocol, combinators, initializers, activations, errors) <- ``layers`` <-
``training`` (losses, metrics, optimizers, pure steps, the host loop) <- ``distributed``
(placement on devices and processes) <- ``io`` (checkpoints, model files, datasets, input
adapters) <- ``shell`` (Keras-style Model, callbacks) <- ``cli``. The public API is flat:
everything users need is an attribute of ``fnn`` (``fnn.serial``, ``fnn.layers.Dense``,
``fnn.train.make_train_step``, ``fnn.Sequential``, ...).
"""

import sys as _sys

from fnn import core, distributed, layers, ops, utils
from fnn.core import activations, errors, initializers, random, regularizers
from fnn.core.combinators import Lambda, fan_out, parallel, remat, repeat, residual, serial
from fnn.core.errors import ConfigError, FnnError, ShapeError
from fnn.core.layer import Layer, LayerSpec, register_layer
from fnn.core.summary import summary
from fnn.distributed import data_parallel
from fnn.io import checkpoint, datasets, saving
from fnn.io.export import export
from fnn.io.saving import load_weights, save_weights
from fnn.shell import callbacks, models
from fnn.shell.model import Input, Model, Sequential
from fnn.shell.saving import load_model, save_model
from fnn.training import explain, losses, metrics, mixed_precision, optimizers
from fnn.training import step as train
from fnn.training.ensemble import ensemble

__version__ = "0.1.0"

# ``from fnn.train import make_train_step`` and friends: the public module names, each an
# alias of the module that implements it (one entry per public module, nothing else).
for _name, _module in {
    "activations": activations,
    "callbacks": callbacks,
    "checkpoint": checkpoint,
    "datasets": datasets,
    "errors": errors,
    "explain": explain,
    "initializers": initializers,
    "losses": losses,
    "metrics": metrics,
    "mixed_precision": mixed_precision,
    "models": models,
    "optimizers": optimizers,
    "optimizers.schedules": optimizers.schedules,
    "random": random,
    "regularizers": regularizers,
    "saving": saving,
    "train": train,
}.items():
    _sys.modules.setdefault(f"fnn.{_name}", _module)
del _name, _module

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
    "core",
    "data_parallel",
    "datasets",
    "distributed",
    "ensemble",
    "errors",
    "explain",
    "export",
    "fan_out",
    "initializers",
    "layers",
    "load_model",
    "load_weights",
    "losses",
    "metrics",
    "mixed_precision",
    "models",
    "ops",
    "optimizers",
    "parallel",
    "random",
    "register_layer",
    "regularizers",
    "remat",
    "repeat",
    "residual",
    "save_model",
    "save_weights",
    "saving",
    "serial",
    "summary",
    "train",
    "utils",
]
