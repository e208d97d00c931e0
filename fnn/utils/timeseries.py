"""``timeseries_dataset_from_array``: sliding windows over an array as a ``PyDataset`` of
NumPy batches (Keras returns a ``tf.data`` dataset; the windows and their order are the same).

>>> ds = timeseries_dataset_from_array(np.arange(10), np.arange(10), 3, batch_size=4)
>>> len(ds), ds[0][0].tolist(), ds[0][1].tolist()
(2, [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]], [0, 1, 2, 3])
"""

from __future__ import annotations

import math

import numpy as np

from fnn.core.errors import ConfigError
from fnn.io.data_adapter import PyDataset


class _Windows(PyDataset):
    """Batches of windows ``data[start + p + arange(0, length * rate, rate)]``, with the
    target ``targets[start + p]`` for each start position ``p``."""

    def __init__(self, data, targets, positions, offsets, start, batch_size):
        super().__init__()
        self.data, self.targets = data, targets
        self.positions, self.offsets, self.start = positions, offsets, start
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.positions) / self.batch_size)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"timeseries dataset: batch {i} out of range (it has {len(self)}).")
        p = self.positions[i * self.batch_size : (i + 1) * self.batch_size] + self.start
        x = self.data[p[:, None] + self.offsets[None, :]]
        return x if self.targets is None else (x, self.targets[p])


def timeseries_dataset_from_array(
    data,
    targets,
    sequence_length: int,
    sequence_stride: int = 1,
    sampling_rate: int = 1,
    batch_size: int | None = 128,
    shuffle: bool = False,
    seed: int | None = None,
    start_index: int | None = None,
    end_index: int | None = None,
) -> PyDataset:
    """``data [time, ...]`` -> batches ``[batch, sequence_length, ...]`` of windows (with
    ``targets[start]`` per window when ``targets`` is given), as Keras; ``shuffle`` orders
    the windows by ``np.random.RandomState(seed).shuffle`` as Keras does. Feed it to
    ``fit``/``evaluate``/``predict``. ``batch_size=None`` gives one batch of every window
    (Keras then yields single unbatched windows)."""
    data = np.asarray(data)
    targets = None if targets is None else np.asarray(targets)
    for name, value in (
        ("sequence_length", sequence_length),
        ("sequence_stride", sequence_stride),
        ("sampling_rate", sampling_rate),
    ):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(
                f"timeseries_dataset_from_array: expected {name} an int >= 1, got {value!r}."
            )
    start = start_index or 0
    end = len(data) if end_index is None else end_index
    if not 0 <= start < end <= len(data):
        raise ConfigError(
            "timeseries_dataset_from_array: expected 0 <= start_index < end_index <= "
            f"{len(data)} (the data length), got start_index={start_index}, end_index={end_index}."
        )
    count = end - start - (sequence_length - 1) * sampling_rate
    if targets is not None:
        count = min(count, len(targets))
    positions = np.arange(0, max(count, 0), sequence_stride)
    if shuffle:
        seed = np.random.randint(1e6) if seed is None else seed
        np.random.RandomState(seed).shuffle(positions)
    offsets = np.arange(0, sequence_length * sampling_rate, sampling_rate)
    size = len(positions) if batch_size is None else batch_size
    return _Windows(data, targets, positions, offsets, start, max(size, 1))
