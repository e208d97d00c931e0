"""Datasets that stream from disk: image folders (Pillow), CSV and Parquet tables (pyarrow),
``.npy`` memory maps and IDX files (MNIST's format). Each is a ``PyDataset`` of batches, so ``Model.fit``
reads one batch at a time in its background thread and only the current batches are in
memory. The example order of pass ``p`` is ``epoch_order(n, seed=seed, epoch=p)`` (the
one shuffle), reshuffled at every pass end.

>>> import numpy as np, tempfile, os
>>> d = tempfile.mkdtemp()
>>> np.save(os.path.join(d, "x.npy"), np.arange(10.0, dtype="float32").reshape(5, 2))
>>> np.save(os.path.join(d, "y.npy"), np.arange(5))
>>> data = NpyDataset(os.path.join(d, "x.npy"), os.path.join(d, "y.npy"), batch_size=2)
>>> len(data), [y.tolist() for _, y in data]
(3, [[0, 1], [2, 3], [4]])
"""

from __future__ import annotations

import copy
import csv
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fnn.core.errors import ConfigError
from fnn.io.data_adapter import PyDataset, process_rows
from fnn.training.loop import epoch_order

__all__ = [
    "CsvDataset",
    "ExampleBatches",
    "IdxDataset",
    "ImageFolder",
    "NpyDataset",
    "ParquetDataset",
    "read_idx",
    "write_idx",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ExampleBatches(PyDataset):
    """Batches of examples read by index: subclasses define ``num_examples`` and
    ``read(indices) -> (x [b, ...], y [b] or None)``. ``shuffle`` permutes the examples
    (not only the batches) anew every pass, seeded by ``seed`` and the pass number.

    ``process_shard = (index, count)`` (set by ``Model.fit`` in a multi-process run):
    batch ``i`` holds only that process's block of global batch ``i``
    (``fnn.io.data_adapter.process_rows``): every process computes the same order, reads
    only its own rows, and together they read each example once per pass (a last global
    batch that does not divide by ``count`` is left out by all)."""

    process_shard: tuple[int, int] | None = None

    def __init__(
        self, batch_size: int = 32, *, shuffle: bool = False, seed: int = 0, workers: int = 1
    ):
        super().__init__(workers=workers)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(
                f"{type(self).__name__}: expected a positive int batch_size, got {batch_size!r}."
            )
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self._order: np.ndarray | None = None
        self._examples: np.ndarray | None = None  # a subset's example indices

    num_examples: int = 0

    def subset(self, examples, **changes) -> ExampleBatches:
        """This reader over the examples ``examples`` ``[k]`` only (indices into the
        file's examples, e.g. a train/test split), with attributes ``changes`` (e.g.
        ``shuffle=False``); the files are shared, nothing is read.

        >>> import numpy as np, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> np.save(os.path.join(d, "x.npy"), np.arange(6.0).reshape(6, 1))
        >>> part = NpyDataset(os.path.join(d, "x.npy"), batch_size=2).subset([5, 1, 3])
        >>> len(part), [x[:, 0].tolist() for x in part]
        (2, [[5.0, 1.0], [3.0]])
        """
        out = copy.copy(self)
        base = np.arange(self.num_examples) if self._examples is None else self._examples
        out._examples = base[np.asarray(examples, np.int64)]
        out.num_examples = len(out._examples)
        out._order = None
        for key, value in changes.items():
            setattr(out, key, value)
        return out

    def read(self, indices: np.ndarray):
        raise NotImplementedError

    def __len__(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        if self.process_shard is not None and rest % self.process_shard[1]:
            return full  # every process drops the last batch alike
        return full + (rest > 0)

    def order(self) -> np.ndarray:
        """The example order of the current pass ``[num_examples]``."""
        if self._order is None:
            self._order = epoch_order(
                self.num_examples, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle
            )
        return self._order

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__}: batch {index} of {len(self)}.")
        idx = self.order()[index * self.batch_size : (index + 1) * self.batch_size]
        if self.process_shard is not None:
            idx = process_rows(idx, *self.process_shard)
        if self._examples is not None:
            idx = self._examples[idx]
        x, y = self.read(idx)
        return x if y is None else (x, y)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = None

    def get_state(self) -> dict:
        """The pass number that seeds the example order (saved in checkpoints by ``fit``)."""
        return {"epoch": self.epoch}

    def set_state(self, state: dict) -> None:
        """Continue at the pass ``state`` (from ``get_state``) names."""
        self.epoch = int(state["epoch"])
        self._order = None


def _file(path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: no such file {str(p)!r}.")
    return p


class NpyDataset(ExampleBatches):
    """``x`` (and optional ``y``) from ``.npy`` files opened as read-only memory maps
    (never unpickled; the map gives shape and dtype, batches are read from the file):
    ``x [n, ...]``, ``y [n]``; batches ``x [b, ...]`` in the file's dtype (``dtype`` to
    cast), ``y [b]``."""

    def __init__(self, x_path, y_path=None, batch_size: int = 32, *, dtype=None, **kwargs):
        super().__init__(batch_size, **kwargs)
        try:
            self.x = np.load(_file(x_path, "NpyDataset"), mmap_mode="r", allow_pickle=False)
            self.y = (
                None
                if y_path is None
                else np.load(_file(y_path, "NpyDataset"), mmap_mode="r", allow_pickle=False)
            )
        except ValueError as err:
            raise ConfigError(f"NpyDataset: cannot memory-map {x_path!r}: {err}") from None
        if self.y is not None and len(self.y) != len(self.x):
            raise ConfigError(
                f"NpyDataset: expected as many labels as examples, got x {self.x.shape} and "
                f"y {self.y.shape}."
            )
        self.dtype = dtype
        self.num_examples = len(self.x)

    def read(self, indices):
        x = _read_rows(self.x, indices)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        return x, None if self.y is None else np.asarray(self.y[indices])


def _read_rows(mm: np.memmap, indices: np.ndarray) -> np.ndarray:
    """Rows ``mm[indices]`` read with plain file reads, one per run of consecutive
    indices: pages touched through the map would count in the process's RSS until the
    kernel evicts them, reads into a fresh array do not."""
    row = mm.dtype.itemsize * int(np.prod(mm.shape[1:]))
    out = np.empty((len(indices), *mm.shape[1:]), mm.dtype)
    indices = np.asarray(indices, np.int64)
    with open(mm.filename, "rb") as f:
        k = 0
        while k < len(indices):
            j = k + 1
            while j < len(indices) and indices[j] == indices[j - 1] + 1:
                j += 1
            f.seek(mm.offset + int(indices[k]) * row)
            out[k:j] = np.frombuffer(f.read(row * (j - k)), mm.dtype).reshape(out[k:j].shape)
            k = j
    return out


# IDX: magic 0x00 0x00 <type> <ndim>, then ndim big-endian uint32 sizes, then the data.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """An IDX file (``train-images-idx3-ubyte`` etc.) as a read-only memory map
    ``[n, ...]``."""
    p = _file(path, "read_idx")
    with open(p, "rb") as f:
        head = f.read(4)
        if len(head) != 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_TYPES:
            raise ConfigError(f"read_idx: {str(p)!r} is not an IDX file (magic {head!r}).")
        ndim = head[3]
        shape = tuple(int(v) for v in np.frombuffer(f.read(4 * ndim), ">u4"))
    dtype = np.dtype(_IDX_TYPES[head[2]])
    offset = 4 + 4 * ndim
    if p.stat().st_size != offset + dtype.itemsize * int(np.prod(shape)):
        raise ConfigError(f"read_idx: {str(p)!r} size does not match its header shape {shape}.")
    return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=shape)


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (uint8, int8, int16, int32, float32 or float64)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ConfigError(f"write_idx: unsupported dtype {array.dtype}.")
    with open(path, "wb") as f:
        f.write(bytes([0, 0, code, array.ndim]))
        f.write(np.asarray(array.shape, ">u4").tobytes())
        f.write(array.astype(_IDX_TYPES[code]).tobytes())


class IdxDataset(NpyDataset):
    """MNIST-style IDX images ``[n, h, w]`` and labels ``[n]``; batches ``x [b, h, w, 1]``
    float32 scaled by ``scale`` (default 1/255), ``y [b]`` int32."""

    def __init__(
        self, images_path, labels_path=None, batch_size: int = 32, *, scale=1 / 255, **kwargs
    ):
        ExampleBatches.__init__(self, batch_size, **kwargs)
        self.x = read_idx(images_path)
        self.y = None if labels_path is None else read_idx(labels_path)
        if self.y is not None and len(self.y) != len(self.x):
            raise ConfigError(
                f"IdxDataset: expected as many labels as images, got {self.x.shape} and "
                f"{self.y.shape}."
            )
        self.scale = scale
        self.dtype = None
        self.num_examples = len(self.x)

    def read(self, indices):
        x = _read_rows(self.x, indices).astype(np.float32) * np.float32(self.scale)
        if x.ndim == 3:
            x = x[..., None]
        return x, None if self.y is None else np.asarray(self.y[indices], np.int32)


class ImageFolder(ExampleBatches):
    """Images in ``root/<class name>/<file>`` (classes in sorted order, label = rank),
    decoded with Pillow and resized to ``image_size`` ``(height, width)``: batches
    ``x [b, height, width, channels]`` float32 in [0, 1] (channels 3 for ``"rgb"``, 1 for
    ``"grayscale"``), ``y [b]`` int32."""

    def __init__(
        self,
        root,
        image_size: Sequence[int] = (32, 32),
        batch_size: int = 32,
        *,
        color_mode: str = "rgb",
        **kwargs,
    ):
        super().__init__(batch_size, **kwargs)
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"ImageFolder: no such directory {str(root)!r}.")
        if color_mode not in ("rgb", "grayscale"):
            raise ConfigError(
                f"ImageFolder: expected color_mode 'rgb' or 'grayscale', got {color_mode!r}."
            )
        size = tuple(image_size)
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ConfigError(
                f"ImageFolder: expected image_size (height, width), got {image_size!r}."
            )
        self.class_names = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.files: list[Path] = []
        labels = []
        for label, name in enumerate(self.class_names):
            for f in sorted((root / name).iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    self.files.append(f)
                    labels.append(label)
        if not self.files:
            raise ConfigError(
                f"ImageFolder: no images under {str(root)!r} (expected one sub-folder per "
                f"class holding {', '.join(IMAGE_SUFFIXES)} files)."
            )
        self.labels = np.asarray(labels, np.int32)
        self.image_size = size
        self.color_mode = color_mode
        self.num_examples = len(self.files)

    def read(self, indices):
        from PIL import Image

        mode = "RGB" if self.color_mode == "rgb" else "L"
        h, w = self.image_size
        out = []
        for i in indices:
            with Image.open(self.files[i]) as img:
                img = img.convert(mode)
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(img, np.float32) / np.float32(255.0)
            out.append(a[..., None] if a.ndim == 2 else a)
        return np.stack(out), self.labels[indices]


class CsvDataset(ExampleBatches):
    """Rows of a numeric CSV file, read by seeking to each row (one pass indexes the row
    offsets, 8 bytes a row): ``columns`` (names with a header, or indices; default all
    but the label) are ``x [b, len(columns)]`` float32, ``label_column`` (name, index or
    None) is ``y [b]`` (int32 when ``integer_labels``, else float32)."""

    def __init__(
        self,
        path,
        columns: Sequence[int | str] | None = None,
        label_column: int | str | None = -1,
        batch_size: int = 32,
        *,
        delimiter: str = ",",
        integer_labels: bool = True,
        **kwargs,
    ):
        super().__init__(batch_size, **kwargs)
        self.path = _file(path, "CsvDataset")
        self.delimiter = delimiter
        offsets = []
        with open(self.path, "rb") as f:
            first = f.readline()
            header = None
            try:
                [float(v) for v in _split(first, delimiter)]
                offsets.append(0)
            except ValueError:
                header = [h.strip() for h in _split(first, delimiter)]
            pos = f.tell()
            for line in iter(f.readline, b""):
                if line.strip():
                    offsets.append(pos)
                pos = f.tell()
        if not offsets:
            raise ConfigError(f"CsvDataset: {str(self.path)!r} has no data rows.")
        self.offsets = np.asarray(offsets, np.int64)
        width = len(header) if header else len(_split(first, delimiter))
        self.header = header

        def index(c, what):
            return _column_index(c, header, width, what, "CsvDataset", repr(str(self.path)))

        self.label = None if label_column is None else index(label_column, "label_column")
        if columns is None:
            self.columns = [c for c in range(width) if c != self.label]
        else:
            self.columns = [index(c, "column") for c in columns]
        self.width = width
        self.integer_labels = integer_labels
        self.num_examples = len(self.offsets)

    def read(self, indices):
        rows = np.empty((len(indices), self.width), np.float64)
        with open(self.path, "rb") as f:
            for k, i in enumerate(indices):
                f.seek(int(self.offsets[i]))
                values = _split(f.readline(), self.delimiter)
                if len(values) != self.width:
                    raise ConfigError(
                        f"CsvDataset: {str(self.path)!r} data row {int(i)}: expected "
                        f"{self.width} values, got {len(values)}."
                    )
                try:
                    rows[k] = [float(v) for v in values]
                except ValueError as err:
                    raise ConfigError(
                        f"CsvDataset: {str(self.path)!r} data row {int(i)}: {err}."
                    ) from None
        x = rows[:, self.columns].astype(np.float32)
        if self.label is None:
            return x, None
        y = rows[:, self.label]
        return x, y.astype(np.int32 if self.integer_labels else np.float32)


def _split(line: bytes, delimiter: str) -> list[str]:
    return next(csv.reader([line.decode().rstrip("\r\n")], delimiter=delimiter), [])


def _column_index(c, names: list[str] | None, width: int, what: str, who: str, where: str) -> int:
    """Column ``c`` (a header name, or an index from either end) as an index."""
    if isinstance(c, str):
        if names is None or c not in names:
            raise ConfigError(f"{who}: no {what} {c!r} in {where} (header: {names}).")
        return names.index(c)
    if isinstance(c, bool) or not isinstance(c, int) or not -width <= c < width:
        raise ConfigError(
            f"{who}: expected {what} in [{-width}, {width}) or a header name, got {c!r}."
        )
    return c % width


class ParquetDataset(ExampleBatches):
    """Rows of a Parquet file (pyarrow, an optional extra), read one row group at a time
    (the last one read is kept, so in-order reading reads each group once): numeric
    ``columns`` (names or indices; default all but the label) are ``x [b, len(columns)]``
    float32, ``label_column`` (name, index or None) is ``y [b]`` (int32 when
    ``integer_labels``, else float32)."""

    def __init__(
        self,
        path,
        columns: Sequence[int | str] | None = None,
        label_column: int | str | None = -1,
        batch_size: int = 32,
        *,
        integer_labels: bool = True,
        **kwargs,
    ):
        super().__init__(batch_size, **kwargs)
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(
                "ParquetDataset: needs pyarrow (pip install pyarrow, or fnn's data extra)."
            ) from None
        self.path = _file(path, "ParquetDataset")
        try:
            self.file = pq.ParquetFile(self.path)
        except Exception as err:  # pyarrow raises its own ArrowInvalid for a bad file
            raise ConfigError(
                f"ParquetDataset: {str(self.path)!r} is not a Parquet file ({err})."
            ) from None
        names = list(self.file.schema_arrow.names)
        width, where = len(names), repr(str(self.path))

        def index(c, what):
            return _column_index(c, names, width, what, "ParquetDataset", where)

        self.label = None if label_column is None else index(label_column, "label_column")
        picked = [index(c, "column") for c in columns] if columns is not None else None
        self.columns = picked or [c for c in range(width) if c != self.label]
        self.names = names
        for c in [*self.columns, *([] if self.label is None else [self.label])]:
            kind = self.file.schema_arrow.field(c).type
            if not _numeric(kind):
                raise ConfigError(
                    f"ParquetDataset: column {names[c]!r} of {where} holds {kind}, expected "
                    "numbers."
                )
        meta = self.file.metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.starts = np.cumsum([0, *sizes])
        self.integer_labels = integer_labels
        self.num_examples = int(self.starts[-1])
        self._lock = threading.Lock()  # one reader of the file (and its cache) at a time
        self._cached: tuple[int, np.ndarray] | None = None

    def _group(self, g: int) -> np.ndarray:
        """Row group ``g`` as ``[rows, columns (+ label)]`` float64."""
        with self._lock:
            if self._cached is None or self._cached[0] != g:
                wanted = [*self.columns, *([] if self.label is None else [self.label])]
                table = self.file.read_row_group(g, columns=[self.names[c] for c in wanted])
                cols = [table.column(k).to_numpy(zero_copy_only=False) for k in range(len(wanted))]
                self._cached = (g, np.stack(cols, axis=1).astype(np.float64))
            return self._cached[1]

    def read(self, indices):
        indices = np.asarray(indices, np.int64)
        groups = np.searchsorted(self.starts, indices, side="right") - 1
        rows = np.empty((len(indices), len(self.columns) + (self.label is not None)), np.float64)
        for g in dict.fromkeys(groups.tolist()):  # in first-use order
            mask = groups == g
            rows[mask] = self._group(g)[indices[mask] - self.starts[g]]
        x = rows[:, : len(self.columns)].astype(np.float32)
        if self.label is None:
            return x, None
        return x, rows[:, -1].astype(np.int32 if self.integer_labels else np.float32)


def _numeric(kind) -> bool:
    """A pyarrow type of integers, floats or booleans."""
    import pyarrow.types as t

    return t.is_integer(kind) or t.is_floating(kind) or t.is_boolean(kind)
