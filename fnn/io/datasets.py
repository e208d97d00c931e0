"""Small real datasets bundled with scikit-learn (no downloads), user data from ``.npz`` and
``.csv``, a synthetic sequence task for RNNs, and deterministic shuffling and batching.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` like ``keras.datasets``:
features float32, class labels int32, split by a fixed seeded stratified split
(``test_size`` of each class goes to the test set).

>>> from fnn import datasets
>>> (x_train, y_train), (x_test, y_test) = datasets.load_digits(as_images=True)
>>> x_train.shape, x_train.dtype, y_test.shape, y_test.dtype
((1437, 8, 8, 1), dtype('float32'), (360,), dtype('int32'))
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from fnn.core.errors import ConfigError
from fnn.io.readers import (
    CsvDataset,
    IdxDataset,
    ImageFolder,
    NpyDataset,
    ParquetDataset,
    read_idx,
    write_idx,
)
from fnn.training.loop import epoch_order

__all__ = [
    "DATASETS",
    "CsvDataset",
    "IdxDataset",
    "ImageFolder",
    "NpyDataset",
    "ParquetDataset",
    "batches",
    "load",
    "load_breast_cancer",
    "load_csv",
    "load_digits",
    "load_image_folder",
    "load_iris",
    "load_npz",
    "load_sequence",
    "load_wine",
    "read_idx",
    "shuffle",
    "split",
    "write_digits_files",
    "write_idx",
]

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def split(x: np.ndarray, y: np.ndarray, test_size: float = 0.2, seed: int = 0) -> Split:
    """Seeded train/test split, stratified by ``y`` when it holds class labels.

    >>> import numpy as np
    >>> (xa, ya), (xb, yb) = split(np.arange(20.0)[:, None], np.arange(20) % 2, 0.25, seed=0)
    >>> len(xa), len(xb), int(yb.sum())
    (15, 5, 2)
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"split: expected test_size in (0, 1), got {test_size!r}.")
    classes = np.issubdtype(y.dtype, np.integer)
    if classes and len(y):
        # A class seen once cannot be stratified (scikit-learn raises); it is most often an
        # out-of-range label, which the model's label check then names.
        classes = np.unique(y, return_counts=True)[1].min() >= 2
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y if classes else None
    )
    return (x_train, y_train), (x_test, y_test)


def _standardize(train_test: Split) -> Split:
    # Statistics from the training split only, so no test information leaks in.
    (x_train, y_train), (x_test, y_test) = train_test
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (
        ((x_train - mean) / std).astype(np.float32),
        y_train,
    ), (((x_test - mean) / std).astype(np.float32), y_test)


def _sklearn(loader: Callable, test_size: float, seed: int, standardize: bool) -> Split:
    bunch = loader()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int32)
    result = split(x, y, test_size, seed)
    return _standardize(result) if standardize else result


def load_digits(test_size: float = 0.2, seed: int = 0, as_images: bool = False) -> Split:
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes), pixels scaled to [0, 1].

    ``x`` is ``[n, 64]``, or ``[n, 8, 8, 1]`` (NHWC, for Conv2D) with ``as_images=True``;
    ``y`` is ``[n]`` in 0..9.
    """
    from sklearn import datasets

    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    if as_images:
        x = x.reshape(-1, 8, 8, 1)
    return split(x, digits.target.astype(np.int32), test_size, seed)


def load_breast_cancer(test_size: float = 0.2, seed: int = 0, standardize: bool = True) -> Split:
    """Wisconsin breast cancer: 569 samples, ``x [n, 30]``, ``y [n]`` in {0, 1}
    (0 = malignant). Features standardized with the training split's mean and std."""
    from sklearn import datasets

    return _sklearn(datasets.load_breast_cancer, test_size, seed, standardize)


def load_wine(test_size: float = 0.2, seed: int = 0, standardize: bool = True) -> Split:
    """Wine recognition: 178 samples, ``x [n, 13]``, ``y [n]`` in 0..2 (standardized)."""
    from sklearn import datasets

    return _sklearn(datasets.load_wine, test_size, seed, standardize)


def load_iris(test_size: float = 0.2, seed: int = 0, standardize: bool = True) -> Split:
    """Iris: 150 samples, ``x [n, 4]``, ``y [n]`` in 0..2 (standardized)."""
    from sklearn import datasets

    return _sklearn(datasets.load_iris, test_size, seed, standardize)


def load_sequence(
    num_samples: int = 2000,
    length: int = 20,
    num_classes: int = 3,
    drift: float = 0.8,
    test_size: float = 0.2,
    seed: int = 0,
) -> Split:
    """Synthetic sequence classification for RNN examples: ``x [n, length, num_classes]``
    standard Gaussian noise plus ``drift`` on one random channel from a random start step
    in the first half on; ``y [n]`` is that channel. Single steps are ambiguous, so a model has to
    accumulate evidence over time.

    >>> (x, y), _ = load_sequence(num_samples=20, length=5)
    >>> x.shape, y.shape
    ((16, 5, 3), (16,))
    """
    for arg, value in (("num_samples", num_samples), ("length", length)):
        if not isinstance(value, int) or value < 2:
            raise ConfigError(f"load_sequence: expected {arg} to be an int >= 2, got {value!r}.")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"load_sequence: expected num_classes >= 2, got {num_classes!r}.")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=num_samples).astype(np.int32)
    x = rng.normal(size=(num_samples, length, num_classes)).astype(np.float32)
    start = rng.integers(0, length // 2, size=num_samples)
    active = np.arange(length)[None, :] >= start[:, None]
    x[np.arange(num_samples)[:, None], np.arange(length)[None, :], y[:, None]] += drift * active
    return split(x, y, test_size, seed)


def _check_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: no such file {str(path)!r}.")
    return path


def load_npz(
    path: str | os.PathLike,
    x_key: str = "x",
    y_key: str = "y",
    test_size: float = 0.2,
    seed: int = 0,
) -> Split:
    """Arrays from a ``.npz`` file (never unpickled).

    Uses ``x_train``/``y_train``/``x_test``/``y_test`` when all four are present, else splits
    ``x_key``/``y_key`` with :func:`split`. Floating features become float32, integer
    labels int32.
    """
    path = _check_file(path, "load_npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as err:
        raise ConfigError(f"load_npz: cannot read {str(path)!r} without pickle: {err}") from None
    except OSError as err:
        raise ConfigError(f"load_npz: {str(path)!r} is not a valid .npz file: {err}") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= set(arrays):
        return (_features(arrays["x_train"]), _labels(arrays["y_train"])), (
            _features(arrays["x_test"]),
            _labels(arrays["y_test"]),
        )
    missing = [k for k in (x_key, y_key) if k not in arrays]
    if missing:
        raise ConfigError(
            f"load_npz: {str(path)!r} has no array {missing[0]!r} (it has {sorted(arrays)}); "
            "expected x_key/y_key or x_train, y_train, x_test, y_test."
        )
    return split(_features(arrays[x_key]), _labels(arrays[y_key]), test_size, seed)


def _features(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if np.issubdtype(x.dtype, np.number) else x


def _labels(y: np.ndarray) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int32)
    if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
        return y.astype(np.int32)
    return y.astype(np.float32)


def load_csv(
    path: str | os.PathLike,
    label_column: int | str = -1,
    test_size: float = 0.2,
    seed: int = 0,
    delimiter: str = ",",
) -> Split:
    """A numeric table from a ``.csv`` file with an optional header row.

    ``label_column`` is an index or (with a header) a column name; the other columns are
    the features ``[n, columns - 1]``. Whole-number labels become int32 class labels.
    """
    path = _check_file(path, "load_csv")
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    if not rows:
        raise ConfigError(f"load_csv: {str(path)!r} is empty.")
    header = None
    try:
        [float(v) for v in rows[0]]
    except ValueError:
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    width = len(header or rows[0])
    if isinstance(label_column, str):
        if header is None or label_column not in header:
            raise ConfigError(
                f"load_csv: no column {label_column!r} in {str(path)!r} (header: {header})."
            )
        label_column = header.index(label_column)
    if not -width <= label_column < width:
        raise ConfigError(
            f"load_csv: expected label_column in [{-width}, {width}), got {label_column}."
        )
    table = np.empty((len(rows), width), np.float64)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ConfigError(
                f"load_csv: {str(path)!r} line {i + 1 + (header is not None)}: expected {width} "
                f"values, got {len(row)}."
            )
        try:
            table[i] = [float(v) for v in row]
        except ValueError as err:
            raise ConfigError(
                f"load_csv: {str(path)!r} line {i + 1 + (header is not None)}: {err}."
            ) from None
    y = _labels(table[:, label_column])
    x = np.delete(table, label_column % width, axis=1).astype(np.float32)
    return split(x, y, test_size, seed)


def load_image_folder(
    path: str | os.PathLike,
    image_size=(32, 32),
    color_mode: str = "rgb",
    test_size: float = 0.2,
    seed: int = 0,
) -> Split:
    """An image folder (``path/<class>/<image>``, :class:`ImageFolder`) read into arrays
    ``x [n, height, width, channels]`` float32 in [0, 1], ``y [n]`` int32, then split.
    For folders larger than memory pass ``ImageFolder`` itself to ``fit``."""
    data = ImageFolder(path, tuple(image_size), batch_size=256, color_mode=color_mode)
    parts = [data[i] for i in range(len(data))]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return split(x, y, test_size, seed)


def write_digits_files(directory: str | os.PathLike, num_samples: int = 300) -> Path:
    """Write the first ``num_samples`` scikit-learn digits as small files for the file
    readers and the CLI's file configs: ``images/<digit>/<i>.png`` (8x8 grayscale PNGs)
    and ``digits.csv`` (header ``p0..p63,label``). About 80 KB in all for 300 digits; no download.

    >>> import tempfile
    >>> d = write_digits_files(tempfile.mkdtemp(), num_samples=60)
    >>> (_, y), _ = load_image_folder(d / "images", image_size=(8, 8), color_mode="grayscale")
    >>> len(y)
    48
    """
    from PIL import Image
    from sklearn import datasets as sk

    digits = sk.load_digits()
    out = Path(directory)
    images = digits.images[:num_samples]
    labels = digits.target[:num_samples]
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = out / "images" / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).round().astype(np.uint8), mode="L").save(
            folder / f"{i:04d}.png"
        )
    header = ",".join([*(f"p{j}" for j in range(64)), "label"])
    rows = [
        ",".join([*(str(int(v)) for v in img.ravel()), str(int(lab))])
        for img, lab in zip(images, labels)
    ]
    (out / "digits.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return out


DATASETS: dict[str, Callable[..., Split]] = {
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "wine": load_wine,
    "iris": load_iris,
    "sequence": load_sequence,
    "npz": load_npz,
    "csv": load_csv,
    "image_folder": load_image_folder,
}


def load(name: str, **options) -> Split:
    """Load a dataset by name (``digits``, ``breast_cancer``, ``wine``, ``iris``, ``sequence``,
    ``npz``, ``csv``, ``image_folder``) with the keyword options of its loader."""
    from fnn.core.errors import unknown_name

    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name](**options)


def shuffle(*arrays: np.ndarray, seed: int, epoch: int = 0) -> tuple[np.ndarray, ...]:
    """The same seeded permutation applied to each array's first axis: the order of epoch
    ``epoch`` of ``Model.fit(shuffle=True)`` with ``compile(seed=seed)``
    (``fnn.training.loop.epoch_order``).

    >>> import numpy as np
    >>> shuffle(np.arange(5), np.arange(5) * 10, seed=0)
    (array([2, 4, 3, 0, 1]), array([20, 40, 30,  0, 10]))
    """
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ConfigError(
            f"shuffle: expected arrays of equal length, got {[len(a) for a in arrays]}."
        )
    order = epoch_order(n, seed=seed, epoch=epoch)
    return tuple(a[order] for a in arrays)


def batches(
    x: np.ndarray,
    y: np.ndarray | None = None,
    batch_size: int = 32,
    seed: int | None = None,
    drop_remainder: bool = False,
    epoch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray] | np.ndarray]:
    """Mini-batches ``(x[i:i+b], y[i:i+b])`` (or ``x`` alone when ``y`` is None), in order,
    or with ``seed`` in the order of epoch ``epoch`` that ``Model.fit(shuffle=True)`` with
    ``compile(seed=seed)`` uses (``fnn.training.loop.epoch_order``).

    >>> import numpy as np
    >>> [b.tolist() for b, _ in batches(np.arange(5), np.arange(5), batch_size=2)]
    [[0, 1], [2, 3], [4]]
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batches: expected a positive int batch_size, got {batch_size!r}.")
    n = len(x)
    if y is not None and len(y) != n:
        raise ConfigError(f"batches: expected len(y) == len(x) == {n}, got {len(y)}.")
    order = epoch_order(n, seed=0 if seed is None else seed, epoch=epoch, shuffle=seed is not None)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield (x[idx], y[idx]) if y is not None else x[idx]
