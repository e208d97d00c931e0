"""Recurrent layers: SimpleRNN, LSTM, GRU and the Bidirectional wrapper (Keras semantics).

Every layer maps ``[batch, time, features]`` to ``[batch, units]`` (the last output) or
``[batch, time, units]`` (``return_sequences=True``). The time loop is one ``jax.lax.scan``
whose body multiplies ``h`` by the recurrent kernel (Keras's gate layout): SimpleRNN and
LSTM in one matmul (split into gates after it: on XLA:CPU the larger matmul runs on more
threads), GRU in one matmul per gate block, the blocks sliced once before the loop (measured
faster on XLA:CPU than one fused matmul split per step). The input projection
``x @ kernel (+ bias)`` is one matmul over all steps before the scan on accelerators, and
done per step inside it on CPU for narrow inputs, where that measured faster
(``_hoist_projection``). ``unroll`` (Keras's argument; also an int: steps per
loop iteration) is passed to the scan; the result does not depend on it.

Apply signature: ``apply(params, state, x, mask=None, initial_state=None, *, rng=None,
train=False)``.

- ``mask``: bool ``[batch, time]``, True for real steps. ``Embedding(mask_zero=True)``
  returns ``(x, mask)``, which ``serial`` splats into these two positional inputs. At a
  masked step the state is carried over unchanged and the output repeats the previous
  output (zeros instead with ``zero_output_for_mask=True``), as in Keras.
- ``initial_state``: ``h`` (or ``(h,)``) for SimpleRNN/GRU, ``(h, c)`` for LSTM, each
  ``[batch, units]``; zeros when omitted.

Mask propagation (fnn's explicit protocol): Keras passes the mask on implicitly; fnn
cannot, because a tuple output is splatted into the next layer. By default the mask is
therefore dropped, so ``LSTM(return_sequences=True)`` can feed ``Dense`` directly. For
stacked recurrent layers over padded data, pass ``return_mask=True`` (an fnn extension,
only with ``return_sequences=True`` and ``return_state=False``): the output becomes
``(sequences, mask)`` and the next recurrent layer receives the mask (time-reversed
with ``go_backwards=True``, to match the reversed sequence; all True without an input
mask).

>>> import jax, jax.numpy as jnp, fnn
>>> from fnn.layers import LSTM, Dense
>>> model = fnn.serial(LSTM(8, return_sequences=True, return_mask=True), LSTM(4), Dense(2))
>>> x, mask = jnp.ones((3, 5, 6)), jnp.arange(5) < jnp.array([[5], [3], [1]])
>>> params, state = model.init(jax.random.key(0), x, mask)
>>> model.apply(params, state, x, mask)[0].shape
(3, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fnn.core import activations, initializers
from fnn.core import spec as layer_spec
from fnn.core.combinators import call_child
from fnn.core.errors import ConfigError, ShapeError, check_mask, shape_of
from fnn.core.layer import Layer, param_dtype, register_layer
from fnn.layers import _spatial

_LAYOUT = "[batch, time, features]"


# --------------------------------------------------------------------------- checks


def _check_units(name: str, units: Any) -> None:
    if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
        raise ConfigError(f"{name}: expected units to be a positive int, got {units!r}.")


def _check_rate(name: str, argument: str, rate: Any) -> None:
    if not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"{name}: expected {argument} in [0, 1), got {rate!r}.")


def _check_sequence(name: str, x: Any) -> None:
    shape = shape_of(x)
    if len(shape) != 3:
        raise ShapeError(
            f"{name}: expected inputs of rank 3 {_LAYOUT}, got rank {len(shape)} "
            f"(shape {shape}). Recurrent layers read sequences; add a time axis "
            "(e.g. x[:, None, :] for one step) or a feature axis (x[..., None])."
        )


def _as_state_tuple(name: str, initial_state: Any, n_states: int, batch: int, units: int):
    """``initial_state`` as a tuple of ``n_states`` arrays ``[batch, units]`` (checked)."""
    states = tuple(initial_state) if isinstance(initial_state, tuple | list) else (initial_state,)
    what = "(h, c)" if n_states == 2 else "h"
    want = (batch, units)
    if len(states) != n_states or any(shape_of(s) != want for s in states):
        raise ShapeError(
            f"{name}: expected initial_state {what} with each array of shape "
            f"[batch, units] = {want}, got {len(states)} array(s) of shapes "
            f"{[shape_of(s) for s in states]}."
        )
    return states


def _hoist_projection(features: int, width: int) -> bool:
    """Whether to compute ``x @ kernel`` for all steps in one matmul before the scan.

    Hoisting turns ``T`` small matmuls into one large one, which pays on accelerators. On
    XLA:CPU it measured slower for narrow inputs (LSTM 16 -> 4*128, batch 64: ~1.3-1.5x
    the train step; benchmarks/RESULTS.md): the scan then streams a ``[time, batch, width]``
    array and its cotangent instead of ``[time, batch, features]``, and the per-step matmul
    is cheap. So CPU projects inside the loop unless the inputs are as wide as the gates.
    """
    return jax.default_backend() != "cpu" or features >= width


# --------------------------------------------------------------------------- cells


class _Cell(NamedTuple):
    """What SimpleRNN, LSTM and GRU differ in; ``_recurrent`` holds everything else."""

    gates: int  # blocks of width ``units`` in kernel and recurrent_kernel
    n_states: int  # h, or (h, c) for LSTM
    init_bias: Callable[[jax.Array, Any], jax.Array]  # (key, dtype) -> bias
    input_bias: Callable[[jax.Array], jax.Array]  # bias -> the part added to x @ kernel
    # step(params, carry, xw_t, h_in) -> the next carry; h_in is the previous h as fed to
    # the recurrent matmul (recurrent dropout applied); params as ``prepare`` returns them.
    step: Callable[[dict, tuple, jax.Array, jax.Array], tuple]
    # params -> what ``step`` reads, computed once outside the time loop (weight slices).
    prepare: Callable[[dict], Any] = lambda params: params


def _whole(bias: jax.Array) -> jax.Array:
    return bias


def _simple_rnn_cell(units, act, bias_init, *_) -> _Cell:
    def step(params, carry, xw_t, h_in):
        h = act(xw_t + h_in @ params["recurrent_kernel"])
        return (h,)

    return _Cell(1, 1, lambda key, dtype_: bias_init(key, (units,), dtype_), _whole, step)


def _lstm_cell(units, act, bias_init, rec_act, _use_bias, unit_forget_bias, _reset_after) -> _Cell:
    def init_bias(key, dtype_):
        if not unit_forget_bias:
            return bias_init(key, (4 * units,), dtype_)
        ki, kco = jax.random.split(key)
        return jnp.concatenate(
            [
                bias_init(ki, (units,), dtype_),
                jnp.ones((units,), dtype_),
                bias_init(kco, (2 * units,), dtype_),
            ]
        )

    def step(params, carry, xw_t, h_in):
        # One [units, 4 * units] recurrent matmul split into the gates i, f, c, o. Four
        # [units, units] matmuls (as the GRU has) spend ~17% less CPU time on XLA:CPU, but
        # each is too small to be split across threads: the step took ~1.10x the wall time
        # of the fused one (benchmarks' LSTM, 2 cores, idle machine, interleaved).
        _, c = carry
        z = xw_t + h_in @ params["recurrent_kernel"]
        z_i, z_f, z_c, z_o = jnp.split(z, 4, axis=-1)
        c = rec_act(z_f) * c + rec_act(z_i) * act(z_c)
        h = rec_act(z_o) * act(c)
        return (h, c)

    return _Cell(4, 2, init_bias, _whole, step)


def _gru_cell(units, act, bias_init, rec_act, use_bias, _unit_forget_bias, reset_after) -> _Cell:
    def init_bias(key, dtype_):
        return bias_init(key, (2, 3 * units) if reset_after else (3 * units,), dtype_)

    def prepare(params):
        # The recurrent kernel (Keras layout [units, 3 * units], gates z, r, h) as three
        # [units, units] blocks sliced once before the loop: three matmuls per step
        # instead of one fused matmul whose output is split measured ~1.2x faster for the
        # GRU train step on XLA:CPU (no per-step slices of the output and of its
        # cotangent; the blocks' gradients are joined once after the loop).
        u = jnp.split(params["recurrent_kernel"], 3, axis=-1)
        b = jnp.split(params["bias"][1], 3) if reset_after and use_bias else None
        return u, b

    def step(prepared, carry, xw_t, h_in):
        (h,) = carry
        (u_z, u_r, u_h), b = prepared
        xw_z, xw_r, xw_h = jnp.split(xw_t, 3, axis=-1)
        if reset_after:
            inner = [h_in @ u_z, h_in @ u_r, h_in @ u_h]
            if b is not None:
                inner = [v + bias for v, bias in zip(inner, b)]
            z = rec_act(xw_z + inner[0])
            r = rec_act(xw_r + inner[1])
            candidate = act(xw_h + r * inner[2])
        else:
            z = rec_act(xw_z + h_in @ u_z)
            r = rec_act(xw_r + h_in @ u_r)
            candidate = act(xw_h + (r * h_in) @ u_h)
        return (z * h + (1 - z) * candidate,)

    # reset_after: bias row 0 is the input bias, row 1 the recurrent one (added in step).
    input_bias = (lambda bias: bias[0]) if reset_after else _whole
    return _Cell(3, 1, init_bias, input_bias, step, prepare)


# Each called as cell(units, act, bias_init, rec_act, use_bias, unit_forget_bias, reset_after).
_CELLS = {"SimpleRNN": _simple_rnn_cell, "LSTM": _lstm_cell, "GRU": _gru_cell}


# --------------------------------------------------------------------------- the loop


def _recurrent(
    kind: str,
    units: int,
    activation="tanh",
    recurrent_activation="sigmoid",
    use_bias: bool = True,
    kernel_initializer="glorot_uniform",
    recurrent_initializer="orthogonal",
    bias_initializer="zeros",
    unit_forget_bias: bool = True,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    return_sequences: bool = False,
    return_state: bool = False,
    go_backwards: bool = False,
    unroll: bool | int = False,
    reset_after: bool = True,
    zero_output_for_mask: bool = False,
    return_mask: bool = False,
    dtype=None,
    name: str = "rnn",
) -> Layer:
    """SimpleRNN, LSTM or GRU (``kind``): one implementation, the cells from ``_CELLS``.

    Each public factory's signature is this one without ``kind`` and the other cells'
    arguments (``_spatial.ranked``), so the Keras argument lists are written once.
    """
    act = activations.get(activation)
    rec_act = activations.get(recurrent_activation)
    kernel_init = initializers.get(kernel_initializer)
    recurrent_init = initializers.get(recurrent_initializer)
    bias_init = initializers.get(bias_initializer)
    _check_units(name, units)
    _check_rate(name, "dropout", dropout)
    _check_rate(name, "recurrent_dropout", recurrent_dropout)
    if not isinstance(unroll, int) or (not isinstance(unroll, bool) and unroll < 1):
        raise ConfigError(
            f"{name}: expected unroll to be a bool or a positive int (steps per loop "
            f"iteration), got {unroll!r}."
        )
    if return_mask and (not return_sequences or return_state):
        raise ConfigError(
            f"{name}: return_mask=True needs return_sequences=True and return_state=False "
            f"(got return_sequences={return_sequences}, return_state={return_state}); "
            "the mask only makes sense beside a sequence output."
        )
    cell = _CELLS[kind](units, act, bias_init, rec_act, use_bias, unit_forget_bias, reset_after)
    n_states = cell.n_states

    def init(key, x, mask=None, initial_state=None):
        _check_sequence(name, x)
        check_mask(name, x, mask)
        if initial_state is not None:
            _as_state_tuple(name, initial_state, n_states, x.shape[0], units)
        dtype_ = param_dtype(x, dtype)
        k1, k2, k3 = jax.random.split(key, 3)
        params = {
            "kernel": kernel_init(k1, (x.shape[-1], cell.gates * units), dtype_),
            "recurrent_kernel": recurrent_init(k2, (units, cell.gates * units), dtype_),
        }
        if use_bias:
            params["bias"] = cell.init_bias(k3, dtype_)
        return params, {}

    def dropout_masks(rng, train, batch, features, out_dtype):
        if not train or (dropout == 0.0 and recurrent_dropout == 0.0):
            return None, None
        if rng is None:
            raise ConfigError(
                f"{name}: train=True with dropout needs a PRNG key; call "
                "apply(..., rng=jax.random.key(seed), train=True)."
            )
        in_key, rec_key = jax.random.split(rng)
        in_mask = rec_mask = None
        if dropout > 0.0:
            keep = jax.random.bernoulli(in_key, 1.0 - dropout, (batch, features))
            in_mask = keep.astype(out_dtype) / (1.0 - dropout)
        if recurrent_dropout > 0.0:
            keep = jax.random.bernoulli(rec_key, 1.0 - recurrent_dropout, (batch, units))
            rec_mask = keep.astype(out_dtype) / (1.0 - recurrent_dropout)
        return in_mask, rec_mask

    def apply(params, state, x, mask=None, initial_state=None, *, rng=None, train=False):
        _check_sequence(name, x)
        kernel = params["kernel"]
        if x.shape[-1] != kernel.shape[0]:
            raise ShapeError(
                f"{name}: expected inputs with {kernel.shape[0]} features (kernel has shape "
                f"{tuple(kernel.shape)}), got inputs of shape {tuple(x.shape)} "
                f"{_LAYOUT}. The layer was built for other inputs; rebuild it with init."
            )
        check_mask(name, x, mask)
        if mask is not None:
            mask = jnp.asarray(mask).astype(bool)
        batch, _, features = x.shape

        in_mask, rec_mask = dropout_masks(rng, train, batch, features, kernel.dtype)
        if in_mask is not None:
            # One mask for every time step (variational dropout, as Keras).
            x = x * in_mask[:, None, :]
        bias_in = cell.input_bias(params["bias"]) if use_bias else None

        def project(x_):
            xw_ = x_ @ kernel
            return xw_ if bias_in is None else xw_ + bias_in

        hoist = _hoist_projection(features, cell.gates * units)
        # Time-major for scan: either the projections of all steps (one matmul before the
        # scan) or the raw inputs, projected step by step inside it (see _hoist_projection).
        xs = project(jnp.swapaxes(x, 0, 1)) if hoist else jnp.swapaxes(x, 0, 1)
        carry_dtype = jnp.result_type(x.dtype, kernel.dtype)
        if initial_state is None:
            carry = tuple(jnp.zeros((batch, units), carry_dtype) for _ in range(n_states))
        else:
            states = _as_state_tuple(name, initial_state, n_states, batch, units)
            carry = tuple(jnp.asarray(s).astype(carry_dtype) for s in states)

        prepared = cell.prepare(params)

        def advance(carry, x_t):
            h_in = carry[0] if rec_mask is None else carry[0] * rec_mask
            return cell.step(prepared, carry, x_t if hoist else project(x_t), h_in)

        n_steps = x.shape[1]
        scan_unroll = max(1, n_steps) if unroll is True else max(1, int(unroll))
        if mask is None:

            def body(carry, xw_t):
                new = advance(carry, xw_t)
                return new, (new[0] if return_sequences else None)

            carry, ys = jax.lax.scan(body, carry, xs, reverse=go_backwards, unroll=scan_unroll)
        else:
            keep = jnp.swapaxes(mask, 0, 1)[..., None]

            def body(carry, inputs):
                xw_t, keep_t = inputs
                new = advance(carry, xw_t)
                # Masked steps carry the old state over unchanged.
                new = tuple(jnp.where(keep_t, n, o) for n, o in zip(new, carry))
                if not return_sequences:
                    return new, None
                out = jnp.where(keep_t, new[0], 0) if zero_output_for_mask else new[0]
                return new, out

            carry, ys = jax.lax.scan(
                body, carry, (xs, keep), reverse=go_backwards, unroll=scan_unroll
            )

        if return_sequences:
            # scan(reverse=True) stores step t at index t; Keras returns processing order.
            ys = jnp.flip(ys, 0) if go_backwards else ys
            output = jnp.swapaxes(ys, 0, 1)
        else:
            output = carry[0]
            if mask is not None and zero_output_for_mask:
                last_step = 0 if go_backwards else -1
                output = jnp.where(mask[:, last_step, None], output, 0)
        if return_state:
            return (output, *carry), state
        if return_mask:
            if mask is None:
                mask = jnp.ones(x.shape[:2], bool)
            # The mask follows the output's time order (reversed with go_backwards).
            return (output, jnp.flip(mask, 1) if go_backwards else mask), state
        return output, state

    return Layer(init, apply, name)


# --------------------------------------------------------------------------- layers


def _factory(kind: str, name: str, doc: str, *, hide: tuple[str, ...]):
    """``_recurrent`` for one cell under its Keras name, argument list and docstring."""
    factory = _spatial.ranked(_recurrent, kind, name, hide=hide)
    factory.__name__ = factory.__qualname__ = kind
    factory.__doc__ = doc
    return register_layer(factory, weight_order=("kernel", "recurrent_kernel", "bias"))


_SIMPLE_RNN_DOC = """Fully connected recurrence ``h_t = activation(x_t W + h_{t-1} U + b)``.

    ``[batch, time, features] -> [batch, units]``, or ``[batch, time, units]`` with
    ``return_sequences``; with ``return_state`` the output is ``(output, h)``.

    Params (Keras layout): ``kernel [features, units]`` (W), ``recurrent_kernel
    [units, units]`` (U), ``bias [units]``. ``dropout`` / ``recurrent_dropout`` drop inputs
    / the recurrent state with one mask per sequence (fixed across time) when
    ``train=True``; the masks come from ``in_key, rec_key = jax.random.split(rng)``. LSTM
    and GRU share these masks across their gates (Keras draws one per gate when
    ``recurrent_dropout > 0``). See the module docstring for ``mask``, ``initial_state`` and ``return_mask``.

    >>> import jax, jax.numpy as jnp, fnn
    >>> rnn = fnn.layers.SimpleRNN(4, return_sequences=True)
    >>> params, state = rnn.init(jax.random.key(0), jnp.ones((2, 5, 3)))
    >>> jax.tree.map(jnp.shape, params)
    {'bias': (4,), 'kernel': (3, 4), 'recurrent_kernel': (4, 4)}
    >>> rnn.apply(params, state, jnp.ones((2, 5, 3)))[0].shape
    (2, 5, 4)
    """

SimpleRNN = _factory(
    "SimpleRNN",
    "simple_rnn",
    _SIMPLE_RNN_DOC,
    hide=("recurrent_activation", "unit_forget_bias", "reset_after"),
)

_LSTM_DOC = """Long short-term memory (Hochreiter & Schmidhuber 1997), Keras semantics.

    ``[batch, time, features] -> [batch, units]``, or ``[batch, time, units]`` with
    ``return_sequences``; with ``return_state`` the output is ``(output, h, c)``.

    Params (Keras layout, gate blocks of width ``units`` in the order **i, f, c, o**):
    ``kernel [features, 4*units]``, ``recurrent_kernel [units, 4*units]``,
    ``bias [4*units]``. Per step, with ``z = x_t kernel + h recurrent_kernel + bias`` split
    into ``z_i, z_f, z_c, z_o`` and ``σ = recurrent_activation``, ``g = activation``::

        c = σ(z_f) * c + σ(z_i) * g(z_c);   h = σ(z_o) * g(c)

    ``unit_forget_bias=True`` initializes the forget block of ``bias`` to ones and the
    other blocks with ``bias_initializer``. Dropout, ``mask``, ``initial_state`` and
    ``return_mask``: see ``SimpleRNN`` and the module docstring.

    >>> import jax, jax.numpy as jnp, fnn
    >>> lstm = fnn.layers.LSTM(4, return_state=True)
    >>> params, state = lstm.init(jax.random.key(0), jnp.ones((2, 5, 3)))
    >>> jax.tree.map(jnp.shape, params)
    {'bias': (16,), 'kernel': (3, 16), 'recurrent_kernel': (4, 16)}
    >>> (y, h, c), _ = lstm.apply(params, state, jnp.ones((2, 5, 3)))
    >>> y.shape, c.shape
    ((2, 4), (2, 4))
    """

LSTM = _factory("LSTM", "lstm", _LSTM_DOC, hide=("reset_after",))

_GRU_DOC = """Gated recurrent unit (Cho et al. 2014), Keras semantics.

    ``[batch, time, features] -> [batch, units]``, or ``[batch, time, units]`` with
    ``return_sequences``; with ``return_state`` the output is ``(output, h)``.

    Params (Keras layout, gate blocks of width ``units`` in the order **z, r, h**):
    ``kernel [features, 3*units]``, ``recurrent_kernel [units, 3*units]``, and
    ``bias [2, 3*units]`` (row 0 input bias ``b_in``, row 1 recurrent bias ``b_rec``) when
    ``reset_after=True`` (default, cuDNN-compatible), ``bias [3*units]`` otherwise. Per step,
    with ``σ = recurrent_activation``, ``g = activation``, ``xw = x_t kernel + b_in``::

        reset_after=True:   u = h recurrent_kernel + b_rec
                            z = σ(xw_z + u_z);  r = σ(xw_r + u_r);  ĥ = g(xw_h + r * u_h)
        reset_after=False:  z = σ(xw_z + h U_z);  r = σ(xw_r + h U_r);  ĥ = g(xw_h + (r * h) U_h)
        h = z * h + (1 - z) * ĥ

    (``U_z, U_r, U_h`` are the column blocks of ``recurrent_kernel``; ``reset_after=False``
    needs a second recurrent matmul per step.) Dropout, ``mask``, ``initial_state`` and
    ``return_mask``: see ``SimpleRNN`` and the module docstring.

    >>> import jax, jax.numpy as jnp, fnn
    >>> gru = fnn.layers.GRU(4)
    >>> params, state = gru.init(jax.random.key(0), jnp.ones((2, 5, 3)))
    >>> jax.tree.map(jnp.shape, params)
    {'bias': (2, 12), 'kernel': (3, 12), 'recurrent_kernel': (4, 12)}
    >>> gru.apply(params, state, jnp.ones((2, 5, 3)))[0].shape
    (2, 4)
    """

GRU = _factory("GRU", "gru", _GRU_DOC, hide=("unit_forget_bias",))


_RECURRENT = ("SimpleRNN", "LSTM", "GRU")
_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _removeprefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


@register_layer
def Bidirectional(
    layer: Layer, merge_mode="concat", backward_layer: Layer | None = None, name="bidirectional"
) -> Layer:
    """Run a recurrent layer forwards and backwards over the sequence and merge the outputs.

    ``[batch, time, features] -> [batch, 2*units]`` (``"concat"``) or ``[batch, units]``
    (``"sum"``, ``"mul"``, ``"ave"``); ``[batch, time, ...]`` with ``return_sequences``, the
    backward outputs re-reversed to the input's time order before merging. With
    ``merge_mode=None`` the output is ``(forward, backward)``. With ``return_state``, the
    states follow: ``(output, *forward_states, *backward_states)``, as Keras.

    Params (Keras names): ``{"forward_<name>": ..., "backward_<name>": ...}`` where
    ``<name>`` is the wrapped layer's name (``forward_lstm``/``backward_lstm``); a
    user-given ``backward_layer`` keeps its own name. Both directions are rebuilt from the
    layer's constructor arguments (``fnn.core.spec.build``), the backward one with
    ``go_backwards=True``, and called as children, forward first: ``fnn.summary`` lists
    them and ``get_weights`` starts with the forward layer's weights, as Keras. As Keras,
    masked steps output zeros when returning sequences. ``initial_state`` is a tuple whose
    first half goes to the forward and second half to the backward layer; ``mask`` is
    honoured by both directions.

    >>> import jax, jax.numpy as jnp, fnn
    >>> bi = fnn.layers.Bidirectional(fnn.layers.LSTM(4, return_sequences=True))
    >>> params, state = bi.init(jax.random.key(0), jnp.ones((2, 5, 3)))
    >>> sorted(params)
    ['backward_lstm', 'forward_lstm']
    >>> bi.apply(params, state, jnp.ones((2, 5, 3)))[0].shape
    (2, 5, 8)
    """
    if merge_mode not in _MERGE_MODES:
        raise ConfigError(
            f"{name}: expected merge_mode to be one of 'concat', 'sum', 'mul', 'ave' or None, "
            f"got {merge_mode!r}."
        )

    def config_of(child: Any, argument: str) -> dict[str, Any]:
        if (
            not isinstance(child, Layer)
            or child.spec is None
            or child.spec.class_name not in _RECURRENT
        ):
            raise ConfigError(
                f"{name}: expected {argument} to be a SimpleRNN, LSTM or GRU layer, got {child!r}."
            )
        return layer_spec.full_arguments(child.spec)

    fwd_config = config_of(layer, "layer")
    if backward_layer is None:
        bwd_config = {**fwd_config, "go_backwards": True}
        bwd_config["name"] = "backward_" + _removeprefix(layer.name, "backward_")
        bwd_class = layer.spec.class_name
    else:
        bwd_config = config_of(backward_layer, "backward_layer")
        bwd_class = backward_layer.spec.class_name
    fwd_config["name"] = "forward_" + _removeprefix(layer.name, "forward_")
    if fwd_config["go_backwards"] == bwd_config["go_backwards"]:
        raise ConfigError(
            f"{name}: expected the forward and backward layers to differ in go_backwards, got "
            f"{fwd_config['go_backwards']} for both."
        )
    for attribute in ("return_sequences", "return_state", "return_mask"):
        if fwd_config[attribute] != bwd_config[attribute]:
            raise ConfigError(
                f"{name}: expected the forward and backward layers to share {attribute}, got "
                f"{fwd_config[attribute]} (forward) and {bwd_config[attribute]} (backward)."
            )
    if fwd_config["name"] == bwd_config["name"]:
        raise ConfigError(
            f"{name}: the forward and backward layers are both named {fwd_config['name']!r}; "
            "give backward_layer another name (its parameters are stored under it)."
        )
    return_sequences = fwd_config["return_sequences"]
    return_state = fwd_config["return_state"]
    return_mask = fwd_config["return_mask"]
    if return_mask and merge_mode is None:
        raise ConfigError(f"{name}: return_mask=True needs a merge_mode other than None.")

    def rebuild(class_name, config, argument):
        # As Keras: masked steps output zeros when returning sequences, so the merge of
        # padded steps does not mix in stale outputs; the wrapper returns the mask itself.
        config = {**config, "zero_output_for_mask": return_sequences, "return_mask": False}
        return layer_spec.build(class_name, config, path=f"{name}.{argument}", check_types=False)

    forward = rebuild(layer.spec.class_name, fwd_config, "layer")
    backward = rebuild(bwd_class, bwd_config, "backward_layer")
    n_states = 2 if layer.spec.class_name == "LSTM" else 1
    n_bwd_states = 2 if bwd_class == "LSTM" else 1

    def split_initial(initial_state):
        if initial_state is None:
            return None, None
        states = tuple(initial_state) if isinstance(initial_state, tuple | list) else ()
        if len(states) != n_states + n_bwd_states:
            raise ShapeError(
                f"{name}: expected initial_state as a tuple of {n_states + n_bwd_states} arrays "
                f"(forward states then backward states), got {initial_state!r:.80}."
            )
        return states[:n_states], states[n_states:]

    def init(key, x, mask=None, initial_state=None):
        fwd_state, bwd_state = split_initial(initial_state)
        fwd_key, bwd_key = jax.random.split(key)
        params = {
            forward.name: forward.init(fwd_key, x, mask, fwd_state)[0],
            backward.name: backward.init(bwd_key, x, mask, bwd_state)[0],
        }
        return params, {}

    def apply(params, state, x, mask=None, initial_state=None, *, rng=None, train=False):
        fwd_state, bwd_state = split_initial(initial_state)
        fwd_rng, bwd_rng = (None, None) if rng is None else tuple(jax.random.split(rng))
        # Through call_child, forward first: summary rows and Keras's weight order (forward
        # layer first) follow the recorded child calls.
        y, _ = call_child(
            forward.name, forward, params[forward.name], {}, (x, mask, fwd_state), fwd_rng, train
        )
        y_rev, _ = call_child(
            backward.name, backward, params[backward.name], {}, (x, mask, bwd_state), bwd_rng, train
        )
        states = ()
        if return_state:
            states = (*y[1:], *y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        if return_sequences:
            y_rev = jnp.flip(y_rev, axis=1)
        if merge_mode == "concat":
            output = jnp.concatenate([y, y_rev], axis=-1)
        elif merge_mode == "sum":
            output = y + y_rev
        elif merge_mode == "mul":
            output = y * y_rev
        elif merge_mode == "ave":
            output = (y + y_rev) / 2
        else:
            output = (y, y_rev)
        output = output if isinstance(output, tuple) else (output,)
        if return_mask:
            mask = jnp.ones(x.shape[:2], bool) if mask is None else jnp.asarray(mask).astype(bool)
            return (*output, mask), state
        if len(output) == 1 and not states:
            return output[0], state
        return (*output, *states), state

    return Layer(init, apply, name)
