"""Combinators: build layers from layers, threading ``state`` and splitting ``rng``.

Children's params and state are keyed by their unique names (``dense``,
``dense_1``, ...); parameterless children get no entry.

>>> import jax, fnn
>>> from fnn.layers import Dense, Flatten
>>> model = fnn.serial(Flatten(), Dense(32, activation="relu"), Dense(10))
>>> params, state = model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8), "float32"))
>>> sorted(params)
['dense', 'dense_1']
>>> params["dense"]["kernel"].shape
(64, 32)
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from fnn.core.errors import ConfigError, FnnError, ShapeError, shape_of
from fnn.core.layer import Layer, as_shape_struct, output_shapes, register_layer

# Active only inside fnn.summary: a list that collects (path, layer, outputs, params, state)
# for every child call while summary traces the model abstractly.
_RECORDER: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "fnn_recorder", default=None
)
_PATH: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("fnn_path", default=())
# Active only inside an exporter (fnn.io.export's ONNX path): ``hook(key, child)`` returns a
# stand-in for ``child.apply`` (same signature) or None, so a recurrent layer traces as one
# marked call that becomes one ONNX LSTM/GRU/RNN node instead of an untranslatable scan.
_APPLY_HOOK: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "fnn_apply_hook", default=None
)


@contextlib.contextmanager
def record_calls():
    """Collect every child call made by combinators while tracing (used by ``summary``)."""
    records: list = []
    token = _RECORDER.set(records)
    try:
        yield records
    finally:
        _RECORDER.reset(token)


@contextlib.contextmanager
def replace_apply(hook: Callable[[str, Layer], Callable | None]):
    """While active, ``call_child(key, child, ...)`` calls ``hook(key, child)`` instead of
    ``child.apply`` when the hook returns a function (``key``: the child's unique name; used
    by ``fnn.export`` to trace some layers as marked calls)."""
    token = _APPLY_HOOK.set(hook)
    try:
        yield
    finally:
        _APPLY_HOOK.reset(token)


def apply_of(key: str, child: Layer) -> Callable:
    """``child.apply``, or its stand-in from an active ``replace_apply`` hook."""
    hook = _APPLY_HOOK.get()
    return (hook is not None and hook(key, child)) or child.apply


def child_names(layers: Sequence[Layer], parent: str) -> list[str]:
    """Unique parameter keys for ``layers``: user-chosen names are kept (duplicates are an
    error), default names get Keras-style ``_1``, ``_2`` suffixes in order."""
    for child in layers:
        if not isinstance(child, Layer):
            raise ConfigError(
                f"{parent}: expected fnn Layer children, got {type(child).__name__} ({child!r})."
            )
    explicit = [c.name for c in layers if c.explicitly_named]
    duplicates = sorted({n for n in explicit if explicit.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"{parent}: duplicate layer names {duplicates}; give each child a unique name= "
            "(its parameters are stored under that key)."
        )
    taken = set(explicit)
    keys = []
    for child in layers:
        if child.explicitly_named:
            keys.append(child.name)
            continue
        key, suffix = child.name, 0
        while key in taken:
            suffix += 1
            key = f"{child.name}_{suffix}"
        taken.add(key)
        keys.append(key)
    return keys


def split_rng(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
    """``n`` independent keys from ``rng`` (or ``n`` times ``None``)."""
    if rng is None:
        return [None] * n
    return list(jax.random.split(rng, n))


def as_inputs(outputs: Any) -> tuple:
    """A layer's outputs as the positional inputs of the next layer (tuples are splatted)."""
    return outputs if isinstance(outputs, tuple) else (outputs,)


def call_child(key: str, child: Layer, params, state, inputs: tuple, rng, train: bool, **kwargs):
    """``child.apply`` on the ``inputs`` tuple (any shapes); records the call when ``summary`` is
    tracing."""
    records = _RECORDER.get()
    if records is None:
        return apply_of(key, child)(params, state, *inputs, rng=rng, train=train, **kwargs)
    path = _PATH.get() + (key,)
    index = len(records)
    records.append(None)
    token = _PATH.set(path)
    try:
        outputs, new_state = apply_of(key, child)(
            params, state, *inputs, rng=rng, train=train, **kwargs
        )
    finally:
        _PATH.reset(token)
    records[index] = (path, child, outputs, params, state)
    return outputs, new_state


def renamed_error(key: str, child: Layer, err: FnnError) -> FnnError:
    """``err`` re-worded with the child's unique name in this combinator when it starts
    with the constructor name (the third Conv2D reports ``conv2d_2:``, not ``conv2d:``)."""
    prefix, text = f"{child.name}:", str(err)
    if key == child.name or not text.startswith(prefix):
        return err
    renamed = copy.copy(err)  # same class and attributes, new text
    renamed.args = (f"{key}:{text[len(prefix) :]}",)
    return renamed


def _init_children(keys, layers, rng, inputs_per_child):
    params, state = {}, {}
    for key, child, child_rng, inputs in zip(keys, layers, rng, inputs_per_child, strict=True):
        try:
            p, s = child.init(child_rng, *inputs)
        except FnnError as err:
            raise renamed_error(key, child, err) from None
        if p:
            params[key] = p
        if s:
            state[key] = s
    return params, state


def _apply_children(keys, layers, params, state, inputs_per_child, rng, train):
    """Each child on its own inputs: ``(outputs tuple, new state)`` (side-by-side children)."""
    outs, new_state = [], {}
    rngs = split_rng(rng, len(layers))
    for k, child, inputs, r in zip(keys, layers, inputs_per_child, rngs, strict=True):
        try:
            out, s = call_child(k, child, params.get(k, {}), state.get(k, {}), inputs, r, train)
        except FnnError as err:
            raise renamed_error(k, child, err) from None
        outs.append(out)
        if s:
            new_state[k] = s
    return tuple(outs), new_state


@register_layer
def serial(*layers: Layer, name: str = "sequential") -> Layer:
    """Chain layers: each child's outputs are the next child's inputs (tuples are splatted).

    The functional ``Sequential``: ``[inputs of layers[0]] -> [outputs of layers[-1]]``.
    """
    keys = child_names(layers, name)

    def init(key, *inputs):
        params, state = {}, {}
        xs = as_shape_struct(inputs)
        for k, child, child_key in zip(keys, layers, jax.random.split(key, max(len(layers), 1))):
            try:
                p, s = child.init(child_key, *xs)
                xs = as_inputs(output_shapes(child, p, s, *xs))
            except FnnError as err:
                raise renamed_error(k, child, err) from None
            if p:
                params[k] = p
            if s:
                state[k] = s
        return params, state

    def apply(params, state, *inputs, rng=None, train=False):
        new_state = {}
        xs = inputs
        for k, child, child_rng in zip(keys, layers, split_rng(rng, len(layers))):
            try:
                out, s = call_child(
                    k, child, params.get(k, {}), state.get(k, {}), xs, child_rng, train
                )
            except FnnError as err:
                raise renamed_error(k, child, err) from None
            if s:
                new_state[k] = s
            xs = as_inputs(out)
        return (xs[0] if len(xs) == 1 else xs), new_state

    return Layer(init, apply, name, children=tuple(zip(keys, layers)))


@register_layer
def parallel(*layers: Layer, name: str = "parallel") -> Layer:
    """Apply ``layers[i]`` to input ``i``: ``(x_0, ..., x_{n-1}) -> (y_0, ..., y_{n-1})``."""
    keys = child_names(layers, name)

    def check(inputs):
        if len(inputs) != len(layers):
            raise ShapeError(
                f"{name}: expected {len(layers)} inputs (one per child layer), got {len(inputs)} "
                f"with shapes {[shape_of(x) for x in inputs]}."
            )

    def init(key, *inputs):
        check(inputs)
        xs = as_shape_struct(inputs)
        rngs = jax.random.split(key, len(layers))
        return _init_children(keys, layers, rngs, [(x,) for x in xs])

    def apply(params, state, *inputs, rng=None, train=False):
        check(inputs)
        return _apply_children(keys, layers, params, state, [(x,) for x in inputs], rng, train)

    return Layer(init, apply, name)


@register_layer
def fan_out(*layers: Layer, name: str = "fan_out") -> Layer:
    """Apply every layer to the same inputs: ``x -> (layers[0](x), ..., layers[-1](x))``.

    Follow it with a merge such as ``fnn.layers.Concatenate()`` or ``fnn.layers.Add()``.
    """
    keys = child_names(layers, name)

    def init(key, *inputs):
        xs = as_shape_struct(inputs)
        rngs = jax.random.split(key, len(layers))
        return _init_children(keys, layers, rngs, [xs] * len(layers))

    def apply(params, state, *inputs, rng=None, train=False):
        return _apply_children(keys, layers, params, state, [inputs] * len(layers), rng, train)

    return Layer(init, apply, name)


@register_layer
def residual(*layers: Layer, name: str = "residual") -> Layer:
    """Skip connection around a chain of layers: ``x -> serial(*layers)(x) + x`` (same shape)."""
    body = serial(*layers, name=name)

    def check(x, y):
        if shape_of(x) != shape_of(y):
            raise ShapeError(
                f"{name}: expected the residual branch to keep the input shape {shape_of(x)}, "
                f"got {shape_of(y)}. Add a projection (e.g. Dense) so both shapes match."
            )

    def init(key, x):
        params, state = body.init(key, x)
        check(x, output_shapes(body, params, state, x))
        return params, state

    def apply(params, state, x, *, rng=None, train=False):
        y, new_state = body.apply(params, state, x, rng=rng, train=train)
        check(x, y)
        return x + y, new_state

    return Layer(init, apply, name)


def Lambda(fn: Callable[..., Any], name: str = "lambda") -> Layer:
    """Lift a pure function of arrays into a parameterless, stateless layer.

    >>> import jax.numpy as jnp, fnn
    >>> double = fnn.Lambda(lambda x: 2 * x, name="double")
    >>> double.apply({}, {}, jnp.ones(2))[0]
    Array([2., 2.], dtype=float32)
    """

    def init(key, *inputs):
        del key, inputs
        return {}, {}

    def apply(params, state, *inputs, rng=None, train=False):
        del params, rng, train
        return fn(*inputs), state

    return Layer(init, apply, name)


# Names of ``jax.checkpoint_policies`` that ``remat`` accepts (strings keep a spec savable).
REMAT_POLICIES = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)


@register_layer
def remat(layer: Layer, policy: str | Callable | None = None, name: str | None = None) -> Layer:
    """Gradient checkpointing: ``layer`` whose activations are recomputed in the backward
    pass instead of kept (``jax.checkpoint``). Same inputs, outputs and params as ``layer``.

    ``policy``: what may still be saved, a name from ``REMAT_POLICIES`` (``None`` =
    ``"nothing_saveable"``: recompute everything; ``"dots_saveable"`` keeps matmul
    results) or any ``jax.checkpoint_policies`` callable (then not savable as a spec).

    >>> import jax, jax.numpy as jnp, fnn
    >>> block = fnn.remat(fnn.layers.Dense(4, activation="relu"), policy="dots_saveable")
    >>> params, state = block.init(jax.random.key(0), jnp.ones((2, 3)))
    >>> block.apply(params, state, jnp.ones((2, 3)))[0].shape, sorted(params)
    ((2, 4), ['bias', 'kernel'])
    """
    if not isinstance(layer, Layer):
        raise ConfigError(f"remat: expected an fnn Layer, got {type(layer).__name__}.")
    name = layer.name if name is None else name
    if policy is None or isinstance(policy, str):
        if policy is not None and policy not in REMAT_POLICIES:
            raise ConfigError(
                f"{name}: unknown remat policy {policy!r}. Valid policies: "
                f"{', '.join(REMAT_POLICIES)} (or a jax.checkpoint_policies callable)."
            )
        resolved = getattr(jax.checkpoint_policies, policy or "nothing_saveable")
    elif callable(policy):
        resolved = policy
    else:
        raise ConfigError(f"{name}: expected policy to be a name or a callable, got {policy!r}.")

    def apply(params, state, *inputs, rng=None, train=False):
        def run(p, s, r, *xs):
            return layer.apply(p, s, *xs, rng=r, train=train)

        return jax.checkpoint(run, policy=resolved)(params, state, rng, *inputs)

    # No ``children``: those name sub-dicts of params, and remat keeps the layer's own params.
    return Layer(layer.init, apply, name)


def _unstack(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


@register_layer
def repeat(block: Layer, n: int, name: str = "repeat") -> Layer:
    """``n`` copies of ``block`` applied in sequence, ``x -> block_n(...block_1(x))``, with
    their params stacked on a new leading axis and the loop run by ``jax.lax.scan``: a
    48-block model compiles ``block`` once, not 48 times.

    ``[batch, ...] -> [batch, ...]``: the block must keep its input's shape and dtype
    (one array in, one out). Params/state: the block's, each leaf ``[n, *leaf shape]``;
    copy ``i`` is ``jax.tree.map(lambda a: a[i], params)``, initialised from the
    ``i``-th of ``jax.random.split(key, n)``. ``rng`` is split the same way per copy.
    Sharding rules for stacked leaves start with ``...`` (``(..., "fsdp", "tensor")``).

    >>> import jax, jax.numpy as jnp, fnn
    >>> deep = fnn.repeat(fnn.layers.Dense(8, activation="tanh"), 4)
    >>> params, state = deep.init(jax.random.key(0), jnp.ones((2, 8)))
    >>> params["kernel"].shape, deep.apply(params, state, jnp.ones((2, 8)))[0].shape
    ((4, 8, 8), (2, 8))
    """
    if not isinstance(block, Layer):
        raise ConfigError(f"{name}: expected an fnn Layer to repeat, got {type(block).__name__}.")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"{name}: expected n to be a positive int, got {n!r}.")

    def check(x, y):
        if not isinstance(y, jax.ShapeDtypeStruct | jax.Array) or (
            shape_of(y) != shape_of(x) or y.dtype != x.dtype
        ):
            got = [shape_of(v) for v in y] if isinstance(y, tuple) else shape_of(y)
            raise ShapeError(
                f"{name}: expected the repeated block {block.name!r} to map its input "
                f"{shape_of(x)} ({x.dtype}) to one array of the same shape and dtype, got {got}. "
                "Repeat only shape-preserving blocks (e.g. a residual Transformer block)."
            )

    def entry(x):
        # A block under a mixed-precision policy returns its compute dtype: the loop then
        # carries that dtype from the first copy on.
        dtype = block.compute_dtype
        if dtype is None or not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, dtype)
        return x.astype(dtype)

    def init(key, x):
        (x,) = as_shape_struct((entry(x),))
        params, state = jax.vmap(lambda k: block.init(k, x))(jax.random.split(key, n))
        check(x, output_shapes(block, _unstack(params, 0), _unstack(state, 0), x))
        return params, state

    def apply(params, state, x, *, rng=None, train=False):
        def body(carry, xs):
            p, s, r = xs
            y, new_s = block.apply(p, s, carry, rng=r, train=train)
            return y, new_s

        rngs = None if rng is None else jax.random.split(rng, n)
        y, new_state = jax.lax.scan(body, entry(x), (params, state, rngs))
        return y, new_state

    # No ``children``: the block's params are stacked here, not nested under a key.
    return Layer(init, apply, name)
