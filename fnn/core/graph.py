"""The functional API: symbolic tensors, layer calls recorded as nodes, and a graph of
layers compiled into one ordinary ``Layer``.

``x = Input((784,))`` is a symbolic ``Tensor``; calling a layer on symbolic tensors
(``Dense(64)(x)``) records a ``Node`` and returns symbolic outputs whose shapes come from
abstract evaluation (no FLOPs, no memory; ``None`` marks sizes that follow the data).
``functional(inputs, outputs)`` turns the recorded DAG into a declarative
``Functional`` spec (layers, nodes and references, all JSON) and that spec into an
init/apply pair: params and state keyed by each distinct layer's unique name (a shared
layer has one entry), ``rng`` split per node, state threaded through every call.

>>> import jax, fnn
>>> from fnn.layers import Dense, concatenate
>>> a, b = fnn.Input((3,), name="a"), fnn.Input((5,), name="b")
>>> h = concatenate([Dense(4)(a), b])
>>> h.shape
(None, 9)
>>> layer = functional([a, b], Dense(2, name="out")(h), name="net")
>>> params, _ = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 3), "float32"),
...                        jax.ShapeDtypeStruct((1, 5), "float32"))
>>> sorted(params), params["out"]["kernel"].shape
(['dense', 'out'], (9, 2))
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import eager
from fnn.core.combinators import call_child, child_names, renamed_error, split_rng
from fnn.core.errors import MAX_REPR, ConfigError, FnnError, ShapeError
from fnn.core.layer import KERAS_FACE, Layer, as_shape_struct, register_layer

__all__ = ["Input", "Node", "Tensor", "functional", "is_symbolic"]

# Sizes substituted for ``None`` while shapes are inferred: two traces with different sizes
# tell which output sizes follow the data (they differ) and which are fixed.
_BATCH_SIZES = (2, 3)
_FREE_SIZES = (96, 160)


class Tensor:
    """A symbolic tensor (Keras's ``KerasTensor``): a shape with ``None`` for sizes that
    follow the data, a dtype, and the node that produced it."""

    __array_priority__ = 1000  # numpy defers ``array + tensor`` to ``Tensor.__radd__``

    def __init__(self, shape, dtype, name: str, node: Node | None = None, index: int = 0):
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = jnp.dtype(dtype)
        self.name = name
        self.node = node  # None: a model input
        self.index = index  # position among the node's flattened outputs

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<fnn.Tensor shape={self.shape} dtype={self.dtype.name} name={self.name!r}>"

    def __bool__(self):
        raise ConfigError(
            f"{self.name}: a symbolic tensor has no value; its truth cannot be tested (use it "
            "as a layer input, or call the model on arrays)."
        )

    # Arithmetic records ``TensorOp`` nodes, so ``x + y`` and ``x[:, 0]`` work in graphs.
    def _op(self, op: str, other: Any = None, reverse: bool = False) -> Tensor:
        if other is None or isinstance(other, Tensor):
            args = (self,) if other is None else ((other, self) if reverse else (self, other))
            return TensorOp(op)(*args)
        constant = np.asarray(other).tolist()
        return TensorOp(op, constant=constant, reverse=reverse)(self)

    def __add__(self, o):
        return self._op("add", o)

    def __radd__(self, o):
        return self._op("add", o, True)

    def __sub__(self, o):
        return self._op("subtract", o)

    def __rsub__(self, o):
        return self._op("subtract", o, True)

    def __mul__(self, o):
        return self._op("multiply", o)

    def __rmul__(self, o):
        return self._op("multiply", o, True)

    def __truediv__(self, o):
        return self._op("divide", o)

    def __rtruediv__(self, o):
        return self._op("divide", o, True)

    def __matmul__(self, o):
        return self._op("matmul", o)

    def __pow__(self, o):
        return self._op("power", o)

    def __neg__(self):
        return self._op("negative")

    def __getitem__(self, index):
        return TensorOp("getitem", constant=_encode_index(index))(self)


def Input(
    shape: Sequence[int | None] | None = None,
    batch_size: int | None = None,
    dtype: Any = None,
    name: str | None = None,
    *,
    batch_shape: Sequence[int | None] | None = None,
) -> Tensor:
    """A symbolic model input, as ``keras.Input``: ``shape`` excludes the batch axis,
    ``None`` marks a size that follows the data (e.g. sequence length).

    >>> import fnn
    >>> fnn.Input((None, 8), dtype="int32", name="tokens")
    <fnn.Tensor shape=(None, None, 8) dtype=int32 name='tokens'>
    """
    if batch_shape is not None:
        full = tuple(batch_shape)
    else:
        if shape is None:
            raise ConfigError("Input: expected shape=(...) (without the batch axis), got None.")
        if isinstance(shape, int):
            shape = (shape,)
        full = (batch_size, *tuple(shape))
    for d in full:
        if d is not None and (not isinstance(d, int | np.integer) or isinstance(d, bool) or d < 0):
            raise ConfigError(
                f"Input: expected shape entries to be ints >= 0 or None, got {tuple(full)}."
            )
    try:
        dtype = jnp.dtype(dtype or "float32")
    except TypeError:
        raise ConfigError(f"Input: unknown dtype {dtype!r}.") from None
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"Input: expected name to be a string, got {name!r}.")
    return Tensor(full, dtype, name or "input_layer")


@dataclasses.dataclass(eq=False)
class Node:
    """One recorded call: ``layer`` applied to ``args``/``kwargs`` (pytrees whose ``Tensor``
    leaves are the inputs), with a fixed ``training`` flag or ``None`` (inherit)."""

    layer: Layer
    args: tuple
    kwargs: dict
    training: bool | None
    outputs: Any  # pytree of Tensor

    @property
    def inputs(self) -> list[Tensor]:
        return [t for t in jax.tree.leaves((self.args, self.kwargs)) if isinstance(t, Tensor)]

    @property
    def flat_outputs(self) -> list[Tensor]:
        return jax.tree.leaves(self.outputs)


def is_symbolic(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is a symbolic ``Tensor``."""
    return any(isinstance(t, Tensor) for t in jax.tree.leaves(tree))


def _concrete(tree, sizes: tuple[int, int]) -> Any:
    batch, free = sizes

    def one(t):
        if not isinstance(t, Tensor):
            return t
        shape = tuple(
            (batch if i == 0 else free) if d is None else d for i, d in enumerate(t.shape)
        )
        return jax.ShapeDtypeStruct(shape, t.dtype)

    return jax.tree.map(one, tree)


def _call_names(layer: Layer, args: tuple, kwargs: dict) -> tuple[str, str]:
    """The unique name ``layer`` gets in a model ending at this call (``conv2d_2`` for the
    third Conv2D), and its inputs described by their layers' unique names. Only built for
    an error message: it walks every node upstream of the call."""
    inputs = [t for t in jax.tree.leaves((args, kwargs)) if isinstance(t, Tensor)]
    sources: dict[int, Tensor] = {}
    stack, seen = list(inputs), set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t.node is None:
            sources[id(t)] = t
        else:
            stack.extend(t.node.inputs)
    layers: list[Layer] = []
    for node in _walk(inputs, list(sources.values())):
        if not any(node.layer is known for known in layers):
            layers.append(node.layer)
    if not any(layer is known for known in layers):
        layers.append(layer)
    try:
        keys = dict(zip(map(id, layers), child_names(layers, "functional")))
    except ConfigError:  # duplicate explicit names: the model would refuse them anyway
        keys = {id(known): known.name for known in layers}
    parts = [
        f"{keys[id(t.node.layer)] if t.node is not None else t.name} {t.shape}" for t in inputs
    ]
    return keys[id(layer)], ", ".join(parts)


def infer(layer: Layer, args: tuple, kwargs: dict, training: bool | None) -> Any:
    """Output shapes of ``layer`` called on symbolic ``args``: a pytree of ``_Spec``
    (shape with ``None``, dtype), by two abstract traces."""
    traces = []
    for sizes in zip(_BATCH_SIZES, _FREE_SIZES):
        c_args, c_kwargs = _concrete((args, kwargs), sizes)
        try:
            params, state = jax.eval_shape(layer.init, jax.random.key(0), *c_args)
            out, _ = jax.eval_shape(
                lambda p, s, a, k: layer.apply(p, s, *a, rng=None, train=bool(training), **k),
                params,
                state,
                c_args,
                c_kwargs,
            )
        except FnnError as err:
            key, described = _call_names(layer, args, kwargs)
            text = str(err)
            text = (
                text[len(layer.name) + 1 :].lstrip() if text.startswith(f"{layer.name}:") else text
            )
            raise type(err)(f"{key}: called on {described}: {text}") from None
        except (TypeError, ValueError) as err:
            key, described = _call_names(layer, args, kwargs)
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ShapeError(
                f"{key}: called on {described}, it failed while inferring its "
                f"output shape: {text[:MAX_REPR]}"
            ) from None
        traces.append(out)
    first, second = traces

    def merge(a, b):
        shape = tuple(x if x == y else None for x, y in zip(a.shape, b.shape))
        return _Spec(shape, a.dtype)

    return jax.tree.map(merge, first, second)


@dataclasses.dataclass(frozen=True)
class _Spec:
    shape: tuple
    dtype: Any


def call(layer: Layer, args: tuple, kwargs: dict, owner: Any = None) -> Any:
    """``layer(*args, **kwargs)`` on symbolic tensors: record a node, return its outputs.

    A single list/tuple argument holds several inputs (``concatenate([a, b])``); Keras's
    ``training=`` keyword fixes the mode of this call (``None`` inherits the model's).
    ``owner`` (the object called, e.g. a Keras-style model) also records the node."""
    args, kwargs, training = eager.split_call(layer, args, kwargs)
    shapes = infer(layer, args, kwargs, training)
    node = Node(layer, tuple(args), kwargs, training, None)
    leaves, treedef = jax.tree.flatten(shapes)
    outs = [
        Tensor(s.shape, s.dtype, layer.name if len(leaves) == 1 else f"{layer.name}_{i}", node, i)
        for i, s in enumerate(leaves)
    ]
    node.outputs = jax.tree.unflatten(treedef, outs)
    for obj in {id(o): o for o in (layer, owner) if o is not None}.values():
        object.__setattr__(obj, "_fnn_nodes", [*obj.__dict__.get("_fnn_nodes", []), node])
    return node.outputs


# ---------------------------------------------------------------------------------------
# From recorded tensors to the declarative spec


def _structure(value: Any, what: str) -> tuple[str, list[Tensor]]:
    """``("single"|"list"|"dict", tensors)`` of a model's inputs or outputs."""
    if isinstance(value, Tensor):
        return "single", [value]
    if isinstance(value, Mapping):
        items = [value[k] for k in sorted(value)]  # Keras flattens dicts in key order
        kind = "dict"
    elif isinstance(value, list | tuple):
        items = list(value)
        kind = "list"
    else:
        raise ConfigError(
            f"Model: expected {what} to be a symbolic tensor (fnn.Input or a layer's output), "
            f"a list or a dict of them, got {type(value).__name__}."
        )
    bad = [type(t).__name__ for t in items if not isinstance(t, Tensor)]
    if bad or not items:
        raise ConfigError(
            f"Model: expected {what} to hold symbolic tensors (fnn.Input or layer outputs), "
            f"got {bad or 'nothing'}."
        )
    return kind, items


def _walk(outputs: list[Tensor], inputs: list[Tensor]) -> list[Node]:
    """Nodes between ``inputs`` and ``outputs`` in Keras's order (deepest first, ties by
    first discovery from the outputs): a topological order in which each layer's first
    call comes where Keras lists the layer, so weights line up with Keras's. Raises for
    outputs that depend on tensors that are not among ``inputs``."""
    input_ids = {id(t) for t in inputs}
    post: list[Node] = []  # post-order from the outputs
    discovered: dict[int, int] = {}  # id(layer) -> pre-order index
    state: dict[int, int] = {}  # id(node) -> 1 visiting, 2 done

    def visit(t: Tensor, path: list[str]):
        if id(t) in input_ids:
            return
        if t.node is None:
            raise ConfigError(
                f"Model: the output {path[0]!r} depends on the input {t.name!r} {t.shape}, "
                f"which is not among the model's inputs {[x.name for x in inputs]} "
                "(a disconnected input); pass it in inputs=[...]."
            )
        node = t.node
        mark = state.get(id(node))
        if mark == 2:
            return
        if mark == 1:
            raise ConfigError(f"Model: the graph has a cycle through {node.layer.name!r}.")
        discovered.setdefault(id(node.layer), len(discovered))
        state[id(node)] = 1
        for parent in node.inputs:
            visit(parent, path)
        state[id(node)] = 2
        post.append(node)

    for t in outputs:
        visit(t, [t.name])
    # Depth: 0 at the outputs, one more per step towards the inputs; a layer's calls
    # share the largest depth seen so far (Keras's map_graph).
    node_depth: dict[int, int] = {}
    layer_depth: dict[int, int] = {}
    in_graph = {id(n) for n in post}
    for node in reversed(post):
        depth = max(node_depth.get(id(node), 0), layer_depth.get(id(node.layer), 0))
        layer_depth[id(node.layer)] = node_depth[id(node)] = depth
        for parent in node.inputs:
            if parent.node is not None and id(parent.node) in in_graph:
                node_depth[id(parent.node)] = max(depth + 1, node_depth.get(id(parent.node), 0))
    position = {id(n): i for i, n in enumerate(post)}
    return sorted(
        post,
        key=lambda n: (-node_depth[id(n)], discovered[id(n.layer)], position[id(n)]),
    )


def _ref(t: Tensor, input_index: dict[int, int], node_index: dict[int, int]) -> dict:
    if id(t) in input_index:
        return {"input": input_index[id(t)]}
    return {"node": node_index[id(t.node)], "index": t.index}


def _template(tree: Any, refs) -> Any:
    """``tree`` with tensors replaced by reference dicts (JSON)."""
    if isinstance(tree, Tensor):
        return {"__ref__": refs(tree)}
    if isinstance(tree, list | tuple):
        return [_template(v, refs) for v in tree]
    if isinstance(tree, Mapping):
        return {k: _template(v, refs) for k, v in tree.items()}
    return tree


def unique_input_names(inputs: list[Tensor]) -> list[str]:
    """The inputs' names with Keras-style ``_1``, ``_2`` suffixes where they repeat."""
    names, seen = [], set()
    for t in inputs:
        name, i = t.name, 0
        while name in seen:
            i += 1
            name = f"{t.name}_{i}"
        seen.add(name)
        names.append(name)
    return names


def functional(inputs: Any, outputs: Any, name: str | None = None) -> Layer:
    """The graph from ``inputs`` to ``outputs`` (symbolic tensors) as one ``Layer``.

    ``apply(params, state, *xs)`` takes one array per input (a list of inputs), one dict
    (dict inputs) or one array, and returns one array, a tuple (list outputs) or a dict.
    Raises ``ConfigError`` for a disconnected input or non-symbolic inputs/outputs;
    ``name`` defaults to ``"functional"``."""
    in_kind, in_tensors = _structure(inputs, "inputs")
    out_kind, out_tensors = _structure(outputs, "outputs")
    for t in in_tensors:
        if t.node is not None:
            raise ConfigError(
                f"Model: expected inputs to be fnn.Input tensors, got {t.name!r}, the output of "
                f"layer {t.node.layer.name!r}; build a new model from its own fnn.Input."
            )
    if len({id(t) for t in in_tensors}) != len(in_tensors):
        raise ConfigError("Model: the same input tensor appears twice in inputs.")
    nodes = _walk(out_tensors, in_tensors)
    layers: list[Layer] = []
    for node in nodes:
        if not any(node.layer is seen for seen in layers):
            layers.append(node.layer)
    layer_index = {id(layer): i for i, layer in enumerate(layers)}
    input_index = {id(t): i for i, t in enumerate(in_tensors)}
    node_index = {id(n): i for i, n in enumerate(nodes)}

    def refs(t):
        return _ref(t, input_index, node_index)

    node_specs = [
        {
            "layer": layer_index[id(n.layer)],
            "args": _template(list(n.args), refs),
            "kwargs": _template(n.kwargs, refs),
            "training": n.training,
        }
        for n in nodes
    ]
    names = unique_input_names(in_tensors)
    input_specs = [
        {"name": nm, "shape": list(t.shape), "dtype": t.dtype.name}
        for nm, t in zip(names, in_tensors)
    ]
    if in_kind == "dict":
        input_specs = [{**s, "key": k} for s, k in zip(input_specs, sorted(inputs))]
    if out_kind == "dict":
        out_template = {k: _template(v, refs) for k, v in outputs.items()}
    elif out_kind == "list":
        out_template = [_template(v, refs) for v in out_tensors]
    else:
        out_template = _template(out_tensors[0], refs)
    return Functional(
        layers=tuple(layers),
        inputs=input_specs,
        nodes=node_specs,
        outputs=out_template,
        input_structure=in_kind,
        # An unnamed graph keeps the default name, so two of them nested in one model get
        # Keras's functional, functional_1 keys instead of a duplicate-name error.
        **({} if name is None else {"name": name}),
    )


# ---------------------------------------------------------------------------------------
# The declarative graph as a layer


def _fill(template: Any, lookup) -> Any:
    if isinstance(template, Mapping):
        if "__ref__" in template and len(template) == 1:
            return lookup(template["__ref__"])
        return {k: _fill(v, lookup) for k, v in template.items()}
    if isinstance(template, list | tuple):
        return [_fill(v, lookup) for v in template]
    return template


def _node_refs(template: Any) -> list[dict]:
    if isinstance(template, Mapping):
        if "__ref__" in template and len(template) == 1:
            return [template["__ref__"]]
        return [r for v in template.values() for r in _node_refs(v)]
    if isinstance(template, list | tuple):
        return [r for v in template for r in _node_refs(v)]
    return []


def _check_spec(name, layers, inputs, nodes, outputs, input_structure):
    if input_structure not in ("single", "list", "dict"):
        raise ConfigError(f"{name}: unknown input_structure {input_structure!r}.")
    if input_structure == "single" and len(inputs) != 1:
        raise ConfigError(f"{name}: a single-input graph needs exactly one input spec.")
    for i, node in enumerate(nodes):
        if not 0 <= node["layer"] < len(layers):
            raise ConfigError(
                f"{name}: node {i} names layer {node['layer']}, which does not exist."
            )
        for r in _node_refs((node["args"], node["kwargs"])):
            if "input" in r:
                if not 0 <= r["input"] < len(inputs):
                    raise ConfigError(f"{name}: node {i} reads a missing input {r['input']}.")
            elif not 0 <= r["node"] < i:
                raise ConfigError(
                    f"{name}: node {i} reads node {r['node']}, which does not come before it "
                    "(the node list must be in topological order)."
                )
    for r in _node_refs(outputs):
        if "node" in r and not 0 <= r["node"] < len(nodes):
            raise ConfigError(f"{name}: an output reads a missing node {r['node']}.")


@register_layer
def Functional(
    layers: Sequence[Layer],
    inputs: Sequence[Mapping],
    nodes: Sequence[Mapping],
    outputs: Any,
    input_structure: str = "list",
    name: str = "functional",
) -> Layer:
    """A DAG of layers as one layer (what ``fnn.Model(inputs, outputs)`` builds).

    ``layers``: the distinct layers (params keyed by their unique names); ``inputs``:
    ``{"name", "shape", "dtype"}`` per input; ``nodes``: ``{"layer": i, "args", "kwargs",
    "training"}`` in topological order, where ``{"__ref__": {"input": k}}`` or
    ``{"__ref__": {"node": j, "index": m}}`` marks a tensor; ``outputs``: a reference, a
    list or a dict of them."""
    layers = tuple(layers)
    inputs = [dict(s) for s in inputs]
    nodes = [dict(n) for n in nodes]
    _check_spec(name, layers, inputs, nodes, outputs, input_structure)
    keys = child_names(layers, name)
    input_names = [s["name"] for s in inputs]

    def bind_inputs(xs: tuple) -> list:
        if input_structure == "dict":
            if len(xs) != 1 or not isinstance(xs[0], Mapping):
                raise ShapeError(
                    f"{name}: expected one dict of inputs with keys "
                    f"{[s['key'] for s in inputs]}, got {len(xs)} positional inputs."
                )
            missing = [s["key"] for s in inputs if s["key"] not in xs[0]]
            if missing:
                raise ShapeError(
                    f"{name}: the input dict is missing {missing}; got keys {sorted(xs[0])}."
                )
            xs = tuple(xs[0][s["key"]] for s in inputs)
        if len(xs) != len(inputs):
            raise ShapeError(f"{name}: expected {len(inputs)} inputs {input_names}, got {len(xs)}.")
        values = []
        for spec, x in zip(inputs, xs):
            shape = tuple(np.shape(x))
            want = spec["shape"]
            if len(shape) != len(want) or any(
                w is not None and w != d for w, d in zip(want, shape)
            ):
                shown = tuple(want)
                raise ShapeError(
                    f"{name}: expected input {spec['name']!r} of shape {shown} (None: any "
                    f"size), got shape {shape}."
                )
            dtype = jnp.dtype(spec["dtype"])
            x = x if jnp.result_type(x) == dtype else jnp.asarray(x).astype(dtype)
            values.append(x)
        return values

    def run(xs, per_node):
        """Walk the nodes; ``per_node(i, node, layer, key, args, kwargs)`` returns outputs."""
        values = bind_inputs(xs)
        results: list[list] = []

        def lookup(r):
            if "input" in r:
                return values[r["input"]]
            return results[r["node"]][r["index"]]

        for i, node in enumerate(nodes):
            layer = layers[node["layer"]]
            args = _fill(node["args"], lookup)
            kwargs = _fill(node["kwargs"], lookup)
            out = per_node(i, node, layer, keys[node["layer"]], args, kwargs)
            results.append(jax.tree.leaves(out))
        if isinstance(outputs, Mapping) and not ("__ref__" in outputs and len(outputs) == 1):
            return {k: _fill(v, lookup) for k, v in outputs.items()}
        if isinstance(outputs, list | tuple):
            return tuple(_fill(list(outputs), lookup))
        return _fill(outputs, lookup)

    def init(key, *xs):
        params, state = {}, {}
        xs = as_shape_struct(xs)
        layer_keys = dict(zip(keys, jax.random.split(key, max(len(layers), 1))))

        def per_node(i, node, layer, k, args, kwargs):
            try:
                if k not in params and k not in state and k in layer_keys:
                    p, s = layer.init(layer_keys.pop(k), *args)
                    if p:
                        params[k] = p
                    if s:
                        state[k] = s
                out, _ = jax.eval_shape(
                    lambda p, s, a, kw: layer.apply(p, s, *a, rng=None, train=False, **kw),
                    params.get(k, {}),
                    state.get(k, {}),
                    as_shape_struct(args),
                    as_shape_struct(kwargs),
                )
            except FnnError as err:
                raise renamed_error(k, layer, err) from None
            return out

        run(xs, per_node)
        return params, state

    def apply(params, state, *xs, rng=None, train=False):
        new_state = dict(state)
        rngs = split_rng(rng, len(nodes))

        def per_node(i, node, layer, k, args, kwargs):
            mode = train if node["training"] is None else node["training"]
            try:
                out, s = call_child(
                    k,
                    layer,
                    params.get(k, {}),
                    new_state.get(k, {}),
                    tuple(args),
                    rngs[i],
                    mode,
                    **kwargs,
                )
            except FnnError as err:
                raise renamed_error(k, layer, err) from None
            if s:
                new_state[k] = s
            return out

        out = run(xs, per_node)
        return out, new_state

    return Layer(init, apply, name, children=tuple(zip(keys, layers)))


_OPS = {
    "add": operator.add,
    "subtract": operator.sub,
    "multiply": operator.mul,
    "divide": operator.truediv,
    "matmul": operator.matmul,
    "power": operator.pow,
    "negative": operator.neg,
}


def _encode_index(index) -> Any:
    """A ``__getitem__`` index as JSON: slices as ``{"slice": [start, stop, step]}``."""
    if not isinstance(index, tuple):
        index = (index,)
    out = []
    for item in index:
        if isinstance(item, slice):
            out.append({"slice": [item.start, item.stop, item.step]})
        elif item is Ellipsis:
            out.append({"ellipsis": True})
        elif item is None:
            out.append({"newaxis": True})
        elif isinstance(item, int | np.integer):
            out.append(int(item))
        else:
            raise ConfigError(
                f"symbolic tensor indexing supports ints, slices, ... and None, got {item!r}."
            )
    return out


def _decode_index(items) -> tuple:
    out = []
    for item in items:
        if isinstance(item, Mapping):
            if "slice" in item:
                out.append(slice(*item["slice"]))
            elif "ellipsis" in item:
                out.append(Ellipsis)
            else:
                out.append(None)
        else:
            out.append(item)
    return tuple(out)


@register_layer
def TensorOp(
    op: str, constant: Any = None, reverse: bool = False, name: str | None = None
) -> Layer:
    """Arithmetic on symbolic tensors (``x + y``, ``2 * x``, ``x[:, 0]``) as a layer:
    ``op`` of the inputs, or of one input and ``constant`` (on the left if ``reverse``)."""
    if op != "getitem" and op not in _OPS:
        raise ConfigError(
            f"TensorOp: unknown op {op!r}; expected getitem or one of {sorted(_OPS)}."
        )
    fn = _OPS.get(op)

    def init(key, *inputs):
        del key, inputs
        return {}, {}

    def apply(params, state, *inputs, rng=None, train=False):
        del params, rng, train
        if op == "getitem":
            return inputs[0][_decode_index(constant)], state
        if constant is None:
            return fn(*inputs), state
        c = jnp.asarray(constant, jnp.result_type(inputs[0]))
        return (fn(c, inputs[0]) if reverse else fn(inputs[0], c)), state

    return Layer(init, apply, name or op)


def replay(layer: Layer) -> tuple[Any, Any]:
    """New symbolic ``(inputs, outputs)`` for a ``Functional`` layer (rebuilt from a
    config): its inputs as ``Input`` tensors and every node called on them again."""
    if layer.spec is None or layer.spec.class_name != "Functional":
        raise ConfigError(f"{layer.name}: replay needs a Functional layer.")
    cfg = layer.spec.config
    layers = list(cfg["layers"])
    tensors = [
        Input(batch_shape=tuple(s["shape"]), dtype=s["dtype"], name=s["name"])
        for s in cfg["inputs"]
    ]
    results: list[list] = []

    def lookup(r):
        return tensors[r["input"]] if "input" in r else results[r["node"]][r["index"]]

    for node in cfg["nodes"]:
        args = _fill(node["args"], lookup)
        kwargs = _fill(node["kwargs"], lookup)
        if node["training"] is not None:
            kwargs["training"] = node["training"]
        out = call(layers[node["layer"]], tuple(args), kwargs)
        results.append(jax.tree.leaves(out))
    structure = cfg.get("input_structure", "list")
    if structure == "dict":
        inputs = {s["key"]: t for s, t in zip(cfg["inputs"], tensors)}
    elif structure == "single":
        inputs = tensors[0]
    else:
        inputs = tensors
    outputs = cfg["outputs"]
    if isinstance(outputs, Mapping) and not ("__ref__" in outputs and len(outputs) == 1):
        outs = {k: _fill(v, lookup) for k, v in outputs.items()}
    elif isinstance(outputs, list | tuple):
        outs = _fill(list(outputs), lookup)
    else:
        outs = _fill(outputs, lookup)
    return inputs, outs


def _keras_call(layer: Layer, args: tuple, kwargs: dict) -> Any:
    if is_symbolic((args, kwargs)):
        return call(layer, args, kwargs)
    return eager.call(layer, args, kwargs)


KERAS_FACE.update(call=_keras_call, get_weights=eager.get_weights, set_weights=eager.set_weights)
