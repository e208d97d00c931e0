"""SimpleRNN, LSTM and GRU as ONNX ``RNN``/``LSTM``/``GRU`` nodes (used by ``fnn.export``).

A recurrent layer's ``scan`` has no per-primitive translation, so the exporter traces each
recurrent layer as one marked call (``mark``; ``fnn.core.combinators.replace_apply``) and
``emit`` writes it as one ONNX recurrent node with the layer's weights permuted from Keras's
gate layout (LSTM **i, f, c, o**; GRU **z, r, h**) to ONNX's (**i, o, f, c**; **z, r, h**),
time-major inputs (``layout=0``; onnxruntime rejects ``layout=1``), and Keras's
``reset_after=True`` as ``linear_before_reset=1``.

``go_backwards`` feeds the time-reversed sequence forwards, so the outputs come in
processing order as in fnn. A ``mask`` (True = real step) is exact for any pattern, not only
right padding: fnn skips masked steps (state carried over), which equals running the cell on
the real steps moved to the front (a stable sort by ``where(mask, t, t + T)``) with
``sequence_lens`` = their count; a returned sequence is gathered back to the original steps
(step ``t`` shows the output after the last real step up to ``t``, or the initial ``h``
before any; zeros at masked steps with ``zero_output_for_mask=True``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from fnn.core import spec as layer_spec

RECURRENT = ("SimpleRNN", "LSTM", "GRU")
_MARK = "fnn_onnx_recurrent_"
_OP = {"SimpleRNN": "RNN", "LSTM": "LSTM", "GRU": "GRU"}
# Keras's gate blocks in ONNX's order (LSTM: Keras i,f,c,o -> ONNX i,o,f,c).
_GATES = {"SimpleRNN": [0], "LSTM": [0, 3, 1, 2], "GRU": [0, 1, 2]}
# fnn activation name -> (ONNX RNN activation, alpha, beta); alpha/beta None where unused.
_ACTIVATIONS = {
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "relu": ("Relu", None, None),
    "linear": ("Affine", 1.0, 0.0),
    None: ("Affine", 1.0, 0.0),
    # Keras 3: relu6(x + 3) / 6 = clip(x / 6 + 1/2, 0, 1), ONNX HardSigmoid(alpha, beta).
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "elu": ("Elu", 1.0, None),
}


class Marked(NamedTuple):
    """One recurrent layer call traced by ``mark``: the layer, its (concrete) params, and the
    pytree structure of its positional inputs ``(x, mask, initial_state)``."""

    name: str  # the layer's unique name
    layer: Any
    params: Any
    tree: Any


def mark(table: list, error) -> Any:
    """A ``replace_apply`` hook: each SimpleRNN/LSTM/GRU call traces as ``jax.jit`` of its
    apply named ``fnn_onnx_recurrent_<i>`` with ``table[i]`` describing it. ``error(text)``
    builds the exception for a layer that cannot be written."""

    def hook(key, child):
        if child.spec is None or child.spec.class_name not in RECURRENT:
            return None

        def apply(params, state, *inputs, rng=None, train=False, **kwargs):
            if kwargs:
                raise error(f"layer {key!r}: keyword inputs {sorted(kwargs)} to export")
            flat, tree = jax.tree.flatten(inputs)

            def call(*flat_inputs):
                args = jax.tree.unflatten(tree, flat_inputs)
                return child.apply(params, state, *args, rng=None, train=False)[0]

            call.__name__ = f"{_MARK}{len(table)}"
            table.append(Marked(key, child, params, tree))
            return jax.jit(call)(*flat), state

        return apply

    return hook


def marked_index(eqn_params: dict) -> int | None:
    """``i`` when a ``jit`` equation is ``mark``'s call ``fnn_onnx_recurrent_<i>``."""
    name = str(eqn_params.get("name", ""))
    return int(name[len(_MARK) :]) if name.startswith(_MARK) else None


def _activation(who: str, argument: str, value, error):
    if not isinstance(value, str | None) or value not in _ACTIVATIONS:
        known = ", ".join(sorted(k for k in _ACTIVATIONS if k))
        raise error(
            f"{who}: {argument}={value!r} has no ONNX recurrent activation (supported: {known}); "
            "use format='stablehlo' for it"
        )
    return _ACTIVATIONS[value]


def _weights(who: str, kind: str, params, cfg: dict, error):
    """ONNX ``W [1, G*U, F]``, ``R [1, G*U, U]``, ``B [1, 2*G*U]`` (or None) from Keras's
    ``kernel``, ``recurrent_kernel`` and ``bias``."""
    units = cfg["units"]
    try:
        params = {key: np.asarray(value) for key, value in params.items()}
    except jax.errors.TracerArrayConversionError:
        raise error(f"{who}: its weights are computed inside the model, not constants") from None
    for key, value in params.items():
        if value.dtype != np.float32:
            raise error(f"{who}: ONNX export needs float32 weights, got {key!r} as {value.dtype}")
    order = _GATES[kind]

    def onnx_order(a):
        a = np.asarray(a, np.float32)
        return np.concatenate([a[..., g * units : (g + 1) * units] for g in order], axis=-1)

    w = onnx_order(params["kernel"]).T[None]
    r = onnx_order(params["recurrent_kernel"]).T[None]
    if "bias" not in params:
        return w, r, None
    bias = np.asarray(params["bias"], np.float32)
    if kind == "GRU" and cfg["reset_after"]:
        # Row 0 is added to x @ kernel, row 1 to h @ recurrent_kernel (inside r * (.)): ONNX's
        # Wb and Rb with linear_before_reset=1.
        b = np.concatenate([onnx_order(bias[0]), onnx_order(bias[1])])
    else:
        b = np.concatenate([onnx_order(bias), np.zeros_like(bias)])
    return w, r, b[None]


def _time_reversed(g, name: str) -> str:
    big = np.iinfo(np.int64)
    return g.one(
        "Slice",
        [name, *(g.const([v], np.int64) for v in (-1, big.min, 1, -1))],
    )


def _gather_time(g, data: str, index: str) -> str:
    """``data[b, index[b, t], ...]`` for ``data [B, T, D]`` and ``index [B, T]`` (int64)."""
    full = g.one(
        "Expand", [g.one("Unsqueeze", [index, g.const([2], np.int64)]), g.one("Shape", [data])]
    )
    return g.one("GatherElements", [data, full], axis=1)


def emit(g, marked: Marked, ins: list[str], in_avals: list, out_avals: list, error) -> list[str]:
    """The ONNX names of the marked call's flat outputs, given its flat input names and the
    abstract values of its inputs and outputs."""
    kind = marked.layer.spec.class_name
    who = f"layer {marked.name!r} ({kind})"
    cfg = layer_spec.full_arguments(marked.layer.spec)
    units, steps = cfg["units"], in_avals[0].shape[1]
    x, mask, initial = (list(marked.tree.unflatten(ins)) + [None, None])[:3]
    # ONNX's nodes compute in the inputs' dtype: a float16/bfloat16 compute policy would
    # silently run in float32 there.
    dtypes = [np.dtype(a.dtype) for a in [in_avals[0], *out_avals] if np.dtype(a.dtype) != bool]
    if any(d != np.float32 for d in dtypes):
        raise error(
            f"{who}: ONNX export needs float32 inputs and outputs, got {[str(d) for d in dtypes]} "
            "(a mixed-precision policy?)"
        )
    w, r, b = _weights(who, kind, marked.params, cfg, error)
    acts = (
        [("recurrent_activation", cfg.get("recurrent_activation"))] if kind != "SimpleRNN" else []
    )
    acts += [("activation", cfg["activation"])] * (2 if kind == "LSTM" else 1)
    spec = [_activation(who, arg, value, error) for arg, value in acts]
    attrs: dict[str, Any] = {"hidden_size": units, "activations": [s[0] for s in spec]}
    alpha = [s[1] for s in spec if s[1] is not None]
    beta = [s[2] for s in spec if s[2] is not None]
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    if kind == "GRU":
        attrs["linear_before_reset"] = int(bool(cfg["reset_after"]))

    if cfg["go_backwards"]:
        x = _time_reversed(g, x)
    keep = lens = count = None
    if mask is not None:
        keep = mask
        if np.dtype(in_avals[1].dtype) != np.bool_:
            keep = g.one("Cast", [keep], to=_bool(g))
        if cfg["go_backwards"]:
            keep = _time_reversed(g, keep)
        # Real steps first, in order: a stable sort by where(mask, t, t + T).
        t = np.arange(steps, dtype=np.int64)
        sort_key = g.one("Where", [keep, g.const(t), g.const(t + steps)])
        _, order = g.node(
            "TopK", [sort_key, g.const([steps], np.int64)], n_out=2, axis=1, largest=0
        )
        x = _gather_time(g, x, order)
        count = g.one(
            "ReduceSum", [g.one("Cast", [keep], to=_int32(g)), g.const([1], np.int64)], keepdims=0
        )
        # onnxruntime wants sequence_lens >= 1; an all-masked row is replaced below.
        lens = g.one("Max", [count, g.const(np.array(1, np.int32))])

    states = (
        [] if initial is None else (initial if isinstance(initial, list | tuple) else [initial])
    )
    h0 = [g.one("Unsqueeze", [s, g.const([0], np.int64)]) for s in states]
    inputs = [
        g.one("Transpose", [x], perm=[1, 0, 2]),
        g.const(w),
        g.const(r),
        "" if b is None else g.const(b),
        lens or "",
        *h0,
    ]
    while inputs[-1] == "":
        inputs.pop()
    n_states = 2 if kind == "LSTM" else 1
    y, *final = g.node(_OP[kind], inputs, n_out=1 + n_states, **attrs)
    squeeze0 = g.const([0], np.int64)
    # Y [T, 1, B, U] -> [B, T, U] (processing order); Y_h, Y_c [1, B, U] -> [B, U].
    seq = g.one("Transpose", [g.one("Squeeze", [y, g.const([1], np.int64)])], perm=[1, 0, 2])
    final = [g.one("Squeeze", [f, squeeze0]) for f in final]
    zero = g.const(np.array(0, np.float32))
    start = list(states) if states else [zero] * n_states
    zero_masked = bool(cfg["zero_output_for_mask"])
    if keep is not None:
        empty = g.one(
            "Unsqueeze",
            [g.one("Equal", [count, g.const(np.array(0, np.int32))]), g.const([1], np.int64)],
        )
        final = [g.one("Where", [empty, s0, f]) for s0, f in zip(start, final)]
        if cfg["return_sequences"]:
            seen = g.one(
                "CumSum", [g.one("Cast", [keep], to=_int64(g)), g.const(np.array(1, np.int64))]
            )
            last = g.one(
                "Max",
                [
                    g.one("Sub", [seen, g.const(np.array(1, np.int64))]),
                    g.const(np.array(0, np.int64)),
                ],
            )
            seq = _gather_time(g, seq, last)
            axis2 = g.const([2], np.int64)
            if zero_masked:
                seq = g.one("Where", [g.one("Unsqueeze", [keep, axis2]), seq, zero])
            else:
                before = g.one("Greater", [seen, g.const(np.array(0, np.int64))])
                h_start = (
                    start[0]
                    if not states
                    else g.one("Unsqueeze", [states[0], g.const([1], np.int64)])
                )
                seq = g.one("Where", [g.one("Unsqueeze", [before, axis2]), seq, h_start])
    if cfg["return_sequences"]:
        output = seq
    else:
        output = final[0]
        if keep is not None and zero_masked:
            big = np.iinfo(np.int64).max
            last_keep = g.one("Slice", [keep, *(g.const([v], np.int64) for v in (-1, big, 1))])
            output = g.one("Where", [last_keep, output, zero])
    outs = [output]
    if cfg["return_state"]:
        outs += final
    elif cfg["return_mask"]:
        if keep is None:
            b_t = g.one("Slice", [g.one("Shape", [x]), *(g.const([v], np.int64) for v in (0, 2))])
            keep = g.one("ConstantOfShape", [b_t], value=_true_tensor(g))
        outs.append(keep)
    if len(outs) != len(out_avals):
        raise error(f"{who}: {len(out_avals)} outputs, expected {len(outs)}")
    return outs


def _bool(g) -> int:
    return g.helper.np_dtype_to_tensor_dtype(np.dtype(np.bool_))


def _int32(g) -> int:
    return g.helper.np_dtype_to_tensor_dtype(np.dtype(np.int32))


def _int64(g) -> int:
    return g.helper.np_dtype_to_tensor_dtype(np.dtype(np.int64))


def _true_tensor(g):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array([True]))
