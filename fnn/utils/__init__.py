"""Keras's ``keras.utils`` for fnn: labels, padding, normalization, dataset splits, seeds,
``PyDataset``/``Sequence`` batch sources, time-series windows and ``plot_model``.

Sits at the shell level (``plot_model`` draws models); ``fnn.utils.arrays`` imports
nothing above ``fnn.training`` and ``PyDataset`` lives with the input adapters in
``fnn.io.data_adapter``. ``get_file`` raises: fnn never downloads.

>>> import fnn.utils
>>> fnn.utils.normalize([[3.0, 4.0]]).tolist()
[[0.6, 0.8]]
"""

from fnn.io.data_adapter import PyDataset, Sequence
from fnn.utils.arrays import (
    get_file,
    normalize,
    pad_sequences,
    set_random_seed,
    split_dataset,
    to_categorical,
)
from fnn.utils.plotting import model_to_dot, plot_model
from fnn.utils.timeseries import timeseries_dataset_from_array

__all__ = [
    "PyDataset",
    "Sequence",
    "get_file",
    "model_to_dot",
    "normalize",
    "pad_sequences",
    "plot_model",
    "set_random_seed",
    "split_dataset",
    "timeseries_dataset_from_array",
    "to_categorical",
]
