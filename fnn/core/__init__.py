"""The pure core: the layer protocol and registry, the spec-to-layer builder, combinators,
initializers, activations, errors, pytree path helpers and the model summary. Imports
nothing else from fnn."""

from fnn.core import activations, eager, errors, graph, initializers, pytree, spec, subclass
from fnn.core.combinators import Lambda, fan_out, parallel, residual, serial
from fnn.core.layer import (
    Layer,
    LayerSpec,
    as_shape_struct,
    check_name,
    get_layer_factory,
    output_shapes,
    param_dtype,
    register_layer,
    registered_layers,
)

__all__ = [
    "Lambda",
    "Layer",
    "LayerSpec",
    "activations",
    "as_shape_struct",
    "check_name",
    "eager",
    "errors",
    "fan_out",
    "get_layer_factory",
    "graph",
    "initializers",
    "output_shapes",
    "parallel",
    "param_dtype",
    "pytree",
    "register_layer",
    "registered_layers",
    "residual",
    "serial",
    "spec",
    "subclass",
]
