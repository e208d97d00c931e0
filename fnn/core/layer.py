"""The layer protocol: an immutable ``(init, apply)`` pair with a name.

``params, state = layer.init(key, *inputs)`` builds the parameters from the
inputs' shapes (arrays or ``jax.ShapeDtypeStruct``, batch dimension included);
``outputs, new_state = layer.apply(params, state, *inputs, rng=None, train=False)``
is a pure function. Params and state are nested dicts of arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from fnn.core import dtype_policies
from fnn.core.errors import ConfigError

PyTree = Any
Params = dict[str, Any]
State = dict[str, Any]


class InitFn(Protocol):
    def __call__(self, key: jax.Array, *inputs: Any) -> tuple[Params, State]: ...


class ApplyFn(Protocol):
    def __call__(
        self,
        params: Params,
        state: State,
        *inputs: Any,
        rng: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[Any, State]: ...


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Declarative description of a layer: registered factory name plus the
    constructor arguments the user passed (used for saving and for naming)."""

    class_name: str
    config: Mapping[str, Any]


# A reserved state key: the sum of the losses a layer added in its last call (Keras's
# ``add_loss``). The training step adds every such entry to the loss; Keras weight lists
# leave it out.
ADDED_LOSS = "_added_loss"

# What Keras-style calls of a layer do, filled in by ``fnn.core.graph`` (symbolic calls)
# and ``fnn.core.eager`` (calls on arrays), which build on this module.
KERAS_FACE: dict[str, Callable] = {}

_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """An immutable ``(init, apply)`` pair with a readable ``name``.

    Both ``layer.init`` / ``layer.apply`` and ``init, apply = layer`` work.

    >>> import jax, fnn
    >>> layer = fnn.layers.Dense(3)
    >>> params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((2, 4), "float32"))
    >>> {k: v.shape for k, v in params.items()}
    {'kernel': (4, 3), 'bias': (3,)}
    >>> init, apply = layer
    """

    init: InitFn
    apply: ApplyFn
    name: str
    spec: LayerSpec | None = None
    # Keras's ``input_shape=`` / ``input_dim=`` on a first layer (without the batch axis):
    # only ``Sequential`` reads it, to build without an explicit ``fnn.Input``.
    input_shape: tuple[int, ...] | None = None
    # Keras's ``get_weights`` order of this layer's own arrays: key names (or ``fnmatch``
    # patterns such as ``"forward_*"``) ranked at every depth of its params, then of its
    # state. Keys it does not name keep their stored order, after the named ones. Needed
    # because jax returns dicts with sorted keys, so creation order is not kept.
    weight_order: tuple[str, ...] | None = None
    # ``(key, layer)`` of the direct children of a combinator or graph, when it has them.
    children: tuple[tuple[str, Layer], ...] | None = None
    # The ``fnn.mixed_precision`` policy ``apply`` was built with (None: no casts).
    dtype_policy: dtype_policies.DTypePolicy | None = None

    def __post_init__(self):
        check_name(self.name)
        if self.weight_order is not None:
            object.__setattr__(
                self, "weight_order", _check_weight_order(self.name, self.weight_order)
            )

    def __iter__(self):
        return iter((self.init, self.apply))

    def __call__(self, *args, **kwargs):
        """Keras-style call: on symbolic tensors (``fnn.Input`` and layer outputs) it
        records a node of the functional API and returns symbolic outputs; on arrays it
        runs the layer with weights it creates on the first call (``fnn.core.eager``)."""
        return KERAS_FACE["call"](self, args, kwargs)

    def __repr__(self) -> str:
        kind = self.spec.class_name if self.spec else "Layer"
        return f"<fnn {kind} {self.name!r}>"

    # Keras conveniences; the weights are those of eager calls (``fnn.core.eager``) or,
    # for layers of a built model, read through ``model.get_layer(name)``.
    def get_weights(self) -> list:
        """This layer's eager weights in Keras's order (``[]`` before its first call)."""
        return KERAS_FACE["get_weights"](self)

    def set_weights(self, weights) -> None:
        """Replace this layer's eager weights from a list in Keras's order."""
        KERAS_FACE["set_weights"](self, weights)

    @property
    def weights(self) -> list:
        return self.get_weights()

    def count_params(self) -> int:
        return int(sum(w.size for w in self.get_weights()))

    def _nodes(self) -> list:
        return self.__dict__.get("_fnn_nodes", [])

    @property
    def output(self):
        """The symbolic output of this layer's call in a functional graph (Keras's
        ``layer.output``; a layer called several times has no single output)."""
        return self._one_node("output").outputs

    @property
    def input(self):
        """The symbolic input(s) of this layer's call in a functional graph."""
        node = self._one_node("input")
        return node.args[0] if len(node.args) == 1 else list(node.args)

    def _one_node(self, what):
        nodes = self._nodes()
        if len(nodes) != 1:
            raise ConfigError(
                f"{self.name}: layer.{what} needs a layer called exactly once on symbolic "
                f"tensors; it was called {len(nodes)} times."
            )
        return nodes[0]

    @property
    def compute_dtype(self) -> str | None:
        """The dtype ``apply`` computes in under its policy (None: its inputs' dtype)."""
        return None if self.dtype_policy is None else self.dtype_policy.compute_dtype

    @property
    def variable_dtype(self) -> str | None:
        """The dtype of new params under its policy (None: float32, float64 inputs' own)."""
        return None if self.dtype_policy is None else self.dtype_policy.variable_dtype

    @property
    def explicitly_named(self) -> bool:
        """True when the name was passed to a registered factory (duplicates are then an
        error); other names get ``_1``, ``_2`` suffixes inside combinators."""
        return self.spec is not None and "name" in self.spec.config

    def renamed(self, name: str) -> Layer:
        """The same layer under another name."""
        spec = self.spec
        if spec is not None:
            spec = LayerSpec(spec.class_name, {**spec.config, "name": name})
        return dataclasses.replace(self, name=name, spec=spec)


def _check_weight_order(who: str, order: Any) -> tuple[str, ...]:
    if not isinstance(order, tuple | list) or not all(isinstance(k, str) and k for k in order):
        raise ConfigError(
            f"{who}: expected weight_order to be a tuple of parameter key names such as "
            f"('kernel', 'bias'), got {order!r}."
        )
    return tuple(order)


def check_name(name: object) -> None:
    """Raise ``ConfigError`` unless ``name`` is a usable parameter key."""
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ConfigError(
            f"invalid layer name {name!r}: expected a non-empty string of letters, digits, "
            "'_', '.' or '-' that starts with a letter or '_' (it becomes a parameter key)."
        )


_REGISTRY: dict[str, Callable[..., Layer]] = {}


def register_layer(
    factory: Callable[..., Layer] | None = None,
    *,
    name: str | None = None,
    weight_order: tuple[str, ...] | None = None,
    autocast: bool | None = True,
):
    """Register a layer factory by name so saved configs can rebuild it.

    The returned factory records the arguments it was called with in
    ``layer.spec``. ``weight_order`` declares the Keras ``get_weights`` order of the
    layer's arrays (see ``Layer.weight_order``).

    Dtype policy (``fnn.mixed_precision``): every factory takes Keras's ``dtype=`` (its own
    parameter, or one this wrapper takes off): a policy name, a float dtype or a
    ``DTypePolicy``, default the global policy at construction. A factory with its own
    ``dtype`` parameter gets the resolved ``DTypePolicy`` there (``param_dtype`` reads the
    variable dtype from it; pass it on to inner layers). A policy other than the default
    wraps the layer with ``dtype_policies.with_policy``; ``autocast=False`` keeps its params
    uncast (Keras's flag), ``autocast=None`` means no policy at all, as for factories that
    take layers (combinators: their children carry their own). Use it on your own layer
    factories too:

    >>> import fnn
    >>> @fnn.register_layer
    ... def Double(name="double"):
    ...     return fnn.Lambda(lambda x: 2 * x, name=name)
    >>> fnn.core.get_layer_factory("Double")().name
    'double'
    """

    def wrap(fn: Callable[..., Layer]) -> Callable[..., Layer]:
        key = name or fn.__name__
        if isinstance(fn, type):
            return _register_class(fn, key)
        signature = inspect.signature(fn)
        order = None if weight_order is None else _check_weight_order(key, weight_order)
        policy_mode = None if takes_layers(signature) else autocast
        own_dtype = "dtype" in signature.parameters

        @functools.wraps(fn)
        def build(*args, **kwargs) -> Layer:
            input_shape = _pop_input_shape(key, signature, kwargs)
            # Keras's dtype= on every layer: taken off here unless the factory has its own.
            dtype = None
            if policy_mode is not None and not own_dtype:
                dtype = kwargs.pop("dtype", None)
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as err:
                raise TypeError(f"{key}: {err}") from None
            config = dict(bound.arguments)
            policy = None
            if policy_mode is not None:
                if own_dtype:
                    dtype = bound.arguments.get("dtype")
                policy = dtype_policies.resolve(_layer_name(signature, bound, key), dtype)
                if own_dtype:
                    bound.arguments["dtype"] = policy
                    args, kwargs = bound.args, bound.kwargs
                # A policy that came from the global one (or a DTypePolicy object) is saved
                # by name, so a rebuilt layer gets the same policy; a given name or dtype
                # is saved as given.
                if not dtype_policies.applies(policy):
                    config.pop("dtype", None)
                elif dtype is None or isinstance(dtype, dtype_policies.DTypePolicy):
                    config["dtype"] = policy.name
                else:
                    config["dtype"] = dtype
            layer = fn(*args, **kwargs)
            if input_shape is not None:
                config["input_shape"] = input_shape
            layer = dataclasses.replace(
                layer,
                spec=LayerSpec(key, config),
                input_shape=input_shape,
                weight_order=order or layer.weight_order,
            )
            if dtype_policies.applies(policy):
                layer = dtype_policies.with_policy(layer, policy, autocast=bool(policy_mode))
            return layer

        build.signature = signature
        build.takes_dtype = policy_mode is not None
        _REGISTRY[key] = build
        return build

    return wrap(factory) if factory is not None else wrap


def _layer_name(signature: inspect.Signature, bound: inspect.BoundArguments, key: str) -> str:
    """The name the layer being built will have (for messages)."""
    param = signature.parameters.get("name")
    default = param.default if param is not None and isinstance(param.default, str) else key
    return bound.arguments.get("name") or default


def is_layer_typed(param: inspect.Parameter) -> bool:
    """``*layers`` without annotation, or an annotation naming ``Layer`` (``Layer``,
    ``fnn.Layer``, ``Layer | None``)."""
    annotation = param.annotation
    if annotation is param.empty:
        return param.kind is param.VAR_POSITIONAL
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return {t.strip().rsplit(".", 1)[-1] for t in text.split("|")} - {"None"} == {"Layer"}


def takes_layers(signature: inspect.Signature) -> bool:
    """True for factories of combinators: a parameter takes layers (``Layer``,
    ``*layers``, ``Sequence[Layer]``)."""
    return any(
        is_layer_typed(p) or re.search(r"\bLayer\b", str(p.annotation))
        for p in signature.parameters.values()
        if p.annotation is not p.empty or p.kind is p.VAR_POSITIONAL
    )


def _register_class(cls: type, key: str) -> type:
    """Register a subclassed layer class (``fnn.layers.Layer``) under ``key``: saved
    configs rebuild it with ``cls.from_config(layer.get_config())``, as Keras's
    ``register_keras_serializable``. Returns the class unchanged."""
    if not (issubclass(cls, Layer) and hasattr(cls, "from_config")):
        raise ConfigError(
            f"register_layer: expected a layer factory or a subclass of fnn.layers.Layer, "
            f"got the class {cls.__name__}."
        )

    def build(**config):
        return cls.from_config(config)

    build.signature = inspect.Signature(
        [inspect.Parameter("config", inspect.Parameter.VAR_KEYWORD)]
    )
    build.layer_class = cls
    _REGISTRY[key] = build
    return cls


def registered_name(layer: Layer) -> str | None:
    """The registry name of a subclassed layer's class, or None."""
    for key, build in _REGISTRY.items():
        if getattr(build, "layer_class", None) is type(layer):
            return key
    return None


def _pop_input_shape(key: str, signature: inspect.Signature, kwargs: dict):
    """Remove Keras's ``input_shape=``/``input_dim=`` from ``kwargs`` (unless the factory takes
    them itself) and return the shape as a tuple of ints, or None."""
    shape = None
    if "input_shape" in kwargs and "input_shape" not in signature.parameters:
        shape = kwargs.pop("input_shape")
    if "input_dim" in kwargs and "input_dim" not in signature.parameters:
        if shape is not None:
            raise ConfigError(f"{key}: pass input_shape or input_dim, not both.")
        shape = (kwargs.pop("input_dim"),)
    if shape is None:
        return None
    given = shape
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(
            f"{key}: expected input_shape to be a tuple of positive ints without the batch "
            f"axis, e.g. (784,) or (28, 28, 1), got {given!r}."
        )
    return shape


def get_layer_factory(class_name: str) -> Callable[..., Layer]:
    """The registered factory called ``class_name`` (raises ``ConfigError`` listing valid ones)."""
    from fnn.core.errors import unknown_name

    if class_name not in _REGISTRY:
        raise unknown_name("layer", class_name, _REGISTRY)
    return _REGISTRY[class_name]


def registered_layers() -> tuple[str, ...]:
    """Names of every registered layer factory."""
    return tuple(sorted(_REGISTRY))


def as_shape_struct(x: Any) -> Any:
    """Abstract version of a pytree of arrays: ``jax.ShapeDtypeStruct`` leaves."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), x)


def output_shapes(layer: Layer, params: Params, state: State, *inputs: Any) -> Any:
    """Shapes of ``layer.apply``'s outputs, found by abstract evaluation (no FLOPs).

    >>> import jax, fnn
    >>> layer = fnn.layers.Dense(5)
    >>> x = jax.ShapeDtypeStruct((8, 3), "float32")
    >>> params, state = jax.eval_shape(layer.init, jax.random.key(0), x)
    >>> fnn.core.output_shapes(layer, params, state, x).shape
    (8, 5)
    """
    abstract = as_shape_struct((params, state, inputs))
    out, _ = jax.eval_shape(
        lambda p, s, xs: layer.apply(p, s, *xs, rng=None, train=False), *abstract
    )
    return out


def param_dtype(x: Any, dtype: Any = None) -> jnp.dtype:
    """Dtype for new parameters: ``dtype`` if given (a ``DTypePolicy``: its
    ``variable_dtype``), else float32 or float64 from the input.

    Low-precision inputs (bfloat16, float16, integers) still get float32 parameters,
    as in Keras; mixed precision casts them at apply time.
    """
    if isinstance(dtype, dtype_policies.DTypePolicy):
        dtype = dtype.variable_dtype if dtype_policies.applies(dtype) else None
    if dtype is not None:
        return jnp.dtype(dtype)
    x_dtype = jnp.result_type(x)
    return x_dtype if x_dtype in (jnp.float32, jnp.float64) else jnp.dtype(jnp.float32)


def _layer_setattr(self, name: str, value: Any) -> None:
    # Layers are immutable except for Keras's ``layer.trainable = False`` (a flag that the
    # next ``compile`` reads to freeze the layer's params; it changes no function).
    if name == "trainable":
        object.__setattr__(self, "_fnn_trainable", bool(value))
        return
    _frozen_setattr(self, name, value)


_frozen_setattr = Layer.__setattr__
Layer.__setattr__ = _layer_setattr
Layer.trainable = property(
    lambda self: self.__dict__.get("_fnn_trainable", True),
    lambda self, value: object.__setattr__(self, "_fnn_trainable", bool(value)),
    doc="Keras's trainable flag: False freezes this layer's params in the next compile.",
)
