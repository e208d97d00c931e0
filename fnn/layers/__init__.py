"""The layer catalogue: Keras names and arguments, each layer an ``init``/``apply`` pair."""

from fnn.layers.activation import Activation
from fnn.layers.dense import Dense
from fnn.layers.merging import Add, Average, Concatenate, Maximum, Multiply, add, concatenate
from fnn.layers.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from fnn.layers.regularization import Dropout
from fnn.layers.reshaping import Flatten, Reshape

__all__ = [
    "GRU",
    "LSTM",
    "Activation",
    "Add",
    "Average",
    "Bidirectional",
    "Concatenate",
    "Dense",
    "Dropout",
    "Flatten",
    "Maximum",
    "Multiply",
    "Reshape",
    "SimpleRNN",
    "add",
    "concatenate",
]
