"""Data parallelism: one train step on 1 device, N devices or N processes, same result.

The entry point is :func:`data_parallel`. It wraps a train step
``step(train_state, batch) -> (train_state, logs)`` into a callable with the same
contract that splits the batch over devices and keeps the train state replicated:

- ``method="sharded"`` (default; what JAX recommends now that ``pmap`` is in
  maintenance mode): ``jax.jit`` over a 1-D ``Mesh`` with the batch sharded as
  ``NamedSharding(mesh, P("batch"))`` and the state replicated. A step built with
  ``axis_name=None`` sees the *global* batch and XLA inserts the collectives; a step
  built with ``axis_name="batch"`` runs per device under ``jax.shard_map``.
- ``method="pmap"``: ``jax.pmap`` with the state replicated along a leading device
  axis (:func:`replicate`) and the batch split as ``[devices, batch / devices, ...]``
  (:func:`shard_batch`). The step must reduce over ``axis_name`` (build it with
  ``make_train_step(..., axis_name="batch")``), otherwise every device would train its
  own copy on its own shard; this is checked on the first call.

Both give the single-device result up to float rounding (measured: max parameter
difference ~3e-8 after a few Adam steps, BatchNormalization statistics synchronised).
Exception: dropout. The global view draws exactly the single-device masks; per-device
steps fold the device index into the key, so their masks differ (equally random).

With several processes (see :mod:`fnn.distributed`) every process calls the same
step with only its own slice of the global batch.

Sharded parameters (FSDP, tensor parallel) are the same mechanism with a rule set
(:mod:`fnn.distributed.sharding`): ``data_parallel(step, devices=mesh, rules=...)`` places
each parameter by its first matching rule, the optimizer state follows the parameters,
the batch is split over the mesh's ``data``/``fsdp`` axes, and the same global-view step
is compiled once with those shardings (XLA inserts the gathers and reductions).
``rules=None`` (or ``{}``) is plain data parallelism.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fnn.core.errors import ConfigError, ShapeError
from fnn.core.pytree import describe_path
from fnn.distributed import runtime as distributed
from fnn.distributed import sharding as sharding_lib

PyTree = Any
Step = Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]

__all__ = [
    "DataParallelStep",
    "batch_mesh",
    "data_parallel",
    "replicate",
    "shard_batch",
    "unreplicate",
]

_METHODS = ("sharded", "pmap")


# ----------------------------------------------------------------------------- helpers


def _divisible_sizes(size: int, n: int) -> str:
    lower, upper = (size // n) * n, (size // n + 1) * n
    options = [s for s in (lower, upper) if s > 0]
    return " or ".join(str(s) for s in options) + f" (any multiple of {n})"


def _batch_size(batch: PyTree, who: str) -> int:
    """The common leading size of every leaf of ``batch`` (raises ``ShapeError``)."""
    shapes = [getattr(x, "shape", ()) for x in jax.tree.leaves(batch)]
    if shapes and all(shapes):
        sizes = {shape[0] for shape in shapes}
        if len(sizes) == 1:
            return sizes.pop()
    # Slow path: find the offending leaf for the message.
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ShapeError(f"{who}: expected a batch with at least one array, got {batch!r}.")
    size = None
    for path, leaf in leaves:
        shape = tuple(np.shape(leaf))
        if not shape:
            raise ShapeError(
                f"{who}: expected batch arrays with a leading batch axis, got a scalar at "
                f"{describe_path(path)}."
            )
        if size is None:
            size, first = shape[0], describe_path(path)
        elif shape[0] != size:
            raise ShapeError(
                f"{who}: expected every batch array to have the same batch size, got {size} "
                f"at {first} and {shape[0]} at {describe_path(path)} (shape {shape})."
            )
    return size


def _check_divisible(batch: PyTree, n: int, who: str, what: str = "devices") -> int:
    size = _batch_size(batch, who)
    if size % n:
        raise ShapeError(
            f"{who}: expected a batch size divisible by the {n} {what}, got batch size {size}. "
            f"Use a batch size of {_divisible_sizes(size, n)}, or drop the last incomplete "
            "batch."
        )
    return size


def shard_batch(batch: PyTree, num_devices: int) -> PyTree:
    """Split every batch array ``[batch, ...] -> [num_devices, batch / num_devices, ...]``.

    The layout ``pmap`` maps over. NumPy arrays stay NumPy (no copy); the sizes must divide:

    >>> import numpy as np
    >>> shard_batch({"x": np.zeros((8, 3)), "y": np.zeros(8)}, 4)["x"].shape
    (4, 2, 3)
    >>> shard_batch(np.zeros((6, 3)), 4)
    Traceback (most recent call last):
    ...
    fnn.core.errors.ShapeError: shard_batch: expected a batch size divisible by the 4 devices, got batch size 6. Use a batch size of 4 or 8 (any multiple of 4), or drop the last incomplete batch.
    """
    if not isinstance(num_devices, int) or num_devices < 1:
        raise ConfigError(f"shard_batch: expected num_devices >= 1, got {num_devices!r}.")
    size = _check_divisible(batch, num_devices, "shard_batch")
    per_device = size // num_devices
    return jax.tree.map(lambda x: x.reshape(num_devices, per_device, *x.shape[1:]), batch)


def _stack_copies(x, n: int):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(
            _stack_copies(jax.random.key_data(x), n), impl=jax.random.key_impl(x)
        )
    x = np.asarray(x)
    return np.broadcast_to(x, (n, *x.shape))


def replicate(tree: PyTree, devices: Sequence[jax.Device] | None = None) -> PyTree:
    """One copy of every leaf per device on a new leading axis: ``[...] -> [devices, ...]``.

    The state layout ``pmap`` expects. ``devices`` defaults to this process's devices
    (``jax.local_devices()``); :func:`unreplicate` undoes it.

    >>> import jax, numpy as np
    >>> rep = replicate({"w": np.ones(3)})
    >>> rep["w"].shape == (jax.local_device_count(), 3)
    True
    """
    devices = list(jax.local_devices() if devices is None else devices)
    return _replicate(tree, NamedSharding(Mesh(np.array(devices), ("devices",)), P("devices")))


def _replicate(tree: PyTree, sharding: NamedSharding) -> PyTree:
    n = sharding.mesh.size
    return jax.device_put(jax.tree.map(lambda x: _stack_copies(x, n), tree), sharding)


def unreplicate(tree: PyTree) -> PyTree:
    """The first copy of a :func:`replicate`-d tree: ``[devices, ...] -> [...]``.

    >>> import jax, numpy as np
    >>> unreplicate(replicate({"w": np.ones(3)}))["w"].shape
    (3,)
    """
    return jax.tree.map(lambda x: x[0], tree)


def batch_mesh(
    devices: int | Sequence[jax.Device] | Mesh | None = None,
    axis_name: str = "batch",
    *,
    any_axes: bool = False,
) -> Mesh:
    """A 1-D mesh ``{axis_name: len(devices)}`` with the ``Auto`` axis type.

    ``jax.make_mesh`` defaults to ``Explicit`` axes (sharding in types); data-parallel
    steps are written for the global view, so the batch axis is ``Auto`` and XLA
    propagates shardings. A given ``Mesh`` keeps its devices and names, its axes
    become ``Auto``. Devices are ordered by process so each process owns a contiguous
    slice of the batch.

    >>> import jax
    >>> mesh = batch_mesh(1)
    >>> dict(mesh.shape), mesh.axis_types
    ({'batch': 1}, (Auto,))
    """
    if isinstance(devices, Mesh):
        if axis_name not in devices.axis_names and not any_axes:
            raise ConfigError(
                f"data_parallel: expected a mesh with an axis named {axis_name!r}, got axes "
                f"{devices.axis_names}. Pass axis_name= to match the mesh."
            )
        return Mesh(
            devices.devices,
            devices.axis_names,
            axis_types=(AxisType.Auto,) * len(devices.axis_names),
        )
    return Mesh(np.array(_resolve_devices(devices)), (axis_name,), axis_types=(AxisType.Auto,))


def _resolve_devices(devices) -> list[jax.Device]:
    everything = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if devices is None:
        return everything
    if isinstance(devices, int):
        if not 1 <= devices <= len(everything):
            raise ConfigError(
                f"data_parallel: expected between 1 and {len(everything)} devices, got "
                f"devices={devices}."
            )
        if jax.process_count() > 1 and devices != len(everything):
            raise ConfigError(
                f"data_parallel: with {jax.process_count()} processes use all "
                f"{len(everything)} devices (devices=None), got devices={devices}."
            )
        return everything[:devices]
    devices = list(devices)
    if not devices:
        raise ConfigError("data_parallel: expected at least one device, got an empty list.")
    return devices


def _uses_axis(jaxpr, axis_name) -> bool:
    """Whether any equation (sub-jaxprs included) communicates over ``axis_name``."""
    for eqn in jaxpr.eqns:
        for key in ("axes", "axis_name"):
            value = eqn.params.get(key)
            if axis_name in (value if isinstance(value, tuple | list) else (value,)):
                return True
        for value in eqn.params.values():
            for item in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns") and _uses_axis(inner, axis_name):
                    return True
    return False


def _per_device_step(step: Step, state, local_batch, axis_name: str, n: int) -> bool:
    """Trace ``step`` on one device's view; True when it reduces over ``axis_name``."""
    try:
        closed = jax.make_jaxpr(step, axis_env=[(axis_name, n)])(state, local_batch)
    except NameError as err:
        raise ConfigError(
            f"data_parallel: the step communicates over an axis data_parallel does not "
            f"provide ({err}). Build the step with axis_name={axis_name!r}, or pass "
            "data_parallel(..., axis_name=<the step's axis>)."
        ) from None
    return _uses_axis(closed.jaxpr, axis_name)


# ----------------------------------------------------------------------------- entry point


class DataParallelStep:
    """A data-parallel train step: ``(train_state, batch) -> (train_state, logs)``.

    Built by :func:`data_parallel`. ``batch`` is the global batch (in multi-process
    runs: this process's slice of it, see ``fnn.distributed.process_batch_slice``),
    ``train_state`` must be placed once with :meth:`put_state` and is returned placed;
    :meth:`get_state` gives an ordinary single-copy state back (for evaluation,
    saving). ``logs`` come back as one value each (not one per device).
    """

    def __init__(
        self,
        step: Step,
        *,
        devices=None,
        method: Literal["sharded", "pmap"] = "sharded",
        axis_name: str = "batch",
        donate: bool = False,
        global_input: bool = False,
        rules: sharding_lib.Rules | None = None,
    ):
        if method not in _METHODS:
            raise ConfigError(
                f"data_parallel: unknown method {method!r}. Valid methods: {', '.join(_METHODS)}."
            )
        if not callable(step):
            raise ConfigError(
                f"data_parallel: expected a step function (train_state, batch) -> "
                f"(train_state, logs), got {step!r}."
            )
        self.step, self.method, self.axis_name = step, method, axis_name
        # Mesh mode: a rule set, or a mesh with several axes (data x fsdp x tensor).
        self.rules = None if rules is None else dict(rules)
        multi_axis = isinstance(devices, Mesh) and len(devices.axis_names) > 1
        self._mesh_mode = self.rules is not None or multi_axis
        if self._mesh_mode and method != "sharded":
            raise ConfigError(
                f"data_parallel(method={method!r}): sharding rules and multi-axis meshes need "
                "method='sharded'."
            )
        self.mesh = batch_mesh(devices, axis_name, any_axes=self._mesh_mode)
        self.devices = list(self.mesh.devices.flat)
        self.num_devices = len(self.devices)
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.num_local_devices = len(self.local_devices)
        self._multi_process = jax.process_count() > 1
        self.global_input = global_input
        self._donate = (0,) if donate else ()
        self._fn = None
        self._per_device = None
        self._checked_leaves = -1
        if method == "pmap":
            if len(self.mesh.axis_names) != 1:
                raise ConfigError(
                    f"data_parallel(method='pmap'): expected a 1-D device list, got a mesh of "
                    f"shape {dict(self.mesh.shape)}; use method='sharded' for meshes."
                )
            local_mesh = Mesh(np.array(self.local_devices), (axis_name,))
            self.state_sharding = NamedSharding(local_mesh, P(axis_name))
            self.batch_sharding = self.state_sharding
        elif self._mesh_mode:
            self.state_sharding = NamedSharding(self.mesh, P())  # for leaves no rule selects
            names = self.mesh.axis_names
            batch_axes = tuple(a for a in names if a in (*sharding_lib.BATCH_AXES, axis_name))
            self.batch_axes = batch_axes
            self.batch_sharding = NamedSharding(self.mesh, P(batch_axes or None))
            self.batch_divisor = int(np.prod([self.mesh.shape[a] for a in batch_axes]))
            self._local_divisor = max(1, self.batch_divisor // jax.process_count())
        else:
            self.state_sharding = NamedSharding(self.mesh, P())
            self.batch_sharding = NamedSharding(self.mesh, P(axis_name))
        if not self._mesh_mode:
            self.batch_divisor, self._local_divisor = self.num_devices, self.num_local_devices
        self._shardings = None  # (train state treedef, shardings tree) in mesh mode

    def __repr__(self) -> str:
        if self._mesh_mode:
            return (
                f"<fnn DataParallelStep mesh={dict(self.mesh.shape)} "
                f"rules={len(self.rules or {})} batch_axes={self.batch_axes}>"
            )
        return (
            f"<fnn DataParallelStep method={self.method!r} devices={self.num_devices} "
            f"axis_name={self.axis_name!r}>"
        )

    @property
    def input_divisor(self) -> int:
        """What the rows of a batch passed in must divide by: this process's batch shards
        when each process passes only its own rows, else all of them."""
        local = self._multi_process and not self.global_input
        return self._local_divisor if local else self.batch_divisor

    # -- placement ------------------------------------------------------------------------
    def state_shardings(self, train_state: PyTree) -> PyTree:
        """The ``NamedSharding`` of every leaf of ``train_state`` (arrays or shapes).

        The rules apply to ``train_state.params`` (or ``["params"]``, or the whole tree
        when it has neither); leaves that mirror a parameter (path suffix and shape, e.g.
        Adam's moments) follow it; everything else is replicated.
        """
        if not self._mesh_mode:
            return jax.tree.map(lambda _: self.state_sharding, train_state)
        treedef = jax.tree.structure(train_state)
        if self._shardings is not None and self._shardings[0] == treedef:
            return self._shardings[1]
        tree = sharding_lib.state_shardings(train_state, self.rules, self.mesh)
        self._shardings = (treedef, tree)
        return tree

    def init_state(self, init_fn: Callable[..., PyTree], *args) -> PyTree:
        """``init_fn(*args)`` (e.g. ``lambda: fnn.train.init_train_state(...)``) compiled with
        the state's shardings as ``out_shardings``: every array is created already placed,
        each device computing only its shards (no full copy on one device)."""
        shapes = jax.eval_shape(init_fn, *args)
        if self.method == "pmap":
            return self.put_state(jax.jit(init_fn)(*args))
        return jax.jit(init_fn, out_shardings=self.state_shardings(shapes))(*args)

    def put_state(self, train_state: PyTree) -> PyTree:
        """Place a single-copy train state for this step (replicated over the devices; with
        rules, each parameter and its optimizer state sharded by its rule)."""
        if self._mesh_mode:
            shardings = self.state_shardings(train_state)
            if not self._multi_process:
                if self._donate:
                    train_state = jax.tree.map(jnp.copy, train_state)
                return jax.device_put(train_state, shardings)
            return jax.tree.map(self._global_placed, train_state, shardings)
        if self.method == "pmap":
            return _replicate(train_state, self.state_sharding)
        if not self._multi_process:
            if self._donate:
                # device_put may alias the caller's buffers; donation would delete them.
                train_state = jax.tree.map(jnp.copy, train_state)
            return jax.device_put(train_state, self.state_sharding)
        return jax.tree.map(lambda x: _global_replicated(x, self.state_sharding), train_state)

    def _global_placed(self, x, sharding):
        # A leaf already placed by its rule (e.g. built by init_state across processes)
        # stays where it is: a host round trip would need all of its shards on each host.
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
            return jnp.copy(x) if self._donate else x
        return _global_replicated(x, sharding)

    def get_state(self, train_state: PyTree) -> PyTree:
        """The single-copy train state back from a placed one (on this process's first device).

        With rules the arrays stay where they are (sharded over the mesh; they work in any
        later computation); in multi-process runs sharded leaves are gathered to every process.
        """
        if self.method == "pmap":
            return unreplicate(train_state)
        if self._mesh_mode:
            if not self._multi_process:
                return train_state
            from jax.experimental import multihost_utils

            return jax.tree.map(
                lambda x: (
                    x.addressable_data(0)
                    if x.is_fully_replicated
                    else multihost_utils.process_allgather(x, tiled=True)
                ),
                train_state,
            )
        return jax.tree.map(lambda x: x.addressable_data(0), train_state)

    def put_batch(self, batch: PyTree) -> PyTree:
        """Place this process's batch on the devices (use it to prefetch the next batch).

        ``pmap``: ``[batch, ...] -> [local_devices, batch / local_devices, ...]``;
        ``sharded``: a global array ``[global_batch, ...]`` split over the mesh.
        """
        batch = self._layout_batch(batch)
        if self.method == "sharded" and self._multi_process:
            return batch  # already global arrays
        return jax.device_put(batch, self.batch_sharding)

    def _layout_batch(self, batch: PyTree) -> PyTree:
        """Check and lay out a host batch; NumPy stays NumPy (the step copies it faster)."""
        who = f"data_parallel(method={self.method!r})"
        if self.global_input and self._multi_process:
            batch = distributed.process_local_batch(batch)
        what = "local batch shards" if self._mesh_mode else "local devices"
        _check_divisible(batch, self._local_divisor, who, what)
        if self.method == "pmap":
            return shard_batch(batch, self.num_local_devices)
        if self._multi_process:
            return distributed.global_batch(batch, self.batch_sharding)
        return batch

    # -- the step ---------------------------------------------------------------------------
    def __call__(self, train_state: PyTree, batch: PyTree) -> tuple[PyTree, PyTree]:
        leaves = jax.tree.leaves(batch)
        placed = [isinstance(x, jax.Array) and x.sharding == self.batch_sharding for x in leaves]
        if not (leaves and all(placed)):
            batch = self._layout_batch(batch)
            if any(isinstance(x, jax.Array) for x in jax.tree.leaves(batch)) and not (
                self.method == "sharded" and self._multi_process
            ):
                # Arrays may be committed to another device; NumPy goes straight to the step.
                batch = jax.device_put(batch, self.batch_sharding)
        self._check_state(train_state)
        if self._fn is None:
            self._fn = self._build(train_state, batch)
        train_state, logs = self._fn(train_state, batch)
        if self._multi_process and self.method == "sharded":
            logs = jax.tree.map(lambda x: x.addressable_data(0), logs)
        return train_state, logs

    def _check_state(self, train_state) -> None:
        leaves = jax.tree.leaves(train_state)
        if self._mesh_mode:
            expected = jax.tree.leaves(
                self.state_shardings(train_state), is_leaf=lambda s: isinstance(s, NamedSharding)
            )
            same = leaves and len(leaves) == self._checked_leaves
            if same and getattr(leaves[-1], "sharding", None) == expected[-1]:
                return
            for (path, leaf), want in zip(
                jax.tree_util.tree_leaves_with_path(train_state), expected
            ):
                self._check_leaf(path, leaf, want)
            self._checked_leaves = len(leaves)
            return
        # Full check on the first call (and when the state changes size), then a cheap look
        # at one leaf per call: steps return the state placed as they received it.
        if leaves and len(leaves) == self._checked_leaves:
            first = leaves[0]
            if self.method == "pmap":
                shape = getattr(first, "shape", ())
                if shape and shape[0] == self.num_local_devices:
                    return
            elif getattr(first, "sharding", None) == self.state_sharding:
                return
        for path, leaf in jax.tree_util.tree_leaves_with_path(train_state):
            self._check_leaf(path, leaf)
        self._checked_leaves = len(leaves)

    def _check_leaf(self, path, leaf, want=None) -> None:
        who = f"data_parallel(method={self.method!r})"
        shape = tuple(np.shape(leaf))
        if want is not None:
            sharding = getattr(leaf, "sharding", None)
            if sharding is not None and not sharding.is_equivalent_to(want, len(shape)):
                raise ConfigError(
                    f"{who}: expected {describe_path(path)} (shape {shape}) placed as "
                    f"{want.spec} on the mesh {dict(self.mesh.shape)}, got {_describe(sharding)}. "
                    "Place the state once with step.put_state(state) or step.init_state(fn)."
                )
            return
        if self.method == "pmap":
            n = self.num_local_devices
            if not shape or shape[0] != n:
                raise ConfigError(
                    f"{who}: expected a train state replicated over {n} devices (every array "
                    f"with a leading axis of {n}), got shape {shape} at {describe_path(path)}. "
                    "Place it once with step.put_state(state) (fnn.distributed.replicate) and "
                    "get it back with step.get_state(state) (fnn.distributed.unreplicate)."
                )
            return
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and not sharding.is_equivalent_to(self.state_sharding, len(shape)):
            raise ConfigError(
                f"{who}: expected a train state replicated over the {self.num_devices} mesh "
                f"devices, got {_describe(sharding)} at {describe_path(path)} (shape {shape}). "
                "Place it once with step.put_state(state); step.get_state(state) gives it back."
            )

    def _build(self, train_state, batch):
        n = self.num_devices
        if self.method == "pmap":
            local = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), batch)
            state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), train_state)
            if not _per_device_step(self.step, state, local, self.axis_name, n):
                raise ConfigError(
                    f"data_parallel(method='pmap'): the step never reduces over axis "
                    f"{self.axis_name!r}, so each device would train its own copy on its own "
                    f"shard. Build it with make_train_step(..., axis_name={self.axis_name!r}), "
                    "or use method='sharded' for a step built with axis_name=None."
                )
            return jax.pmap(
                self.step,
                axis_name=self.axis_name,
                devices=None if self._multi_process else self.devices,
                out_axes=(0, None),
                donate_argnums=self._donate,
            )
        state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), train_state)
        local = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((x.shape[0] // n, *x.shape[1:]), x.dtype), batch
        )
        if self._mesh_mode:
            shardings = self.state_shardings(train_state)
            return jax.jit(
                self.step,
                in_shardings=(shardings, self.batch_sharding),
                out_shardings=(shardings, self.state_sharding),
                donate_argnums=self._donate,
            )
        self._per_device = _per_device_step(self.step, state, local, self.axis_name, n)
        fn = self.step
        if self._per_device:
            # Same per-device semantics as pmap (gradients are reduced by the step itself).
            fn = jax.shard_map(
                self.step,
                mesh=self.mesh,
                in_specs=(P(), P(self.axis_name)),
                out_specs=(P(), P()),
                check_vma=False,
            )
        return jax.jit(
            fn,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, self.state_sharding),
            donate_argnums=self._donate,
        )


def _describe(sharding) -> str:
    devices = sharding.device_set
    if len(devices) == 1:
        return f"an array on one device ({next(iter(devices))})"
    return f"an array with sharding {sharding}"


def _global_replicated(x, sharding: NamedSharding):
    # Any sharding: each process builds only the shards its devices hold.
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _global_replicated(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def data_parallel(
    step: Step,
    *,
    devices: int | Sequence[jax.Device] | Mesh | None = None,
    method: Literal["sharded", "pmap"] = "sharded",
    axis_name: str = "batch",
    donate: bool = False,
    global_input: bool = False,
    rules: sharding_lib.Rules | None = None,
) -> DataParallelStep:
    """Run ``step(train_state, batch) -> (train_state, logs)`` data-parallel.

    Args:
      step: a train step, e.g. from ``fnn.train.make_train_step``. For ``"pmap"`` build
        it with ``axis_name=axis_name`` (it must ``pmean`` the gradients); for
        ``"sharded"`` either ``axis_name=None`` (global view, XLA inserts the
        collectives; recommended) or ``axis_name=axis_name`` (per-device view under
        ``shard_map``).
      devices: ``None`` (all devices), a count (the first ones), a list of devices or,
        for ``"sharded"``, a ``jax.sharding.Mesh`` (its axes are made ``Auto``).
      method: ``"sharded"`` (``jax.jit`` over a mesh) or ``"pmap"``.
      axis_name: name of the device axis the batch is split along.
      donate: donate the input train state's buffers to the output (saves memory; the
        state passed in can no longer be used).
      global_input: every process passes the whole global batch (e.g. each loads the full
        dataset and shuffles it with the same seed, as ``Model.fit`` does) and keeps only
        its own block of rows (``fnn.distributed.process_local_batch``). Default: each
        process passes only its own block.
      rules: sharding rules ``{glob on param path: spec}`` (see
        :mod:`fnn.distributed.sharding`) with ``devices`` a mesh from
        ``fnn.distributed.make_mesh(fsdp=4, tensor=2)``: parameters and optimizer state
        sharded, the batch split over ``data`` x ``fsdp``. ``None``: all replicated.

    Returns:
      A :class:`DataParallelStep` ``dp``: ``state = dp.put_state(state)`` once, then
      ``state, logs = dp(state, batch)`` with the global batch ``[batch, ...]`` (per
      process: its own slice), and ``dp.get_state(state)`` for a single-copy state.

    Any ``(carry, batch) -> (carry, logs)`` function fits, e.g. evaluation with
    ``ev = make_eval_step(..., axis_name=...)`` as
    ``lambda ts, b: (ts._replace(metric_states=ev(ts.metric_states, ts.params, ts.state, b)), {})``.

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> def step(w, batch):  # global view: plain least squares on the whole batch
    ...     loss, g = jax.value_and_grad(lambda w: jnp.mean((batch["x"] @ w - batch["y"]) ** 2))(w)
    ...     return w - 0.1 * g, {"loss": loss}
    >>> dp = data_parallel(step)  # all devices; 8 divides by 1, 2, 4 or 8 of them
    >>> w = dp.put_state(jnp.zeros(3))
    >>> batch = {"x": np.ones((8, 3), np.float32), "y": np.ones(8, np.float32)}
    >>> w, logs = dp(w, batch)
    >>> print(logs["loss"], dp.get_state(w))
    1.0 [0.2 0.2 0.2]
    """
    return DataParallelStep(
        step,
        devices=devices,
        method=method,
        axis_name=axis_name,
        donate=donate,
        global_input=global_input,
        rules=rules,
    )
