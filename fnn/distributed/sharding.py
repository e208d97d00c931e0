"""Sharding rules: glob patterns on parameter paths -> mesh axes, checked against a mesh.

A rule set is an ordered mapping ``{pattern: spec}``. ``pattern`` is an ``fnmatch`` glob on
a parameter's ``"/"``-joined path (``*`` also crosses ``/``, so ``"*/kernel"`` selects every
nested kernel); the first matching rule wins; a parameter no rule selects is replicated.
``spec`` is a ``PartitionSpec``-like tuple with one entry per array dimension: a mesh axis
name, a tuple of names, or ``None`` (not split). A leading ``...`` aligns the spec with the
*last* dimensions (for parameters stacked by ``fnn.repeat``, which gain a leading axis).

Data parallelism is the empty rule set: every parameter replicated, only the batch split.

>>> import jax
>>> mesh = make_mesh(jax.devices()[:1])
>>> dict(mesh.shape)
{'data': 1, 'fsdp': 1, 'tensor': 1}
>>> params = {"dense": {"kernel": jax.ShapeDtypeStruct((8, 4), "float32"),
...                     "bias": jax.ShapeDtypeStruct((4,), "float32")}}
>>> specs = resolve_rules({"*/kernel": ("fsdp", "tensor")}, params, mesh)
>>> specs["dense"]["kernel"].spec, specs["dense"]["bias"].spec
(P('fsdp', 'tensor'), P())
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fnn.core.errors import ConfigError, ShapeError
from fnn.core.pytree import slash_path

PyTree = Any
Rules = Mapping[str, Sequence[Any]]

__all__ = [
    "BATCH_AXES",
    "MESH_AXES",
    "TRANSFORMER_RULES",
    "follow_params",
    "make_mesh",
    "parse_mesh",
    "per_device_bytes",
    "resolve_rules",
    "sharding_table",
    "state_shardings",
]

# The conventional axes: ``data`` (pure data parallel), ``fsdp`` (batch and parameters
# split), ``tensor`` (parameters split inside a layer, activations follow).
MESH_AXES = ("data", "fsdp", "tensor")
# Mesh axes the batch is split over (with ``"batch"``, the 1-D data-parallel mesh's axis).
BATCH_AXES = ("batch", "data", "fsdp")

# FSDP x tensor rules for ``fnn.layers.TransformerEncoderBlock`` params (Megatron layout:
# heads and the hidden MLP width over ``tensor``, the model width over ``fsdp``). Right-
# aligned, so they also fit blocks stacked by ``fnn.repeat``. Add rules for the embedding
# and the head: ``{**TRANSFORMER_RULES, "embedding/embeddings": ("tensor", "fsdp")}``.
TRANSFORMER_RULES = {
    "*/attention/attention_output/kernel": (..., "tensor", None, "fsdp"),  # [heads, hd, dim]
    "*/attention/attention_output/bias": (),
    "*/attention/*/kernel": (..., "fsdp", "tensor", None),  # [dim, heads, head_dim]
    "*/attention/*/bias": (..., "tensor", None),  # [heads, head_dim]
    "*/ffn/dense/kernel": (..., "fsdp", "tensor"),  # [dim, ff_dim]
    "*/ffn/dense/bias": (..., "tensor"),  # [ff_dim]
    "*/ffn/dense_1/kernel": (..., "tensor", "fsdp"),  # [ff_dim, dim]
}


def make_mesh(devices=None, **axes: int) -> Mesh:
    """A mesh with axes ``data``, ``fsdp``, ``tensor`` (missing ones size 1) plus any others,
    ``Auto`` axis types (XLA propagates shardings), devices ordered by process.

    ``make_mesh(fsdp=4, tensor=2)`` -> ``{'data': 1, 'fsdp': 4, 'tensor': 2}``. A size of
    ``-1`` takes the remaining devices. The product must equal the device count.

    >>> dict(make_mesh(data=-1).shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    True
    """
    devices = sorted(
        jax.devices() if devices is None else list(devices), key=lambda d: (d.process_index, d.id)
    )
    sizes = {name: 1 for name in MESH_AXES}
    for name, size in axes.items():
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ConfigError(
                f"make_mesh: expected {name} to be a positive int or -1, got {size!r}."
            )
        sizes[name] = size
    free = [n for n, s in sizes.items() if s == -1]
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if len(free) > 1:
        raise ConfigError(f"make_mesh: at most one axis may be -1, got {free}.")
    if free:
        if len(devices) % fixed:
            raise ConfigError(
                f"make_mesh: {len(devices)} devices do not divide by the other axes' product "
                f"{fixed} ({sizes})."
            )
        sizes[free[0]] = len(devices) // fixed
    total = math.prod(sizes.values())
    if total != len(devices):
        raise ConfigError(
            f"make_mesh: expected the axis sizes to multiply to the {len(devices)} devices, got "
            f"{sizes} (product {total}). Use -1 for one axis to take the rest."
        )
    array = np.array(devices, dtype=object).reshape(tuple(sizes.values()))
    return Mesh(array, tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))


def parse_mesh(text: str | Mapping[str, int]) -> dict[str, int]:
    """``"fsdp=4,tensor=2"`` (or a mapping) -> ``{"fsdp": 4, "tensor": 2}`` for ``make_mesh``.

    >>> parse_mesh("fsdp=4, tensor=2")
    {'fsdp': 4, 'tensor': 2}
    """
    if isinstance(text, Mapping):
        return {str(k): v for k, v in text.items()}
    out = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(
                f"mesh: expected 'axis=size' entries separated by commas (e.g. "
                f"'fsdp=4,tensor=2'), got {part!r} in {text!r}."
            )
    return out


def _spec_entries(pattern: str, spec) -> list:
    if isinstance(spec, P):
        spec = tuple(spec)
    if isinstance(spec, str) or spec is None:
        spec = (spec,)
    if not isinstance(spec, Sequence):
        raise ConfigError(
            f"sharding rule {pattern!r}: expected a tuple of mesh axis names or None, got {spec!r}."
        )
    # "..." is how YAML and JSON configs spell the Ellipsis.
    return [Ellipsis if s == "..." else s for s in spec]


def _axes_of(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, list | tuple) else (entry,)


def _resolve_one(path: str, shape: tuple, pattern: str, spec, mesh: Mesh) -> P:
    entries = _spec_entries(pattern, spec)
    right = bool(entries) and entries[0] is Ellipsis
    if right:
        entries = entries[1:]
    if Ellipsis in entries:
        raise ConfigError(f"sharding rule {pattern!r}: '...' may only come first, got {spec!r}.")
    if len(entries) > len(shape):
        raise ShapeError(
            f"sharding rule {pattern!r}: spec {tuple(entries)} has {len(entries)} entries but "
            f"{path} has shape {shape} (rank {len(shape)}). Give at most one entry per dimension."
        )
    pad = [None] * (len(shape) - len(entries))
    entries = pad + entries if right else entries + pad
    used: list[str] = []
    for dim, (size, entry) in enumerate(zip(shape, entries)):
        axes = _axes_of(entry)
        for axis in axes:
            if axis not in mesh.shape:
                raise ConfigError(
                    f"sharding rule {pattern!r}: axis {axis!r} (for {path}) is not in the mesh, "
                    f"whose axes are {dict(mesh.shape)}."
                )
            if axis in used:
                raise ConfigError(
                    f"sharding rule {pattern!r}: axis {axis!r} is used twice in {tuple(entries)}."
                )
            used.append(axis)
        split = math.prod(mesh.shape[a] for a in axes)
        if size % split:
            raise ShapeError(
                f"sharding rule {pattern!r}: dimension {dim} of {path} (shape {shape}) has size "
                f"{size}, not divisible by mesh axes {axes} of size {split}. Choose a size that "
                f"is a multiple of {split} or shard another dimension."
            )
    while entries and entries[-1] is None:
        entries.pop()
    return P(*(tuple(e) if isinstance(e, list) else e for e in entries))


def resolve_rules(rules: Rules | None, params: PyTree, mesh: Mesh) -> PyTree:
    """A tree like ``params`` of ``NamedSharding``: each leaf's first matching rule.

    ``params``: arrays or ``jax.ShapeDtypeStruct``. Raises ``ConfigError`` for a rule that
    selects no parameter or names an axis not in ``mesh``, ``ShapeError`` for a dimension
    not divisible by its mesh axes (the message names the rule, path and shape).
    """
    rules = dict(rules or {})
    for pattern in rules:
        if not isinstance(pattern, str):
            raise ConfigError(f"sharding rules: expected glob pattern strings, got {pattern!r}.")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [slash_path(p) for p, _ in leaves]
    hits = {pattern: 0 for pattern in rules}
    out = []
    for path, (_, leaf) in zip(paths, leaves):
        spec = P()
        for pattern, rule in rules.items():
            if fnmatch.fnmatchcase(path, pattern):
                hits[pattern] += 1
                spec = _resolve_one(path, tuple(np.shape(leaf)), pattern, rule, mesh)
                break
        out.append(NamedSharding(mesh, spec))
    unused = [p for p, n in hits.items() if not n]
    if unused:
        # A rule shadowed by an earlier one also counts as matching nothing.
        raise ConfigError(
            f"sharding rules: {', '.join(repr(p) for p in unused)} match no parameter (rules "
            f"are tried in order, the first match wins). Parameter paths: {', '.join(paths)}."
        )
    return jax.tree_util.tree_unflatten(treedef, out)


def follow_params(tree: PyTree, params: PyTree, param_shardings: PyTree, replicated) -> PyTree:
    """Shardings for every leaf of ``tree`` (e.g. a whole train state): a leaf whose path
    ends with a parameter's path and has its shape takes that parameter's sharding (Adam's
    ``mu``/``nu`` follow the params), every other leaf is ``replicated``."""
    by_path = {}
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_shardings)
    ):
        by_path[slash_path(path)] = (tuple(np.shape(leaf)), sharding)

    def pick(path, leaf):
        parts = slash_path(path).split("/")
        shape = tuple(np.shape(leaf))
        for i in range(len(parts)):
            hit = by_path.get("/".join(parts[i:]))
            if hit is not None and hit[0] == shape:
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def state_shardings(tree: PyTree, rules: Rules | None, mesh: Mesh) -> PyTree:
    """A ``NamedSharding`` for every leaf of a train state ``tree`` (arrays or shapes).

    The rules apply to ``tree.params`` (or ``tree["params"]``, or the whole tree when it
    has neither); leaves that mirror a parameter (path suffix and shape, e.g. Adam's
    ``mu``/``nu``) follow it; everything else is replicated over ``mesh``.

    >>> mesh = make_mesh(jax.devices()[:1])
    >>> tree = {"params": {"w": jax.ShapeDtypeStruct((4, 2), "float32")}, "step": 0}
    >>> state_shardings(tree, {"w": ("fsdp",)}, mesh)["params"]["w"].spec
    P('fsdp',)
    """
    params = getattr(tree, "params", None)
    if params is None and isinstance(tree, dict):
        params = tree.get("params")
    params = tree if params is None else params
    param_shardings = resolve_rules(rules, params, mesh)
    return follow_params(tree, params, param_shardings, NamedSharding(mesh, P()))


def per_device_bytes(tree: PyTree) -> int:
    """Bytes of ``tree``'s arrays held by the most loaded device, measured from each
    array's addressable shards (placed ``jax.Array`` leaves)."""
    totals: dict = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return max(totals.values(), default=0)


def _bytes_on_one_device(shape, dtype, sharding) -> int:
    shard = sharding.shard_shape(tuple(shape))
    return int(math.prod(shard)) * np.dtype(dtype).itemsize


def _entry_text(entry) -> str:
    if isinstance(entry, tuple):
        return "(" + ", ".join(entry) + ")"
    return str(entry)


def sharding_table(params: PyTree, shardings: PyTree | None = None) -> str:
    """A table of every parameter: path, shape, partition spec and bytes per device.

    ``params``: placed arrays (their own ``.sharding``) or shapes with ``shardings`` from
    :func:`resolve_rules`. The last line sums the bytes (per device and in all).

    >>> import jax, jax.numpy as jnp
    >>> mesh = make_mesh(jax.devices()[:1])
    >>> p = {"kernel": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
    >>> print(sharding_table(p, resolve_rules({"kernel": ("fsdp",)}, p, mesh)))
    param   shape   spec     bytes/device
    kernel  (8, 4)  (fsdp)            128
    total                    128 of 128
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if shardings is None:
        shards = [leaf.sharding for _, leaf in leaves]
    else:
        shards = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
    rows, per_device, total = [], 0, 0
    for (path, leaf), sharding in zip(leaves, shards):
        shape = tuple(np.shape(leaf))
        spec = getattr(sharding, "spec", P())
        text = "(" + ", ".join(_entry_text(s) for s in spec) + ")"
        text = "replicated" if not tuple(spec) else text
        nbytes = _bytes_on_one_device(shape, leaf.dtype, sharding)
        per_device += nbytes
        total += int(math.prod(shape)) * np.dtype(leaf.dtype).itemsize
        rows.append((slash_path(path), str(shape), text, str(nbytes)))
    header = ("param", "shape", "spec", "bytes/device")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    widths[3] = max(widths[3], len(f"{per_device} of {total}") - 0)

    def line(r):
        return f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}"

    lines = [line(header).rstrip()] + [line(r) for r in rows]
    lines.append(
        f"{'total':<{widths[0]}}  {'':<{widths[1]}}  {'':<{widths[2]}}  {per_device} of {total}"
    )
    return "\n".join(lines)


class Distribution(tuple):
    """A mesh plus sharding rules: what ``Model.fit(distribution=...)`` and the CLI's
    ``distribute:`` take. Build it with :meth:`get` from ``{"mesh": "fsdp=4,tensor=2",
    "rules": {...}}`` (``mesh`` a string, a mapping of axis sizes or a ``Mesh``).

    >>> d = Distribution.get({"mesh": {"data": -1}, "rules": {}})
    >>> d.mesh.shape["data"] == jax.device_count(), d.rules
    (True, ())
    """

    __slots__ = ()

    def __new__(cls, mesh: Mesh, rules: Rules | None = None):
        frozen = tuple((str(k), _freeze(v)) for k, v in dict(rules or {}).items())
        return super().__new__(cls, (mesh, frozen))

    @property
    def mesh(self) -> Mesh:
        return self[0]

    @property
    def rules(self) -> tuple:
        """The rules as ``((pattern, spec), ...)`` in order (``dict(d.rules)`` for a mapping)."""
        return self[1]

    @classmethod
    def get(cls, value) -> Distribution:
        if isinstance(value, Distribution):
            return value
        if isinstance(value, Mesh):
            return cls(value)
        if not isinstance(value, Mapping) or set(value) - {"mesh", "rules"}:
            raise ConfigError(
                "distribution: expected {'mesh': 'fsdp=4,tensor=2' (or axis sizes, or a Mesh), "
                f"'rules': {{glob: spec}}}}, got {value!r}."
            )
        mesh = value.get("mesh", {"data": -1})
        if not isinstance(mesh, Mesh):
            mesh = make_mesh(**parse_mesh(mesh))
        return cls(mesh, value.get("rules") or {})


def _freeze(spec):
    if isinstance(spec, list | tuple | P):
        return tuple(_freeze(s) for s in spec)
    return spec
