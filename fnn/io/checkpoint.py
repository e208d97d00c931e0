"""Checkpoints: save and restore any pytree (a train state) to a directory, atomically.

A checkpoint is a directory with two files:

- ``arrays.safetensors``: every array leaf, named by its pytree path
  (``params/dense/kernel``). bfloat16 is stored as safetensors ``BF16`` and typed PRNG
  keys (``jax.random.key``) as their ``uint32`` key data, so other safetensors readers
  can open the file; nothing in it can execute code.
- ``checkpoint.json``: the tree structure (containers, dict keys, NamedTuple/dataclass
  class names), per-leaf kind, dtype and shape keyed by ``jax.tree_util.keystr`` path,
  PRNG implementations, Python scalars, user ``metadata``/``metrics``, a SHA-256 of
  the arrays file, and a SHA-256 of the index itself (``index_sha256``, over its canonical
  JSON), so a changed byte in either file is caught on restore. Nothing is pickled.

``save`` writes into a hidden temporary directory next to the target, fsyncs the files
and the directory, then renames it into place, so a crash during a save leaves the
previous checkpoint intact. ``restore(directory, target)`` rebuilds the tree with
``target``'s structure (NamedTuples of optax states, dataclasses) after checking
structure, shapes and dtypes, and names every mismatched path. Without ``target``
containers come back as dicts, lists and tuples. Every problem with the files
(missing, truncated, corrupted, wrong format, a malformed index) raises
:class:`CheckpointError` naming the file and the problem; restore never returns values
other than the saved ones. Version-1 checkpoints (written before the index checksum)
are still read, with their index checked for consistency only.

**Sharded checkpoints** (format version 3). When a leaf is a ``jax.Array`` split over
devices (FSDP or tensor-parallel params and their optimizer moments), nothing is gathered:
each process writes the distinct shards its own devices hold (one copy of each, however
often it is replicated) to ``shards_<process>.safetensors``, named
``params/dense/kernel[0:4,0:8]``; process 0 writes the replicated leaves to
``arrays.safetensors`` and the index, which records every shard's file and bounds and the
size and SHA-256 of every shard file. All processes write into one hidden temporary
directory that process 0 renames into place after every file is complete (so the
processes must share the file system, as on any multi-host cluster). ``restore`` reads
only the shard files the requested slices need and assembles any layout from them: onto
another mesh or device count (``shardings=``, or target leaves that carry a sharding),
onto one device, or to host arrays, with bit-identical values.

In multi-process runs every process calls ``save`` and ``restore``; only process 0 writes
the index and the replicated leaves, and all wait for it. Arrays whose target leaf
carries a sharding (or that ``shardings`` names) are placed with it, each process
building only its own devices' shards.

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
    "SHARDS_FILE",
    "CheckpointError",
    "CheckpointManager",
    "check_directory_path",
    "list_steps",
    "read_info",
    "restore",
    "save",
]

FORMAT = "fnn.checkpoint"
VERSION = 2
# Checkpoints with device-sharded leaves; unsharded ones stay version 2, which older fnn
# reads.
SHARDED_VERSION = 3
# Versions this module reads; 1 has no index checksum.
_READABLE_VERSIONS = (1, 2, 3)
ARRAYS_FILE = "arrays.safetensors"
INDEX_FILE = "checkpoint.json"
# The shards one process writes, by process index.
SHARDS_FILE = "shards_{:05d}.safetensors"
_SHARDS_FILE_RE = re.compile(r"^shards_\d{5}\.safetensors$")

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
        x = x.addressable_data(0)  # replicated (sharded leaves go to the shard files)
    return np.asarray(x, order="C")  # (ascontiguousarray would turn scalars into shape (1,))


def _is_sharded(x: Any) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_replicated


def _shard_records(data: jax.Array, name: str, owned: dict[str, np.ndarray]) -> list[dict]:
    """Every distinct shard of ``data`` as ``{"file", "tensor", "start", "stop"}``, the first
    device holding it (in the sharding's device order, the same on every process) being
    its owner; this process's owned shards are added to ``owned``."""
    shape = tuple(data.shape)
    local = {shard.device: shard for shard in data.addressable_shards}
    records, seen = [], set()
    for device, index in data.sharding.devices_indices_map(shape).items():
        bounds = tuple(sl.indices(n)[:2] for sl, n in zip(index, shape, strict=True))
        if bounds in seen:
            continue
        seen.add(bounds)
        tensor = f"{name}[{','.join(f'{a}:{b}' for a, b in bounds)}]"
        records.append(
            {
                "file": SHARDS_FILE.format(device.process_index),
                "tensor": tensor,
                "start": [a for a, _ in bounds],
                "stop": [b for _, b in bounds],
            }
        )
        if device.process_index == jax.process_index():
            owned[tensor] = np.asarray(local[device].data, order="C")
    return records


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
    after the new one is complete). Call it on every process. Arrays split over devices
    are written shard by shard, each process writing only the shards its devices hold
    (format version 3, see the module docstring); everything else process 0 writes.
    """
    directory = Path(directory)
    structure, leaves = _encode(tree)
    names = _tensor_names([p for p, _ in leaves])
    records, tensors, owned, sharded = [], {}, {}, False
    for (path, value), name in zip(leaves, names, strict=True):
        info = {"path": jax.tree_util.keystr(path), **_leaf_info(value, describe_path(path))}
        if info["kind"] == "python":
            info["value"] = value
        else:
            data = jax.random.key_data(value) if info["kind"] == "key" else value
            if _is_sharded(data):
                info["shards"] = _shard_records(data, name, owned)
                sharded = True
            else:
                tensors[name] = _host_array(data)
                info["tensor"] = name
        records.append(info)
    index = {
        "format": FORMAT,
        "version": SHARDED_VERSION if sharded else VERSION,
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
    if sharded:
        _write_sharded(directory, index, tensors, owned, overwrite)
    elif jax.process_index() == 0:
        _write_atomic(directory, index, tensors, overwrite)
    _sync(f"fnn.checkpoint.save:{directory}")
    return directory


def _write_sharded(
    directory: Path, index: dict, tensors: dict, owned: dict, overwrite: bool
) -> None:
    """Each process writes its shard file into one shared temporary directory; process 0
    adds the replicated leaves and the index (with every shard file's size and SHA-256,
    gathered from the processes) and renames the directory into place."""
    pid = jax.process_index()
    # Every process checks (they share the file system), so all raise together.
    if directory.exists() and not overwrite:
        raise CheckpointError(f"{directory} already exists; pass overwrite=True to replace it.")
    _check_replaceable(directory)
    tmp = directory.parent / f".{directory.name}.tmp-{_shared_token()}"
    if pid == 0:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    _sync(f"fnn.checkpoint.mkdir:{directory}")
    try:
        data = safetensors.numpy.save(owned, metadata={"format": FORMAT})
        _write_file(tmp / SHARDS_FILE.format(pid), data)
        _hook("shards_written", tmp)
        files = {
            SHARDS_FILE.format(i): {"bytes": size, "sha256": digest}
            for i, (size, digest) in enumerate(_all_digests(len(data), _sha256(data)))
        }
    except BaseException:
        if jax.process_count() == 1:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if pid == 0:
        _write_atomic(directory, {**index, "shard_files": files}, tensors, overwrite, tmp=tmp)


def _shared_token() -> str:
    """A random name part, the same on every process (process 0's)."""
    token = np.frombuffer(uuid.uuid4().bytes[:4], np.uint8).astype(np.int32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        token = multihost_utils.broadcast_one_to_all(token)
    return bytes(int(v) for v in np.asarray(token)).hex()


def _all_digests(size: int, digest: str) -> list[tuple[int, str]]:
    """``(bytes, sha256)`` of every process's shard file, by process index."""
    # As int32 bytes: collectives without x64 would truncate a 64-bit size.
    row = np.array([*bytes.fromhex(digest), *size.to_bytes(8, "little")], np.int32)
    rows = [row]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        rows = list(np.asarray(multihost_utils.process_allgather(row)))
    out = []
    for r in rows:
        raw = bytes(int(v) for v in r)
        out.append((int.from_bytes(raw[32:], "little"), raw[:32].hex()))
    return out


def _write_atomic(
    directory: Path, index: dict, tensors: dict, overwrite: bool, *, tmp: Path | None = None
) -> None:
    """Write ``tensors`` and ``index`` into ``tmp`` (a new hidden directory unless given,
    e.g. already holding shard files), then rename it to ``directory``."""
    if directory.exists() and not overwrite:
        raise CheckpointError(f"{directory} already exists; pass overwrite=True to replace it.")
    _check_replaceable(directory)
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    if tmp is None:
        tmp = parent / f".{directory.name}.tmp-{token}"
        tmp.mkdir()
    try:
        data = safetensors.numpy.save(tensors, metadata={"format": FORMAT})
        _write_file(tmp / ARRAYS_FILE, data)
        _hook("arrays_written", tmp)
        index = {**index, "arrays_bytes": len(data), "arrays_sha256": _sha256(data)}
        # The checksum is taken over the parsed form, exactly what read_info recomputes.
        parsed = json.loads(json.dumps(index, default=_json_default))
        index = {**index, "index_sha256": _index_sha256(parsed)}
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


def _check_replaceable(directory: Path) -> None:
    """Refuse to replace anything but an fnn checkpoint or an empty directory: overwrite
    must never move a user's file or folder aside."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"cannot save a checkpoint to {directory}: it is a file, not a checkpoint "
            "directory; it was left untouched. Choose another path."
        )
    if directory.is_dir() and not (directory / INDEX_FILE).is_file() and any(directory.iterdir()):
        raise CheckpointError(
            f"cannot overwrite {directory}: it is a non-empty directory without "
            f"{INDEX_FILE}, not an fnn checkpoint; it was left untouched. Choose another path."
        )


def _index_sha256(index: Mapping[str, Any]) -> str:
    """SHA-256 of ``index`` (parsed JSON, without ``index_sha256``) in canonical form, so
    whitespace and number spelling do not matter but every value does."""
    body = {k: v for k, v in index.items() if k != "index_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _sha256(text.encode())


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
    loading arrays; its checksum and consistency are verified (``CheckpointError`` names
    the file and the problem)."""
    directory = _find(Path(directory))
    file = directory / INDEX_FILE
    try:
        index = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(
            f"{file} is corrupted or truncated ({_short(err)}); restore an earlier checkpoint."
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an fnn checkpoint index.")
    version = index.get("version")
    if type(version) is not int or version not in _READABLE_VERSIONS:
        raise CheckpointError(
            f"{directory} has checkpoint format version {_short(version)}, this fnn reads "
            f"versions {', '.join(map(str, _READABLE_VERSIONS))}."
        )
    if version >= 2:
        saved = index.get("index_sha256")
        if not isinstance(saved, str):
            raise CheckpointError(f"{file} is corrupted: no 'index_sha256' entry.")
        if _index_sha256(index) != saved:
            raise CheckpointError(
                f"{file} is corrupted: its SHA-256 does not match its 'index_sha256' entry "
                "(the file was edited or damaged); restore an earlier checkpoint."
            )
    try:
        _validate_index(index, version)
    except CheckpointError as err:
        raise CheckpointError(f"{file} is corrupted: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{file} is corrupted: its structure is nested too deeply.") from None
    index["directory"] = str(directory)
    return index


def _short(value: Any, limit: int = 200) -> str:
    # Strings (paths) as they are, other values as their repr; either way at most `limit`.
    text = str(value) if isinstance(value, BaseException | str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Mismatched paths listed in a restore error before "... and N more".
_MAX_SHOWN = 12

_V1_KEYS = {
    "format", "version", "structure", "leaves", "metadata", "metrics", "jax_version",
    "arrays_bytes", "arrays_sha256",
}  # fmt: skip
_ENTRY_KINDS = {"dict": (str, int), "seq": (int,), "attr": (str,), "flat": (int,)}
_NODE_TYPES = ("none", "dict", "list", "tuple", "node")
_PY_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _validate_index(index: dict, version: int) -> None:
    """Raise ``CheckpointError`` (without the file name) unless ``index`` is self-consistent:
    every structure node well formed, leaf references in range and used once, each leaf's
    path equal to its place in the structure, kinds/dtypes/shapes/values of the right types."""
    required = _V1_KEYS - {"jax_version"}
    missing = sorted(required - index.keys())
    if missing:
        raise CheckpointError(
            f"no {', '.join(map(repr, missing))} entr{'y' if len(missing) == 1 else 'ies'}."
        )
    if version == 1 and index.keys() - _V1_KEYS:
        extra = sorted(index.keys() - _V1_KEYS)
        raise CheckpointError(f"unexpected entries {_short(extra)} in a version-1 index.")
    leaves = index["leaves"]
    if not isinstance(leaves, list) or not all(isinstance(r, dict) for r in leaves):
        raise CheckpointError("'leaves' is not a list of records.")
    if not isinstance(index["metadata"], dict):
        raise CheckpointError("'metadata' is not a mapping.")
    metrics = index["metrics"]
    if not isinstance(metrics, dict) or not all(type(v) in (int, float) for v in metrics.values()):
        raise CheckpointError("'metrics' is not a mapping of numbers.")
    if type(index["arrays_bytes"]) is not int or not isinstance(index["arrays_sha256"], str):
        raise CheckpointError("'arrays_bytes'/'arrays_sha256' have the wrong types.")
    files = index.get("shard_files", {})
    if version < SHARDED_VERSION and "shard_files" in index:
        raise CheckpointError(f"'shard_files' in a version-{version} index.")
    if not isinstance(files, dict) or not all(
        isinstance(name, str)
        and _SHARDS_FILE_RE.match(name)  # a plain name in the directory, never a path
        and isinstance(f, dict)
        and type(f.get("bytes")) is int
        and isinstance(f.get("sha256"), str)
        for name, f in files.items()
    ):
        raise CheckpointError("'shard_files' is malformed.")
    paths: dict[int, str] = {}

    def walk(node: Any, path: tuple) -> None:
        if not isinstance(node, dict):
            raise CheckpointError(
                f"structure node at {_short(describe_path(path))} is not a mapping."
            )
        if "leaf" in node:
            i = node["leaf"]
            if type(i) is not int or not 0 <= i < len(leaves) or len(node) != 1:
                raise CheckpointError(
                    f"leaf reference {_short(i)} at {_short(describe_path(path))} is out of "
                    f"range (the index lists {len(leaves)} leaves)."
                )
            if i in paths:
                raise CheckpointError(f"leaf {i} is referenced twice.")
            paths[i] = jax.tree_util.keystr(path)
            return
        kind, children = node.get("type"), node.get("children")
        if kind not in _NODE_TYPES or not isinstance(children, list):
            raise CheckpointError(f"structure node at {_short(describe_path(path))} is malformed.")
        if kind == "node" and not isinstance(node.get("class"), str):
            raise CheckpointError(f"node at {_short(describe_path(path))} has no class name.")
        for child in children:
            ok = isinstance(child, list) and len(child) == 2 and isinstance(child[0], list)
            ok = ok and len(child[0]) == 2 and child[0][0] in _ENTRY_KINDS
            if ok:
                key = child[0][1]
                ok = isinstance(key, _ENTRY_KINDS[child[0][0]]) and not isinstance(key, bool)
            if not ok:
                raise CheckpointError(
                    f"child entry {_short(child)} at {_short(describe_path(path))} is malformed."
                )
            walk(child[1], (*path, _entry_from_json(child[0])))

    walk(index["structure"], ())
    if len(set(paths.values())) != len(paths):
        raise CheckpointError("two leaves have the same path (a repeated key).")
    if len(paths) != len(leaves):
        raise CheckpointError(
            f"the structure references {len(paths)} leaves, the leaf list has {len(leaves)}."
        )
    tensors, shard_tensors = set(), set()
    for i, record in enumerate(leaves):
        where = _short(record.get("path"))
        if record.get("path") != paths[i]:
            raise CheckpointError(
                f"leaf {i} is recorded as {where}, the structure puts it at {_short(paths[i])}."
            )
        kind = record.get("kind")
        if kind == "python":
            want = _PY_TYPES.get(record.get("type"))
            if want is None or "value" not in record or type(record["value"]) is not want:
                raise CheckpointError(f"Python value of {where} is malformed.")
            continue
        if kind not in ("array", "key"):
            raise CheckpointError(f"leaf {where} has unknown kind {_short(kind)}.")
        shape, name = record.get("shape"), record.get("tensor")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointError(f"leaf {where} has a malformed shape {_short(shape)}.")
        if "shards" in record:
            if version < SHARDED_VERSION or "tensor" in record:
                raise CheckpointError(f"leaf {where} has unexpected shards.")
            _validate_shards(record["shards"], shape, files, shard_tensors, where)
        else:
            if not isinstance(name, str) or name in tensors:
                raise CheckpointError(f"leaf {where} has a missing or repeated tensor name.")
            tensors.add(name)
        dtype = record.get("dtype")
        if kind == "array" and not any(np.dtype(t).name == dtype for t in _ST_DTYPES.values()):
            raise CheckpointError(f"leaf {where} has unsupported dtype {_short(dtype)}.")
        if kind == "key" and not (
            isinstance(dtype, str)
            and (record.get("impl") is None or isinstance(record.get("impl"), str))
        ):
            raise CheckpointError(f"PRNG key leaf {where} is malformed.")


def _validate_shards(shards: Any, shape: list, files: dict, seen: set, where: str) -> None:
    """Each shard names a listed file, a fresh tensor and in-bounds ``start``/``stop``, and
    the shards tile ``shape`` exactly (no gap, no overlap)."""
    if not isinstance(shards, list) or not shards:
        raise CheckpointError(f"leaf {where} has a malformed shard list.")
    boxes = []
    for shard in shards:
        ok = isinstance(shard, dict) and shard.get("file") in files
        ok = ok and isinstance(shard.get("tensor"), str)
        start, stop = (shard.get("start"), shard.get("stop")) if ok else (None, None)
        ok = ok and all(
            isinstance(b, list) and len(b) == len(shape) and all(type(v) is int for v in b)
            for b in (start, stop)
        )
        ok = ok and all(0 <= a <= b <= n for a, b, n in zip(start, stop, shape, strict=True))
        if not ok or (shard["file"], shard["tensor"]) in seen:
            raise CheckpointError(f"a shard of {where} is malformed: {_short(shard)}.")
        seen.add((shard["file"], shard["tensor"]))
        boxes.append((start, stop))
    volume = sum(math.prod(b - a for a, b in zip(*box, strict=True)) for box in boxes)
    overlap = any(
        all(max(a0, a1) < min(b0, b1) for a0, b0, a1, b1 in zip(*boxes[i], *boxes[j], strict=True))
        for i in range(len(boxes))
        for j in range(i)
    )
    if overlap or volume != math.prod(shape):
        raise CheckpointError(f"the shards of {where} do not tile its shape {tuple(shape)}.")


def _read_arrays(directory: Path, index: dict, verify: bool) -> dict[str, np.ndarray]:
    return _read_tensors(
        directory / ARRAYS_FILE, index["arrays_bytes"], index["arrays_sha256"], verify
    )


def _read_tensors(path: Path, size: int, digest: str, verify: bool) -> dict[str, np.ndarray]:
    """The tensors of one safetensors file after checking its size (and SHA-256)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if len(data) != size:
        raise CheckpointError(
            f"{path} is truncated or corrupted: {len(data)} bytes, expected "
            f"{size}; restore an earlier checkpoint."
        )
    if verify and _sha256(data) != digest:
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


def _load_leaf(info: dict, arrays: dict, directory: Path, shard_files: _ShardFiles) -> Any:
    if info["kind"] == "python":
        return info["value"]
    if "shards" in info:
        return _ShardedLeaf(info, shard_files)
    name = info.get("tensor")
    if name not in arrays:
        raise CheckpointError(
            f"{directory / ARRAYS_FILE} is corrupted: tensor {name!r} for {info['path']} missing."
        )
    return _from_raw(info, arrays[name], directory / ARRAYS_FILE)


def _from_raw(info: dict, raw: np.ndarray, file: Path) -> Any:
    """A stored tensor as the saved leaf: PRNG keys rewrapped, the dtype and shape checked."""
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
            f"{file} is corrupted: {info['path']} has shape "
            f"{tuple(array.shape)}, index says {tuple(info['shape'])}."
        )
    return array


class _ShardFiles:
    """The shard files of one checkpoint, each read (and checked) on first use."""

    def __init__(self, directory: Path, files: dict, verify: bool):
        self.directory, self.files, self.verify, self.loaded = directory, files, verify, {}

    def tensor(self, shard: dict, path: str) -> np.ndarray:
        name = shard["file"]
        if name not in self.loaded:
            f = self.files[name]
            self.loaded[name] = _read_tensors(
                self.directory / name, f["bytes"], f["sha256"], self.verify
            )
        data = self.loaded[name].get(shard["tensor"])
        want = [b - a for a, b in zip(shard["start"], shard["stop"], strict=True)]
        if data is None or list(data.shape) != want:
            found = "missing" if data is None else f"of shape {tuple(data.shape)}"
            raise CheckpointError(
                f"{self.directory / name} is corrupted: shard {shard['tensor']!r} of {path} is "
                f"{found}, the index says shape {tuple(want)}; restore an earlier checkpoint."
            )
        return data


class _ShardedLeaf:
    """A sharded leaf on disk: any slice of it is assembled from the shards it overlaps,
    reading only their files."""

    def __init__(self, info: dict, files: _ShardFiles):
        self.info, self.files = info, files
        self.shape = tuple(info["shape"])

    def region(self, index: tuple = ()) -> np.ndarray:
        """The stored values of ``x[index]`` (a tuple of slices, as a sharding gives)."""
        index = tuple(index) + (slice(None),) * (len(self.shape) - len(index))
        bounds = [sl.indices(n)[:2] for sl, n in zip(index, self.shape, strict=True)]
        out = None
        for shard in self.info["shards"]:
            lo = [max(a, s) for (a, _), s in zip(bounds, shard["start"], strict=True)]
            hi = [min(b, e) for (_, b), e in zip(bounds, shard["stop"], strict=True)]
            if any(low >= high for low, high in zip(lo, hi, strict=True)):
                continue
            data = self.files.tensor(shard, self.info["path"])
            if out is None:
                out = np.empty([b - a for a, b in bounds], data.dtype)
            into = tuple(slice(low - a, high - a) for low, high, (a, _) in zip(lo, hi, bounds))
            take = tuple(slice(low - s, high - s) for low, high, s in zip(lo, hi, shard["start"]))
            out[into] = data[take]
        if out is None:  # an empty slice
            dtype = np.uint32 if self.info["kind"] == "key" else np.dtype(self.info["dtype"])
            out = np.empty([b - a for a, b in bounds], dtype)
        if self.info["kind"] == "array" and out.dtype.name != self.info["dtype"]:
            out = out.view(np.dtype(self.info["dtype"]))
        return out

    def whole(self) -> Any:
        """The whole leaf on the host (PRNG keys rewrapped)."""
        file = self.files.directory / self.info["shards"][0]["file"]
        return _from_raw({**self.info, "shape": list(self.shape)}, self.region(), file)


def _whole(value: Any) -> Any:
    return value.whole() if isinstance(value, _ShardedLeaf) else value


def restore(
    directory: str | os.PathLike,
    target: Any = None,
    *,
    verify: bool = True,
    shardings: Any = None,
) -> Any:
    """Load the tree saved in ``directory``.

    ``target`` (arrays, ``jax.ShapeDtypeStruct`` or Python scalars, e.g. from
    ``jax.eval_shape``) fixes the structure and types; a mismatch in structure, shape, dtype
    or PRNG implementation raises ``CheckpointError`` naming every mismatched path.
    Without ``target``, NamedTuples/dataclasses come back as dicts keyed by field name.
    ``verify`` checks the SHA-256 of the arrays file and of each shard file read.

    Placement (any mesh or device count, whatever the saving one was): ``shardings`` is a
    tree like ``target`` of ``jax.sharding.Sharding``, one ``Sharding`` for every array,
    or a ``fnn.distributed.Distribution`` (mesh + rules, resolved on ``target`` as
    training places a state). Without it, target leaves that carry a ``.sharding``
    (placed arrays, ``ShapeDtypeStruct(..., sharding=...)``) are placed with it, others
    land on the default device. Each process builds only its own devices' shards.
    """
    index = read_info(directory)
    directory = Path(index["directory"])
    arrays = _read_arrays(directory, index, verify)
    shard_files = _ShardFiles(directory, index.get("shard_files", {}), verify)
    try:
        values = [_load_leaf(info, arrays, directory, shard_files) for info in index["leaves"]]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{directory / INDEX_FILE} is corrupted: {_short(err)}") from None
    if target is None and shardings is not None:
        if not isinstance(shardings, jax.sharding.Sharding):
            raise ConfigError(
                "checkpoint.restore: shardings other than one Sharding for every array need "
                f"a target tree to follow, got shardings={_short(shardings)} and no target."
            )
        leaves = [_to_target(v, None, shardings) for v in values]
        return _decode_plain(index["structure"], leaves)
    if target is None:
        leaves = [
            v if isinstance(v, bool | int | float | str) else jnp.asarray(_whole(v)) for v in values
        ]
        return _decode_plain(index["structure"], leaves)
    target_structure, target_leaves = _encode(target)
    problems: list[str] = []
    _diff(index["structure"], index["leaves"], target_structure, target_leaves, (), problems)
    if problems:
        # Bounded: a wholly different model would otherwise list every one of its leaves.
        shown = "\n  ".join(problems[:_MAX_SHOWN])
        more = len(problems) - _MAX_SHOWN
        if more > 0:
            shown += f"\n  ... and {more} more"
        raise CheckpointError(
            f"checkpoint {directory} does not match the target tree ({len(problems)} "
            f"mismatch{'es' if len(problems) > 1 else ''}):\n  {shown}"
        )
    by_path = {info["path"]: value for info, value in zip(index["leaves"], values, strict=True)}
    placements = _target_shardings(target, shardings)
    out = [
        _to_target(by_path[jax.tree_util.keystr(path)], leaf, sharding)
        for (path, leaf), sharding in zip(target_leaves, placements, strict=True)
    ]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), out)


def _target_shardings(target: Any, shardings: Any) -> list:
    """One sharding (or ``None``: the target leaf's own, if any) per leaf of ``target``."""
    treedef = jax.tree_util.tree_structure(target)
    if shardings is None:
        return [None] * treedef.num_leaves
    if isinstance(shardings, jax.sharding.Sharding):
        return [shardings] * treedef.num_leaves
    from fnn.distributed.sharding import Distribution, state_shardings

    if isinstance(shardings, Distribution):
        shardings = state_shardings(target, dict(shardings.rules), shardings.mesh)
    try:
        return treedef.flatten_up_to(shardings)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"checkpoint.restore: expected shardings with the target's structure (a tree of "
            f"jax.sharding.Sharding), one Sharding or a Distribution: {_short(err)}"
        ) from None


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


def _to_target(value: Any, like: Any, sharding: Any = None) -> Any:
    """``value`` (host array, PRNG keys, Python scalar or sharded leaf on disk) as ``like``:
    placed with ``sharding``, else with ``like``'s own sharding, if any."""
    if isinstance(value, bool | int | float | str):
        return value if like is None else type(like)(value)
    if isinstance(like, np.generic):
        return np.asarray(_whole(value))[()]
    if isinstance(like, np.ndarray):
        return np.array(_whole(value))
    if not isinstance(sharding, jax.sharding.Sharding):
        sharding = getattr(like, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
        return jnp.asarray(_whole(value))
    if isinstance(value, _ShardedLeaf) and value.info["kind"] == "array":
        return jax.make_array_from_callback(value.shape, sharding, value.region)
    value = _whole(value)
    if _is_key(value):
        # Placed as key data (device_put cannot reach other processes' devices); the data's
        # extra last axis is not split.
        data = np.asarray(jax.random.key_data(value))
        placed = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
        return jax.random.wrap_key_data(placed, impl=jax.random.key_impl(value))
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


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

    def restore(self, step: int | None = None, target: Any = None, *, shardings=None) -> Any:
        """Load checkpoint ``step`` (default: the latest) with :func:`restore`."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoints in {self.directory}.")
        return restore(self.path(step), target, shardings=shardings)

    def restore_best(self, target: Any = None, *, shardings=None) -> Any:
        """Load the checkpoint with the best ``best_metric``."""
        step = self.best_step()
        if step is None:
            raise CheckpointError(
                f"no checkpoint in {self.directory} has metric {self.best_metric!r}."
            )
        return restore(self.path(step), target, shardings=shardings)
