"""The layer catalogue: Keras names and arguments, each layer an ``init``/``apply`` pair."""

from fnn.layers.activation import Activation
from fnn.layers.attention import MultiHeadAttention, TransformerEncoderBlock
from fnn.layers.dense import Dense
from fnn.layers.embedding import Embedding, PositionalEmbedding
from fnn.layers.merging import Add, Average, Concatenate, Maximum, Multiply, add, concatenate
from fnn.layers.normalization import (
    BatchNormalization,
    GroupNormalization,
    LayerNormalization,
    RMSNormalization,
)
from fnn.layers.regularization import Dropout
from fnn.layers.reshaping import Flatten, Reshape

__all__ = [
    "Activation",
    "Add",
    "Average",
    "BatchNormalization",
    "Concatenate",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "GroupNormalization",
    "LayerNormalization",
    "Maximum",
    "MultiHeadAttention",
    "Multiply",
    "PositionalEmbedding",
    "RMSNormalization",
    "Reshape",
    "TransformerEncoderBlock",
    "add",
    "concatenate",
]
