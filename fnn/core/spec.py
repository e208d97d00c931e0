"""One builder from a layer spec to a layer: ``build("Dense", {"units": 10})``.

A spec is a registered factory's name and its arguments in the form ``Layer.spec.config``
records them: arguments by parameter name, ``*layers`` as a list, ``**options`` as a
mapping, plus Keras's ``input_shape=`` / ``input_dim=`` that ``register_layer`` takes
itself. YAML run configs (``fnn.cli.config.build_layer``), saved architectures
(``fnn.io.saving.layer_from_config``) and wrappers that rebuild a child layer
(``Bidirectional``) all go through :func:`build`, so they bind, check and report in one way:
one-line :class:`~fnn.core.errors.ConfigError` messages that start with the key path.

>>> import fnn
>>> from fnn.core import spec
>>> spec.build("Dense", {"units": 3, "activation": "relu"}).spec
LayerSpec(class_name='Dense', config={'units': 3, 'activation': 'relu'})
>>> spec.build("serial", {"layers": [fnn.LayerSpec("Flatten", {})]}).spec.config["layers"]
(<fnn Flatten 'flatten'>,)
>>> spec.build("Dense", {"units": True}, path="model.layers[2]")
Traceback (most recent call last):
...
fnn.core.errors.ConfigError: model.layers[2].units: expected int, got True (bool).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from fnn.core.errors import ConfigError, FnnError, bounded_repr, closest
from fnn.core.layer import (
    Layer,
    LayerSpec,
    get_layer_factory,
    is_layer_typed,
    registered_layers,
)

__all__ = ["build", "describe", "full_arguments", "join_path", "rebuild"]

# Keras-style arguments that ``register_layer`` pops itself unless the factory takes them.
_KERAS_INPUT = ("input_shape", "input_dim")
_SIMPLE_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str}

# Turns a raw entry of some format into ``(class_name, arguments)``; ``build`` calls it for
# values of layer-typed parameters (``*layers``, ``layer: Layer``) that are not layers yet.
ParseLayer = Callable[[str, Any], tuple[str, Mapping[str, Any]]]


def join_path(path: str, key: str | int) -> str:
    """``path`` extended by a mapping key (``a.b``) or a list index (``a[0]``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if len(key) > _MAX_KEY or not key.isprintable():  # a YAML key can be any text
        key = bounded_repr(key, _MAX_KEY)
    return f"{path}.{key}" if path else key


# At most this many characters of one key in a key path.
_MAX_KEY = 60


def describe(value: Any) -> str:
    """``"got 'ten' (str)"``: a value and its type for messages (None reads ``null``); the
    value's repr is bounded (:func:`fnn.core.errors.bounded_repr`)."""
    kind = type(value).__name__ if value is not None else "null"
    return f"got {bounded_repr(value)} ({kind})"


def _at(path: str, message: str) -> str:
    return f"{path}: {message}" if path else message


def _annotation(param: inspect.Parameter) -> str:
    annotation = param.annotation
    if annotation is param.empty:
        return ""
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _check_type(path: str, param: inspect.Parameter, value: Any) -> None:
    """``int``/``float``/``bool``/``str`` annotations (``| None`` allowed); a bool is no int.
    ``None`` always passes: the factory decides what it means."""
    text = _annotation(param)
    names = [t.strip() for t in text.split("|") if t.strip() != "None"]
    if value is None or len(names) != 1 or names[0] not in _SIMPLE_TYPES:
        return
    kind = _SIMPLE_TYPES[names[0]]
    if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
        raise ConfigError(f"{path}: expected {text}, {describe(value)}.")


def _layer_value(path: str, value: Any, parse: ParseLayer | None) -> Any:
    if isinstance(value, Layer | LayerSpec) or value is None:
        return value
    if parse is None:
        raise ConfigError(f"{path}: expected a layer, {describe(value)}.")
    class_name, arguments = parse(path, value)
    return LayerSpec(class_name, arguments)


def _build_nested(path: str, value: Any, options: dict[str, Any]) -> Any:
    """``value`` with every ``LayerSpec`` inside it built with ``build(..., **options)``
    (inside lists, tuples and mappings too)."""
    if isinstance(value, LayerSpec):
        return build(value.class_name, value.config, path=path, **options)
    if isinstance(value, list | tuple):
        items = [_build_nested(join_path(path, i), v, options) for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        return {k: _build_nested(join_path(path, k), v, options) for k, v in value.items()}
    return value


def _keras_extra(factory) -> tuple[str, ...]:
    """Keras arguments that ``register_layer`` takes itself for this factory."""
    extra = _KERAS_INPUT + (("dtype",) if getattr(factory, "takes_dtype", False) else ())
    return tuple(k for k in extra if k not in factory.signature.parameters)


def _valid_arguments(factory) -> list[str]:
    return [*factory.signature.parameters, *_keras_extra(factory)]


def _unknown(path, class_name, keys, factory, source) -> ConfigError:
    valid = _valid_arguments(factory)
    hint = closest(keys[0], valid)
    listing = f"Valid arguments: {', '.join(valid)}."
    # A file may come from another version: list every key it does not know. A hand-written
    # config names the first one by its key path.
    if source:
        return ConfigError(
            _at(path, f"{class_name}: unknown {source} arguments {sorted(keys)}.{hint} {listing}")
        )
    return ConfigError(
        f"{join_path(path, keys[0])}: unknown argument of {class_name}.{hint} {listing}"
    )


def _call_arguments(signature: inspect.Signature, bound: dict[str, Any]) -> tuple[list, dict]:
    """``bound`` (by parameter name) as the ``(args, kwargs)`` of a call: parameters before
    a non-empty ``*layers`` are passed by position, their defaults filled in where missing."""
    args: list = []
    kwargs: dict = {}
    params = list(signature.parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind is p.VAR_POSITIONAL), None)
    by_position = star is not None and bool(bound.get(params[star].name))
    for i, param in enumerate(params):
        given = param.name in bound
        value = bound.get(param.name, param.default)
        if param.kind is param.VAR_POSITIONAL:
            args.extend(value if given else ())
        elif param.kind is param.VAR_KEYWORD:
            kwargs.update(value if given else {})
        elif param.kind is param.POSITIONAL_ONLY or (by_position and i < star):
            if given or value is not param.empty:
                args.append(value)
        elif given:
            kwargs[param.name] = value
    return args, kwargs


def _argument(
    path: str, param: inspect.Parameter, value: Any, parse: ParseLayer | None, check: bool
) -> Any:
    """One argument checked against its parameter; raw layer entries parsed to specs."""
    layer_typed = is_layer_typed(param)
    if param.kind is param.VAR_POSITIONAL:
        if not isinstance(value, list | tuple):
            what = "a list of layers" if layer_typed else "a list"
            raise ConfigError(f"{path}: expected {what}, {describe(value)}.")
        items = []
        for i, item in enumerate(value):
            if layer_typed:
                item = _layer_value(join_path(path, i), item, parse)
            elif check:
                _check_type(join_path(path, i), param, item)
            items.append(item)
        return items
    if param.kind is param.VAR_KEYWORD:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of arguments, {describe(value)}.")
        return value
    if layer_typed:
        return _layer_value(path, value, parse)
    if check:
        _check_type(path, param, value)
    return value


def build(
    class_name: str,
    arguments: Mapping[str, Any],
    *,
    path: str = "",
    parse_layer: ParseLayer | None = None,
    source: str = "",
    check_types: bool = True,
) -> Layer:
    """The layer of the registered factory ``class_name`` called with ``arguments``.

    ``arguments`` are by parameter name as in ``Layer.spec.config`` (``*layers`` as a list,
    ``**options`` as a mapping, Keras's ``input_shape=`` too). ``LayerSpec`` values anywhere
    in them are built recursively; values of layer-typed parameters that are neither a
    ``Layer`` nor a ``LayerSpec`` go through ``parse_layer(path, value) -> (class_name,
    arguments)`` first when it is given (the YAML entry form). Checks: the factory is
    registered, every argument is known (the closest valid one suggested), ``int``,
    ``float``, ``bool`` and ``str`` annotations hold (a bool is not an int), required
    arguments are present. Every error is a one-line ``ConfigError`` that starts with
    ``path`` (the key path of this spec, e.g. ``model.layers[2]``; arguments add ``.units``,
    list items ``[0]``); a factory's own error is rewritten to start with that path too.
    ``source`` (e.g. ``"saved"``) names where the arguments came from in the message for
    unknown ones, which then lists them all. ``check_types=False`` skips the annotation
    checks, for arguments a factory already accepted once (a saved file, a wrapper
    rebuilding its child): the factory stays the judge, so what loaded before still loads.
    """
    options = {"parse_layer": parse_layer, "source": source, "check_types": check_types}
    if class_name not in registered_layers():
        valid = registered_layers()
        raise ConfigError(
            _at(
                path,
                f"unknown layer {bounded_repr(class_name)}."
                f"{closest(str(class_name)[:100], valid)} Registered layers: "
                f"{', '.join(valid)}. Custom layers must be registered with "
                "@fnn.register_layer before they are built or loaded.",
            )
        )
    factory = get_layer_factory(class_name)
    signature: inspect.Signature = factory.signature
    if not isinstance(arguments, Mapping):
        raise ConfigError(
            _at(
                path, f"expected the arguments of {class_name} as a mapping, {describe(arguments)}."
            )
        )
    params = signature.parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())  # a registered class
    extra = _keras_extra(factory)
    unknown = [str(k) for k in arguments if k not in params and k not in extra]
    if unknown and not open_ended:
        raise _unknown(path, class_name, unknown, factory, source)
    bound: dict[str, Any] = {}
    keras_input: dict[str, Any] = {}
    for key, value in arguments.items():
        sub = join_path(path, key)
        param = params.get(key)
        if param is None:  # input_shape / input_dim / dtype, checked by register_layer
            keras_input[key] = value
            continue
        value = _argument(sub, param, value, parse_layer, check_types)
        bound[key] = _build_nested(sub, value, options)
    missing = [
        name
        for name, p in params.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and name not in bound
    ]
    if missing:
        raise ConfigError(
            f"{join_path(path, missing[0])}: required argument of {class_name} is missing."
        )
    args, kwargs = _call_arguments(signature, bound)
    try:
        return factory(*args, **kwargs, **keras_input)
    except FnnError as err:
        raise ConfigError(_prefixed(path, arguments, str(err))) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(_at(path, f"{class_name}: {err}")) from None


def _prefixed(path: str, arguments: Mapping, message: str) -> str:
    # "dense: expected units to be a positive int, got -3." -> "<path>.units: expected ...";
    # without a path the factory's own message (it names the layer) stays as it is.
    first = message.splitlines()[0]
    if not path:
        return first
    first = re.sub(r"^[A-Za-z_][\w.-]*: ", "", first)
    named = [k for k in arguments if re.search(rf"\b{re.escape(str(k))}\b", first)]
    return f"{join_path(path, named[0]) if len(named) == 1 else path}: {first}"


def rebuild(layer: Layer, **changes: Any) -> Layer:
    """``layer`` built again from its spec with ``changes`` to its arguments, under the same
    name: a variant such as a container with one child replaced, or a layer whose argument
    is a traced value (a sweep member's dropout rate). The factory judges the new values
    (no annotation checks: a traced value is no ``float``).

    >>> import fnn
    >>> drop = rebuild(fnn.layers.Dropout(0.2), rate=0.5)
    >>> drop.spec.config["rate"], drop.name, drop.explicitly_named
    (0.5, 'dropout', False)
    """
    if layer.spec is None:
        raise ConfigError(f"{layer.name}: cannot rebuild a layer without a spec (unregistered).")
    arguments = full_arguments(layer.spec)
    if "name" not in layer.spec.config:  # a default name stays implicit (suffixed in containers)
        arguments.pop("name", None)
    return build(layer.spec.class_name, {**arguments, **changes}, check_types=False)


def full_arguments(spec: LayerSpec) -> dict[str, Any]:
    """Every argument of ``spec``'s factory (the given ones, then defaults), without the
    Keras ``input_shape`` that ``register_layer`` recorded (its ``dtype`` policy kept):
    what rebuilding a variant of a layer starts from
    (``build(spec.class_name, {**full_arguments(spec), ...})``)."""
    factory = get_layer_factory(spec.class_name)
    signature = factory.signature
    out: dict[str, Any] = {}
    if "dtype" in _keras_extra(factory) and "dtype" in spec.config:
        out["dtype"] = spec.config["dtype"]
    for name, param in signature.parameters.items():
        if name in spec.config:
            out[name] = spec.config[name]
        elif param.kind is param.VAR_POSITIONAL:
            out[name] = ()
        elif param.kind is param.VAR_KEYWORD:
            out[name] = {}
        elif param.default is not param.empty:
            out[name] = param.default
    return out
