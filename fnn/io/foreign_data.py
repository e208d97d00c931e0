"""``tf.data.Dataset`` and PyTorch ``DataLoader`` as batch sources of ``fit``/``evaluate``/
``predict``, without importing TensorFlow or PyTorch.

Both are re-iterable sources of batches, so they go through ``IterableData`` like any
iterable; :func:`adapt` wraps them so every batch arrives as NumPy arrays. They are told
apart by the module of their type (``tensorflow.*``, ``torch.*``): importing either library
only to test ``isinstance`` would cost seconds and gigabytes for users who have neither.
Tensors become NumPy with their own ``.numpy()`` (on the host; a tensor on another device
is an error, not a silent copy), PyTorch's lists become tuples (its ``default_collate``
turns an ``(x, y)`` sample into a ``[x, y]`` batch), and a batch whose arrays disagree on
the batch size (an unbatched dataset) is an error saying to batch it.

>>> numpy_tree([np.zeros((2, 3)), {"w": np.ones(2)}])[1]["w"].shape
(2,)
>>> adapt([1, 2], name="fit")  # anything else passes through unchanged
[1, 2]
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from fnn.core.errors import ConfigError, ShapeError

# tf.data's cardinality for ``repeat()`` without a count (tf.data.INFINITE_CARDINALITY).
_INFINITE = -1


def library(obj) -> str | None:
    """``"tensorflow"``, ``"torch"`` or ``None``: the library ``obj``'s type comes from."""
    root = type(obj).__module__.split(".", 1)[0]
    return root if root in ("tensorflow", "torch") else None


def adapt(data, *, name: str):
    """``data`` itself, or for a ``tf.data.Dataset``/``torch.utils.data.DataLoader`` a
    re-iterable :class:`ForeignBatches` over its batches as NumPy arrays."""
    lib = library(data)
    if lib is None or not hasattr(data, "__iter__"):
        if lib == "torch" and hasattr(data, "__getitem__"):
            raise ConfigError(
                f"{name}: got a PyTorch {type(data).__name__} (single examples); wrap it in "
                "torch.utils.data.DataLoader(dataset, batch_size=...) to feed batches."
            )
        return data
    batches = ForeignBatches(data, lib, name)
    # An iterator over a dataset (iter(ds)) stays one-shot: IterableData consumes it across
    # epochs. Testing __next__ rather than calling iter() starts no DataLoader workers.
    return iter(batches) if hasattr(data, "__next__") else batches


class ForeignBatches:
    """A ``tf.data.Dataset`` or PyTorch ``DataLoader`` as batches of NumPy arrays.

    Every ``iter`` starts a new pass over the source (as iterating the source does).
    ``len``: the number of batches; a ``TypeError`` when unknown (``fit`` then runs until
    the source ends), and a ``ConfigError`` for an endless ``tf.data`` pipeline
    (``repeat()``): ``fit``/``evaluate``/``predict`` ask for ``len`` only when no
    ``steps_per_epoch``/``steps`` was given, and such an epoch would never end.
    """

    def __init__(self, source, lib: str, name: str):
        self.source, self.library, self.name = source, lib, name

    def __iter__(self) -> Iterator:
        for count, batch in enumerate(self.source, start=1):
            batch = numpy_tree(batch, self.name)
            self._check_batched(batch, count)
            yield batch

    def __len__(self) -> int:
        if self.library == "tensorflow":
            cardinality = int(self.source.cardinality())
            if cardinality == _INFINITE:
                raise ConfigError(
                    f"{self.name}: the tf.data.Dataset is endless (repeat() without a count); "
                    "pass steps_per_epoch= to fit (steps= to evaluate/predict)."
                )
            if cardinality < 0:
                raise TypeError("tf.data.Dataset of unknown length")
            return cardinality
        return len(self.source)

    def _check_batched(self, batch, count: int) -> None:
        sizes = [np.shape(a)[0] if np.ndim(a) else None for a in jax.tree.leaves(batch)]
        if len(set(sizes)) > 1 or None in sizes:
            hint = (
                "call .batch(batch_size) on the tf.data.Dataset"
                if self.library == "tensorflow"
                else "give the DataLoader a batch_size (not None)"
            )
            shapes = [np.shape(a) for a in jax.tree.leaves(batch)]
            raise ShapeError(
                f"{self.name}: batch {count} of the {type(self.source).__name__} has arrays of "
                f"shapes {shapes}, which do not share a leading batch axis: it yields single "
                f"examples, not batches; {hint}."
            )


def numpy_tree(tree, name: str = "fit"):
    """``tree`` with TensorFlow/PyTorch tensors as NumPy arrays and lists as tuples."""
    if isinstance(tree, dict):
        return {k: numpy_tree(v, name) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return tuple(numpy_tree(v, name) for v in tree)
    lib = library(tree)
    if lib == "torch":
        return _torch_numpy(tree, name)
    if lib == "tensorflow":
        return _tf_numpy(tree, name)
    return tree


def _torch_numpy(t, name: str) -> np.ndarray:
    if not hasattr(t, "detach"):
        raise ConfigError(f"{name}: a batch holds a PyTorch {type(t).__name__}, not a tensor.")
    if t.device.type != "cpu":
        raise ConfigError(
            f"{name}: a batch holds a PyTorch tensor on device {t.device}; fnn copies batches "
            "to its own devices from the host, so keep the DataLoader's tensors on the CPU "
            "(no .to(device)/.cuda() in the dataset or collate_fn)."
        )
    if str(t.layout) != "torch.strided":
        raise ConfigError(
            f"{name}: a batch holds a PyTorch tensor with layout {t.layout}; only dense "
            "tensors are supported (call .to_dense() in the collate_fn)."
        )
    t = t.detach()
    if str(t.dtype) == "torch.bfloat16":
        # NumPy has no bfloat16 of PyTorch's; widening to float32 and back is exact.
        import ml_dtypes

        return t.float().numpy().astype(ml_dtypes.bfloat16)
    try:
        return t.numpy()
    except TypeError as err:
        raise ConfigError(
            f"{name}: a batch holds a PyTorch tensor of dtype {t.dtype}, which NumPy cannot "
            f"hold ({err})."
        ) from None


def _tf_numpy(t, name: str) -> np.ndarray:
    kind = type(t).__name__
    if "Ragged" in kind or "Sparse" in kind or not hasattr(t, "numpy"):
        raise ConfigError(
            f"{name}: a batch holds a TensorFlow {kind}; only dense tensors are supported "
            "(pad with padded_batch, or .to_tensor()/tf.sparse.to_dense in a .map())."
        )
    a = np.asarray(t.numpy())
    if a.dtype.kind in "OSU":
        raise ConfigError(
            f"{name}: a batch holds a TensorFlow string tensor of shape {a.shape}; turn text "
            "into numbers in the pipeline (e.g. a StringLookup or TextVectorization in .map())."
        )
    return a
