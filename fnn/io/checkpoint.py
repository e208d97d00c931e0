"""Checkpoints: save and restore any pytree (a train state) to a directory, atomically.

A checkpoint is a directory with two files:

- ``arrays.safetensors``: every array leaf, named by its pytree path
  (``params/dense/kernel``). bfloat16 is stored as safetensors ``BF16`` and typed PRNG
  keys (``jax.random.key``) as their ``uint32`` key data, so other safetensors readers
  can open the file; nothing in it can execute code.
- ``checkpoint.json``: the tree structure (containers, dict keys, NamedTuple/dataclass
  class names), per-leaf kind, dtype and shape keyed by ``jax.tree_util.keystr`` path,
  PRNG implementations, Python scalars, user ``metadata``/``metrics``, and a SHA-256 of
  the arrays file. Nothing is pickled.

``save`` writes into a hidden temporary directory next to the target, fsyncs the files
and the directory, then renames it into place, so a crash during a save leaves the
previous checkpoint intact. ``restore(directory, target)`` rebuilds the tree with
``target``'s structure (NamedTuples of optax states, dataclasses) after checking
structure, shapes and dtypes, and names every mismatched path. Without ``target``
containers come back as dicts, lists and tuples. Every problem with the files
(missing, truncated, corrupted, wrong format) raises :class:`CheckpointError`.

In multi-process runs every process calls ``save`` (arrays sharded across processes are
gathered), only process 0 writes, and all wait for it. ``restore`` reads on every
process and works on any device count; arrays whose target leaf carries a sharding are
placed with it.

>>> import tempfile, jax, jax.numpy as jnp, optax
>>> from fnn import checkpoint
>>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
>>> tree = {"params": params, "opt_state": optax.adam(1e-3).init(params),
...         "step": 7, "rng": jax.random.key(0)}
>>> path = checkpoint.save(tempfile.mkdtemp() + "/ckpt", tree)
>>> restored = checkpoint.restore(path, target=tree)
>>> restored["step"], restored["opt_state"][0].mu["dense"]["kernel"].shape
(7, (2, 3))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from fnn.core.errors import ConfigError, FnnError
from fnn.core.pytree import describe_path, key_name, slash_path

__all__ = [
    "ARRAYS_FILE",
    "INDEX_FILE",
    "CheckpointError",
    "CheckpointManager",
    "check_directory_path",
    "list_steps",
    "read_info",
    "restore",
    "save",
]

FORMAT = "fnn.checkpoint"
VERSION = 1
ARRAYS_FILE = "arrays.safetensors"
INDEX_FILE = "checkpoint.json"

# safetensors dtype codes this module reads back (numpy's own safetensors loader lacks BF16).
_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "U64": np.uint64,
    "I32": np.int32,
    "U32": np.uint32,
    "I16": np.int16,
    "U16": np.uint16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
    "C64": np.complex64,
}

# Test-only hook, called as hook(stage, tmp_dir) between the steps of a save; the
# crash-safety test uses it to kill a process half-way through a write.
_TEST_HOOK: Callable[[str, Path], None] | None = None


class CheckpointError(FnnError):
    """A checkpoint is missing, truncated, corrupted, of another format, or does not match
    the target tree (the message names every mismatched path)."""


# ---------------------------------------------------------------------------------------
# Tree encoding


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _is_leaf(x: Any) -> bool:
    treedef = jax.tree_util.tree_structure(x)
    return treedef.num_nodes == 1 and treedef.num_leaves == 1


def _entry_to_json(entry: Any) -> list:
    if isinstance(entry, jax.tree_util.DictKey):
        key = entry.key
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise CheckpointError(
                f"cannot save dict key {key!r} ({type(key).__name__}): only str and int keys "
                "are supported."
            )
        return ["dict", key]
    if isinstance(entry, jax.tree_util.SequenceKey):
        return ["seq", entry.idx]
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return ["attr", entry.name]
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return ["flat", entry.key]
    raise CheckpointError(f"cannot save pytree key {entry!r} ({type(entry).__name__}).")


def _entry_from_json(entry: list) -> Any:
    kind, value = entry
    return {
        "dict": jax.tree_util.DictKey,
        "seq": jax.tree_util.SequenceKey,
        "attr": jax.tree_util.GetAttrKey,
        "flat": jax.tree_util.FlattenedIndexKey,
    }[kind](value)


def _leaf_info(x: Any, path: str) -> dict:
    """Kind, dtype and shape of a leaf (array, ShapeDtypeStruct, PRNG key or Python scalar)."""
    if isinstance(x, bool | int | float | str):
        return {"kind": "python", "type": type(x).__name__}
    if _is_key(x):
        shape = list(np.shape(x)) if not hasattr(x, "shape") else list(x.shape)
        impl = str(jax.random.key_impl(x)) if isinstance(x, jax.Array) else None
        return {"kind": "key", "dtype": str(x.dtype), "shape": shape, "impl": impl}
    if isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct):
        return {"kind": "array", "dtype": np.dtype(x.dtype).name, "shape": list(x.shape)}
    raise CheckpointError(
        f"cannot save leaf {path} of type {type(x).__name__}: expected arrays, PRNG keys, "
        "or Python bool/int/float/str."
    )


def _encode(tree: Any) -> tuple[dict, list[tuple[tuple, Any]]]:
    """JSON description of ``tree``'s structure plus its leaves as (path, value) in order."""
    leaves: list[tuple[tuple, Any]] = []

    def walk(x, path):
        if _is_leaf(x):
            leaves.append((path, x))
            return {"leaf": len(leaves) - 1}
        children, _ = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
        node: dict[str, Any] = {"type": _node_type(x)}
        if node["type"] == "node":
            node["class"] = type(x).__qualname__
        node["children"] = [
            [_entry_to_json(key[0]), walk(child, (*path, key[0]))] for key, child in children
        ]
        return node

    return walk(tree, ()), leaves


def _node_type(x: Any) -> str:
    if x is None:
        return "none"
    if type(x) is dict:
        return "dict"
    if type(x) is list:
        return "list"
    if type(x) is tuple:
        return "tuple"
    return "node"  # NamedTuple, dataclass or other registered pytree node


def _decode_plain(node: dict, leaves: list) -> Any:
    """Rebuild a tree without a target: dicts, lists, tuples; other nodes become dicts."""
    if "leaf" in node:
        return leaves[node["leaf"]]
    kind = node["type"]
    if kind == "none":
        return None
    children = [(_entry_from_json(e), _decode_plain(c, leaves)) for e, c in node["children"]]
    if kind == "list":
        return [c for _, c in children]
    if kind == "tuple":
        return tuple(c for _, c in children)
    return {key_name(e): c for e, c in children}


def _tensor_names(paths: list[tuple]) -> list[str]:
    """Readable safetensors names (``params/dense/kernel``); positional if they would clash."""
    names = [slash_path(path) or "root" for path in paths]
    if len(set(names)) != len(names):
        names = [f"leaf_{i}" for i in range(len(names))]
    return names


# ---------------------------------------------------------------------------------------
# Files


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hook(stage: str, path: Path) -> None:
    if _TEST_HOOK is not None:
        _TEST_HOOK(stage, path)


def _host_array(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x, order="C")  # (ascontiguousarray would turn scalars into shape (1,))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray | jax.Array):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


# Suffixes that promise a single file in another library's format; fnn writes directories.
_FOREIGN_SUFFIXES = (".keras", ".h5", ".hdf5", ".npz", ".pkl", ".pickle", ".pt")


def check_directory_path(path: str | os.PathLike, who: str, *, action: str = "write") -> Path:
    """``path`` as a ``Path`` if it can name a checkpoint directory; ``ConfigError`` when its
    suffix promises a single file of another format (``x.keras``, ``x.weights.h5``, ...), so
    no directory with such a name is ever written (``action="write"``) or looked for
    (``action="read"``).

    >>> check_directory_path("runs/best.keras", "ModelCheckpoint")
    Traceback (most recent call last):
    ...
    fnn.core.errors.ConfigError: ModelCheckpoint: cannot write 'runs/best.keras': fnn saves checkpoint directories (arrays.safetensors + checkpoint.json), not .keras files. Use a path without that suffix, e.g. 'runs/best' (fnn.save_model(path, model) writes a whole model as a Keras .keras file).
    """
    if action not in ("write", "read"):
        raise ConfigError(
            f"check_directory_path: expected action 'write' or 'read', got {action!r}."
        )
    p = Path(path)
    suffix = next((s for s in _FOREIGN_SUFFIXES if p.name.lower().endswith(s)), None)
    if suffix is None:
        return p
    keras = suffix in (".keras", ".h5", ".hdf5")
    if action == "read":
        keras_hint = ", or open a whole Keras model file with fnn.load_model(path)" if keras else ""
        raise ConfigError(
            f"{who}: cannot read {str(path)!r}: fnn reads checkpoint directories "
            f"({ARRAYS_FILE} + {INDEX_FILE}) written by save_weights or save, not {suffix} "
            "files. Move weights from Keras with keras_model.get_weights() and "
            f"model.set_weights(...){keras_hint}."
        )
    stem = p.name[: -len(suffix)].removesuffix(".weights") or "checkpoint"
    raise ConfigError(
        f"{who}: cannot write {str(path)!r}: fnn saves checkpoint directories "
        f"({ARRAYS_FILE} + {INDEX_FILE}), not {suffix} files. Use a path without that "
        f"suffix, e.g. {str(p.with_name(stem))!r}"
        + (
            " (fnn.save_model(path, model) writes a whole model as a Keras .keras file)."
            if keras
            else "."
        )
    )


def save(
    directory: str | os.PathLike,
    tree: Any,
    *,
    metadata: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save pytree ``tree`` to ``directory`` atomically and return its path.

    ``metadata`` (JSON-serializable: epoch, config, ...) and ``metrics`` are stored in
    ``checkpoint.json`` and read back by :func:`read_info`. An existing ``directory``
    raises ``CheckpointError`` unless ``overwrite=True`` (the old one is swapped out only
    after the new one is complete). Call it on every process; only process 0 writes.
    """
    directory = Path(directory)
    structure, leaves = _encode(tree)
    names = _tensor_names([p for p, _ in leaves])
    records, tensors = [], {}
    for (path, value), name in zip(leaves, names, strict=True):
        info = {"path": jax.tree_util.keystr(path), **_leaf_info(value, describe_path(path))}
        if info["kind"] == "python":
            info["value"] = value
        else:
            data = jax.random.key_data(value) if info["kind"] == "key" else value
            tensors[name] = _host_array(data)
            info["tensor"] = name
        records.append(info)
    index = {
        "format": FORMAT,
        "version": VERSION,
        "structure": structure,
        "leaves": records,
        "metadata": dict(metadata or {}),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "jax_version": jax.__version__,
    }
    try:
        json.dumps(index, default=_json_default)  # fail before writing anything
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot save metadata of {directory}: {err}") from None
    if jax.process_index() == 0:
        _write_atomic(directory, index, tensors, overwrite)
    _sync(f"fnn.checkpoint.save:{directory}")
    return directory


def _write_atomic(directory: Path, index: dict, tensors: dict, overwrite: bool) -> None:
    if directory.exists() and not overwrite:
        raise CheckpointError(f"{directory} already exists; pass overwrite=True to replace it.")
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = parent / f".{directory.name}.tmp-{token}"
    tmp.mkdir()
    try:
        data = safetensors.numpy.save(tensors, metadata={"format": FORMAT})
        _write_file(tmp / ARRAYS_FILE, data)
        _hook("arrays_written", tmp)
        index = {**index, "arrays_bytes": len(data), "arrays_sha256": _sha256(data)}
        text = json.dumps(index, default=_json_default, indent=1)
        _write_file(tmp / INDEX_FILE, text.encode())
        _fsync_dir(tmp)
        _hook("before_rename", tmp)
        if directory.exists():
            old = parent / f".{directory.name}.old-{token}"
            os.rename(directory, old)
            os.rename(tmp, directory)
            _fsync_dir(parent)
            shutil.rmtree(old)
        else:
            os.rename(tmp, directory)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _find(directory: Path) -> Path:
    """``directory``, or the copy an overwrite interrupted between its two renames."""
    if (directory / INDEX_FILE).exists():
        return directory
    if not directory.exists():
        olds = sorted(
            directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime
        )
        if olds and (olds[-1] / INDEX_FILE).exists():
            return olds[-1]
        raise CheckpointError(f"no checkpoint at {directory} (the directory does not exist).")
    raise CheckpointError(
        f"{directory} is not an fnn checkpoint: {INDEX_FILE} is missing (an interrupted save "
        "never leaves this state; was the directory copied partially?)."
    )


def read_info(directory: str | os.PathLike) -> dict:
    """The parsed ``checkpoint.json`` (``metadata``, ``metrics``, ``leaves``, ...) without
    loading arrays."""
    directory = _find(Path(directory))
    try:
        index = json.loads((directory / INDEX_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{directory / INDEX_FILE} is corrupted or truncated ({err}); restore an earlier "
            "checkpoint."
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{directory / INDEX_FILE} is not an fnn checkpoint index.")
    if index.get("version") != VERSION:
        raise CheckpointError(
            f"{directory} has checkpoint format version {index.get('version')}, this fnn reads "
            f"version {VERSION}."
        )
    for key in ("structure", "leaves", "arrays_sha256", "arrays_bytes"):
        if key not in index:
            raise CheckpointError(f"{directory / INDEX_FILE} is corrupted: no {key!r} entry.")
    index["directory"] = str(directory)
    return index


def _read_arrays(directory: Path, index: dict, verify: bool) -> dict[str, np.ndarray]:
    path = directory / ARRAYS_FILE
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if len(data) != index["arrays_bytes"]:
        raise CheckpointError(
            f"{path} is truncated or corrupted: {len(data)} bytes, expected "
            f"{index['arrays_bytes']}; restore an earlier checkpoint."
        )
    if verify and _sha256(data) != index["arrays_sha256"]:
        raise CheckpointError(
            f"{path} is corrupted: its SHA-256 does not match {INDEX_FILE}; restore an earlier "
            "checkpoint."
        )
    try:
        views = safetensors.deserialize(data)
        arrays = {}
        for name, view in views:
            dtype = _ST_DTYPES[view["dtype"]]
            arrays[name] = np.frombuffer(bytes(view["data"]), dtype=dtype).reshape(view["shape"])
    except (safetensors.SafetensorError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupted: {err}") from None
    return arrays


def _load_leaf(info: dict, arrays: dict, directory: Path) -> Any:
    if info["kind"] == "python":
        return info["value"]
    name = info.get("tensor")
    if name not in arrays:
        raise CheckpointError(
            f"{directory / ARRAYS_FILE} is corrupted: tensor {name!r} for {info['path']} missing."
        )
    raw = arrays[name]
    if info["kind"] == "key":
        impl = info["impl"]
        try:
            return jax.random.wrap_key_data(raw, impl=impl)
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{info['path']}: cannot rebuild PRNG keys of impl {impl!r}: {err}"
            ) from None
    array = raw.view(np.dtype(info["dtype"])) if raw.dtype.name != info["dtype"] else raw
    if list(array.shape) != info["shape"]:
        raise CheckpointError(
            f"{directory / ARRAYS_FILE} is corrupted: {info['path']} has shape "
            f"{tuple(array.shape)}, index says {tuple(info['shape'])}."
        )
    return array


def restore(directory: str | os.PathLike, target: Any = None, *, verify: bool = True) -> Any:
    """Load the tree saved in ``directory``.

    ``target`` (arrays, ``jax.ShapeDtypeStruct`` or Python scalars, e.g. from
    ``jax.eval_shape``) fixes the structure and types; a mismatch in structure, shape, dtype
    or PRNG implementation raises ``CheckpointError`` naming every mismatched path.
    Without ``target``, NamedTuples/dataclasses come back as dicts keyed by field name.
    ``verify`` checks the SHA-256 of the arrays file.
    """
    index = read_info(directory)
    directory = Path(index["directory"])
    arrays = _read_arrays(directory, index, verify)
    try:
        values = [_load_leaf(info, arrays, directory) for info in index["leaves"]]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / INDEX_FILE} is corrupted: {err!r}") from None
    if target is None:
        leaves = [v if isinstance(v, bool | int | float | str) else jnp.asarray(v) for v in values]
        return _decode_plain(index["structure"], leaves)
    target_structure, target_leaves = _encode(target)
    problems: list[str] = []
    _diff(index["structure"], index["leaves"], target_structure, target_leaves, (), problems)
    if problems:
        shown = "\n  ".join(problems)
        raise CheckpointError(
            f"checkpoint {directory} does not match the target tree ({len(problems)} "
            f"mismatch{'es' if len(problems) > 1 else ''}):\n  {shown}"
        )
    by_path = {info["path"]: value for info, value in zip(index["leaves"], values, strict=True)}
    out = [_to_target(by_path[jax.tree_util.keystr(path)], leaf) for path, leaf in target_leaves]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), out)


def _describe(info: dict) -> str:
    if info["kind"] == "python":
        return f"Python {info['type']}"
    if info["kind"] == "key":
        return f"PRNG keys {info['dtype']} shape {tuple(info['shape'])}"
    return f"{info['dtype']}{list(info['shape'])}"


def _diff(saved, saved_leaves, target, target_leaves, path, problems) -> None:
    where = describe_path(path)
    if "leaf" in saved or "leaf" in target:
        if "leaf" not in saved:
            problems.append(f"{where}: checkpoint has a subtree, target has a leaf")
            return
        if "leaf" not in target:
            problems.append(f"{where}: checkpoint has a leaf, target has a subtree")
            return
        info = saved_leaves[saved["leaf"]]
        value = target_leaves[target["leaf"]][1]
        want = _leaf_info(value, where)
        same = info["kind"] == want["kind"]
        if same and info["kind"] == "python":
            same = info["type"] == want["type"] or {info["type"], want["type"]} <= {"int", "float"}
        elif same:
            same = info["dtype"] == want["dtype"] and info["shape"] == want["shape"]
            if info["kind"] == "key" and want.get("impl") not in (None, info["impl"]):
                same = False
        if not same:
            problems.append(f"{where}: checkpoint has {_describe(info)}, target {_describe(want)}")
        return
    s_kind = saved["type"] if saved["type"] != "node" else saved["class"]
    t_kind = target["type"] if target["type"] != "node" else target["class"]
    if s_kind != t_kind:
        problems.append(f"{where}: checkpoint has a {s_kind}, target a {t_kind}")
        return
    s_children = {json.dumps(e): (e, c) for e, c in saved["children"]}
    t_children = {json.dumps(e): (e, c) for e, c in target["children"]}
    for key, (entry, child) in t_children.items():
        child_path = (*path, _entry_from_json(entry))
        if key not in s_children:
            problems.append(f"{describe_path(child_path)}: missing from the checkpoint")
        else:
            _diff(s_children[key][1], saved_leaves, child, target_leaves, child_path, problems)
    for key, (entry, _) in s_children.items():
        if key not in t_children:
            child_path = (*path, _entry_from_json(entry))
            problems.append(f"{describe_path(child_path)}: in the checkpoint but not in the target")


def _to_target(value: Any, like: Any) -> Any:
    if isinstance(like, bool | int | float | str):
        return type(like)(value)
    if isinstance(like, np.generic):
        return np.asarray(value)[()]
    if isinstance(like, np.ndarray):
        return np.array(value)
    sharding = getattr(like, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding) and not _is_key(value):
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.device_put(value, sharding)
    return jnp.asarray(value)


# ---------------------------------------------------------------------------------------
# Manager


_STEP_DIR = re.compile(r"^step_(\d+)$")


def list_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the complete ``step_*`` checkpoints in a manager's ``directory``, ascending
    (read-only: nothing is created or cleaned)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / INDEX_FILE).exists():
            found.append(int(match.group(1)))
    return sorted(found)


class CheckpointManager:
    """Numbered checkpoints ``step_00000042`` in ``directory``: keeps the last
    ``max_to_keep`` plus (``keep_best``) the one with the best ``best_metric``
    (``mode="min"`` or ``"max"``) among the metrics passed to ``save``.

    >>> import tempfile, jax.numpy as jnp
    >>> from fnn.io.checkpoint import CheckpointManager
    >>> manager = CheckpointManager(tempfile.mkdtemp(), max_to_keep=2, best_metric="loss")
    >>> for step, loss in [(1, 0.5), (2, 0.1), (3, 0.3), (4, 0.4)]:
    ...     _ = manager.save(step, {"w": jnp.full(2, step)}, metrics={"loss": loss})
    >>> manager.steps(), manager.best_step(), manager.latest_step()
    ([2, 3, 4], 2, 4)
    >>> manager.restore(target={"w": jnp.zeros(2, "int32")})["w"]
    Array([4, 4], dtype=int32)
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        max_to_keep: int | None = 3,
        keep_best: bool = True,
        best_metric: str = "val_loss",
        mode: str = "min",
    ):
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ConfigError(
                f"CheckpointManager: expected max_to_keep >= 1 or None, got {max_to_keep!r}."
            )
        if mode not in ("min", "max"):
            raise ConfigError(f"CheckpointManager: expected mode 'min' or 'max', got {mode!r}.")
        self.directory = Path(directory)
        self.max_to_keep = max_to_keep
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.mode = mode
        if jax.process_index() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Leftovers of saves killed before their rename; never valid checkpoints.
            for stale in self.directory.glob(".step_*.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)

    def path(self, step: int) -> Path:
        """Directory of the checkpoint of ``step``."""
        return self.directory / f"step_{int(step):08d}"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending."""
        return list_steps(self.directory)

    def latest_step(self) -> int | None:
        """The newest step on disk, or ``None``."""
        steps = self.steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict[str, float]:
        """The metrics saved with ``step``."""
        return read_info(self.path(step))["metrics"]

    def best_step(self) -> int | None:
        """The step with the best ``best_metric`` (ties: the earliest), or ``None``."""
        best, best_value = None, None
        for step in self.steps():
            try:
                value = self.metrics(step).get(self.best_metric)
            except CheckpointError:
                continue
            if value is None or math.isnan(value):
                continue
            better = best_value is None or (
                value < best_value if self.mode == "min" else value > best_value
            )
            if better:
                best, best_value = step, value
        return best

    def save(
        self,
        step: int,
        tree: Any,
        *,
        metrics: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save ``tree`` as checkpoint ``step`` (replacing one of the same step), then prune."""
        path = save(self.path(step), tree, metadata=metadata, metrics=metrics, overwrite=True)
        if jax.process_index() == 0:
            self._prune()
        _sync(f"fnn.checkpoint.prune:{path}")
        return path

    def _prune(self) -> None:
        if self.max_to_keep is None:
            return
        steps = self.steps()
        keep = set(steps[-self.max_to_keep :])
        if self.keep_best:
            best = self.best_step()
            if best is not None:
                keep.add(best)
        for step in steps:
            if step not in keep:
                shutil.rmtree(self.path(step), ignore_errors=True)

    def restore(self, step: int | None = None, target: Any = None) -> Any:
        """Load checkpoint ``step`` (default: the latest) with :func:`restore`."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoints in {self.directory}.")
        return restore(self.path(step), target)

    def restore_best(self, target: Any = None) -> Any:
        """Load the checkpoint with the best ``best_metric``."""
        step = self.best_step()
        if step is None:
            raise CheckpointError(
                f"no checkpoint in {self.directory} has metric {self.best_metric!r}."
            )
        return restore(self.path(step), target)
