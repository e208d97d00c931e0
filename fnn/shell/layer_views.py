"""What ``model.layers`` and ``model.get_layer`` return: a layer seen through a model.

A ``LayerView`` is the model's layer object plus the model's params for it:
``get_weights``/``set_weights`` read and write the model's arrays, ``trainable`` freezes
the layer in the next ``compile``/``fit``, ``output``/``input`` are its symbolic tensors
in the graph, and calling it calls the layer. The model also seeds a new model's weights
from the models its layers already belong to (Keras's shared layers, as a copy taken when
the new model is built) and masks frozen params out of the optimizer.
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import optax

from fnn.core import eager
from fnn.core import weights as weights_lib
from fnn.core.errors import ConfigError
from fnn.core.layer import Layer
from fnn.core.summary import count_params


class InputLayer:
    """The input of a functional model in ``model.layers`` (Keras's ``InputLayer``)."""

    def __init__(self, tensor, name: str):
        self.name = name
        self.output = tensor
        self.input = tensor
        self.trainable = False

    @property
    def output_shape(self):
        return self.output.shape

    def get_weights(self) -> list:
        return []

    weights = property(lambda self: [])

    def count_params(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"<fnn InputLayer {self.name!r} shape={self.output.shape}>"


class LayerView:
    """A layer of a model, with the model's weights for it (see the module docstring)."""

    def __init__(self, model, key: str, layer: Layer, obj: Any = None):
        self._model = model
        self._key = key
        self.layer = layer
        self._obj = obj if obj is not None else layer

    def __getattr__(self, name):
        return getattr(self._obj, name)

    @property
    def name(self) -> str:
        return self._key

    def __repr__(self) -> str:
        kind = self.layer.spec.class_name if self.layer.spec else type(self._obj).__name__
        return f"<fnn {kind} {self._key!r} in {self._model.name!r}>"

    def __call__(self, *args, **kwargs):
        """On symbolic tensors: the layer joins a new graph (starting from this model's
        weights for it); on arrays: the layer applied with this model's weights."""
        from fnn.core import graph

        if graph.is_symbolic((args, kwargs)) or eager.SCOPE.get() is not None:
            return self._obj(*args, **kwargs)
        args, kwargs, training = eager.split_call(self.layer, args, kwargs)
        ts = self._model._require_built("calling a layer")
        train = bool(training)
        out, _ = self.layer.apply(
            ts.params.get(self._key, {}),
            ts.state.get(self._key, {}),
            *jax.tree.map(jax.numpy.asarray, args),
            rng=eager.next_key() if train else None,
            train=train,
            **kwargs,
        )
        return out

    def _paths(self):
        return [p for p in self._model._weight_paths() if p[1][:1] == (self._key,)]

    def get_weights(self) -> list:
        ts = self._model._require_built("get_weights")
        return weights_lib.get_weights(ts.params, ts.state, self._paths())

    def set_weights(self, weights) -> None:
        ts = self._model._require_built("set_weights")
        params, state = weights_lib.set_weights(
            ts.params, ts.state, self._paths(), weights, self._key
        )
        self._model._train_state = self._model._train_state._replace(params=params, state=state)

    @property
    def weights(self) -> list:
        return self.get_weights()

    def count_params(self) -> int:
        return int(sum(w.size for w in self.get_weights()))

    @property
    def trainable(self) -> bool:
        return getattr(self._obj, "trainable", True)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._obj.trainable = bool(value)

    @property
    def output_shape(self):
        out = self.layer.output
        return jax.tree.map(lambda t: t.shape, out)

    @property
    def input_shape(self):
        inp = self.layer.input
        return jax.tree.map(lambda t: t.shape, inp)


def register_owner(model, layer: Layer) -> None:
    """Record that ``model`` holds ``layer``'s weights under its children's keys."""
    for key, child in layer.children or ():
        owners = child.__dict__.setdefault("_fnn_owners", [])
        owners[:] = [o for o in owners if o[0]() is not None and o[0]() is not model]
        owners.append((weakref.ref(model), (key,)))
    owners = layer.__dict__.setdefault("_fnn_owners", [])
    owners[:] = [o for o in owners if o[0]() is not None and o[0]() is not model]
    owners.append((weakref.ref(model), ()))


def _source(child: Layer, exclude) -> tuple | None:
    """``(params, state)`` of ``child`` from the newest built model that holds it, or from
    its eager calls."""
    for ref, path in reversed(child.__dict__.get("_fnn_owners", [])):
        owner = ref()
        if owner is None or owner is exclude or owner._train_state is None:
            continue
        ts = owner._train_state
        try:
            p = weights_lib.get_path(ts.params, path) if path else ts.params
        except (KeyError, TypeError):
            p = {}
        try:
            s = weights_lib.get_path(ts.state, path) if path else ts.state
        except (KeyError, TypeError):
            s = {}
        return p, s
    return eager.stored(child)


def _same_shapes(a, b) -> bool:
    shapes = lambda t: jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), t)  # noqa: E731
    return jax.tree.structure(a) == jax.tree.structure(b) and shapes(a) == shapes(b)


def seed_weights(model, layer: Layer, params: dict, state: dict) -> tuple[dict, dict]:
    """``params``/``state`` with each child's entry taken from the model or layer that
    already holds that child's weights (same shapes only)."""
    whole = _source(layer, model)
    if whole is not None and _same_shapes(whole[0], params) and _same_shapes(whole[1], state):
        return whole  # the model's own layer is held by another built model
    params, state = dict(params), dict(state)
    for key, child in layer.children or ():
        found = _source(child, model)
        if found is None:
            continue
        p, s = found
        if _same_shapes(p, params.get(key, {})) and _same_shapes(s, state.get(key, {})):
            if p:
                params[key] = p
            if s:
                state[key] = s
    return params, state


def frozen_paths(layer: Layer, prefix: tuple = ()) -> list[tuple]:
    """Key paths of the children (at any depth) whose ``trainable`` is False."""
    out = []
    for key, child in layer.children or ():
        path = (*prefix, key)
        if not getattr(child, "trainable", True):
            out.append(path)
        else:
            out.extend(frozen_paths(child, path))
    return out


def freeze(optimizer, params, paths: list[tuple]):
    """``optimizer`` with zero updates (and no optimizer state) for params under
    ``paths``; unchanged when nothing is frozen."""
    if not paths:
        return optimizer

    def label(path_entries, _):
        keys = tuple(getattr(p, "key", getattr(p, "name", None)) for p in path_entries)
        return "frozen" if any(keys[: len(f)] == f for f in paths) else "train"

    labels = jax.tree_util.tree_map_with_path(label, params)
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def check_trainable_count(params, paths) -> tuple[int, int]:
    """``(trainable, frozen)`` parameter counts."""
    frozen = 0
    for path in paths:
        try:
            frozen += count_params(weights_lib.get_path(params, path))
        except (KeyError, TypeError):
            continue
    return count_params(params) - frozen, frozen


def not_built_message(name: str) -> str:
    """The error text for reading weights or shapes of the unbuilt model ``name``."""
    return (
        f"{name}: the model is not built yet, so it has no weights or shapes to show. Build it "
        "with model.build((None, ...)), start it with fnn.Input(shape) as its first layer, or "
        "call fit/predict once."
    )


def require_layer(model, what):
    """``model.layer``; ``ConfigError`` naming ``what`` when the model has no layers."""
    if model.layer is None:
        raise ConfigError(f"{model.name}: {what} needs layers; the model has none.")
    return model.layer


def _shape_text(tree) -> str:
    shapes = [t.shape for t in jax.tree.leaves(tree)]
    return ", ".join(str(s) for s in shapes) if len(shapes) != 1 else str(shapes[0])


def graph_summary(model, print_fn) -> None:
    """Keras's functional summary: one row per input and layer, with output shapes,
    parameter counts and the tensors each layer is connected to."""
    from fnn.core import graph

    params, state = model._params_or_shapes("summary")
    inputs, names = model.inputs, model._input_names()
    nodes = graph._walk(model.outputs, inputs)
    keys = {id(child): key for key, child in model.layer.children or ()}
    input_names = {id(t): n for t, n in zip(inputs, names)}
    calls: dict[int, int] = {}
    node_call: dict[int, int] = {}
    for node in nodes:
        node_call[id(node)] = calls.get(id(node.layer), 0)
        calls[id(node.layer)] = node_call[id(node)] + 1

    def source(t) -> str:
        if id(t) in input_names:
            return f"{input_names[id(t)]}[0][0]"
        return f"{keys[id(t.node.layer)]}[{node_call[id(t.node)]}][{t.index}]"

    rows = [(f"{n} (InputLayer)", str(t.shape), 0, "-") for t, n in zip(inputs, names)]
    seen: dict[int, int] = {}
    for node in nodes:
        key = keys[id(node.layer)]
        connected = ", ".join(source(t) for t in node.inputs) or "-"
        if id(node.layer) in seen:  # a shared layer: one row, every call's inputs
            i = seen[id(node.layer)]
            rows[i] = (*rows[i][:3], f"{rows[i][3]}, {connected}")
            continue
        kind = node.layer.spec.class_name if node.layer.spec else type(node.layer).__name__
        n = count_params(params.get(key, {})) + count_params(state.get(key, {}))
        seen[id(node.layer)] = len(rows)
        rows.append((f"{key} ({kind})", _shape_text(node.outputs), n, connected))
    head = ("Layer (type)", "Output Shape", "Param #", "Connected to")
    widths = [
        max(len(str(r[i])) if i != 2 else len(f"{r[i]:,}") for r in [*rows]) for i in range(4)
    ]
    widths = [max(w, len(h)) + 3 for w, h in zip(widths, head)]
    rule = "=" * sum(widths)
    print_fn(f'Model: "{model.name}"')
    print_fn(f"{head[0]:<{widths[0]}}{head[1]:<{widths[1]}}{head[2]:>{widths[2]}}   {head[3]}")
    print_fn(rule)
    for name, shape, n, connected in rows:
        print_fn(f"{name:<{widths[0]}}{shape:<{widths[1]}}{n:>{widths[2]},}   {connected}")
    print_fn(rule)
    frozen = frozen_paths(model.layer)
    trainable, frozen_n = check_trainable_count(params, frozen)
    state_n = count_params(state)
    print_fn(f"Total params: {trainable + frozen_n + state_n:,}")
    print_fn(f"Trainable params: {trainable:,}")
    print_fn(f"Non-trainable params: {frozen_n + state_n:,}")
