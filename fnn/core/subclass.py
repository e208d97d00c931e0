"""Keras-style subclassing, pure at the boundary: an object with ``build``/``call`` (and
sublayers as attributes) becomes an ordinary init/apply pair.

``self.add_weight(...)`` returns a ``Variable`` handle, never an array: inside ``call``
the handle reads the parameters passed to ``apply`` (``Variable.value``; arithmetic,
``fnn.ops`` and ``assign`` work on it), so the object holds no arrays between calls and
``apply`` stays pure under ``jit``/``grad``/``vmap``. Trainable weights go to ``params``
under their attribute names, non-trainable ones to ``state`` (``assign`` in ``call``
becomes the new state); sublayers' params sit under their attribute names too.

>>> import jax, jax.numpy as jnp, fnn
>>> class Linear(fnn.layers.Layer):
...     def __init__(self, units=4):
...         super().__init__()
...         self.units = units
...     def build(self, input_shape):
...         self.w = self.add_weight(shape=(input_shape[-1], self.units))
...         self.b = self.add_weight(shape=(self.units,), initializer="zeros")
...     def call(self, x):
...         return x @ self.w + self.b
>>> layer = Linear(2)
>>> params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 3), "float32"))
>>> jax.tree.map(jnp.shape, params)
{'b': (2,), 'w': (3, 2)}
>>> y, _ = jax.jit(layer.apply)(params, state, jnp.ones((5, 3)))
>>> y.shape
(5, 2)
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from fnn.core import eager, initializers
from fnn.core.combinators import call_child
from fnn.core.errors import ConfigError
from fnn.core.layer import ADDED_LOSS, Layer, as_shape_struct, check_name
from fnn.core.variables import ArrayLike, unwrap, unwrap_tree

__all__ = ["ADDED_LOSS", "SubclassLayer", "Variable", "pure_pair"]


def snake_case(name: str) -> str:
    """``"MyDense"`` -> ``"my_dense"`` (Keras's default layer names)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Variable(ArrayLike):
    """A weight created by ``add_weight``: a handle to ``params[key]`` (trainable) or
    ``state[key]`` (non-trainable) of its layer, resolved in the current call."""

    def __init__(self, owner, name, shape, dtype, initializer, trainable):
        self.owner = owner
        self.name = name
        self.key = None  # the attribute name, once known (see ``_variables``)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = jnp.dtype(dtype)
        self.initializer = initializers.get(initializer)
        self.trainable = bool(trainable)

    @property
    def path(self) -> str:
        return f"{self.owner.name}/{self.key or self.name}"

    @property
    def value(self) -> jax.Array:
        scope = eager.SCOPE.get()
        if scope is not None and scope.owner is self.owner:
            return scope.read(self)
        weights = eager.stored(self.owner)
        if weights is None:
            raise ConfigError(
                f"{self.path}: the variable has no value outside a call; call the layer on "
                "an array first (or read the model's params)."
            )
        params, state = weights
        return (params if self.trainable else state)[self.key]

    def assign(self, value) -> Variable:
        """Set the value: inside ``call`` this becomes the layer's new state."""
        value = jnp.asarray(unwrap(value), self.dtype)
        scope = eager.SCOPE.get()
        if scope is not None and scope.owner is self.owner:
            scope.write(self, value)
            return self
        params, state = eager.layer_weights(self.owner, "assign")
        tree = params if self.trainable else state
        tree = {**tree, self.key: value}
        eager.store(self.owner, *((tree, state) if self.trainable else (params, tree)))
        return self

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<fnn.Variable {self.path} shape={self.shape} dtype={self.dtype.name}>"


# ---------------------------------------------------------------------------------------
# What a subclassed object holds


def _base_attrs(obj) -> set[str]:
    return obj.__dict__.get("_fnn_base_attrs", set())


def _members(obj):
    """``(key, value)`` of the user's attributes (not the base class's), lists and dicts
    expanded with ``_i``/``_k`` suffixes, in assignment order."""
    base = _base_attrs(obj)
    for name, value in list(obj.__dict__.items()):
        if name in base or name.startswith("_fnn"):
            continue
        key = name.lstrip("_") or name
        if isinstance(value, list | tuple):
            for i, v in enumerate(value):
                yield f"{key}_{i}", v
        elif isinstance(value, Mapping):
            for k, v in value.items():
                yield f"{key}_{k}", v
        else:
            yield key, value


def _as_layer(value) -> Layer | None:
    """The ``Layer`` behind an attribute: a layer, or a Keras-style model's ``layer``."""
    if isinstance(value, Layer):
        return value
    if getattr(value, "_fnn_model", False):
        return value.layer
    return None


def children(obj) -> list[tuple[str, Any, Layer]]:
    """``(key, attribute value, layer)`` of the sublayers an object holds."""
    return [(k, v, layer) for k, v in _members(obj) if (layer := _as_layer(v)) is not None]


def _variables(obj) -> list[Variable]:
    """The object's variables in creation order, each keyed by its attribute name (or its
    ``name=`` when it is not an attribute)."""
    created = obj.__dict__.get("_fnn_variables", [])
    for key, value in _members(obj):
        if isinstance(value, Variable) and value.owner is obj:
            value.key = key
    taken = {v.key for v in created if v.key}
    for v in created:
        if v.key is None:
            key, i = v.name, 0
            while key in taken:
                i += 1
                key = f"{v.name}_{i}"
            v.key = key
            taken.add(key)
    return created


class Scope:
    """One pure call of a subclassed object: its params and state, the rng and mode, and
    the sublayer calls routed to their slices (``fnn.core.eager.call`` looks it up)."""

    def __init__(self, owner, params, state, rng, train, *, discover=None):
        self.owner = owner
        self.params = params
        self.state = dict(state)
        self.rng = rng
        self.train = train
        self.discover = discover  # init: {key: abstract args of the first call}
        self.count = 0
        self.losses: list = []  # add_loss values of this call
        self.keys = {id(v): k for k, v, _ in children(owner)}

    def __enter__(self):
        self._token = eager.SCOPE.set(self)
        return self

    def __exit__(self, *exc):
        eager.SCOPE.reset(self._token)

    def next_key(self):
        """A fresh key of this call's ``rng`` (None without one): per sublayer call and
        per ``fnn.random`` draw."""
        if self.rng is None:
            return None
        self.count += 1
        return jax.random.fold_in(self.rng, self.count - 1)

    def read(self, var: Variable):
        tree = self.params if var.trainable else self.state
        return tree[var.key]

    def write(self, var: Variable, value):
        if var.trainable:
            raise ConfigError(
                f"{var.path}: assign on a trainable variable inside call is not supported "
                "(params change only through the optimizer); create it with trainable=False."
            )
        self.state[var.key] = value

    def call(self, obj, layer: Layer, args, kwargs, training):
        key = self.keys.get(id(obj))
        if key is None:
            raise ConfigError(
                f"{self.owner.name}: called layer {layer.name!r}, which is not an attribute of "
                "it; create sublayers in __init__ or build and assign them to self (e.g. "
                "self.dense = Dense(4))."
            )
        train = self.train if training is None else training
        if self.discover is not None and key not in self.params and key not in self.state:
            abstract = as_shape_struct(args)
            self.discover.setdefault(key, abstract)
            p, s = jax.eval_shape(layer.init, jax.random.key(0), *abstract)
            zeros = lambda t: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), t)  # noqa: E731
            self.params = {**self.params, key: zeros(p)}
            self.state[key] = zeros(s)
        rng = self.next_key()
        out, new = call_child(
            key,
            layer,
            self.params.get(key, {}),
            self.state.get(key, {}),
            args,
            rng,
            train,
            **kwargs,
        )
        if new:
            self.state[key] = new
        return out


def add_loss(obj, value) -> None:
    """``obj.add_loss(value)``: inside a pure call it joins that call's state; in an
    eager call it is kept for ``obj.losses``."""
    scope = eager.SCOPE.get()
    if scope is not None and scope.owner is obj:
        scope.losses.append(value)
        return
    raise ConfigError(
        f"{getattr(obj, 'name', type(obj).__name__)}: add_loss can only be called inside call()."
    )


def losses_of(obj) -> list:
    """Every ``add_loss`` total (the layer's and its sublayers') of the last eager call."""
    weights = eager.stored(obj) if isinstance(obj, Layer) else None
    found: list = []

    def visit(tree):
        if isinstance(tree, Mapping):
            for k, v in tree.items():
                found.append(v) if k == ADDED_LOSS else visit(v)

    if weights is not None:
        visit(weights[1])
    return found


def _shapes(abstract: tuple):
    """Keras's ``build`` argument: one shape tuple, or a list for several inputs."""
    shapes = [tuple(a.shape) for a in jax.tree.leaves(abstract)]
    return shapes[0] if len(shapes) == 1 else shapes


def ensure_built(obj, abstract: tuple) -> None:
    """Run ``obj.build(input_shape)`` once per input shape (it creates variables and
    sublayers)."""
    shapes = _shapes(abstract)
    if obj.__dict__.get("_fnn_built_for") == shapes:
        return
    created = obj.__dict__.setdefault("_fnn_variables", [])
    # A new input shape rebuilds: variables of the previous build go, those made in
    # __init__ stay.
    keep = obj.__dict__.setdefault("_fnn_init_variables", len(created))
    del created[keep:]
    build = getattr(obj, "build", None)
    if build is not None and not getattr(build, "_fnn_base_build", False):
        # A Keras-style model's own build (reached through super().build) must not
        # build the model again while its layer is being initialised.
        object.__setattr__(obj, "_fnn_building", True)
        try:
            build(shapes)
        finally:
            object.__setattr__(obj, "_fnn_building", False)
    object.__setattr__(obj, "_fnn_built_for", shapes)


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _positional_count(fn) -> int | None:
    """Positional parameters of a bound ``call`` (None: takes ``*args``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds and p.name not in ("training", "mask"))


def pure_pair(obj, name: str):
    """``(init, apply)`` of an object with ``call`` (and optional ``build``)."""

    def run_call(scope, xs):
        kwargs = {"training": scope.train} if _accepts(obj.call, "training") else {}
        if len(xs) > 1 and _positional_count(obj.call) == 1:
            xs = (list(xs),)  # several inputs reach call(self, inputs) as one list (Keras)
        with scope:
            return unwrap_tree(obj.call(*xs, **kwargs))

    def init(key, *inputs):
        abstract = as_shape_struct(inputs)
        ensure_built(obj, abstract)
        variables = _variables(obj)
        k_vars, k_children = jax.random.split(key)
        params, state = {}, {}
        for v, k in zip(variables, jax.random.split(k_vars, max(len(variables), 1))):
            (params if v.trainable else state)[v.key] = v.initializer(k, v.shape, v.dtype)
        found: dict[str, tuple] = {}

        adds_loss = []

        def discover(p, s, xs):
            scope = Scope(obj, p, s, None, False, discover=found)
            run_call(scope, xs)
            adds_loss.append(bool(scope.losses))

        jax.eval_shape(discover, as_shape_struct(params), as_shape_struct(state), abstract)
        if adds_loss and adds_loss[0]:
            state[ADDED_LOSS] = jnp.zeros((), jnp.float32)
        layers = {k: layer for k, _, layer in children(obj)}
        # Keras's weight order: own variables in creation order, then the sublayers.
        target = obj.__dict__.get("_fnn_pure_target", obj)
        object.__setattr__(target, "weight_order", (*(v.key for v in variables), *layers))
        for (k, args), ck in zip(found.items(), jax.random.split(k_children, max(len(found), 1))):
            p, s = layers[k].init(ck, *args)
            if p:
                params[k] = p
            if s:
                state[k] = s
        return params, state

    def apply(params, state, *inputs, rng=None, train=False):
        scope = Scope(obj, params, state, rng, train)
        out = run_call(scope, inputs)
        new_state = {k: v for k, v in scope.state.items() if jax.tree.leaves(v)}
        if ADDED_LOSS in state or scope.losses:
            new_state[ADDED_LOSS] = sum(
                (jnp.sum(unwrap(v)).astype(jnp.float32) for v in scope.losses),
                jnp.zeros((), jnp.float32),
            )
        return out, new_state

    return init, apply


class SubclassLayer(Layer):
    """Base class of Keras-style subclassed layers (``fnn.layers.Layer``): override
    ``__init__`` (call ``super().__init__()``), optionally ``build(input_shape)`` with
    ``self.add_weight``, and ``call(inputs, training=None)``. The instance *is* an fnn
    ``Layer``: its ``init``/``apply`` are pure and it works in ``fnn.serial``, graphs and
    ``fnn.Sequential``."""

    _fnn_keeps_list_argument = True  # call(inputs) gets a list argument as it is

    def __init__(self, name: str | None = None, trainable: bool = True, dtype=None, **kwargs):
        input_shape = kwargs.pop("input_shape", None)
        if "input_dim" in kwargs:
            input_shape = (kwargs.pop("input_dim"),)
        kwargs.pop("autocast", None)
        if kwargs:
            raise ConfigError(
                f"{type(self).__name__}: unexpected keyword arguments {sorted(kwargs)}."
            )
        name = name or snake_case(type(self).__name__)
        check_name(name)
        init, apply = pure_pair(self, name)
        for field, value in {
            "init": init,
            "apply": apply,
            "name": name,
            "spec": None,
            "input_shape": None if input_shape is None else tuple(input_shape),
            "weight_order": None,
            "children": None,
            # Subclassed layers compute in their inputs' dtype: dtype= is accepted (Keras
            # passes it) but no policy wraps their call.
            "dtype_policy": None,
        }.items():
            object.__setattr__(self, field, value)
        object.__setattr__(self, "_fnn_variables", [])
        self.trainable = trainable
        del dtype
        object.__setattr__(self, "_fnn_base_attrs", set(self.__dict__))

    def add_weight(
        self,
        shape=(),
        initializer=None,
        dtype=None,
        trainable: bool = True,
        name: str | None = None,
        **kwargs,
    ) -> Variable:
        """A new weight of this layer (Keras's ``add_weight``): default initializer
        ``glorot_uniform`` for float weights of rank >= 2, else ``zeros``."""
        kwargs.pop("regularizer", None)  # see the README: regularizers are not supported
        kwargs.pop("constraint", None)
        kwargs.pop("autocast", None)
        if kwargs:
            raise ConfigError(f"{self.name}: add_weight got unexpected arguments {sorted(kwargs)}.")
        shape = (shape,) if isinstance(shape, int) else tuple(shape or ())
        if initializer is None:
            initializer = "glorot_uniform" if len(shape) >= 2 else "zeros"
        var = Variable(self, name or "variable", shape, dtype or "float32", initializer, trainable)
        self.__dict__["_fnn_variables"].append(var)
        return var

    add_variable = add_weight

    def add_loss(self, value) -> None:
        """Add a loss term computed in ``call`` (e.g. an activity regularizer): it is
        added to the training loss (``fit``, ``train_on_batch``, ``evaluate``)."""
        add_loss(self, value)

    @property
    def losses(self) -> list:
        """The ``add_loss`` values of the last eager call (Keras's ``layer.losses``)."""
        return losses_of(self)

    def build(self, input_shape) -> None:
        """Create weights for ``input_shape`` (override; the default creates none)."""
        del input_shape

    build._fnn_base_build = True

    def call(self, *inputs, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define call(self, inputs).")

    @property
    def variables(self) -> list[Variable]:
        return list(_variables(self))

    @property
    def weights(self) -> list:
        """Own variables, then the sublayers' weights (Keras's ``layer.weights``)."""
        out = list(_variables(self))
        for _, _, layer in children(self):
            out.extend(layer.weights)
        return out

    @property
    def trainable_weights(self) -> list:
        """Own trainable variables, then the sublayers' (Keras's order)."""
        out = [v for v in _variables(self) if v.trainable]
        for _, _, layer in children(self):
            out.extend(getattr(layer, "trainable_weights", layer.weights))
        return out

    @property
    def non_trainable_weights(self) -> list:
        out = [v for v in _variables(self) if not v.trainable]
        for _, _, layer in children(self):
            out.extend(getattr(layer, "non_trainable_weights", []))
        return out

    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: Mapping):
        return cls(**config)

    def renamed(self, name: str):
        raise ConfigError(
            f"{self.name}: a subclassed layer cannot be renamed; pass name= to its constructor."
        )

    def __repr__(self) -> str:
        return f"<fnn {type(self).__name__} {self.name!r}>"
