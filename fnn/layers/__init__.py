"""The layer catalogue: Keras names and arguments, each layer an ``init``/``apply`` pair."""

from fnn.layers.activation import Activation
from fnn.layers.dense import Dense
from fnn.layers.merging import Add, Average, Concatenate, Maximum, Multiply, add, concatenate
from fnn.layers.regularization import Dropout
from fnn.layers.reshaping import Flatten, Reshape

__all__ = [
    "Activation",
    "Add",
    "Average",
    "Concatenate",
    "Dense",
    "Dropout",
    "Flatten",
    "Maximum",
    "Multiply",
    "Reshape",
    "add",
    "concatenate",
]
