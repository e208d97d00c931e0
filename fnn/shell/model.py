"""The Keras-style ``Model`` and ``Sequential``: a thin shell over the functional core.

``Model(layer)`` keeps exactly one piece of mutable state, a ``fnn.train.TrainState``
(step, params, state, opt_state, rng, metric states), and replaces it after each compiled
step. ``model.params``, ``model.state``, ``model.opt_state`` and ``model.layer`` expose it,
so research code can leave the shell at any time and come back
(``model.params = new_params``). The steps themselves are ``fnn.train``'s pure functions,
run by the one host-side loop ``fnn.training.loop``; this module adapts data, callbacks
and devices to it.

>>> import numpy as np, fnn
>>> from fnn.layers import Dense
>>> model = fnn.Sequential([Dense(8, activation="relu"), Dense(3)])
>>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
>>> x, y = np.random.rand(64, 4).astype("float32"), np.arange(64) % 3
>>> history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
>>> sorted(history.history)
['accuracy', 'loss']
>>> model.predict(x[:5], verbose=0).shape
(5, 3)
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import dtype_policies, eager, graph, subclass
from fnn.core import weights as weights_lib
from fnn.core.combinators import serial
from fnn.core.errors import ConfigError, ShapeError, bounded_repr
from fnn.core.graph import Input, Tensor
from fnn.core.init_program import jit_init, lower_init
from fnn.core.layer import Layer, as_shape_struct
from fnn.io import data_adapter as data_lib
from fnn.io import foreign_data
from fnn.shell import callbacks as callbacks_lib
from fnn.shell import compile_utils
from fnn.shell import layer_views as views
from fnn.shell import members as members_lib
from fnn.training import loop as loop_lib

__all__ = ["Input", "Model", "Sequential"]


def _is_verbose_auto(verbose) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ConfigError(f"expected verbose in 'auto', 0, 1 or 2, got {verbose!r}.")
    return int(verbose)


class Model:
    """A Keras-style model: around any fnn ``Layer``, a functional graph, or a subclass.

    ``Model(layer)`` wraps an init/apply pair; ``Model(inputs, outputs)`` compiles the
    graph between symbolic tensors (``fnn.Input`` and layer calls) into one layer
    (``fnn.core.graph``); a subclass that defines ``call`` (sublayers as attributes)
    becomes one through ``fnn.core.subclass``. Inputs: a single array for one-input
    layers, a tuple/list of arrays for several inputs, or a dict (by input name for
    graphs). Targets follow the outputs (a tuple or dict for several outputs).

    >>> import numpy as np, fnn
    >>> from fnn.layers import Dense
    >>> x = fnn.Input((4,), name="features")
    >>> model = fnn.Model(x, Dense(2, name="out")(Dense(8, activation="relu")(x)))
    >>> model.output_shape, model.count_params()
    ((None, 2), 58)
    >>> model(np.ones((3, 4), "float32")).shape
    (3, 2)
    """

    _fnn_model = True  # what fnn.core.subclass looks for in attributes

    def __init__(self, *args, inputs=None, outputs=None, name: str | None = None, **kwargs):
        layer = kwargs.pop("layer", None)
        kwargs.pop("trainable", None)
        if kwargs:
            raise ConfigError(f"Model: unexpected keyword arguments {sorted(kwargs)}.")
        if args and isinstance(args[0], Layer):
            if len(args) > 2:
                raise ConfigError("Model: expected Model(layer, name=None).")
            layer, name = args[0], (args[1] if len(args) > 1 else name)
        elif args:
            if len(args) > 2 or inputs is not None:
                raise ConfigError("Model: expected Model(inputs, outputs, name=None).")
            inputs = args[0]
            outputs = args[1] if len(args) > 1 else outputs
        if layer is not None and not isinstance(layer, Layer):
            raise ConfigError(
                f"Model: expected an fnn Layer (an init/apply pair), got {type(layer).__name__}."
            )
        self._graph_inputs = self._graph_outputs = None
        if inputs is not None or outputs is not None:
            if inputs is None or outputs is None:
                raise ConfigError("Model: a functional model needs both inputs= and outputs=.")
            layer = graph.functional(inputs, outputs, name=name)
            self._graph_inputs, self._graph_outputs = inputs, outputs
        self._subclassed = layer is None and type(self).call is not Model.call
        self._layer = layer
        self.name = name or (
            layer.name
            if layer is not None
            else subclass.snake_case(type(self).__name__)
            if self._subclassed
            else "model"
        )
        self._train_state = None  # the only copy of params/state/opt_state (a TrainState)
        self._input_spec = None  # abstract inputs (tuple) the params were built for
        self._compile_config: dict | None = None
        self._optimizer = None  # the optimizer object of compile (names resolved)
        self._trainer: loop_lib.Trainer | None = None  # compiled steps, once per compile
        self._predictor = None  # (layer, compiled predict step)
        self._members: int | None = None  # an ensemble's member count after fit(ensemble=n)
        self._callers: dict = {}  # training flag -> compiled call for model(x)
        self._traces: tuple = (None, {})  # (layer, {input shapes: (jaxpr, outputs)})
        self._placement: tuple | None = None  # (trainer, devices, data-parallel step)
        self._initial_epoch: int | None = None  # set by a callback that restores a backup
        self._initial_batch = 0  # and the batch of that epoch it resumes at
        self._fit_position = None  # fit's data position, for a callback that backs up
        self._weight_order: list | None = None
        self._views: dict = {}
        self.stop_training = False
        self.history: callbacks_lib.History | None = None
        self._fnn_base_attrs = set(self.__dict__) | {"_fnn_base_attrs"}

    def add_loss(self, value) -> None:
        """Inside a subclass's ``call``: add a loss term to the training loss (Keras)."""
        subclass.add_loss(self, value)

    def call(self, *inputs, **kwargs):
        """Override in a subclass: the forward pass on arrays (sublayers as attributes)."""
        raise NotImplementedError(f"{type(self).__name__} defines no call method.")

    def __call__(self, *args, **kwargs):
        """``model(x)`` / ``model(x, training=True)`` on arrays runs the pure apply with
        the current params and returns the outputs only; on symbolic tensors it adds the
        model to a functional graph as one node."""
        layer = views.require_layer(self, "calling the model")
        if graph.is_symbolic((args, kwargs)):
            return graph.call(layer, args, kwargs, owner=self)
        if eager.SCOPE.get() is not None:
            return eager.call(layer, args, kwargs, owner=self)
        args, kwargs, training = eager.split_call(layer, args, kwargs)
        if kwargs:
            raise ConfigError(f"{self.name}: unexpected call arguments {sorted(kwargs)}.")
        x = args[0] if len(args) == 1 else list(args)
        inputs = self._arrange_inputs(x)
        self._ensure_built(inputs)
        train = bool(training)
        if train not in self._callers:

            def run(params, state, rng, xs):
                return layer.apply(params, state, *xs, rng=rng, train=train)

            self._callers[train] = jax.jit(run)
        ts = self._train_state
        xs = jax.tree.map(jnp.asarray, _as_inputs(inputs))
        rng = eager.next_key() if train else None
        out, new_state = self._callers[train](ts.params, ts.state, rng, xs)
        if train and not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(new_state)):
            self._train_state = _replace(ts, state=new_state)
        return out

    # ------------------------------------------------------------------ Keras conveniences

    @property
    def inputs(self) -> list:
        """The symbolic input tensors (a list, as Keras)."""
        self._symbolic()
        ins = self._graph_inputs
        return (
            list(ins.values())
            if isinstance(ins, Mapping)
            else (list(ins) if isinstance(ins, list | tuple) else [ins])
        )

    @property
    def outputs(self) -> list:
        """The symbolic output tensors (a list, as Keras)."""
        self._symbolic()
        outs = self._graph_outputs
        return (
            list(outs.values())
            if isinstance(outs, Mapping)
            else (list(outs) if isinstance(outs, list | tuple) else [outs])
        )

    @property
    def input(self):
        self._symbolic()
        return self._graph_inputs

    @property
    def output(self):
        self._symbolic()
        return self._graph_outputs

    def _symbolic(self) -> None:
        if self._graph_inputs is None:
            raise ConfigError(
                f"{self.name}: the model has no symbolic inputs/outputs (it was not built from "
                "fnn.Input tensors); build it as fnn.Model(inputs, outputs) or start a "
                "Sequential with fnn.Input(shape)."
            )

    @property
    def input_shape(self):
        shapes = [t.shape for t in self.inputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self):
        shapes = [t.shape for t in self.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs: dict keys, or the names of the layers producing them."""
        outs = self._graph_outputs
        if isinstance(outs, Mapping):
            return list(outs)
        return [t.node.layer.name if t.node is not None else t.name for t in self.outputs]

    def _input_names(self) -> list[str]:
        ins = self._graph_inputs
        if isinstance(ins, Mapping):
            return list(ins)
        return graph.unique_input_names(self.inputs)

    def _arrange_inputs(self, x):
        """Data for the layer's positional inputs: a dict of arrays keyed by input name
        becomes the list in input order (Keras feeds named inputs this way)."""
        if (
            self._graph_inputs is not None
            and isinstance(x, Mapping)
            and not isinstance(self._graph_inputs, Mapping)
        ):
            names = self._input_names()
            missing = [n for n in names if n not in x]
            if missing:
                raise ConfigError(
                    f"{self.name}: the input dict is missing {missing}; the model's inputs are "
                    f"{names}, got keys {sorted(x)}."
                )
            extra = sorted(set(x) - set(names))
            if extra:
                raise ConfigError(
                    f"{self.name}: the input dict has keys {extra} that are no inputs of the "
                    f"model (its inputs are {names})."
                )
            arranged = [x[n] for n in names]
            return arranged[0] if len(arranged) == 1 else arranged
        return x

    def _arrange_targets(self, y):
        """A dict of targets keyed by output name becomes the tuple in output order."""
        if (
            y is not None
            and self._graph_outputs is not None
            and isinstance(y, Mapping)
            and isinstance(self._graph_outputs, list | tuple)
        ):
            names = self.output_names
            missing = [n for n in names if n not in y]
            if missing:
                raise ConfigError(
                    f"{self.name}: the target dict is missing {missing}; the model's outputs "
                    f"are {names}."
                )
            return tuple(y[n] for n in names)
        if (
            isinstance(y, list)
            and self._graph_outputs is not None
            and isinstance(self._graph_outputs, list | tuple)
        ):
            return tuple(y)
        return y

    def _children(self) -> list[tuple[str, Layer, Any]]:
        """``(key, layer, object)`` of the model's direct layers in order."""
        if self._subclassed:
            return [(k, layer, obj) for k, obj, layer in subclass.children(self)]
        layer = self.layer
        if layer is None:
            return []
        return [(k, child, child) for k, child in (layer.children or ())]

    @property
    def layers(self) -> list:
        """The model's layers (Keras's ``model.layers``), as views holding this model's
        weights for them; a functional model lists its inputs first."""
        out = []
        if self._graph_inputs is not None and not isinstance(self, Sequential):
            out.extend(views.InputLayer(t, n) for t, n in zip(self.inputs, self._input_names()))
        for key, layer, obj in self._children():
            if key not in self._views or self._views[key].layer is not layer:
                self._views[key] = views.LayerView(self, key, layer, obj)
            out.append(self._views[key])
        return out

    def get_layer(self, name: str | None = None, index: int | None = None):
        """A layer by unique name or by index into ``model.layers``."""
        layers = self.layers
        if index is not None:
            if not -len(layers) <= index < len(layers):
                raise ConfigError(
                    f"{self.name}: get_layer(index={index}) is out of range; the model has "
                    f"{len(layers)} layers."
                )
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        from fnn.core.errors import closest

        names = [layer.name for layer in layers]
        raise ConfigError(
            f"{self.name}: no layer named {name!r}.{closest(str(name), names)} Layers: {names}."
        )

    @property
    def trainable(self) -> bool:
        layer = self._layer
        return True if layer is None else layer.trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        views.require_layer(self, "trainable").trainable = bool(value)
        self._trainer = None  # the next fit rebuilds the optimizer with the new mask

    @property
    def weights(self) -> list:
        """Params and state in Keras order, as NumPy arrays."""
        return self.get_weights()

    @property
    def trainable_weights(self) -> list:
        frozen = views.frozen_paths(self.layer)
        return [
            w
            for (kind, path), w in zip(self._weight_paths(), self.get_weights())
            if kind == "params" and not any(path[: len(f)] == f for f in frozen)
        ]

    @property
    def non_trainable_weights(self) -> list:
        frozen = views.frozen_paths(self.layer)
        return [
            w
            for (kind, path), w in zip(self._weight_paths(), self.get_weights())
            if kind == "state" or any(path[: len(f)] == f for f in frozen)
        ]

    def count_params(self) -> int:
        """Number of parameters and state entries (Keras counts both)."""
        from fnn.core.summary import count_params

        params, state = self._params_or_shapes("count_params")
        return count_params(params) + count_params(state)

    def _params_or_shapes(self, what: str) -> tuple:
        """``(params, state)``: the arrays when built, else their shapes from abstract
        evaluation (a graph's summary and counts need no compiled init)."""
        if self._train_state is None and self._default_inputs() is not None:
            return jax.eval_shape(self.layer.init, jax.random.key(0), *self._default_inputs())
        ts = self._require_built(what)
        return ts.params, ts.state

    def get_config(self) -> dict:
        """The architecture as JSON-ready data (``from_config`` rebuilds it, with fresh
        weights)."""
        from fnn.io import saving

        return saving.layer_to_config(views.require_layer(self, "get_config"))

    @classmethod
    def from_config(cls, config: Mapping, custom_objects: Mapping | None = None):
        """A new, unbuilt model from ``get_config()`` output; ``custom_objects`` maps the
        names of subclassed layers to their classes (they are registered, as
        ``@fnn.register_layer`` would)."""
        from fnn.core.layer import register_layer
        from fnn.io import saving

        for key, value in (custom_objects or {}).items():
            if isinstance(value, type) and issubclass(value, Layer):
                register_layer(value, name=key)
        layer = saving.layer_from_config(config)
        if layer.spec is not None and layer.spec.class_name == "Functional":
            inputs, outputs = graph.replay(layer)
            return Model(inputs, outputs, name=layer.name)
        if layer.spec is not None and layer.spec.class_name == "serial":
            return Sequential(list(layer.spec.config.get("layers", ())), name=layer.name)
        return Model(layer)

    def to_json(self, **kwargs) -> str:
        """``get_config()`` as a JSON string (``fnn.models.model_from_json`` reads it)."""
        import json

        return json.dumps(
            {"class_name": type(self).__name__, "config": self.get_config()}, **kwargs
        )

    # ------------------------------------------------------------------ functional state

    @property
    def layer(self) -> Layer:
        """The wrapped ``Layer`` (the init/apply pair)."""
        if self._layer is None and getattr(self, "_subclassed", False):
            init, apply = subclass.pure_pair(self, self.name)
            self._layer = Layer(init, apply, self.name)
            object.__setattr__(self._layer, "_fnn_keeps_list_argument", True)
            self.__dict__["_fnn_pure_target"] = self._layer
        return self._layer

    @property
    def built(self) -> bool:
        """Whether the parameters exist."""
        return self._train_state is not None

    def _require_built(self, what: str):
        if self._train_state is None and self._default_inputs() is not None:
            self._build(self._default_inputs())
        if self._train_state is None:
            raise ConfigError(
                f"{self.name}: {what} needs built parameters; call model.build(input_shape), "
                "fit or predict first."
            )
        return self._train_state

    @property
    def train_state(self):
        """The whole functional state (``fnn.train.TrainState``)."""
        return self._require_built("train_state")

    @train_state.setter
    def train_state(self, value):
        self._require_built("train_state")
        self._train_state = value

    def _replace_state(self, name: str, value):
        ts = self._require_built(name)
        old = getattr(ts, name)
        if name in ("params", "state"):
            old_shapes = jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), old)
            new_shapes = jax.tree.map(lambda a: (tuple(np.shape(a)), jnp.result_type(a)), value)
            if old_shapes != new_shapes:
                raise ShapeError(
                    f"{self.name}: expected new {name} with the same structure, shapes and "
                    f"dtypes as the current ones, got a different tree. Current: "
                    f"{jax.tree.map(lambda a: a.shape, old)}."
                )
        self._train_state = _replace(ts, **{name: value})

    params = property(
        lambda self: self._require_built("params").params,
        lambda self, v: self._replace_state("params", v),
        doc="Trainable parameters (nested dict, Keras key names). Assignable.",
    )
    state = property(
        lambda self: self._require_built("state").state,
        lambda self, v: self._replace_state("state", v),
        doc="Non-trainable state such as BatchNormalization moving statistics. Assignable.",
    )
    opt_state = property(
        lambda self: self._require_built("opt_state").opt_state,
        lambda self, v: self._replace_state("opt_state", v),
        doc="The optax optimizer state (``None`` before ``compile``). Assignable.",
    )

    # ------------------------------------------------------------------ building

    def _input_struct(self, input_shape, dtype="float32"):
        """Abstract inputs tuple from a Keras ``input_shape`` (``None`` batch -> 1)."""

        def one(shape):
            shape = tuple(1 if d is None else int(d) for d in shape)
            return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))

        if isinstance(input_shape, Mapping):
            return ({k: one(v) for k, v in input_shape.items()},)
        if (
            isinstance(input_shape, list | tuple)
            and input_shape
            and all(isinstance(s, list | tuple) for s in input_shape)
        ):
            return tuple(one(s) for s in input_shape)
        if isinstance(input_shape, list | tuple):
            return (one(input_shape),)
        raise ConfigError(
            f"{self.name}: expected input_shape as a tuple such as (None, 64), a list of them or "
            f"a dict, got {input_shape!r}."
        )

    def build(self, input_shape) -> None:
        """Initialise the parameters from shapes alone (batch axis included, ``None`` allowed)."""
        if self.__dict__.get("_fnn_building"):
            return  # super().build(...) inside a subclass's own build
        self._build(self._input_struct(input_shape, _input_dtype(self.layer)))

    build._fnn_base_build = True

    def _build(self, inputs: tuple, distribution=None) -> None:
        from fnn.training import step as train_lib

        layer = self.layer
        if layer is None:
            raise ConfigError(f"{self.name}: the model has no layers; add some before building.")
        seed = (self._compile_config or {}).get("seed", 0)
        init_key, rng = jax.random.split(jax.random.key(seed))
        abstract = as_shape_struct(inputs)
        if distribution is None:
            # One compiled program instead of one per initializer op.
            params, state = jit_init(lambda key: layer.init(key, *abstract), init_key)
        else:

            def init():  # the same key, made inside: no input to place across processes
                params, state = layer.init(jax.random.split(jax.random.key(seed))[0], *abstract)
                return {"params": params, "state": state}

            built = _jit_placed(init, distribution)
            params, state = built["params"], built["state"]
        # Layers that already hold weights (in another built model, or from eager calls)
        # bring them along, as Keras's shared layers do.
        params, state = views.seed_weights(self, layer, params, state)
        views.register_owner(self, layer)
        self._input_spec = abstract
        self._weight_order = None
        self._traces = (None, {})
        self._train_state = train_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            state=state,
            opt_state=None,
            rng=rng,
            metric_states=None,
        )

    def _default_inputs(self) -> tuple | None:
        """Abstract inputs from the model's ``fnn.Input`` tensors (``None`` sizes -> 1)."""
        if self._graph_inputs is None:
            return None
        # Sizes that follow the data: 1 for the batch, a length that fits windows and
        # pooling for the others (params do not depend on it; nothing is allocated).
        structs = [
            jax.ShapeDtypeStruct(
                tuple((1 if i == 0 else 96) if d is None else d for i, d in enumerate(t.shape)),
                t.dtype,
            )
            for t in self.inputs
        ]
        if isinstance(self._graph_inputs, Mapping):
            return (dict(zip(self._graph_inputs, structs)),)
        return tuple(structs)

    def _ensure_built(self, x, distribution=None) -> None:
        if self._train_state is None and self._default_inputs() is not None:
            self._build(self._default_inputs(), distribution)
        if self._train_state is None:
            inputs = _as_inputs(x)
            self._build(
                jax.tree.map(
                    lambda a: jax.ShapeDtypeStruct((1, *np.shape(a)[1:]), a.dtype), inputs
                ),
                distribution,
            )
        self._check_declared_inputs(x)

    def _declared_inputs(self) -> list | None:
        """The ``fnn.Input`` tensors of positional inputs, or ``None`` (no declared shapes,
        or dict inputs)."""
        if self._graph_inputs is None or isinstance(self._graph_inputs, Mapping):
            return None
        ins = self._graph_inputs
        return list(ins) if isinstance(ins, list | tuple) else [ins]

    def _check_declared_inputs(self, x) -> None:
        """Raise ``ShapeError`` naming the input when arrays ``x`` do not have the shapes of
        the model's ``fnn.Input``s (as Keras does), with the user's shapes, before any layer
        sees a padded batch."""
        declared = self._declared_inputs()
        arrays = _as_inputs(x)
        if declared is None or len(declared) != len(arrays):
            return
        for tensor, array in zip(declared, arrays):
            shape = getattr(array, "shape", None)
            if shape is None or not isinstance(shape, tuple):
                continue
            want = tensor.shape
            fits = len(shape) == len(want) and all(
                w is None or w == d for w, d in zip(want[1:], shape[1:])
            )
            if not fits:  # the words of fnn.core.graph's own check, with the user's shape
                raise ShapeError(
                    f"{self.name}: expected input {tensor.name!r} of shape {(None, *want[1:])} "
                    f"(None: any size), got shape {tuple(shape)}."
                )

    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """Print the layer table (``fnn.summary``) for the built input shape."""
        from fnn.core.summary import summary

        if self._graph_inputs is not None and not isinstance(self, Sequential):
            return views.graph_summary(self, print_fn)
        self._require_built("summary")
        summary(self.layer, *self._input_spec, print_fn=print_fn, batch_label="None")

    # ------------------------------------------------------------------ Keras weights

    def _weight_paths(self) -> list[tuple[str, tuple]]:
        """``("params"|"state", path)`` of every array in Keras's ``get_weights`` order
        (``fnn.core.weights.weight_paths``), cached until the model is rebuilt."""
        self._single_model("get_weights/set_weights")
        if self._weight_order is None:
            ts = self._require_built("get_weights")
            self._weight_order = weights_lib.weight_paths(
                self.layer, ts.params, ts.state, *self._input_spec
            )
        return self._weight_order

    def get_weights(self) -> list[np.ndarray]:
        """All params and state as NumPy arrays in Keras's ``get_weights`` order (per layer:
        Dense ``[kernel, bias]``, BatchNormalization ``[gamma, beta, moving_mean,
        moving_variance]``, LSTM ``[kernel, recurrent_kernel, bias]``, ...)."""
        ts = self._require_built("get_weights")
        return weights_lib.get_weights(ts.params, ts.state, self._weight_paths())

    def weight_names(self) -> list[str]:
        """``"dense/kernel"``-style names of ``get_weights()``'s entries."""
        return weights_lib.weight_names(self._weight_paths())

    def set_weights(self, weights: Sequence) -> None:
        """Set params and state from a list in ``get_weights`` (Keras) order."""
        ts = self._require_built("set_weights")
        params, state = weights_lib.set_weights(
            ts.params, ts.state, self._weight_paths(), weights, self.name
        )
        self._train_state = _replace(ts, params=params, state=state)

    def save_weights(self, filepath: str | os.PathLike) -> None:
        """Write params and state to the checkpoint directory ``filepath`` (the format of
        ``fnn.save_weights``: safetensors + JSON, no pickle), replacing it atomically."""
        from fnn.io import checkpoint, saving

        checkpoint.check_directory_path(filepath, f"{self.name}: save_weights")
        ts = self._require_built("save_weights")
        saving.save_weights(filepath, ts.params, ts.state)

    def load_weights(self, filepath: str | os.PathLike) -> None:
        """Read params and state written by ``save_weights`` (or ``save``), matched by path
        against this model's: a different architecture raises ``CheckpointError`` naming
        every missing, extra or mismatched array."""
        from fnn.io import checkpoint, saving

        checkpoint.check_directory_path(filepath, f"{self.name}: load_weights", action="read")
        ts = self._require_built("load_weights")
        params, state = saving.load_weights(filepath, ts.params, ts.state)
        self._train_state = _replace(ts, params=params, state=state)

    def save(self, filepath: str | os.PathLike):
        """Save the architecture (registered layer names and arguments as JSON), weights and
        compile settings to the directory ``filepath``, atomically; ``fnn.load_model``
        rebuilds the model without running stored code (see ``fnn.saving``)."""
        from fnn.io import checkpoint, keras_file, saving

        self._single_model("save")
        if keras_file.is_keras_path(filepath):  # a Keras 3 .keras archive
            sequential = isinstance(self, Sequential)
            spec = None if self._subclassed else self.layer.spec
            if not sequential and (spec is None or spec.class_name != "Functional"):
                kind = "subclassed Model" if self._subclassed else "Model around one layer"
                raise ConfigError(
                    f"{self.name}: save: cannot write a .keras file of a {kind}; fnn writes "
                    "Sequential and functional (fnn.Model(inputs, outputs)) models of layers "
                    "Keras has. Save to a directory path instead (fnn's own format)."
                )
            self._require_built("save")
            return keras_file.write_model(
                filepath,
                name=self.name,
                layers=[view.layer for view in self.layers] if sequential else [],
                inputs=list(self._input_spec),
                weight_names=self.weight_names(),
                weights=self.get_weights(),
                who=f"{self.name}: save",
                graph=None if sequential else dict(spec.config),
                compile_config=compile_utils.compile_to_keras(
                    self._compile_config, self._optimizer
                ),
            )
        checkpoint.check_directory_path(filepath, f"{self.name}: save")
        return saving.save_model(
            filepath,
            self.layer,
            self.params,
            self.state,
            inputs=list(self._input_spec),
            compile_config=compile_utils.compile_to_json(self._compile_config, self.name),
            metadata={
                "model_class": "Sequential" if isinstance(self, Sequential) else "Model",
                "name": self.name,
            },
        )

    # ------------------------------------------------------------------ learning rate

    @property
    def learning_rate(self) -> float:
        """The optimizer's current learning rate, read from ``opt_state``."""
        states = compile_utils.hyperparam_states(self.opt_state)
        if not states:
            raise ConfigError(
                f"{self.name}: the optimizer keeps no learning_rate in its state; compile with "
                "an optimizer name or fnn.optimizers.get(...) (built with "
                "optax.inject_hyperparams) to change it during training."
            )
        return float(states[0].hyperparams["learning_rate"])

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        _ = self.learning_rate  # same error when there is none

        def set_lr(state):
            old = state.hyperparams["learning_rate"]
            new = jnp.asarray(value, jnp.result_type(old))
            return state._replace(hyperparams={**state.hyperparams, "learning_rate": new})

        self.opt_state = compile_utils.map_hyperparam_states(self.opt_state, set_lr)

    # ------------------------------------------------------------------ compile

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        metrics=None,
        loss_weights=None,
        weighted_metrics=None,
        steps_per_execution: int | str = 1,
        jit: bool = True,
        seed: int = 0,
        auto_scale_loss: bool = True,
    ) -> None:
        """Set the optimizer, loss and metrics (names or objects, as in Keras).

        ``sample_weight``/``class_weight`` weight the loss; ``metrics`` are reported
        unweighted and ``weighted_metrics`` weighted (Keras 3's rule).

        ``steps_per_execution``: steps per compiled call (``"auto"`` picks by model and
        backend). ``jit=False`` runs the steps eagerly (debugging). ``seed`` seeds the
        parameter initialisation, dropout and shuffling. ``auto_scale_loss``: wrap the
        optimizer in ``fnn.mixed_precision.LossScaleOptimizer`` when the model computes in
        float16 (a ``"mixed_float16"`` policy), as Keras.
        """
        from fnn.training import optimizers as optimizers_lib

        if not (
            steps_per_execution == "auto"
            or (isinstance(steps_per_execution, int) and steps_per_execution >= 1)
        ):
            raise ConfigError(
                f"{self.name}: expected steps_per_execution to be an int >= 1 or 'auto', got "
                f"{steps_per_execution!r}."
            )
        # One list for all outputs, a dict keyed by output name, or a list per output.
        metrics = [metrics] if isinstance(metrics, str) else metrics
        weighted_metrics = (
            [weighted_metrics] if isinstance(weighted_metrics, str) else weighted_metrics
        )
        # Unknown names and wrong types raise here; names become their class instance.
        self._optimizer = compile_utils.optimizer_object(optimizer)
        attachable = (optimizers_lib.Optimizer, optimizers_lib.LossScaleOptimizer)
        if isinstance(self._optimizer, attachable):
            self._optimizer.attach(self)  # optimizer.learning_rate reads/writes opt_state
        self._compile_config = {
            "optimizer": optimizer,
            "loss": loss,
            "metrics": _metric_list(metrics),
            "weighted_metrics": _metric_list(weighted_metrics),
            "loss_weights": loss_weights,
            "steps_per_execution": steps_per_execution,
            "jit": bool(jit),
            "seed": int(seed),
            "auto_scale_loss": bool(auto_scale_loss),
        }
        self._trainer = None
        self._predictor = None
        # As Keras, a new compile keeps the weights (an ensemble's members too) and starts a
        # fresh optimizer state.
        if self._train_state is not None:
            self._train_state = _replace(self._train_state, opt_state=None, metric_states=None)

    @property
    def optimizer(self):
        """The optimizer given to ``compile``: an ``fnn.optimizers`` class instance (a name
        such as ``"adam"`` resolved to ``fnn.optimizers.Adam()``) or the optax
        transformation given; ``None`` before ``compile``."""
        return self._optimizer

    @property
    def metrics(self) -> list:
        """The loss tracker and the compiled metrics, each holding what the last
        ``fit``/``evaluate``/``train_on_batch`` accumulated (``m.result()``), in the order
        of the logs; empty before the first of those (Keras 3 nests the compiled metrics
        in one ``CompileMetrics`` object; fnn lists them)."""
        from fnn.training import metrics as metrics_lib

        ts = self._train_state
        if self._trainer is None or ts is None or ts.metric_states is None:
            return []
        states = ts.metric_states
        tracked = [metrics_lib.Mean("loss"), *self._trainer.metrics]
        return [metrics_lib.with_state(m, states[m.name]) for m in tracked]

    @property
    def metrics_names(self) -> list[str]:
        """``["loss", *metric names]``: the keys of the logs and the order of
        ``evaluate``'s list (Keras 3 gives ``["loss", "compile_metrics"]``)."""
        if self._trainer is not None:
            return list(self._trainer.metric_names)
        return [m.name for m in self.metrics]

    @property
    def steps_per_execution(self) -> int:
        """Training steps per compiled call (``"auto"`` resolved once data was seen)."""
        if self._trainer is not None:
            return self._trainer.steps_per_execution
        return self._require_compiled("steps_per_execution")["steps_per_execution"]

    @property
    def compiled(self) -> bool:
        return self._compile_config is not None

    def _count(self, name: str, value, default=None):
        """``value`` (or ``default`` for None) checked as an int >= 1: batch sizes, steps."""
        value = default if value is None else value
        if value is not None and (
            not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1
        ):
            raise ConfigError(f"{self.name}: expected {name} to be an int >= 1, got {value!r}.")
        return None if value is None else int(value)

    def _require_compiled(self, what: str) -> dict:
        if self._compile_config is None:
            raise ConfigError(
                f"{self.name}: {what} needs a compiled model; call model.compile(optimizer=..., "
                f"loss=..., metrics=[...]) before {what}."
            )
        return self._compile_config

    # ------------------------------------------------------------------ resolution

    def _trace(self, inputs_spec: tuple):
        """The model's jaxpr and output shapes for these inputs: one abstract trace per
        layer and input shapes (``train_on_batch`` in a loop traces once, not per call;
        the params' shapes cannot change once built)."""
        leaves, treedef = jax.tree.flatten(inputs_spec)
        key = (treedef, tuple((tuple(s.shape), jnp.dtype(s.dtype)) for s in leaves))
        if self._traces[0] is not self.layer:
            self._traces = (self.layer, {})
        cache = self._traces[1]
        if key not in cache:
            ts = self._train_state
            params, state = as_shape_struct(ts.params), as_shape_struct(ts.state)
            if self._members is not None:
                params, state = members_lib.strip_members((params, state))
            jaxpr, (out, _) = jax.make_jaxpr(
                lambda p, s, xs: self.layer.apply(p, s, *xs, rng=None, train=False),
                return_shape=True,
            )(params, state, inputs_spec)
            cache[key] = jaxpr, out
        return cache[key]

    def _resolve(self, jaxpr, out, y) -> loop_lib.Trainer:
        """Loss, metrics ("accuracy" as Keras resolves it), optimizer and compiled steps
        for these output shapes (once per ``compile``)."""
        from fnn.training import metrics as metrics_lib

        cfg = self._compile_config
        if self._trainer is not None:
            return self._trainer
        names = self.output_names if self._graph_outputs is not None else None
        loss, metrics = compile_utils.resolve(cfg, out, y, self.name, output_names=names)
        steps, unroll = loop_lib.plan_steps(cfg["steps_per_execution"], jaxpr)
        if cfg.get("auto_scale_loss") and dtype_policies.computes_in_float16(jaxpr):
            from fnn.training.optimizers import LossScaleOptimizer

            if not isinstance(self._optimizer, LossScaleOptimizer):  # Keras's compile rule
                self._optimizer = LossScaleOptimizer(self._optimizer)
                self._optimizer.attach(self)
        optimizer = views.freeze(
            self._optimizer,
            self._train_state.params,
            views.frozen_paths(self.layer),
        )
        self._trainer = loop_lib.Trainer(
            self.layer,
            loss,
            optimizer,
            metrics_lib.get_all(metrics),
            steps_per_execution=steps,
            unroll=unroll,
            jit=cfg["jit"],
        )
        return self._trainer

    def _prepare_training(
        self, x, y, sample_weight=None, *, what="y", distribution=None, init_state=True
    ) -> loop_lib.Trainer:
        """Build, resolve and check the data (``what`` names its labels in errors) against
        the loss, all before compiling (the model is traced abstractly once per call); then,
        unless ``init_state=False`` (``_fit_state`` does it), create missing optimizer and
        metric states. With a ``Distribution``, they are created sharded by its rules."""
        from fnn.training import step as train_lib

        self._ensure_built(x, distribution)
        inputs = _as_inputs(x)
        _check_label_dtypes(self.name, what, y, self._compile_config.get("loss"))
        jaxpr, out = self._trace(as_shape_struct(inputs))
        trainer = self._resolve(jaxpr, out, y)
        ts = self._train_state
        if y is not None:
            try:
                if isinstance(y, tuple | dict):  # several outputs: the combined loss's checks
                    jax.eval_shape(lambda y_pred: trainer.loss(y, y_pred), out)
                else:
                    batch = loop_lib.as_batch(tuple(inputs), y, sample_weight)
                    train_lib.check_batch(self.layer, trainer.loss, None, None, batch, out=out)
            except (ShapeError, ConfigError) as err:
                raise type(err)(
                    f"{self.name}: {what} does not fit the loss and model outputs: {err}"
                ) from None
        if init_state and (ts.opt_state is None or ts.metric_states is None):
            # One program compiled for compile time: eager zeros_like compiles a program per
            # parameter shape (~25 ms each on CPU).
            init = trainer.optimizer.init
            if self._members is not None:
                # A recompiled ensemble: each member's own optimizer state (init under vmap).
                opt_state = jit_init(jax.vmap(init), ts.params)
                metric_states = trainer.variant(members=self._members).init_metric_states()
            else:
                opt_state = (
                    jit_init(init, ts.params)
                    if distribution is None
                    else _jit_placed(init, distribution, ts.params, params=ts.params)
                )
                metric_states = train_lib.init_metric_states(trainer.metrics)
            self._train_state = _replace(ts, opt_state=opt_state, metric_states=metric_states)
        return trainer

    def _predict_step(self, stats: bool = False):
        """The compiled predict step (needs no ``compile``; built once per layer); of an
        ensemble: the combined prediction (``stats``: with its uncertainty)."""
        from fnn.training import step as train_lib

        key = (self.layer, self._members, stats)
        if self._predictor is None or self._predictor[0] != key:
            if self._members is None:
                fn = train_lib.make_predict_step(self.layer)
            else:
                fn = members_lib.members_predict(self.layer, self._loss(), stats=stats)
            use_jit = self._compile_config["jit"] if self._compile_config else True
            self._predictor = (key, jax.jit(fn) if use_jit else fn)
        return self._predictor[1]

    def _loss(self):
        """The resolved loss, or before any ``fit``/``evaluate`` the one given to ``compile``
        (``None`` uncompiled)."""
        if self._trainer is not None:
            return self._trainer.loss
        return self._compile_config["loss"] if self._compile_config else None

    def reset_metrics(self) -> None:
        """Zero the running loss and metric states (as ``fit`` does at each epoch start)."""
        from fnn.training import step as train_lib

        ts = self._require_built("reset_metrics")
        if ts.metric_states is not None:
            self._train_state = train_lib.reset_metrics(ts)

    # ------------------------------------------------------------------ data

    def _fit_data(self, x, y, sample_weight, class_weight, name):
        x, y = self._arrange_inputs(x), self._arrange_targets(y)
        # A list of (x, y) tuples is a list of batches, not several inputs (Keras's inputs
        # lists hold arrays).
        batches = isinstance(x, list) and x and all(isinstance(b, tuple | list) for b in x)
        if data_lib.is_array_tree(x) and not batches:
            if x is None:
                raise ConfigError(f"{self.name}: {name} expected x, got None.")
            data = data_lib.ArrayData(x, y, sample_weight, name=name)
            if class_weight is not None:
                weights = _class_weights(data.y, class_weight, self.name)
                sw = data.sample_weight
                data.sample_weight = (
                    weights if sw is None else (np.asarray(sw, np.float32) * weights)
                )
            return data
        if y is not None or sample_weight is not None:
            raise ConfigError(
                f"{self.name}: {name} got an iterable x; it must yield (x, y) or (x, y, "
                "sample_weight) batches itself, so y and sample_weight must be None."
            )
        if class_weight is not None:
            raise ConfigError(f"{self.name}: class_weight needs array data, got an iterable.")
        return data_lib.IterableData(
            x,
            name=name,
            arrange=lambda bx, by: (self._arrange_inputs(bx), self._arrange_targets(by)),
        )

    def _validation_data(self, data, validation_split, validation_data):
        """``(train data, validation data or None)`` from Keras's two ways to validate."""
        val = None
        if validation_split:
            if not isinstance(data, data_lib.ArrayData):
                raise ConfigError(
                    f"{self.name}: validation_split needs array data; pass validation_data for "
                    "iterables."
                )
            data, val = data.split(validation_split)
        if validation_data is not None:
            batches = isinstance(validation_data, list) and all(
                isinstance(b, tuple | list) for b in validation_data
            )
            if (
                data_lib.is_array_tree(validation_data)
                and isinstance(validation_data, tuple | list)
                and not batches
            ):
                vx, vy, vsw = data_lib.unpack(tuple(validation_data))
                val = data_lib.ArrayData(vx, vy, vsw, name="validation_data")
            else:
                val = data_lib.IterableData(
                    validation_data,
                    name="validation_data",
                    arrange=lambda bx, by: (self._arrange_inputs(bx), self._arrange_targets(by)),
                )
        return data, val

    def _callbacks(self, callbacks, verbose, *, history: bool, **params):
        """The ``CallbackList`` of one call: the user's callbacks, then ``History`` (fit)
        and a progress bar unless given."""
        callbacks = list(callbacks or [])
        if history and not any(isinstance(c, callbacks_lib.History) for c in callbacks):
            callbacks.append(callbacks_lib.History())
        if verbose and not any(isinstance(c, callbacks_lib.ProgbarLogger) for c in callbacks):
            callbacks.append(callbacks_lib.ProgbarLogger())
        return callbacks_lib.CallbackList(callbacks, model=self, verbose=verbose, **params)

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        x=None,
        y=None,
        batch_size: int | None = 32,
        epochs: int = 1,
        verbose="auto",
        callbacks: Sequence[callbacks_lib.Callback] | None = None,
        validation_split: float = 0.0,
        validation_data=None,
        shuffle: bool = True,
        class_weight: Mapping[int, float] | None = None,
        sample_weight=None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_batch_size: int | None = None,
        validation_steps: int | None = None,
        devices=None,
        distribution=None,
        ensemble: int | None = None,
        ensemble_batches: str = "own",
        dp=None,
    ) -> callbacks_lib.History:
        """Train for ``epochs`` epochs; returns a ``History`` (Keras semantics and logs).

        ``x``/``y``: arrays (or tuples/dicts of arrays), or ``x`` an iterable of
        ``(x, y[, sample_weight])`` batches. Shuffling is a permutation seeded by
        ``compile(seed=...)`` and the epoch (``fnn.training.loop.epoch_order``). ``devices``
        (a list of devices or a count): data-parallel training with
        ``fnn.data_parallel(method="sharded")``; the batch size must divide by the device
        count (a last smaller batch that does not is skipped). In a multi-process run
        (``fnn.distributed.initialize``) every process calls ``fit`` with the same data and
        seed, ``devices=jax.device_count()``, and feeds its own block of each batch (array
        data and ``fnn.datasets`` readers read only that block: the processes together read
        every example once an epoch; other sources yield whole global batches). With
        ``devices``, ``steps_per_execution`` is 1 and the data stays on the host.
        ``distribution``: sharded params and optimizer state on a mesh, e.g.
        ``{"mesh": "fsdp=4,tensor=2", "rules": {"*/kernel": ("fsdp", "tensor")}}`` (see
        ``fnn.distributed.Distribution``); the batch size must divide by data x fsdp.

        ``ensemble=n``: n members trained in one compiled step (vmapped); member i is the
        model ``compile(seed=seed + i)`` builds. ``ensemble_batches="own"``: member i
        shuffles as that model would (array data); ``"same"``: every member sees the
        batches of ``seed``'s order. Logs: each metric's mean over the members (what
        callbacks monitor) and ``<name>_member_<i>``. Later fits continue the ensemble;
        ``predict`` returns the combined prediction, ``predict_uncertainty`` its spread.
        ``dp``: DP-SGD (``fnn.train.DPConfig`` or a dict of its fields: ``l2_norm_clip``,
        ``noise_multiplier``, ``delta``, ``chunk_size``) on array data; the logs add
        ``"epsilon"`` at ``delta`` after every epoch, counting every step the model took.
        With ``ensemble=n`` each member clips and noises on its own (its own noise key) and
        ``"epsilon"`` is each member's; the n members together compose n such releases.
        """
        cfg = self._require_compiled("fit")
        verbose = _is_verbose_auto(verbose)
        if not isinstance(validation_split, int | float) or not 0.0 <= validation_split < 1.0:
            raise ConfigError(
                f"{self.name}: expected validation_split in [0, 1), got {validation_split!r}."
            )
        batch_size = self._count("batch_size", batch_size, 32)
        steps_per_epoch = self._count("steps_per_epoch", steps_per_epoch)
        validation_batch_size = self._count("validation_batch_size", validation_batch_size)
        validation_steps = self._count("validation_steps", validation_steps)
        data = self._fit_data(x, y, sample_weight, class_weight, "fit")
        if isinstance(data, data_lib.ArrayData) and data.n == 0:
            # Keras raises too; otherwise the loss and metrics of no batches read 0.0.
            raise ConfigError(f"{self.name}: fit got 0 examples (x and y are empty).")
        data, val = self._validation_data(data, validation_split, validation_data)
        dist = None
        if distribution is not None:
            from fnn.distributed import Distribution

            dist = Distribution.get(distribution)
        # A multi-process run: each process reads only its block of every batch where the
        # data allows (arrays, fnn.datasets readers); other sources give global batches.
        process = None
        if jax.process_count() > 1 and (devices is not None or distribution is not None):
            process = (jax.process_index(), jax.process_count())
        local_input = process is not None and (
            isinstance(data, data_lib.ArrayData) or data.shard_by_process(process)
        )
        resume = _saved_position(callbacks, data, cfg["seed"], shuffle, batch_size, self.name)
        if resume is not None and isinstance(data, data_lib.IterableData):
            data.restore(resume["source"])
        # Everything below up to the first step is checked on shapes, before compiling.
        first = None
        # A single-device model's missing optimizer and metric states are made with fit's
        # private copy of the train state (_fit_state), in one program.
        init_state = dist is not None or self._members is not None
        if isinstance(data, data_lib.ArrayData):
            trainer = self._prepare_training(
                data.x, data.y, data.sample_weight, distribution=dist, init_state=init_state
            )
            n_batches = math.ceil(data.n / batch_size)
            steps = n_batches if steps_per_epoch is None else min(steps_per_epoch, n_batches)
        else:
            # Peek the first batch to build and check; it is trained on like the others.
            iterator = data.epoch(steps_per_epoch, shuffle=shuffle, seed=cfg["seed"])
            try:
                first = next(iterator)
            except StopIteration:
                if resume is None:
                    raise ConfigError(f"{self.name}: fit got an empty iterable.") from None
                # The backup was made after the last batch of its epoch: that epoch has
                # nothing left to train on; peek the next one.
                iterator = data.epoch(steps_per_epoch, shuffle=shuffle, seed=cfg["seed"])
                first = next(iterator, None)
                if first is None:
                    raise ConfigError(f"{self.name}: fit got an empty iterable.") from None
                resume["empty"] = True
            trainer = self._prepare_training(*first, distribution=dist, init_state=init_state)
            steps = steps_per_epoch if steps_per_epoch is not None else _len_or_none(data.data)
        if isinstance(val, data_lib.ArrayData):  # checked before training, not after an epoch
            self._prepare_training(
                val.x, val.y, val.sample_weight, what="validation y", init_state=init_state
            )
        members, dp = self._fit_variant(data, ensemble, ensemble_batches, dp, devices, distribution)
        trainer = trainer.variant(members=members, same_batch=ensemble_batches == "same", dp=dp)
        if members is not None and self._members != members:
            self._train_state = members_lib.init_members(
                self.layer,
                trainer.optimizer,
                trainer.metrics,
                self._input_spec,
                seed=cfg["seed"],
                n=members,
            )
            self._members = members
        epoch_logs = None
        if dp is not None:
            epoch_logs = members_lib.dp_epoch_logs(dp, num_examples=data.n, batch_size=batch_size)
        callbacks = list(callbacks or [])
        keys = trainer.log_names + (["epsilon"] if dp is not None else [])
        if val is not None:
            keys += [f"val_{k}" for k in trainer.log_names]
        if any(
            isinstance(c, callbacks_lib.LearningRateScheduler | callbacks_lib.ReduceLROnPlateau)
            for c in callbacks
        ):
            keys.append("learning_rate")
        callbacks_lib.check_monitors(callbacks, keys)
        cl = self._callbacks(callbacks, verbose, history=True, epochs=epochs, steps=steps)
        placement = None
        if dist is not None:
            from fnn.distributed import data_parallel

            if self._placement is None or self._placement[:2] != (trainer, (dist, local_input)):
                step = data_parallel(
                    trainer.core,
                    devices=dist.mesh,
                    rules=dict(dist.rules),
                    donate=True,
                    global_input=not local_input,
                )
                self._placement = (trainer, (dist, local_input), step)
            placement = self._placement[2]
        elif devices is not None:
            from fnn.distributed import data_parallel

            # Every process computes the same epoch order (the seed is shared) and feeds its
            # own block of every global batch (reading only it, or cut from the whole).
            key = (tuple(devices) if isinstance(devices, list | tuple) else devices, local_input)
            if self._placement is None or self._placement[:2] != (trainer, key):
                step = data_parallel(
                    trainer.core,
                    devices=devices,
                    method="sharded",
                    donate=True,
                    global_input=not local_input,
                )
                self._placement = (trainer, key, step)  # compiled once, reused by later fits
            placement = self._placement[2]
        n = placement.batch_divisor if placement is not None else 1
        if isinstance(data, data_lib.ArrayData) and batch_size % n:
            what = "devices" if n == placement.num_devices else "batch shards (data x fsdp)"
            raise ConfigError(
                f"{self.name}: expected batch_size to be a multiple of the {n} {what}, "
                f"got {batch_size}."
            )
        on_device = (
            placement is None
            and isinstance(data, data_lib.ArrayData)
            and data.fits_on_device()
            and cfg["jit"]
        )

        if isinstance(data, data_lib.ArrayData):
            arrays = data.epoch_data(
                batch_size,
                steps,
                seed=cfg["seed"],
                shuffle=shuffle,
                members=members if ensemble_batches == "own" else None,
                on_device=on_device,
                ahead=placement is None,
                process=process if local_input else None,
            )

        def epoch_data(epoch):
            nonlocal first
            skip = 0
            if resume is not None and epoch == resume["epoch"] and not resume.get("used"):
                resume["used"] = True  # only the first epoch of this fit resumes mid-way
                skip = resume["batch"]
                if resume.get("empty"):
                    return ()
            if isinstance(data, data_lib.ArrayData):
                return arrays(epoch, start=skip)
            if first is not None:
                batches, first = _chain_first(first, iterator), None
                return batches
            if data.exhausted:
                print(
                    f"{self.name}: the input iterator ran out of data after epoch {epoch}; "
                    "stopping. Pass steps_per_epoch or a re-iterable (e.g. a list).",
                    file=sys.stderr,
                )
                return None
            return data.epoch(steps_per_epoch, shuffle=shuffle, seed=cfg["seed"])

        validation = None
        if val is not None:
            val_size = validation_batch_size or batch_size
            validation = lambda: _eval_batches(val, val_size, validation_steps)  # noqa: E731
        # The first epoch's step programs compile in the background while the main thread
        # makes the private train state, resets the metrics and stages the first batches.
        ahead = None
        if on_device and members is None and resume is None:
            ahead = loop_lib.DeviceRows(
                data.on_device(), np.zeros(data.n, np.int32), batch_size, steps
            )
        self._train_state = _fit_state(
            self._train_state, trainer, rng=placement is not None, ahead=ahead
        )
        self.stop_training = False
        self._initial_epoch, self._initial_batch = None, 0

        def position(epoch: int, batches: int | None = None) -> dict:
            """The data position of ``fit`` (JSON) for a backup: after ``batches`` batches of
            ``epoch``, or (``None``) at the start of ``epoch`` after the previous one ended."""
            source = data.state(batches) if isinstance(data, data_lib.IterableData) else {}
            arrays = isinstance(data, data_lib.ArrayData)
            return {
                "epoch": int(epoch),
                "batch": int(batches or 0),
                "seed": int(cfg["seed"]),
                "shuffle": bool(shuffle),
                "batch_size": int(batch_size) if arrays else None,
                "source": source,
            }

        self._fit_position = position
        try:
            loop_lib.fit(
                trainer,
                _Hooks(self, cl, initial_epoch),
                epoch_data,
                epochs=epochs,
                validation=validation,
                placement=placement,
                epoch_logs=epoch_logs,
            )
        finally:
            if local_input and isinstance(data, data_lib.IterableData):
                data.shard_by_process(None)  # evaluate/predict read every row again
        return next(c for c in cl.callbacks if isinstance(c, callbacks_lib.History))

    def _fit_variant(self, data, ensemble, ensemble_batches, dp, devices, distribution):
        """``(members or None, DPConfig or None)`` of one ``fit``, checked."""
        from fnn.training import privacy

        members = self._count("ensemble", ensemble) if ensemble is not None else self._members
        if ensemble_batches not in ("own", "same"):
            raise ConfigError(
                f"{self.name}: expected ensemble_batches 'own' or 'same', got {ensemble_batches!r}."
            )
        if dp is not None:
            dp = privacy.DPConfig.get(dp, what=f"{self.name}: fit(dp=...)")
        arrays = isinstance(data, data_lib.ArrayData)
        what = "ensemble" if members is not None else "dp" if dp is not None else None
        if what is None:
            return members, dp
        if devices is not None or distribution is not None:
            raise ConfigError(
                f"{self.name}: fit({what}=...) runs on one device; drop devices=/distribution=."
            )
        if dp is not None and (not arrays or data.sample_weight is not None):
            raise ConfigError(
                f"{self.name}: fit(dp=...) needs array x, y (the accountant needs the number "
                "of examples) and no sample_weight/class_weight (DP-SGD clips unweighted "
                "per-example gradients)."
            )
        if members is not None and ensemble_batches == "own" and not arrays:
            raise ConfigError(
                f"{self.name}: fit(ensemble=...) with its own shuffle per member needs array "
                "data; pass ensemble_batches='same' for an iterable."
            )
        return members, dp

    # ------------------------------------------------------------------ evaluate

    def evaluate(
        self,
        x=None,
        y=None,
        batch_size: int | None = 32,
        verbose="auto",
        sample_weight=None,
        steps: int | None = None,
        callbacks: Sequence[callbacks_lib.Callback] | None = None,
        return_dict: bool = False,
        groups=None,
    ):
        """Loss and metrics on the data: a float (loss only), a list ``[loss, *metrics]``
        in compile order, or a dict with ``return_dict=True`` (as Keras).

        ``groups [n]`` (a sensitive attribute per example; needs ``return_dict=True`` and
        array data) adds ``"fairness"``: per-group metrics and disparities
        (:func:`fnn.metrics.group_report`) of the model's predicted classes."""
        self._require_compiled("evaluate")
        if groups is not None:
            if not return_dict or y is None:
                raise ConfigError(
                    f"{self.name}: evaluate(groups=...) needs return_dict=True and arrays x, y."
                )
            from fnn.training import fairness

            if len(np.asarray(groups).reshape(-1)) != len(np.asarray(y)):
                raise ShapeError(
                    f"{self.name}: evaluate(groups=...): expected one group per example "
                    f"({len(np.asarray(y))}), got groups of shape {np.shape(groups)}."
                )
            logs = self.evaluate(x, y, batch_size, verbose, sample_weight, steps, callbacks, True)
            y_pred = self.predict(x, batch_size=batch_size, verbose=0, steps=steps)
            n = len(y_pred)
            weights = None if sample_weight is None else np.asarray(sample_weight)[:n]
            logs["fairness"] = fairness.group_report(
                np.asarray(y)[:n],
                y_pred,
                np.asarray(groups)[:n],
                threshold=self._score_threshold(),
                sample_weight=weights,
            )
            return logs
        verbose = _is_verbose_auto(verbose)
        batch_size = self._count("batch_size", batch_size, 32)
        steps = self._count("steps", steps)
        data = self._fit_data(x, y, sample_weight, None, "evaluate")
        if isinstance(data, data_lib.ArrayData):
            trainer = self._prepare_training(data.x, data.y, data.sample_weight)
            n_steps = math.ceil(data.n / batch_size)
            n_steps = n_steps if steps is None else min(steps, n_steps)
        else:
            if not data.one_shot:
                bx, by, bsw = data_lib.unpack(next(iter(data.data)))
                self._prepare_training(
                    *(data_lib.as_arrays(a) for a in (*data.arrange(bx, by), bsw))
                )
            elif self._trainer is None:
                raise ConfigError(
                    f"{self.name}: evaluate on a one-shot iterator needs a model that has been fit "
                    "or evaluated before (to know the data shapes); pass a list of batches."
                )
            trainer = self._trainer
            n_steps = steps if steps is not None else _len_or_none(data.data)
        trainer = self._members_trainer(trainer)
        cl = self._callbacks(callbacks, verbose, history=False, epochs=1, steps=n_steps)
        hooks = _Hooks(self, cl)
        cl.on_test_begin({})
        logs = loop_lib.evaluate(trainer, hooks, _eval_batches(data, batch_size, steps))
        cl.on_test_end(logs)
        return self._batch_result(logs, trainer, return_dict)

    def _score_threshold(self) -> float:
        """The decision threshold of one score from ``predict``: 0 for a logit, 0.5 for a
        probability (an ensemble's combined binary prediction is a mean probability)."""
        loss = self._loss()
        if self._members is not None and members_lib.combined_kind(loss) != "mean":
            return 0.5
        return 0.0 if members_lib.from_logits(loss) else 0.5

    # ------------------------------------------------------------------ predict

    def predict(
        self,
        x,
        batch_size: int | None = 32,
        verbose="auto",
        steps: int | None = None,
        callbacks=None,
    ):
        """Outputs for ``x`` as NumPy arrays, in batches of ``batch_size``.

        Works without ``compile``. Every batch is padded to ``batch_size`` rows (the padding
        is dropped from the result), so any number of samples runs one compiled program.
        After ``fit(ensemble=n)``: the members' mean probability ``[batch, classes]`` (a
        categorical crossentropy loss; ``[batch, k]`` of the positive class for binary
        crossentropy; else their mean output).
        """
        return self._predict(x, batch_size, verbose, steps, callbacks, stats=False)

    def _predict(self, x, batch_size, verbose, steps, callbacks, *, stats: bool):
        """``predict``, of an ensemble with ``stats``: ``predict_uncertainty``'s dict."""
        verbose = _is_verbose_auto(verbose)
        batch_size = self._count("batch_size", batch_size, 32)
        steps = self._count("steps", steps)
        x = self._arrange_inputs(x)
        if data_lib.is_array_tree(x):
            data = data_lib.ArrayData(x, None, None, name="predict")
            self._ensure_built(data.x)
            n_steps = math.ceil(data.n / batch_size)
            n_steps = n_steps if steps is None else min(steps, n_steps)
            sizes = [min(batch_size, data.n - i * batch_size) for i in range(n_steps)]
            batches = (
                data_lib.pad_rows(bx, batch_size)
                for bx, _, _ in _eval_batches(data, batch_size, n_steps)
            )
        else:
            x = foreign_data.adapt(x, name="predict")  # tf.data / PyTorch batches as NumPy
            n_steps = steps if steps is not None else _len_or_none(x)
            sizes = []

            def padded():
                for count, item in enumerate(x):
                    if steps is not None and count >= steps:
                        return
                    bx = data_lib.as_arrays(self._arrange_inputs(data_lib.unpack(item)[0]))
                    n = np.shape(jax.tree.leaves(bx)[0])[0]
                    size = max(batch_size, n)
                    sizes.append(n)
                    yield data_lib.pad_rows(bx, size)

            batches = data_lib.prefetch(padded())
            try:  # an unbuilt model builds from the first batch
                head = next(batches)
                self._ensure_built(head)
                batches = _chain_first(head, batches)
            except StopIteration:
                batches = iter(())
        cl = self._callbacks(callbacks, verbose, history=False, epochs=1, steps=n_steps)
        cl.on_predict_begin({})
        outputs = loop_lib.predict(self._predict_step(stats), _Hooks(self, cl), batches)
        cl.on_predict_end({})
        if not outputs:
            raise ConfigError(f"{self.name}: predict got no data (0 batches).")
        host = jax.device_get(outputs)
        trimmed = [jax.tree.map(lambda a, n=n: np.asarray(a)[:n], o) for o, n in zip(host, sizes)]
        return jax.tree.map(lambda *parts: np.concatenate(parts), *trimmed)

    def predict_uncertainty(self, x, batch_size: int | None = 32, verbose="auto", steps=None):
        """An ensemble's combined prediction with its spread, NumPy arrays per example:
        ``probs [batch, classes]`` (mean of the members' probabilities), ``entropy [batch]``
        (of that mean, nats), ``mutual_information [batch]`` (entropy minus the members'
        mean entropy) and ``variance [batch, classes]`` (of the members' probabilities), as
        ``fnn.train.predictive_stats``; binary crossentropy: the same over each label's two
        classes, ``probs``/``variance`` ``[batch, k]`` of the positive class; other losses:
        ``mean`` and ``variance`` of the outputs. Needs a model trained with
        ``fit(ensemble=n)``."""
        if self._members is None:
            raise ConfigError(
                f"{self.name}: predict_uncertainty needs an ensemble; train it with "
                "fit(..., ensemble=n) first."
            )
        return self._predict(x, batch_size, verbose, steps, None, stats=True)

    def _single_model(self, what: str) -> None:
        if self._members is not None:
            raise ConfigError(
                f"{self.name}: {what} needs one model, but it holds a {self._members}-member "
                "ensemble (params with a leading member axis); save_weights/load_weights keep "
                "the whole ensemble, jax.tree.map(lambda a: a[i], model.params) is member i."
            )

    def _members_trainer(self, trainer):
        """The ensemble's trainer for evaluate/train_on_batch (same batch for every member)."""
        return trainer if self._members is None else trainer.variant(members=self._members)

    @property
    def members(self) -> int | None:
        """The member count of an ensemble trained with ``fit(ensemble=n)``, else None.
        Its ``params`` and ``train_state`` carry a leading ``[n]`` axis."""
        return self._members

    # ------------------------------------------------------------------ single batches

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """One training step on exactly this batch; returns the running loss and metrics
        (accumulated since the last ``reset_metrics``, as Keras 3)."""
        self._require_compiled("train_on_batch")
        data = self._fit_data(x, y, sample_weight, class_weight, "train_on_batch")
        trainer = self._members_trainer(self._prepare_training(data.x, data.y, data.sample_weight))
        ts = _copy_arrays(self._train_state, rng=False)
        self._train_state, values = trainer.step(ts, loop_lib.as_batch(*data.arrays))
        trainer.remember(self._train_state.metric_states, values)
        logs = trainer.read_metrics(self._train_state.metric_states)
        return self._batch_result(logs, trainer, return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """Loss and metrics on exactly this batch (fresh metric states)."""
        self._require_compiled("test_on_batch")
        data = self._fit_data(x, y, sample_weight, None, "test_on_batch")
        trainer = self._prepare_training(data.x, data.y, data.sample_weight)
        trainer = self._members_trainer(trainer)
        logs = loop_lib.evaluate(trainer, _Hooks(self, None), [data.arrays])
        return self._batch_result(logs, trainer, return_dict)

    def predict_on_batch(self, x):
        """Outputs for exactly this batch (no padding, no batching)."""
        x = data_lib.as_arrays(self._arrange_inputs(x))
        self._ensure_built(x)
        ts = self._train_state
        return jax.tree.map(
            np.asarray, jax.device_get(self._predict_step()(ts.params, ts.state, x))
        )

    @staticmethod
    def _batch_result(logs, trainer, return_dict):
        if return_dict:
            return logs
        values = [logs[k] for k in trainer.metric_names]
        return values[0] if len(values) == 1 else values


# ---------------------------------------------------------------------- helpers


class _Hooks:
    """``fnn.training.loop``'s hooks for one call: the model's train state, its
    ``stop_training`` flag and the ``CallbackList`` (``None``: no callbacks)."""

    def __init__(self, model: Model, callbacks, initial_epoch: int = 0):
        self.model = model
        self.callbacks = callbacks
        self._initial_epoch = initial_epoch

    @property
    def train_state(self):
        return self.model._train_state

    @train_state.setter
    def train_state(self, value):
        self.model._train_state = value

    @property
    def stop_training(self) -> bool:
        return self.model.stop_training

    @property
    def initial_epoch(self) -> int:
        """The ``initial_epoch`` argument, or the epoch a callback restored (Keras's rule)."""
        restored = self.model._initial_epoch
        return self._initial_epoch if restored is None else restored

    @property
    def initial_batch(self) -> int:
        """The batch of ``initial_epoch`` a restored backup resumes at (0: its start)."""
        return self.model._initial_batch

    def wants(self, hook: str) -> bool:
        return self.callbacks is not None and self.callbacks.wants(hook)

    def __getattr__(self, hook: str):
        return getattr(self.callbacks, hook)


def _jit_placed(fn, distribution, *args, params=None):
    """``jax.jit(fn)(*args)`` compiled with ``out_shardings`` from ``distribution``'s rules
    (shapes from ``jax.eval_shape``): every array is created on its devices, each computing
    only its shards, never a full copy on one device. ``fn`` returns ``{"params": ...}``,
    or, given ``params``, a tree that follows them (an optimizer state)."""
    from fnn.distributed import state_shardings

    shapes = jax.eval_shape(fn, *args)
    tree = shapes if params is None else {"params": params, "out": shapes}
    shardings = state_shardings(tree, dict(distribution.rules), distribution.mesh)
    return jit_init(fn, *args, out_shardings=shardings if params is None else shardings["out"])


def _copy_arrays(ts, *, rng: bool = True):
    """``ts`` (a ``TrainState``) with fresh buffers for every array: one compiled copy when
    all sit on one device (one dispatch instead of one per leaf: ~1.5 ms per ``fit`` on a
    small model), else a copy per array (each keeps its sharding). ``rng=False`` keeps the
    base key as it is: fit's own programs never donate it (``fnn.train.jit_step``), and a
    typed key among the copy's outputs is rebuilt in Python (~60 us a ``fit``)."""
    tree = ts if rng else ts._replace(rng=None)
    leaves = jax.tree.leaves(tree)
    one = all(
        isinstance(a, jax.Array) and isinstance(a.sharding, jax.sharding.SingleDeviceSharding)
        for a in leaves
    )
    if one and len({a.sharding for a in leaves}) == 1:
        out = _COPY(tree)
    else:
        out = jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, tree)
    return out if rng else out._replace(rng=ts.rng)


_COPY = jax.jit(lambda tree: jax.tree.map(lambda a: a.copy(), tree))


def _fit_state(ts, trainer: loop_lib.Trainer, *, rng: bool, ahead=None):
    """``fit``'s private train state: ``ts`` with fresh buffers for every array (``fit``
    donates the state to its steps, so arrays the caller holds, e.g. ``model.params``
    taken before, stay valid; see ``_copy_arrays`` for ``rng``), and its optimizer and
    metric states made if missing, in the same program (a first ``fit`` compiles one
    small program instead of three, ~25 ms each on CPU). ``ahead``: the first epoch's
    ``DeviceRows``; its step programs start compiling in the background
    (``Trainer.compile_ahead``) before this program compiles."""
    if ts.opt_state is not None and ts.metric_states is not None:
        if ahead is not None:
            trainer.compile_ahead(ts, ahead)
        return _copy_arrays(ts, rng=rng)
    from fnn.training import step as train_lib

    init, metrics = trainer.optimizer.init, trainer.metrics

    def fresh(t):
        t = jax.tree.map(jnp.copy, t)
        opt_state = init(t.params) if t.opt_state is None else t.opt_state
        metric_states = t.metric_states
        if metric_states is None:
            metric_states = train_lib.init_metric_states(metrics)
        return _replace(t, opt_state=opt_state, metric_states=metric_states)

    out, run = lower_init(fresh, ts if rng else ts._replace(rng=None))
    if ahead is not None:
        trainer.compile_ahead(out if rng else out._replace(rng=ts.rng), ahead)
    out = run()
    return out if rng else out._replace(rng=ts.rng)


def _eval_batches(data, batch_size: int, steps: int | None = None):
    """Evaluation batches ``(x, y, sample_weight)`` on the device, in order."""
    if isinstance(data, data_lib.IterableData):
        return data.epoch(steps)
    return data.eval_batches(batch_size, steps)


def _saved_position(callbacks, data, seed: int, shuffle: bool, batch_size: int, name: str):
    """The data position (``fit``'s ``position``) a callback will restore in
    ``on_train_begin`` (``BackupAndRestore``), checked against this fit; ``None``: none."""
    for callback in callbacks or ():
        saved = getattr(callback, "saved_position", None)
        saved = saved() if callable(saved) else None
        if saved is None:
            continue
        arrays = isinstance(data, data_lib.ArrayData)
        now = {"seed": seed, "shuffle": shuffle, "batch_size": batch_size if arrays else None}
        changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
        if changed:
            raise ConfigError(
                f"{name}: the backup to resume from was made with other data settings "
                f"({', '.join(changed)}); resume with the settings it was made with, or "
                "start again without the backup."
            )
        return dict(saved)
    return None


def _len_or_none(data) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _chain_first(first, rest):
    yield first
    yield from rest


def _class_weights(y, class_weight: Mapping, name: str) -> np.ndarray:
    """Per-sample weights from ``{class: weight}`` for integer, one-hot or 0/1 labels."""
    if y is None or isinstance(y, tuple | dict):
        raise ConfigError(f"{name}: class_weight needs a single array of labels y.")
    y = np.asarray(y)
    labels = np.argmax(y, -1) if y.ndim > 1 and y.shape[-1] > 1 else np.rint(y.reshape(len(y)))
    labels = labels.astype(np.int64)
    missing = sorted(set(np.unique(labels).tolist()) - {int(k) for k in class_weight})
    if missing:
        raise ConfigError(
            f"{name}: class_weight has no entry for classes {missing}; give a weight for every "
            "class present in y."
        )
    table = {int(k): float(v) for k, v in class_weight.items()}
    return np.array([table[c] for c in labels.tolist()], np.float32)


def _metric_list(metrics):
    if isinstance(metrics, Mapping):
        return dict(metrics)
    return list(metrics or [])


def _input_dtype(layer) -> str:
    """The dtype ``build(shape)`` assumes: int32 when the first layer called is an
    ``Embedding`` (token ids), else float32."""
    while layer is not None and layer.spec is not None and layer.spec.class_name == "serial":
        children = layer.children or ()
        layer = children[0][1] if children else None
    if layer is not None and layer.spec is not None and layer.spec.class_name == "Embedding":
        return "int32"
    return "float32"


def _replace(train_state, **changes):
    if hasattr(train_state, "_replace"):
        return train_state._replace(**changes)
    return dataclasses.replace(train_state, **changes)


def _check_label_dtypes(name: str, what: str, y, loss) -> None:
    """Raise ``ConfigError`` naming the loss for string or object labels (NumPy would fail
    deep in a label check with a ``UFuncTypeError`` naming nothing)."""
    for leaf in jax.tree.leaves(y):
        dtype = getattr(leaf, "dtype", None)
        if isinstance(leaf, np.ndarray) and dtype is not None and dtype.kind in "USOa":
            loss_name = loss if isinstance(loss, str) else getattr(loss, "name", repr(loss))
            first = bounded_repr(np.asarray(leaf.flat[0]).item() if leaf.size else "", 40)
            raise ConfigError(
                f"{name}: {what} holds {dtype.name} values such as {first}; "
                f"the loss {loss_name!r} needs numeric labels. Encode classes as integers "
                "first, e.g. with sklearn.preprocessing.LabelEncoder."
            )


def _as_inputs(x) -> tuple:
    """Positional inputs of ``layer.apply``: a tuple/list is several inputs, anything else
    (an array or a dict) is one."""
    return tuple(x) if isinstance(x, list | tuple) else (x,)


class Sequential(Model):
    """A linear stack of layers, built with ``add`` or from a list (``fnn.serial`` underneath).

    >>> import fnn
    >>> from fnn.layers import Dense
    >>> model = fnn.Sequential(name="mlp")
    >>> model.add(Dense(16, activation="relu"))
    >>> model.add(Dense(10))
    >>> model.build((None, 64))
    >>> [w.shape for w in model.get_weights()]
    [(64, 16), (16,), (16, 10), (10,)]
    """

    def __init__(self, layers: Sequence[Layer] | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name or "sequential", **kwargs)
        self._explicit_name = name is not None
        self._layers: list[Layer] = []
        self._build_input: Tensor | None = None
        self._graph_for = None  # the layers the symbolic graph was traced for
        for layer in layers or ():
            self.add(layer)

    def _unbuild(self) -> None:
        """Forget the built state, keeping each layer's weights on it so that the next
        build starts from them (``add``/``pop`` after building, as Keras)."""
        ts = self._train_state
        if ts is not None and self._layer is not None:
            for key, child in self._layer.children or ():
                params, state = ts.params.get(key, {}), ts.state.get(key, {})
                if params or state:
                    eager.store(child, params, state)
        self._train_state = None
        self._trainer = self._predictor = None
        self._callers = {}
        self._layer = None
        self._graph_inputs = self._graph_outputs = None

    def add(self, layer) -> None:
        """Append a layer (or set the input shape with ``fnn.Input``); after the model
        was built it is rebuilt, keeping the weights of the layers it had."""
        if isinstance(layer, views.LayerView):
            layer = layer._obj if isinstance(layer._obj, Layer) else layer.layer
        elif getattr(layer, "_fnn_model", False):
            layer = layer.layer
        if isinstance(layer, Tensor):
            if layer.node is not None:
                raise ConfigError(
                    f"{self.name}: expected fnn.Input(shape) or a layer, got the output of "
                    f"layer {layer.node.layer.name!r}."
                )
            if self._layers or self._build_input is not None:
                raise ConfigError(f"{self.name}: fnn.Input must come first and only once.")
            self._build_input = layer
            return
        if not isinstance(layer, Layer):
            raise ConfigError(
                f"{self.name}: expected an fnn Layer, got {type(layer).__name__} ({layer!r})."
            )
        if self.built:
            self._unbuild()
        if layer.input_shape is not None and not self._layers and self._build_input is None:
            # tf.keras style: Dense(64, input_shape=(784,)) as the first layer.
            self._build_input = Input(layer.input_shape)
        self._layers.append(layer)
        self._layer = None
        self._graph_inputs = self._graph_outputs = None

    def pop(self):
        """Remove and return the last layer (the model is rebuilt on next use)."""
        if not self._layers:
            raise ConfigError(f"{self.name}: pop() on a model without layers.")
        if self.built:
            self._unbuild()
        layer = self._layers.pop()
        self._layer = None
        return layer

    @property
    def layer(self) -> Layer:
        if self._layer is None and self._layers:
            named = {"name": self.name} if self._explicit_name else {}
            self._layer = serial(*self._layers, **named)
        return self._layer

    def _symbolic(self) -> None:
        """Trace the stack on its ``fnn.Input`` once, so ``inputs``/``outputs`` and each
        layer's ``output`` exist (Keras's Sequential is a functional graph too)."""
        if self._graph_inputs is not None and self._graph_for == self._layers:
            return
        if self._build_input is None:
            if self._input_spec is None:
                super()._symbolic()
            shape = self._input_spec[0].shape
            self._build_input = Input(
                batch_shape=(None, *shape[1:]), dtype=self._input_spec[0].dtype
            )
            self._inferred_input = self._build_input  # from the data, not declared
        x = self._build_input
        h = x
        for layer in self._layers:
            h = layer(h)
        self._graph_inputs, self._graph_outputs = x, h
        self._graph_for = list(self._layers)

    def _declared_inputs(self) -> list | None:
        t = self._build_input
        if t is None or t is self.__dict__.get("_inferred_input"):
            return None
        return [t]

    def _default_inputs(self):
        if self._build_input is None or not self._layers:
            return None
        t = self._build_input
        return (jax.ShapeDtypeStruct(tuple(1 if d is None else d for d in t.shape), t.dtype),)

    def _arrange_inputs(self, x):
        return x

    def _arrange_targets(self, y):
        return y

    @property
    def output_names(self) -> list[str]:
        return [self._layers[-1].name] if self._layers else []

    def _build(self, inputs, distribution=None):
        if self.layer is None:
            raise ConfigError(f"{self.name}: the model has no layers; call add(layer) first.")
        super()._build(inputs, distribution)

    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        if self._train_state is None and self._default_inputs() is None:
            print_fn(views.not_built_message(self.name))
            return
        super().summary(print_fn=print_fn)
