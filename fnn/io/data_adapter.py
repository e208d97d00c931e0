"""Feeding ``Model.fit``/``evaluate``/``predict``: arrays, dicts of arrays, iterables and
``PyDataset`` batch sources (Keras's ``keras.utils.PyDataset``/``Sequence``).

In-memory arrays are copied to the device once and batches are gathered there inside
the compiled step (``fnn.training.loop.DeviceRows``), so no per-step index crosses from
the host. Iterables and generators run in a background thread that also copies each
batch to the device, so Python and the device overlap. The epoch order is
``fnn.training.loop.epoch_order`` (the one shuffle).

>>> import numpy as np
>>> from fnn.training.loop import epoch_order
>>> data = ArrayData((np.arange(10.0)[:, None], np.arange(10)), None, name="fit")
>>> order = epoch_order(data.n, seed=0, epoch=0, shuffle=False)
>>> [len(y) for (_, y), _, _ in data.epoch(order, 4, steps=3, on_device=False, ahead=False)]
[4, 4, 2]
"""

from __future__ import annotations

import base64
import concurrent.futures
import itertools
import math
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError, ShapeError
from fnn.distributed.runtime import process_batch_slice
from fnn.io import foreign_data
from fnn.training.ensemble import member_orders
from fnn.training.loop import DeviceRows, epoch_order, take

# Arrays up to this size live on the device for the whole fit; larger ones are batched on
# the host and prefetched.
DEVICE_DATA_LIMIT_BYTES = 1 << 30


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray | jax.Array) or (
        hasattr(x, "__array__") and not isinstance(x, list | tuple | dict)
    )


def is_array_tree(x) -> bool:
    """Arrays of any shape, or tuples/lists/dicts of them (not generators or datasets)."""
    if x is None:
        return True
    if isinstance(x, dict):
        return all(is_array_tree(v) for v in x.values())
    if isinstance(x, list | tuple):
        return all(is_array_tree(v) for v in x)
    return _is_array(x) or isinstance(x, int | float)


def to_array(a):
    """NumPy (or JAX) array with Keras's dtypes: float64 -> float32, int64 -> int32."""
    if isinstance(a, jax.Array):
        return a
    a = np.asarray(a)
    if a.dtype == np.float64:
        return a.astype(np.float32)
    if a.dtype == np.int64 and not jax.config.jax_enable_x64:
        return a.astype(np.int32)
    if a.dtype == np.uint64 and not jax.config.jax_enable_x64:
        return a.astype(np.uint32)
    return a


def as_arrays(tree):
    """Convert every leaf to an array (lists/tuples stay containers, as in Keras)."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: as_arrays(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return tuple(as_arrays(v) for v in tree)
    return to_array(tree)


def _leading(tree, what: str) -> list[tuple[str, int, tuple]]:
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shape = tuple(np.shape(leaf))
        if not shape:
            raise ShapeError(
                f"{what}: expected arrays with a leading sample axis, got a scalar"
                f"{' at ' + jax.tree_util.keystr(path) if path else ''}."
            )
        out.append((what + jax.tree_util.keystr(path), shape[0], shape))
    return out


def num_samples(caller: str, **trees) -> int:
    """The common leading dimension of all arrays in ``trees`` (``ShapeError`` if they differ)."""
    entries = [e for name, t in trees.items() if t is not None for e in _leading(t, name)]
    if not entries:
        raise ConfigError(f"{caller}: expected input data, got none (x is None).")
    sizes = {n for _, n, _ in entries}
    if len(sizes) > 1:
        listing = ", ".join(f"{name} has {n} (shape {shape})" for name, n, shape in entries)
        raise ShapeError(
            f"{caller}: expected the same number of samples in x, y and sample_weight, got "
            f"{listing}. Pass arrays with one row per sample."
        )
    return entries[0][1]


class ArrayData:
    """In-memory ``(x, y, sample_weight)`` arrays."""

    def __init__(self, x, y=None, sample_weight=None, *, name: str = "fit"):
        self.x, self.y, self.sample_weight = as_arrays(x), as_arrays(y), as_arrays(sample_weight)
        self.n = num_samples(name, x=self.x, y=self.y, sample_weight=self.sample_weight)
        self._device = None

    @property
    def arrays(self):
        return (self.x, self.y, self.sample_weight)

    def split(self, validation_split: float):
        """Keras's split: the *last* ``validation_split`` fraction (before shuffling) validates."""
        at = int(self.n * (1.0 - validation_split))
        if at == 0 or at == self.n:
            raise ConfigError(
                f"fit: validation_split={validation_split} leaves "
                f"{'no training' if at == 0 else 'no validation'} samples out of {self.n}."
            )
        head = ArrayData.__new__(ArrayData)
        tail = ArrayData.__new__(ArrayData)
        for part, sl in ((head, slice(0, at)), (tail, slice(at, None))):
            part.x, part.y, part.sample_weight = jax.tree.map(lambda a: a[sl], self.arrays)
            part.n = sl.stop - sl.start if sl.stop else self.n - at
            part._device = None
        return head, tail

    def nbytes(self) -> int:
        return sum(
            int(np.prod(np.shape(a))) * np.dtype(a.dtype).itemsize
            for a in jax.tree.leaves(self.arrays)
        )

    def on_device(self):
        """The arrays on the default device (copied once, then cached).

        ``may_alias``: on CPU an array XLA can use in place (64-byte aligned) is aliased,
        as ``jax.device_put`` does by default, and any other is copied once, where the
        default copies twice (measured: 2.4 MB in 122 us instead of 255 us; aligned 32 us).
        A ``fit`` call pays this at every call."""
        if self._device is None:
            try:
                self._device = jax.device_put(self.arrays, may_alias=True)
            except TypeError:  # a jax without may_alias (before 0.5)
                self._device = jax.device_put(self.arrays)
        return self._device

    def fits_on_device(self) -> bool:
        return self.nbytes() <= DEVICE_DATA_LIMIT_BYTES

    def epoch_data(
        self,
        batch_size: int,
        steps: int,
        *,
        seed: int,
        shuffle: bool = True,
        members: int | None = None,
        on_device: bool,
        ahead: bool = True,
        process: tuple[int, int] | None = None,
    ) -> Callable[..., DeviceRows | Iterator]:
        """``epoch_data(epoch, start=0)`` for ``fnn.training.loop.fit``: batches ``start``
        to ``steps - 1`` of ``batch_size`` in ``epoch_order(seed, epoch)`` (``Model.fit``'s,
        a sweep's; ``start`` > 0 resumes mid-epoch), or with ``members=n`` member i's own
        order (seed ``seed + i``: ``[n, batch, ...]`` batches, ``fnn.train.member_orders``).
        See ``epoch`` for ``on_device``/``ahead``/``process``."""

        def epoch_data(epoch: int, start: int = 0):
            if members is None:
                order = epoch_order(self.n, seed=seed, epoch=epoch, shuffle=shuffle)
            else:
                order = member_orders(self.n, members, seed=seed, epoch=epoch, shuffle=shuffle)
            return self.epoch(
                order[..., start * batch_size :],
                batch_size,
                max(steps - start, 0),
                on_device=on_device,
                ahead=ahead,
                process=process,
            )

        return epoch_data

    def eval_batches(self, batch_size: int, steps: int | None = None) -> Iterator:
        """The first ``steps`` (default all) batches in order, host arrays put on the device
        one by one (evaluation: every example once)."""
        steps = math.ceil(self.n / batch_size) if steps is None else steps
        order = epoch_order(self.n, seed=0, epoch=0, shuffle=False)
        return self.epoch(order, batch_size, steps, on_device=False)

    def epoch(
        self,
        order: np.ndarray,
        batch_size: int,
        steps: int,
        *,
        on_device: bool,
        ahead=True,
        process: tuple[int, int] | None = None,
    ):
        """The first ``steps`` batches in ``order``: ``DeviceRows`` over the device copy,
        or host batches ``(x, y, sample_weight)`` (copied to the device ahead of use by a
        background thread when ``ahead``). ``process=(index, count)``: only this process's
        block of rows of every batch (``process_rows``), so only those rows are read."""
        if on_device:
            return DeviceRows(self.on_device(), order, batch_size, steps)
        # order: [examples], or [members, examples] (batches [members, batch, ...]).
        stop = min(order.shape[-1], steps * batch_size)
        rows = (order[..., i : i + batch_size] for i in range(0, stop, batch_size))
        if process is not None:
            rows = (r for r in (process_rows(r, *process) for r in rows) if len(r))
        batches = (take(self.arrays, r) for r in rows)
        return prefetch(batches) if ahead else batches


def process_rows(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's block of the example ``indices`` ``[batch]`` of one global batch:
    ``[batch / process_count]`` (the blocks of processes ``0, 1, ...`` make up the batch,
    as ``fnn.distributed.process_batch_slice``), or ``[0]`` when the batch does not divide
    by ``process_count`` (a last smaller batch, which every process then drops alike).

    >>> process_rows(np.arange(8), 1, 2).tolist(), process_rows(np.arange(3), 0, 2).tolist()
    ([4, 5, 6, 7], [])
    """
    if len(indices) % process_count:
        return indices[:0]
    return indices[process_batch_slice(len(indices), process_index, process_count)]


def unpack(data) -> tuple[Any, Any, Any]:
    """``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)`` -> ``(x, y, sample_weight)``."""
    if isinstance(data, list):
        data = tuple(data)
    if not isinstance(data, tuple):
        return data, None, None
    if len(data) == 1:
        return data[0], None, None
    if len(data) == 2:
        return data[0], data[1], None
    if len(data) == 3:
        return data
    raise ConfigError(
        f"expected batches as (x,), (x, y) or (x, y, sample_weight), got a tuple of {len(data)} "
        "items. Wrap multiple inputs in a tuple: ((x1, x2), y)."
    )


class PyDataset:
    """A batch source by index, as Keras's ``keras.utils.PyDataset`` (alias ``Sequence``).

    Subclasses call ``super().__init__(**kwargs)`` and define ``__len__`` (the number of
    batches) and ``__getitem__(i)`` (batch ``i``: ``x``, ``(x,)``, ``(x, y)`` or
    ``(x, y, sample_weight)``); ``on_epoch_begin``/``on_epoch_end`` run around every pass.
    ``Model.fit`` takes ``len`` batches per epoch, in index order with ``shuffle=False``.
    Batches are read in a background thread; ``workers > 1`` reads that many batches at
    once in threads (``use_multiprocessing=True`` also uses threads: JAX does not survive
    ``fork``), with at most ``max_queue_size`` batches ahead.

    >>> import numpy as np
    >>> class Halves(PyDataset):
    ...     def __len__(self):
    ...         return 2
    ...     def __getitem__(self, i):
    ...         return np.full((3, 1), i, "float32"), np.zeros(3)
    >>> [float(x[0, 0]) for x, _ in Halves(workers=2)]
    [0.0, 1.0]
    """

    def __init__(
        self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10
    ):
        self.workers = workers
        self.use_multiprocessing = use_multiprocessing
        self.max_queue_size = max_queue_size

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__}: define __len__ (the number of batches).")

    def __getitem__(self, index: int):
        raise NotImplementedError(f"{type(self).__name__}: define __getitem__(index) -> a batch.")

    @property
    def num_batches(self) -> int | None:
        """``len(self)`` (``None``: endless)."""
        return len(self)

    def __iter__(self) -> Iterator:
        """Batches ``0 .. len - 1`` in order (no threads, no epoch hooks), as Keras."""
        n = self.num_batches
        for i in itertools.count() if n is None else range(n):
            yield self[i]

    def on_epoch_begin(self) -> None:
        """Called before every pass over the batches."""

    def on_epoch_end(self) -> None:
        """Called after every pass over the batches (e.g. to reshuffle)."""


Sequence = PyDataset


def is_py_dataset(data) -> bool:
    """An fnn ``PyDataset``, or an object shaped like one (Keras's own ``PyDataset`` and
    ``Sequence`` instances: ``__len__``, ``__getitem__`` and ``on_epoch_end``)."""
    if isinstance(data, PyDataset):
        return True
    return not isinstance(data, list | tuple | dict | np.ndarray) and all(
        hasattr(data, a) for a in ("__len__", "__getitem__", "on_epoch_end")
    )


def _setting(data, name: str, default):
    value = getattr(data, name, default)
    return default if value is None else value


def _signature(batch):
    leaves, treedef = jax.tree.flatten(batch)
    return treedef, [(tuple(np.shape(a)[1:]), np.dtype(a.dtype).name) for a in leaves]


def check_same_structure(name: str, batch, first, count: int):
    """The signature ``(treedef, [(shape without the batch axis, dtype)])`` of the first
    batch; a later batch with another structure, example shape or dtype raises, naming
    the batch (only the batch size may change, e.g. a last partial batch)."""
    sig = _signature(batch)
    if first is not None and sig != first:
        raise ShapeError(
            f"{name}: batch {count} changed structure or shapes mid-epoch: expected "
            f"{first[0]} with example shapes/dtypes {first[1]}, got {sig[0]} with {sig[1]}. "
            "Every batch must have the same structure and shapes (only the batch size "
            "may differ)."
        )
    return sig


class IterableData:
    """Batches from a Python iterable or generator of ``(x, y[, sample_weight])``, or from
    a ``PyDataset``.

    A re-iterable (e.g. a list) restarts every epoch; a one-shot iterator is consumed
    across epochs, ``steps_per_epoch`` batches at a time. A ``PyDataset`` gives ``len``
    batches per epoch; with a smaller ``steps_per_epoch`` the next epoch continues where
    the last stopped, and a new pass starts once all batches were read (Keras's rule).
    """

    def __init__(self, data: Iterable, *, name: str = "fit", arrange=None):
        # ``arrange(x, y) -> (x, y)``: the model's mapping of named dict batches onto its
        # inputs and outputs (applied to every batch, as to array data).
        self.arrange = arrange
        data = foreign_data.adapt(data, name=name)  # tf.data / PyTorch batches as NumPy
        self.sequence = is_py_dataset(data)
        if not self.sequence and not isinstance(data, Iterable):
            raise ConfigError(
                f"{name}: expected arrays, a dict of arrays, a PyDataset or an iterable of "
                f"batches, got {type(data).__name__}."
            )
        self.data = data
        self.name = name
        self.one_shot = not self.sequence and iter(data) is data
        self._iterator: Iterator | None = None
        self.exhausted = False
        self._pass: list[int] = []  # PyDataset: batch indices of the current pass still to read
        self._passes = 0
        # Resuming (see ``state``/``restore``): where the current epoch began, the state of a
        # checkpointable iterator after each batch read in it, and the position to resume at.
        self._start: dict = {}
        self._states: list = []
        self._resume: dict | None = None
        self._offset = 0

    def __len__(self) -> int:
        return len(self.data)

    def epoch(self, steps: int | None, *, shuffle: bool = False, seed: int = 0) -> Iterator:
        """The batches of one epoch, as ``(x, y, sample_weight)`` on the device. For a
        ``PyDataset``, ``shuffle`` permutes the batch order of each pass (seeded by
        ``seed`` and the pass number, ``fnn.training.loop.epoch_order``), as Keras's
        ``fit(shuffle=True)`` shuffles a PyDataset's batches; the user code of
        ``__getitem__``/``on_epoch_*`` runs in the reading thread."""
        resume, self._resume = self._resume or {}, None
        skip = int(resume.get("skip", 0))
        if self.sequence:
            self._restore_pass(resume, shuffle, seed)
            self._start = self.state()
            self._states = []
            it = self._sequence_epoch(steps, shuffle, seed, skip)
        else:
            it = self.data if self.one_shot else iter(self.data)
            saved = resume.get("iterator")
            if saved is not None:
                it.set_state(_decode_state(saved))
            elif skip and self.one_shot:
                warnings.warn(
                    f"{self.name}: cannot move a plain one-shot iterator back to batch {skip} of "
                    "the epoch; it continues from where it is. Pass a re-iterable, a PyDataset "
                    "or a Grain dataset to resume mid-epoch exactly.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            elif skip:  # a re-iterable without a state of its own: read past the done batches
                it = itertools.islice(it, skip, None)
            self._start = {"iterator": saved} if saved is not None else self.state()
            self._states, self._offset = [], skip
            if skip and steps is not None:
                steps = max(steps - skip, 0)
        record = self._states.append if _stateful(it) else None

        limit = None if self.sequence else steps  # a PyDataset epoch is cut to steps already
        if limit == 0:  # a resumed epoch whose batches were all trained on already
            return iter(())

        def batches():
            first = None
            for count, item in enumerate(it, start=1):
                if record is not None:  # the position after this batch, for a checkpoint
                    record(it.get_state())
                x, y, sw = unpack(item)
                if self.arrange is not None:
                    x, y = self.arrange(x, y)
                batch = (as_arrays(x), as_arrays(y), as_arrays(sw))
                first = check_same_structure(self.name, batch, first, count)
                yield batch
                if limit is not None and count >= limit:
                    return
            if self.one_shot:
                self.exhausted = True

        return prefetch(batches())

    def state(self, batches: int | None = None) -> dict:
        """Where the source stands, as JSON-able values for a checkpoint: after ``batches``
        batches of the current epoch, or (``None``) now, between epochs. A ``PyDataset``:
        its pass and position in the pass, plus its own ``get_state()`` if it has one (the
        readers of ``fnn.datasets`` do); an iterator with ``get_state``/``set_state`` (Grain's
        checkpointable iterators): that state after the last batch trained on (the
        background thread reads ahead, so the state after each batch is kept); any other
        iterable: the batches to skip."""
        if batches is not None:
            done = batches - self._offset  # batches read by this epoch's iterator
            if self.sequence or not self._states or done <= 0:
                return {**self._start, "skip": batches}
            return {"iterator": _encode_state(self._states[done - 1]), "skip": batches}
        if self.sequence:
            state = {"passes": self._passes, "rest": len(self._pass)}
            if hasattr(self.data, "get_state"):
                state["source"] = self.data.get_state()
            return state
        if self.one_shot and _stateful(self.data):
            live = self._states[-1] if self._states else self.data.get_state()
            return {"iterator": _encode_state(live)}
        return {}  # a re-iterable starts afresh every epoch

    def shard_by_process(self, process: tuple[int, int] | None) -> bool:
        """Make the source read only this process's rows of every batch (``process =
        (index, count)``; ``None``: all rows again); ``False`` if it cannot (it then
        yields whole global batches)."""
        if not hasattr(self.data, "process_shard"):
            return False
        self.data.process_shard = process
        return True

    def restore(self, state: dict) -> None:
        """Start the next ``epoch`` where ``state`` (from ``state``) stood."""
        self._resume = dict(state)

    def _restore_pass(self, resume: dict, shuffle: bool, seed: int) -> None:
        if "passes" not in resume:
            return
        self._passes, rest = int(resume["passes"]), int(resume["rest"])
        self._pass = []
        if rest:
            order = epoch_order(len(self.data), seed=seed, epoch=self._passes - 1, shuffle=shuffle)
            self._pass = order.tolist()[len(order) - rest :]
        if "source" in resume:
            self.data.set_state(resume["source"])

    def _sequence_epoch(self, steps: int | None, shuffle: bool, seed: int, skip: int) -> Iterator:
        data = self.data
        if not self._pass:
            order = epoch_order(len(data), seed=seed, epoch=self._passes, shuffle=shuffle)
            self._pass, self._passes = order.tolist(), self._passes + 1
        take_n = len(self._pass) if steps is None else min(steps, len(self._pass))
        indices, self._pass = self._pass[:take_n], self._pass[take_n:]
        indices = indices[skip:]  # a resumed epoch: these batches were trained on already
        workers = int(_setting(data, "workers", 1))
        ahead = max(1, int(_setting(data, "max_queue_size", 10)))

        def read():
            if hasattr(data, "on_epoch_begin"):
                data.on_epoch_begin()
            if workers > 1:
                with concurrent.futures.ThreadPoolExecutor(workers, "fnn-pydataset") as pool:
                    pending: deque = deque()
                    for i in indices:
                        pending.append(pool.submit(data.__getitem__, i))
                        if len(pending) >= ahead:
                            yield pending.popleft().result()
                    while pending:
                        yield pending.popleft().result()
            else:
                for i in indices:
                    yield data[i]
            data.on_epoch_end()

        return read()


def _stateful(it) -> bool:
    return hasattr(it, "get_state") and hasattr(it, "set_state")


def _encode_state(state):
    """A Grain iterator state as JSON: ``DataLoader`` iterators give bytes."""
    if isinstance(state, bytes):
        return {"bytes_base64": base64.b64encode(state).decode("ascii")}
    return state


def _decode_state(state):
    if isinstance(state, dict) and set(state) == {"bytes_base64"}:
        return base64.b64decode(state["bytes_base64"])
    return state


_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Run ``iterator`` in a background thread, copying each item to the device, with up to
    ``size`` items ready ahead. Errors in the iterator are re-raised in the caller."""
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item) -> bool:
        """Queue ``item`` unless the consumer has gone (then the worker just ends)."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterator:
                if not put(jax.device_put(item)):
                    return
            put(_END)
        except BaseException as err:  # re-raised in the consumer thread
            put(_Failure(err))

    thread = threading.Thread(target=work, daemon=True, name="fnn-prefetch")
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()


def pad_rows(tree, size: int):
    """Pad every array's leading axis with zeros up to ``size`` rows."""

    def pad(a):
        n = np.shape(a)[0]
        if n == size:
            return a
        widths = [(0, size - n)] + [(0, 0)] * (np.ndim(a) - 1)
        return jnp.pad(a, widths) if isinstance(a, jax.Array) else np.pad(a, widths)

    return jax.tree.map(pad, tree)
