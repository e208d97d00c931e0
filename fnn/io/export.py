"""Export a trained model for serving without fnn: StableHLO (``jax.export``) and ONNX.

``stablehlo`` writes ``jax.export``'s serialized artifact with a symbolic batch dimension;
any JAX program can load it with ``jax.export.deserialize(open(path, "rb").read()).call(x)``.

``onnx`` translates the inference jaxpr (``train=False``, weights as initializers) into
ONNX operators with the ``onnx`` package itself: no maintained converter takes a plain JAX
function at jax 0.10 (``jax2onnx`` targets Flax modules and pins jax versions), while a
jaxpr holds only a few dozen primitives for Dense/Conv/pooling/BatchNorm/Embedding nets.
SimpleRNN/LSTM/GRU (also inside Bidirectional, with masks) trace as one marked call each
and become ONNX ``RNN``/``LSTM``/``GRU`` nodes (``fnn.io.onnx_recurrent``). The batch axis is
the symbolic ``"batch"`` dimension. A layer whose primitives have no translation raises
``ExportError`` naming the layer.

>>> import jax, numpy as np, fnn, tempfile, os
>>> layer = fnn.layers.Dense(2)
>>> params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 3), "float32"))
>>> path = os.path.join(tempfile.mkdtemp(), "dense.onnx")
>>> fnn.export(layer, params, state, np.ones((4, 3), np.float32), path, format="onnx")
'...dense.onnx'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.combinators import apply_of, replace_apply
from fnn.core.errors import FnnError
from fnn.io import onnx_recurrent

__all__ = ["FORMATS", "ExportError", "export"]

FORMATS = ("stablehlo", "onnx")
OPSET = 17


class ExportError(FnnError):
    """A model (or one of its layers) that cannot be written in the requested format."""


def _export_error(text: str) -> ExportError:
    return ExportError(f"export(onnx): {text}.")


def _unwrap(model_or_layer, params, state):
    """``(layer, params, state)`` from a ``Layer`` or a built Keras-style ``Model``."""
    layer = getattr(model_or_layer, "layer", None)
    if layer is not None and hasattr(model_or_layer, "train_state"):
        if params is None or state is None:
            ts = model_or_layer.train_state
            params = ts.params if params is None else params
            state = ts.state if state is None else state
        return layer, params, state
    if params is None or state is None:
        raise ExportError(
            f"export: a Layer ({getattr(model_or_layer, 'name', model_or_layer)!r}) needs its "
            "params and state; pass them (or export a built Model)."
        )
    return model_or_layer, params, state


def _forward(layer, params, state) -> Callable:
    def fn(*xs):
        # apply_of: the ONNX path traces a recurrent root layer as one marked call too.
        return apply_of(layer.name, layer)(params, state, *xs, rng=None, train=False)[0]

    return fn


def export(
    model_or_layer,
    params=None,
    state=None,
    example_inputs=None,
    path: str | os.PathLike = "model",
    *,
    format: str = "stablehlo",
    platforms: tuple[str, ...] | None = None,
) -> str:
    """Write ``model_or_layer``'s inference function (``train=False``) to ``path``.

    ``example_inputs``: one array ``[batch, ...]`` (or a tuple of them) giving the example
    shape and dtype; the exported batch size is symbolic. ``params``/``state`` default to a
    built ``Model``'s own. ``format``: ``"stablehlo"`` (``jax.export`` bytes) or
    ``"onnx"``. ``platforms`` (stablehlo only): e.g. ``("cpu", "cuda")`` to lower for
    several backends (default: the current one). Returns the path written.
    """
    if format not in FORMATS:
        raise ExportError(f"export: expected format in {list(FORMATS)}, got {format!r}.")
    if example_inputs is None:
        raise ExportError("export: example_inputs is required (an array [batch, ...]).")
    layer, params, state = _unwrap(model_or_layer, params, state)
    xs = tuple(example_inputs) if isinstance(example_inputs, tuple | list) else (example_inputs,)
    for i, x in enumerate(xs):
        if np.ndim(x) < 1:
            raise ExportError(
                f"export: example input {i} needs a batch axis, got shape {np.shape(x)}."
            )
    (batch,) = jax.export.symbolic_shape("batch")
    specs = tuple(jax.ShapeDtypeStruct((batch, *np.shape(x)[1:]), jnp.result_type(x)) for x in xs)
    fn = _forward(layer, params, state)
    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if format == "stablehlo":
        exported = jax.export.export(jax.jit(fn), platforms=platforms)(*specs)
        with open(path, "wb") as f:
            f.write(exported.serialize())
        return path
    marked: list = []
    with replace_apply(onnx_recurrent.mark(marked, _export_error)):
        model = to_onnx(fn, specs, layer=layer, marked=marked)
    import onnx

    onnx.save(model, path)
    return path


# ---------------------------------------------------------------------------------------
# jaxpr -> ONNX

_UNARY = {
    "exp": "Exp",
    "log": "Log",
    "tanh": "Tanh",
    "logistic": "Sigmoid",
    "neg": "Neg",
    "abs": "Abs",
    "sqrt": "Sqrt",
    "erf": "Erf",
    "floor": "Floor",
    "ceil": "Ceil",
    "sign": "Sign",
    "sin": "Sin",
    "cos": "Cos",
    "not": "Not",
    "stop_gradient": "Identity",
    "copy": "Identity",
    "copy_p": "Identity",
    "optimization_barrier": "Identity",
}
_BINARY = {
    "add": "Add",
    "add_any": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "max": "Max",
    "min": "Min",
    "pow": "Pow",
    "lt": "Less",
    "gt": "Greater",
    "le": "LessOrEqual",
    "ge": "GreaterOrEqual",
    "eq": "Equal",
    "and": "And",
    "or": "Or",
}
_INLINE = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "remat": "jaxpr"}
_CUSTOM = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")

# Leaf layers whose inference primitives all have a translation (checked in the tests).
ONNX_LAYERS = frozenset(
    {
        "Dense",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "MaxPooling1D",
        "MaxPooling2D",
        "AveragePooling1D",
        "AveragePooling2D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "BatchNormalization",
        "LayerNormalization",
        "Embedding",
        "Flatten",
        "Reshape",
        "Dropout",
        "Activation",
        "ReLU",
        "Softmax",
        "Add",
        "Concatenate",
        "MultiHeadAttention",
        "TransformerEncoderBlock",
        "SimpleRNN",
        "LSTM",
        "GRU",
        "Bidirectional",
    }
)


def _leaves(layer) -> list:
    children = getattr(layer, "children", None)
    if not children:
        return [layer]
    return [leaf for _, child in children for leaf in _leaves(child)]


class _Graph:
    def __init__(self):
        from onnx import helper

        self.helper = helper
        self.nodes: list = []
        self.inits: list = []
        self.names: dict = {}
        self.count = 0
        self.marked: list = []  # onnx_recurrent.Marked calls, by index

    def fresh(self, hint: str = "t") -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, dtype=None) -> str:
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, **attrs))
        return outs

    def one(self, op: str, inputs: list[str], **attrs) -> str:
        return self.node(op, inputs, **attrs)[0]


def _dims(shape, what: str) -> list[int]:
    """Concrete dims, the symbolic batch as -1 (at most one symbolic dim)."""
    out = []
    for d in shape:
        out.append(d if isinstance(d, int) else -1)
    if out.count(-1) > 1:
        raise ExportError(f"export(onnx): {what} with more than one symbolic dim {shape}.")
    return out


def _onnx_dtype(dtype) -> int:
    from onnx import helper

    dtype = np.dtype(dtype)
    if dtype == np.float64:
        dtype = np.dtype(np.float32)
    return helper.np_dtype_to_tensor_dtype(dtype)


def to_onnx(fn: Callable, specs: tuple, *, layer=None, marked: list = (), name: str = "fnn"):
    """An ``onnx.ModelProto`` computing ``fn(*specs)`` (inputs ``input_i``, outputs
    ``output_i``; a symbolic dim is named ``"batch"``). ``marked``: the recurrent calls that
    ``onnx_recurrent.mark`` recorded while ``fn`` traces (filled during the trace)."""
    import onnx
    from onnx import helper

    closed = jax.make_jaxpr(fn)(*specs)
    g = _Graph()
    g.marked = marked
    env: dict = {}
    for var, value in zip(closed.jaxpr.constvars, closed.consts):
        env[var] = g.const(np.asarray(value))
    inputs = []
    for i, var in enumerate(closed.jaxpr.invars):
        env[var] = f"input_{i}"
        inputs.append(_value_info(helper, f"input_{i}", var.aval))
    _emit(g, closed.jaxpr, env, layer)
    outputs = []
    for i, var in enumerate(closed.jaxpr.outvars):
        src = _read(g, env, var)
        g.nodes.append(helper.make_node("Identity", [src], [f"output_{i}"]))
        outputs.append(_value_info(helper, f"output_{i}", var.aval))
    used = {name for node in g.nodes for name in node.input}
    inits = [init for init in g.inits if init.name in used]  # e.g. weights a marked call replaced
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fnn"
    )
    model.ir_version = min(model.ir_version, 8)  # readable by older onnxruntime builds too
    onnx.checker.check_model(model)
    return model


def _value_info(helper, name, aval):
    shape = [d if isinstance(d, int) else "batch" for d in aval.shape]
    return helper.make_tensor_value_info(name, _onnx_dtype(aval.dtype), shape)


def _read(g: _Graph, env: dict, var) -> str:
    if hasattr(var, "val"):  # a Literal
        return g.const(np.asarray(var.val, dtype=var.aval.dtype))
    return env[var]


def _unsupported(prim: str, layer) -> ExportError:
    hint = ""
    if layer is not None:
        odd = [
            leaf
            for leaf in _leaves(layer)
            if (leaf.spec.class_name if leaf.spec else "Layer") not in ONNX_LAYERS
        ]
        if odd:
            kind = odd[0].spec.class_name if odd[0].spec else "Layer"
            hint = f"layer {odd[0].name!r} ({kind}) "
    return ExportError(
        f"export(onnx): {hint or 'the model '}uses the JAX primitive {prim!r}, which has no "
        f"ONNX translation. Layers known to export: {', '.join(sorted(ONNX_LAYERS))}; "
        "use format='stablehlo' for the rest."
    )


def _emit(g: _Graph, jaxpr, env: dict, layer) -> None:
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        p = eqn.params
        ins = [_read(g, env, v) for v in eqn.invars]
        avals_in = [v.aval for v in eqn.invars]
        aval = eqn.outvars[0].aval if eqn.outvars else None
        index = onnx_recurrent.marked_index(p) if prim in _INLINE else None
        if index is not None:
            outs = onnx_recurrent.emit(
                g, g.marked[index], ins, avals_in, [v.aval for v in eqn.outvars], _export_error
            )
            env.update(zip(eqn.outvars, outs))
            continue
        if prim in _INLINE or prim in _CUSTOM:
            sub = p.get(_INLINE.get(prim, "call_jaxpr")) or p.get("fun_jaxpr")
            if sub is None:
                raise _unsupported(prim, layer)
            inner = getattr(sub, "jaxpr", sub)
            consts = getattr(sub, "consts", [])
            sub_env = {v: g.const(np.asarray(c)) for v, c in zip(inner.constvars, consts)}
            sub_env.update(dict(zip(inner.invars, ins)))
            _emit(g, inner, sub_env, layer)
            for out, inner_out in zip(eqn.outvars, inner.outvars):
                env[out] = _read(g, sub_env, inner_out)
            continue
        outs = _translate(g, prim, p, ins, avals_in, aval, layer)
        for var, name in zip(eqn.outvars, outs if isinstance(outs, list) else [outs]):
            env[var] = name


def _translate(g: _Graph, prim: str, p: dict, ins: list, avals_in: list, aval, layer):
    if prim in _UNARY:
        return g.one(_UNARY[prim], ins)
    if prim in _BINARY:
        return g.one(_BINARY[prim], ins)
    if prim == "ne":
        return g.one("Not", [g.one("Equal", ins)])
    if prim == "rsqrt":
        return g.one("Reciprocal", [g.one("Sqrt", ins)])
    if prim == "log1p":
        return g.one("Log", [g.one("Add", [ins[0], g.const(np.array(1, aval.dtype))])])
    if prim == "expm1":
        return g.one("Sub", [g.one("Exp", ins), g.const(np.array(1, aval.dtype))])
    if prim == "square":
        return g.one("Mul", [ins[0], ins[0]])
    if prim == "integer_pow":
        return g.one("Pow", [ins[0], g.const(np.array(p["y"], aval.dtype))])
    if prim == "convert_element_type":
        return g.one("Cast", ins, to=_onnx_dtype(p["new_dtype"]))
    if prim == "select_n":
        if len(ins) != 3:
            raise _unsupported("select_n with more than two cases", layer)
        pred = ins[0]
        if np.dtype(avals_in[0].dtype) != np.bool_:
            pred = g.one("Cast", [pred], to=_onnx_dtype(np.bool_))
        return g.one("Where", [pred, ins[2], ins[1]])
    if prim == "clamp":
        return g.one("Min", [g.one("Max", [ins[1], ins[0]]), ins[2]])
    if prim == "reshape":
        return g.one("Reshape", [ins[0], g.const(_dims(p["new_sizes"], "reshape"), np.int64)])
    if prim == "rev":
        dims = list(p["dimensions"])
        big = np.iinfo(np.int64)
        starts, ends, steps = ([v] * len(dims) for v in (-1, big.min, -1))
        consts = (g.const(v, np.int64) for v in (starts, ends, dims, steps))
        return g.one("Slice", [ins[0], *consts])
    if prim == "transpose":
        return g.one("Transpose", ins, perm=list(p["permutation"]))
    if prim == "squeeze":
        return g.one("Squeeze", [ins[0], g.const(list(p["dimensions"]), np.int64)])
    if prim == "expand_dims":
        return g.one("Unsqueeze", [ins[0], g.const(list(p["dimensions"]), np.int64)])
    if prim == "broadcast_in_dim":
        shape, bdims = p["shape"], p["broadcast_dimensions"]
        x = ins[0]
        missing = [d for d in range(len(shape)) if d not in bdims]
        if missing:
            x = g.one("Unsqueeze", [x, g.const(missing, np.int64)])
        # A symbolic target dim becomes 1: Expand broadcasts both ways, and the consumers
        # broadcast it back against the batch-sized operand.
        target = [d if isinstance(d, int) else 1 for d in shape]
        return g.one("Expand", [x, g.const(target, np.int64)])
    if prim in ("reduce_sum", "reduce_max", "reduce_min"):
        axes = list(p["axes"])
        if prim == "reduce_sum":
            return g.one("ReduceSum", [ins[0], g.const(axes, np.int64)], keepdims=0)
        op = "ReduceMax" if prim == "reduce_max" else "ReduceMin"
        return g.one(op, ins, axes=axes, keepdims=0)
    if prim == "argmax":
        (axis,) = p["axes"]
        out = g.one("ArgMax", ins, axis=axis, keepdims=0)
        return g.one("Cast", [out], to=_onnx_dtype(p["index_dtype"]))
    if prim == "concatenate":
        return g.one("Concat", ins, axis=int(p["dimension"]))
    if prim == "slice":
        start, limit = list(p["start_indices"]), list(p["limit_indices"])
        strides = list(p["strides"] or [1] * len(start))
        limit = [d if isinstance(d, int) else np.iinfo(np.int64).max for d in limit]
        axes = list(range(len(start)))
        return g.one(
            "Slice",
            [ins[0], *(g.const(v, np.int64) for v in (start, limit, axes, strides))],
        )
    if prim == "dot_general":
        return _dot_general(g, p, ins, avals_in, aval)
    if prim == "conv_general_dilated":
        return _conv(g, p, ins, avals_in, layer)
    if prim in ("reduce_window_max", "reduce_window_sum"):
        return _pool(g, prim, p, ins, avals_in, layer)
    if prim == "gather":
        return _gather(g, p, ins, avals_in, layer)
    raise _unsupported(prim, layer)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _dot_general(g, p, ins, avals_in, aval):
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    nl, nr = len(avals_in[0].shape), len(avals_in[1].shape)
    letters = iter(_LETTERS)
    lhs = [None] * nl
    rhs = [None] * nr
    for a, b in zip(lb, rb):
        lhs[a] = rhs[b] = next(letters)
    for a, b in zip(lc, rc):
        lhs[a] = rhs[b] = next(letters)
    for i in range(nl):
        lhs[i] = lhs[i] or next(letters)
    for i in range(nr):
        rhs[i] = rhs[i] or next(letters)
    out = [lhs[a] for a in lb]
    out += [lhs[i] for i in range(nl) if i not in lb and i not in lc]
    out += [rhs[i] for i in range(nr) if i not in rb and i not in rc]
    eq = f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"
    y = g.one("Einsum", ins, equation=eq)
    if np.dtype(aval.dtype) != np.dtype(avals_in[0].dtype):
        y = g.one("Cast", [y], to=_onnx_dtype(aval.dtype))
    return y


def _conv(g, p, ins, avals_in, layer):
    dn = p["dimension_numbers"]
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise _unsupported("conv_general_dilated with lhs_dilation (transposed conv)", layer)
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    # ONNX wants N,C,spatial... and O,I,spatial...: move axes into that order and back.
    x = g.one("Transpose", [ins[0]], perm=list(lhs_spec))
    w = g.one("Transpose", [ins[1]], perm=list(rhs_spec))
    pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
    y = g.one(
        "Conv",
        [x, w],
        strides=list(p["window_strides"]),
        dilations=list(p["rhs_dilation"]),
        pads=pads,
        group=int(p["feature_group_count"]),
    )
    back = list(np.argsort(out_spec))
    return g.one("Transpose", [y], perm=[int(i) for i in back])


def _pool(g, prim, p, ins, avals_in, layer):
    window, strides = list(p["window_dimensions"]), list(p["window_strides"])
    rank = len(window)
    if any(d != 1 for d in p["base_dilation"]) or any(d != 1 for d in p["window_dilation"]):
        raise _unsupported(f"{prim} with dilation", layer)
    if rank < 3 or window[0] != 1 or window[-1] != 1 or strides[0] != 1 or strides[-1] != 1:
        raise _unsupported(f"{prim} over the batch or channel axis", layer)
    # Channels-last [N, *spatial, C] -> [N, C, *spatial] and back.
    to_first = [0, rank - 1, *range(1, rank - 1)]
    to_last = [0, *range(2, rank), 1]
    pad = p["padding"][1:-1]
    pads = [lo for lo, _ in pad] + [hi for _, hi in pad]
    x = g.one("Transpose", [ins[0]], perm=to_first)
    attrs = dict(kernel_shape=window[1:-1], strides=strides[1:-1], pads=pads)
    if prim == "reduce_window_max":
        y = g.one("MaxPool", [x], **attrs)
    else:
        # A sum window is the zero-padded mean times the window size.
        y = g.one("AveragePool", [x], count_include_pad=1, **attrs)
        y = g.one("Mul", [y, g.const(np.array(np.prod(window), avals_in[0].dtype))])
    return g.one("Transpose", [y], perm=to_last)


def _gather(g, p, ins, avals_in, layer):
    dn = p["dimension_numbers"]
    operand = avals_in[0]
    idx = avals_in[1]
    take_rows = (
        tuple(dn.collapsed_slice_dims) == (0,)
        and tuple(dn.start_index_map) == (0,)
        and not dn.operand_batching_dims
        and tuple(p["slice_sizes"]) == (1, *operand.shape[1:])
        and idx.shape[-1] == 1
        and tuple(dn.offset_dims)
        == tuple(range(len(idx.shape) - 1, len(idx.shape) - 1 + len(operand.shape) - 1))
    )
    if not take_rows:
        raise _unsupported("gather (other than a row lookup)", layer)
    indices = g.one("Squeeze", [ins[1], g.const([len(idx.shape) - 1], np.int64)])
    indices = g.one("Cast", [indices], to=_onnx_dtype(np.int64))
    return g.one("Gather", [ins[0], indices], axis=0)


def load_stablehlo(path: str | os.PathLike) -> Any:
    """The ``jax.export.Exported`` in a file written by ``export(..., format="stablehlo")``;
    call it with ``.call(x)``."""
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))
