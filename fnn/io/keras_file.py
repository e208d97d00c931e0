"""Keras 3 ``.keras`` archives and legacy Keras ``.h5`` model files, read and written
without Keras and without running stored code.

A ``.keras`` file is a zip of ``config.json`` (the architecture), ``metadata.json`` and
``model.weights.h5`` (each layer's arrays under ``layers/<name>/vars/0..n``, sublayers in
their own groups such as ``layers/lstm/cell/vars``). A legacy ``.h5`` file keeps the
architecture in the ``model_config`` attribute and each layer's arrays under
``model_weights/<name>`` in the order its ``weight_names`` attribute lists. JSON is
decoded with :mod:`json` and arrays read with h5py: nothing is unpickled, so Lambda
layers (Python code) and custom classes are refused with a :class:`~fnn.core.errors.ConfigError`
that lists every one of them.

Keras configs become fnn layers through one table (``_NEUTRAL``): a Keras config key that
an fnn factory takes is passed on (lists as tuples, initializers by name); a key fnn has no
argument for is dropped only at a value that leaves the model's math unchanged
(``data_format="channels_last"``, ``trainable``, ``seed``; regularizers of layers other than
``Dense``, which takes them, at ``None``);
any other value is an error naming the layer, the key and the value. Writing is the same
table backwards. The layers are then built by :func:`fnn.core.spec.build`, the one
spec-to-layer builder.

>>> from fnn.io import keras_file
>>> keras_file.is_keras_path("model.keras"), keras_file.is_keras_path("runs/best")
(True, False)
>>> keras_file.layer_from_keras({"class_name": "Dense", "config": {
...     "name": "out", "units": 3, "activation": "softmax", "kernel_regularizer": None}}).spec
LayerSpec(class_name='Dense', config={'units': 3, 'activation': 'softmax', 'kernel_regularizer': None, 'name': 'out'})
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import fnn.layers  # noqa: F401  (registers the catalogue that configs are built from)
from fnn.core import activations, initializers, regularizers, spec
from fnn.core import graph as graph_lib
from fnn.core.combinators import child_names
from fnn.core.errors import ConfigError
from fnn.core.layer import Layer, LayerSpec, get_layer_factory

__all__ = [
    "KERAS_LAYERS",
    "KerasModelFile",
    "functional_graph",
    "is_keras_path",
    "layer_from_keras",
    "layer_to_keras",
    "read_model",
    "split_weights",
    "write_model",
]

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

# The registered fnn layers that Keras 3 has under the same class name and arguments.
KERAS_LAYERS = (
    "Activation", "Add", "Average", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "BatchNormalization", "Bidirectional", "Concatenate", "Conv1D",
    "Conv1DTranspose", "Conv2D", "Conv2DTranspose", "Conv3D", "Conv3DTranspose",
    "Cropping1D", "Cropping2D", "Cropping3D", "Dense", "DepthwiseConv1D", "ELU", "LeakyReLU",
    "ReLU", "Softmax",
    "DepthwiseConv2D", "Dropout", "Embedding", "Flatten", "GRU", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GroupNormalization", "LSTM",
    "LayerNormalization", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "Maximum",
    "MultiHeadAttention", "Multiply", "RMSNormalization", "Reshape", "SeparableConv1D",
    "SeparableConv2D", "SimpleRNN", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
)  # fmt: skip


def _any(value: Any) -> bool:
    return True


def _equals(*allowed: Any):
    return lambda value: any(value == a for a in allowed)


# Keras config keys without an fnn argument, and the values at which dropping them leaves
# the model's math unchanged. ``trainable`` (fnn has no frozen layers), ``seed`` (random
# streams differ anyway) and execution hints (``unroll``, ``implementation``) never change
# what a loaded model computes; the rest must hold their neutral value.
_NEUTRAL: dict[str, Any] = {
    "trainable": _any,
    "seed": _any,
    "unroll": _any,
    "implementation": _any,
    "use_cudnn": _any,
    "renorm_momentum": _any,
    "lora_alpha": _any,
    "input_length": _any,  # Keras 2 Embedding
    "data_format": _equals("channels_last"),
    "stateful": _equals(False),
    "time_major": _equals(False),
    "renorm": _equals(False),
    "synchronized": _equals(False),
    "rms_scaling": _equals(False),
    "use_gate": _equals(False),
    "sparse": _equals(False),
    "ragged": _equals(False),
    "renorm_clipping": _equals(None),
    "quantization_config": _equals(None),
    "sliding_window": _equals(None),
    "lora_rank": _equals(None),
    "weights": _equals(None),
    "attention_axes": _equals(None, [1], (1,)),
}
_NEUTRAL_PATTERN = re.compile(r".*_(regularizer|constraint)$")  # null only

# fnn-only arguments and the value Keras's layer behaves as (writing refuses others).
_FNN_ONLY = {
    "return_mask": False,
    "axis_name": None,
    "use_causal_mask": False,
    "return_attention_scores": False,
    "dtype": None,
}
_FNN_ONLY_BY_CLASS = {("UpSampling1D", "interpolation"): "nearest",
                      ("UpSampling3D", "interpolation"): "nearest"}  # fmt: skip

# The h5 groups (below ``layers/<name>``) that hold a layer's arrays, in Keras's
# ``get_weights`` order; a layer not listed keeps its arrays in its own ``vars``.
_GROUPS = {
    "LSTM": ("cell",),
    "GRU": ("cell",),
    "SimpleRNN": ("cell",),
    "Bidirectional": ("forward_layer/cell", "backward_layer/cell"),
    "MultiHeadAttention": ("query_dense", "key_dense", "value_dense", "output_dense"),
}

_FLOAT32 = ("float32", None)

# Keras layers called on one list of tensors (fnn's graph stores them as positional args).
_MERGE = ("Add", "Average", "Concatenate", "Maximum", "Multiply")


def is_keras_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a Keras model file (``.keras``, ``.h5``, ``.hdf5``)."""
    return Path(path).name.lower().endswith(KERAS_SUFFIXES)


# ---------------------------------------------------------------------------------------
# Keras config -> fnn layer


def _snake(name: str) -> str:
    """Keras's snake case of a class name: ``Conv2DTranspose`` -> ``conv2d_transpose``,
    ``SimpleRNN`` -> ``simple_rnn`` (it names initializers and the h5 weight groups)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _group_names(class_names: Sequence[str]) -> list[str]:
    """The h5 groups of a model's layers under ``layers/``: Keras addresses them by the
    snake-cased class name, ``_1``, ``_2`` for repeats in order (not by layer name)."""
    used: dict[str, int] = {}
    out = []
    for class_name in class_names:
        base = _snake(class_name)
        used[base] = used.get(base, -1) + 1
        out.append(f"{base}_{used[base]}" if used[base] else base)
    return out


def _initializer(value: Any) -> str | None:
    """An fnn initializer name for a Keras initializer entry, or None (use fnn's default:
    initializers only matter before the weights are loaded)."""
    if isinstance(value, Mapping):
        value = value.get("class_name")
    if not isinstance(value, str):
        return None
    name = value if value in initializers.names() else _snake(value)
    return name if name in initializers.names() else None


# Keras dtype policies other than float32 that a layer's ``dtype=`` takes.
_POLICIES = ("mixed_bfloat16", "mixed_float16", "bfloat16", "float16", "float64")


def _mixes_policies(entries: Sequence[Mapping[str, Any]]) -> bool:
    """True when a layer of these Keras entries has a dtype policy other than float32."""
    names = {
        _dtype_name((e.get("config") or {}).get("dtype"))
        for e in entries
        if e.get("class_name") != "InputLayer"  # an input's dtype is its data's
    }
    return bool(names - set(_FLOAT32))


def _dtype_name(value: Any) -> str | None:
    if isinstance(value, Mapping):  # DTypePolicy {"config": {"name": "float32"}}
        value = (value.get("config") or {}).get("name")
    return value if value is None or isinstance(value, str) else repr(value)


def _is_custom(config: Mapping[str, Any]) -> bool:
    module = config.get("module")
    registered = config.get("registered_name")
    if module is not None and not str(module).startswith("keras"):
        return True
    return registered not in (None, config.get("class_name"), "Functional")


def _tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def _layer_name(config: Mapping[str, Any]) -> str:
    cfg = config.get("config")
    name = cfg.get("name") if isinstance(cfg, Mapping) else None
    return f"{name!r} ({config.get('class_name')})" if name else repr(config.get("class_name"))


def unsupported_layers(config: Any) -> list[str]:
    """Every layer entry in a Keras config (nested ones too) that fnn cannot build, as
    ``"'name' (ClassName): why"``."""
    out: list[str] = []

    def visit(entry: Any, top: bool = False) -> None:
        if not isinstance(entry, Mapping) or "class_name" not in entry:
            return
        class_name = entry["class_name"]
        cfg = entry.get("config") if isinstance(entry.get("config"), Mapping) else {}
        if class_name in ("Sequential", "Functional", "Model") and not _is_custom(entry):
            if not top:
                out.append(f"{_layer_name(entry)}: a model nested in the model (flatten it)")
                return
            for child in cfg.get("layers", ()):
                visit(child)
            return
        if class_name == "InputLayer":
            return
        if class_name == "Lambda":
            out.append(f"{_layer_name(entry)}: holds Python code, which fnn never runs")
        elif _is_custom(entry):
            who = entry.get("registered_name") or entry.get("module")
            out.append(f"{_layer_name(entry)}: a custom object ({who}) without an fnn layer")
        elif class_name not in KERAS_LAYERS:
            out.append(f"{_layer_name(entry)}: not in fnn's layer catalogue")
        for key in ("layer", "backward_layer"):
            visit(cfg.get(key))

    visit(config, top=True)
    return out


def _check_supported(config: Any, where: str) -> None:
    missing = unsupported_layers(config)
    if missing:
        raise ConfigError(
            f"{where}: cannot load {len(missing)} layer(s): {'; '.join(missing)}. fnn loads "
            f"these Keras layers: {', '.join(KERAS_LAYERS)}; rebuild other layers in fnn "
            "(a factory decorated with @fnn.register_layer) and move the weights with "
            "set_weights."
        )


def _arguments(
    class_name: str, config: Mapping[str, Any], where: str, keep_float32: bool = False
) -> dict[str, Any]:
    """fnn factory arguments for one Keras layer config (``_NEUTRAL`` keys dropped;
    ``dtype="float32"`` too unless ``keep_float32``)."""
    signature = get_layer_factory(class_name).signature.parameters
    out: dict[str, Any] = {}
    problems = []
    for key, value in config.items():
        if key in ("name", "batch_input_shape", "batch_shape"):
            continue
        if key == "dtype":
            dtype = _dtype_name(value)
            if dtype is None or (dtype in _FLOAT32 and not keep_float32):
                continue
            factory = get_layer_factory(class_name)
            takes_dtype = "dtype" in signature or getattr(factory, "takes_dtype", False)
            if takes_dtype and (dtype in _POLICIES or dtype in _FLOAT32):
                out["dtype"] = dtype
                continue
            problems.append(f"dtype={dtype!r} (fnn loads the policies {', '.join(_POLICIES)})")
        elif key in signature:
            if key.endswith("_initializer"):
                name = _initializer(value)
                if name is not None:
                    out[key] = name
            elif key in ("layer", "backward_layer") and isinstance(value, Mapping):
                out[key] = layer_from_keras(
                    value, where=f"{where}.{key}", keep_float32=keep_float32
                )
            elif key == "activation" and not (value is None or isinstance(value, str)):
                problems.append(f"activation={value!r} (only activation names load)")
            else:
                out[key] = _tuples(value)
        elif key in _NEUTRAL:
            if not _NEUTRAL[key](value):
                problems.append(f"{key}={value!r} (fnn supports only the default)")
        elif _NEUTRAL_PATTERN.match(key):
            if value is not None:
                problems.append(f"{key}={value!r} (fnn has no {key.rsplit('_', 1)[1]}s)")
        else:
            problems.append(f"{key}={value!r} (no fnn argument)")
    if problems:
        raise ConfigError(
            f"{where}: cannot load Keras {class_name}: {'; '.join(problems)}. Change these "
            "settings in Keras and save again, or rebuild the layer in fnn."
        )
    return out


def layer_from_keras(
    entry: Mapping[str, Any], where: str = "", keep_float32: bool = False
) -> Layer:
    """The fnn layer for one Keras layer entry ``{"class_name": ..., "config": {...}}``
    (from ``config.json`` or a legacy ``model_config``), built by
    :func:`fnn.core.spec.build` under the Keras layer's name. ``keep_float32``: a float32
    dtype policy is kept as the layer's own (in a model that mixes policies, e.g. a
    float32 softmax after bfloat16 layers); otherwise the layer gets fnn's default."""
    _check_supported(entry, where or "keras file")
    class_name, config = entry["class_name"], entry.get("config") or {}
    name = config.get("name")
    where = where or (name or class_name)
    arguments = _arguments(class_name, config, where, keep_float32)
    if name is not None:
        arguments["name"] = name
    if class_name == "Activation" and arguments.get("activation") not in activations.names():
        raise ConfigError(f"{where}: unknown activation {arguments.get('activation')!r}.")
    return spec.build(class_name, arguments, path=where, source="Keras file")


# ---------------------------------------------------------------------------------------
# fnn layer -> Keras config


def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, Layer):
        return layer_to_keras(value, value.name, where=where)
    if isinstance(value, LayerSpec):
        return layer_to_keras(spec.build(value.class_name, value.config), where=where)
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, type | np.dtype) or type(value).__name__ == "_ScalarMeta":
        return np.dtype(value).name
    if isinstance(value, regularizers.L1 | regularizers.L2 | regularizers.L1L2):
        entry = regularizers.config_of(value)
        return {"module": "keras.regularizers", **entry, "registered_name": None}
    if callable(value):
        for table in (activations._BY_NAME, initializers._BY_NAME):
            for name, fn in table.items():
                if fn is value:
                    return name
    raise ConfigError(
        f"{where}: cannot write {value!r} to a Keras file; expected JSON values or "
        "activation/initializer names."
    )


def layer_to_keras(layer: Layer, name: str | None = None, *, where: str = "") -> dict:
    """The Keras ``config.json`` entry of an fnn layer built by a registered factory that
    Keras also has (``KERAS_LAYERS``), under ``name`` (default: the layer's)."""
    name = name or layer.name
    where = where or name
    class_name = layer.spec.class_name if layer.spec is not None else None
    if class_name not in KERAS_LAYERS:
        raise ConfigError(
            f"{where}: cannot write {class_name or 'an unregistered layer'} to a Keras file; "
            f"Keras has no such layer. Writable layers: {', '.join(KERAS_LAYERS)}."
        )
    config: dict[str, Any] = {"name": name}
    # Every argument, defaults included: Keras's defaults and required arguments differ.
    for key, value in spec.full_arguments(layer.spec).items():
        if key in ("name", "input_shape"):
            continue
        neutral = _FNN_ONLY_BY_CLASS.get((class_name, key), _FNN_ONLY.get(key, ...))
        if neutral is not ...:
            if key == "dtype" and value is not None:
                config["dtype"] = _json_value(value, f"{where}.dtype")
            elif value != neutral:
                raise ConfigError(
                    f"{where}: cannot write {class_name}({key}={value!r}) to a Keras file; "
                    f"Keras's {class_name} has no {key} (only {key}={neutral!r} can be written)."
                )
            continue
        config[key] = _json_value(value, f"{where}.{key}")
    return {"module": "keras.layers", "class_name": class_name, "config": config,
            "registered_name": None}  # fmt: skip


# ---------------------------------------------------------------------------------------
# Reading files


@dataclasses.dataclass(frozen=True)
class KerasModelFile:
    """A Keras model file read back: ``kind`` ("Sequential" or "Functional"), the model
    ``name``, its fnn ``layers`` (Sequential) and the abstract ``inputs`` (batch axis 1),
    the arrays of each layer by name in Keras's ``get_weights`` order, and the raw
    Functional ``graph`` config (``layers`` with ``inbound_nodes``, ``input_layers``,
    ``output_layers``) with its fnn layers by name in ``graph_layers``."""

    kind: str
    name: str
    layers: list[Layer]
    inputs: tuple
    weights: dict[str, list[np.ndarray]]
    graph: dict | None = None
    graph_layers: dict[str, Layer] | None = None
    compile_config: dict | None = None  # Keras 3's compile settings, as the file has them


def _bad_file(path, why: str) -> ConfigError:
    return ConfigError(
        f"load_model: cannot read {os.fspath(path)!r}: expected a Keras model file (a .keras "
        f"zip with config.json and model.weights.h5, or a legacy .h5 with model_config), {why}."
    )


def _h5py(path):
    try:
        import h5py
    except ImportError:
        raise ConfigError(
            f"{os.fspath(path)!r}: reading and writing Keras model files needs h5py "
            "(pip install 'fnn[h5]')."
        ) from None
    return h5py


def _array(dataset, path, where: str) -> np.ndarray:
    value = np.asarray(dataset[()])
    if value.dtype.kind not in "fiub":
        raise _bad_file(path, f"got a non-numeric array at {where} ({value.dtype})")
    return value


def _numbered(group) -> list:
    keys = list(group)
    if not all(k.isdigit() for k in keys):
        return []
    return [group[k] for k in sorted(keys, key=int)]


def _keras3_arrays(h5, class_name: str, name: str, path) -> list[np.ndarray]:
    root = h5.get("layers") or h5.get("_layer_checkpoint_dependencies")
    if root is None or name not in root:
        return []
    out = []
    for sub in _GROUPS.get(class_name, ("",)):
        if sub and sub not in root[name]:
            raise _bad_file(path, f"got no group layers/{name}/{sub} for its {class_name}")
        group = root[name][sub] if sub else root[name]
        if "vars" in group:
            where = f"layers/{name}/{sub + '/' if sub else ''}vars"
            out.extend(_array(d, path, where) for d in _numbered(group["vars"]))
    return out


def _legacy_arrays(h5, name: str, path) -> list[np.ndarray]:
    root = h5.get("model_weights", h5)
    if name not in root:
        return []
    group = root[name]
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])
    ]
    return [_array(group[n], path, f"model_weights/{name}/{n}") for n in names]


def _input_struct(shape: Sequence, dtype: Any) -> jax.ShapeDtypeStruct:
    shape = tuple(1 if d is None else int(d) for d in shape)
    return jax.ShapeDtypeStruct(shape, np.dtype(dtype or "float32"))


def _sequential(config: Mapping, where: str):
    entries = list(config.get("layers") or [])
    shape = dtype = None
    if entries and entries[0].get("class_name") == "InputLayer":
        cfg = entries.pop(0).get("config") or {}
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        dtype = cfg.get("dtype")
    if shape is None and entries:
        cfg = entries[0].get("config") or {}
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        dtype = _dtype_name(cfg.get("dtype"))
        if shape is None:
            shape = (entries[0].get("build_config") or {}).get("input_shape")
    if shape is None:
        shape = config.get("build_input_shape") or None
    if shape is None:
        raise ConfigError(
            f"{where}: the Keras Sequential has no input shape (it was saved before it was "
            "built); build it in Keras (keras.Input(shape) first) and save again."
        )
    mixed = _mixes_policies(entries)
    layers = [layer_from_keras(e, keep_float32=mixed) for e in entries]
    if (
        layers
        and layers[0].spec.class_name == "Embedding"
        and np.dtype(dtype or "float32").kind == "f"
    ):
        dtype = "int32"  # Keras casts float ids; fnn's Embedding takes integer ids
    return layers, (_input_struct(shape, dtype),)


def _open(path):
    """``(model config, h5 file, keras3 layout?)`` of a Keras file."""
    h5py = _h5py(path)
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"load_model: cannot read {os.fspath(path)!r}: no such file.")
    if p.name.lower().endswith(".keras"):
        try:
            with zipfile.ZipFile(p) as archive:
                names = set(archive.namelist())
                missing = {"config.json", "model.weights.h5"} - names
                if missing:
                    raise _bad_file(path, f"got a zip without {', '.join(sorted(missing))}")
                config = json.loads(archive.read("config.json"))
                weights = archive.read("model.weights.h5")
        except (
            zipfile.BadZipFile,
            EOFError,
            OSError,
            json.JSONDecodeError,
            UnicodeDecodeError,
        ) as err:
            raise _bad_file(path, f"got an unreadable archive ({err})") from None
        try:
            return config, h5py.File(io.BytesIO(weights), "r"), True
        except OSError as err:
            raise _bad_file(path, f"got an unreadable model.weights.h5 ({err})") from None
    try:
        h5 = h5py.File(p, "r")
    except OSError as err:
        raise _bad_file(path, f"got an unreadable HDF5 file ({err})") from None
    raw = h5.attrs.get("model_config")
    if raw is None:
        h5.close()
        raise _bad_file(path, "got an HDF5 file without model_config (a weights-only file?)")
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except json.JSONDecodeError as err:
        raise _bad_file(path, f"got an unreadable model_config ({err})") from None
    return config, h5, False


def read_model(path: str | os.PathLike) -> KerasModelFile:
    """Read a Keras 3 ``.keras`` archive or a legacy ``.h5`` full-model file: the fnn
    layers (every unsupported layer listed in one ``ConfigError``), the input shapes and
    each layer's arrays in Keras's ``get_weights`` order. Nothing is unpickled."""
    config, h5, keras3 = _open(path)
    with h5:
        where = os.path.basename(os.fspath(path))
        if not isinstance(config, Mapping) or "class_name" not in config:
            raise _bad_file(path, "got a config.json without a model class_name")
        class_name = config["class_name"]
        inner = config.get("config") or {}
        if class_name not in ("Sequential", "Functional", "Model") or _is_custom(config):
            raise ConfigError(
                f"{where}: cannot load a Keras {class_name} model ({config.get('registered_name')}): "
                "fnn loads Sequential and functional models whose layers are in its catalogue."
            )
        _check_supported(config, where)
        name = inner.get("name") or class_name.lower()
        compiled = config.get("compile_config") if isinstance(config, Mapping) else None
        entries = [e for e in inner.get("layers") or [] if e.get("class_name") != "InputLayer"]
        weights = {}
        all_entries = inner.get("layers") or []
        groups = dict(
            zip(map(id, all_entries), _group_names([e["class_name"] for e in all_entries]))
        )
        if class_name == "Sequential":  # Sequential.layers leaves its InputLayer out
            groups = dict(zip(map(id, entries), _group_names([e["class_name"] for e in entries])))
        for entry in entries:
            layer_name = (entry.get("config") or {}).get("name")
            if keras3:
                arrays = _keras3_arrays(h5, entry["class_name"], groups[id(entry)], path)
            else:
                arrays = _legacy_arrays(h5, layer_name, path)
            weights[layer_name] = arrays
        if class_name == "Sequential":
            layers, inputs = _sequential(inner, where)
            return KerasModelFile(
                "Sequential", name, layers, inputs, weights, compile_config=compiled
            )
        mixed = _mixes_policies(entries)
        graph_layers = {
            e["config"]["name"]: layer_from_keras(e, keep_float32=mixed) for e in entries
        }
        return KerasModelFile(
            "Functional", name, [], (), weights, dict(inner), graph_layers, compiled
        )


def _is_keras_tensor(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("class_name") == "__keras_tensor__"


def _node_call(node: Any, lookup) -> tuple[list, dict]:
    """``(args, kwargs)`` of one Keras inbound node, Keras tensors replaced by ``lookup``
    of their ``(layer, node, index)`` history; ``None`` keyword values (``mask=None``)
    dropped."""

    def fill(value):
        if _is_keras_tensor(value):
            return lookup(tuple(value["config"]["keras_history"]))
        if isinstance(value, list | tuple):
            return [fill(v) for v in value]
        if isinstance(value, Mapping):
            return {k: fill(v) for k, v in value.items()}
        return value

    if isinstance(node, Mapping):  # Keras 3: {"args": [...], "kwargs": {...}}
        kwargs = {k: v for k, v in fill(node.get("kwargs") or {}).items() if v is not None}
        return fill(list(node.get("args") or [])), kwargs
    # Keras 2: [[layer, node, index, kwargs], ...]; several entries are one list argument.
    tensors = [lookup((e[0], e[1], e[2])) for e in node]
    kwargs = dict(node[0][3]) if node and len(node[0]) > 3 else {}
    return ([tensors] if len(tensors) > 1 else tensors), kwargs


def _refs(value: Any, lookup) -> Any:
    """``input_layers``/``output_layers`` (one ``[layer, node, index]``, a list or a dict
    of them) with each reference replaced by ``lookup`` of it, structure kept."""
    if isinstance(value, Mapping):
        return {k: _refs(v, lookup) for k, v in value.items()}
    if isinstance(value, list | tuple) and value and isinstance(value[0], str):
        return lookup(tuple(value[:3]))
    return [_refs(v, lookup) for v in value or ()]


def functional_graph(loaded: KerasModelFile, Input, where: str) -> tuple[Any, Any]:
    """Symbolic ``(inputs, outputs)`` of a Keras functional model: its InputLayers as
    ``Input(batch_shape=..., dtype=..., name=...)`` tensors and every inbound node called on
    them again with the fnn layers (so ``fnn.Model(inputs, outputs)`` rebuilds it)."""
    graph = loaded.graph or {}
    entries = list(graph.get("layers") or [])
    # Keras casts float ids for an Embedding; fnn's Embedding takes integer ids.
    to_embedding = set()
    for e in entries:
        if e.get("class_name") == "Embedding":
            text = json.dumps(e.get("inbound_nodes") or [])
            to_embedding.update(re.findall(r'"keras_history": \["([^"]+)"', text))
    tensors: dict[tuple, Any] = {}

    def lookup(key):
        key = (key[0], int(key[1]), int(key[2]))
        if key not in tensors:
            raise ConfigError(f"{where}: the graph uses {key[0]!r} before it is defined.")
        return tensors[key]

    for e in entries:
        cfg = e.get("config") or {}
        name = cfg.get("name") or e.get("name")
        if e.get("class_name") == "InputLayer":
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            dtype = cfg.get("dtype") or "float32"
            if name in to_embedding and np.dtype(dtype).kind == "f":
                dtype = "int32"
            tensors[(name, 0, 0)] = Input(batch_shape=tuple(shape), dtype=dtype, name=name)
            continue
        for n, node in enumerate(e.get("inbound_nodes") or []):
            args, kwargs = _node_call(node, lookup)
            out = loaded.graph_layers[name](*args, **kwargs)
            for i, t in enumerate(jax.tree.leaves(out)):
                tensors[(name, n, i)] = t
    return _refs(graph.get("input_layers"), lookup), _refs(graph.get("output_layers"), lookup)


def split_weights(names: Sequence[str], arrays: Sequence) -> dict[str, list]:
    """``{layer key: [its arrays]}`` from a model's ``weight_names()`` (``"dense/kernel"``)
    and ``get_weights()``, grouped by the first path component, order kept."""
    out: dict[str, list] = {}
    for name, array in zip(names, arrays, strict=True):
        out.setdefault(name.split("/", 1)[0], []).append(array)
    return out


def arrange_weights(
    names: Sequence[str], shapes: Sequence[tuple], by_layer: Mapping[str, list], where: str
) -> list:
    """The flat ``set_weights`` list for a model whose ``weight_names()`` are ``names``
    (of ``shapes``) from a Keras file's arrays by layer; ``ConfigError`` naming the layer
    for a missing layer, a wrong count or shape."""
    wanted = split_weights(names, list(zip(names, shapes, strict=True)))
    extra = sorted(k for k, v in by_layer.items() if v and k not in wanted)
    if extra:
        raise ConfigError(f"{where}: the file has arrays for layers the model lacks: {extra}.")
    out = []
    for key, entries in wanted.items():
        arrays = by_layer.get(key, [])
        if len(arrays) != len(entries):
            listing = ", ".join(n for n, _ in entries)
            raise ConfigError(
                f"{where}: layer {key!r} expected {len(entries)} arrays ({listing}), got "
                f"{len(arrays)} in the file (saved before the model was built?)."
            )
        for (n, shape), array in zip(entries, arrays, strict=True):
            if tuple(array.shape) != tuple(shape):
                raise ConfigError(
                    f"{where}: expected {n} of shape {tuple(shape)}, got {tuple(array.shape)} "
                    "in the file."
                )
            out.append(array)
    return out


# ---------------------------------------------------------------------------------------
# Writing files


def _input_layer(spec_: Any, name: str) -> dict:
    return _input_layer_shape([None, *spec_.shape[1:]], spec_.dtype, name)


def _input_layer_shape(shape: Sequence, dtype: Any, name: str) -> dict:
    return {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {
            "batch_shape": [None if d is None else int(d) for d in shape],
            "dtype": np.dtype(dtype).name,
            "sparse": False,
            "name": name,
        },
        "registered_name": None,
    }


def _write_arrays(
    h5, key: str, group: str, class_name: str, names: list[str], arrays: list
) -> None:
    layer = h5.require_group(f"layers/{group}")
    layer.require_group("vars").attrs["name"] = key
    groups = _GROUPS.get(class_name, ("",))
    # The first key below the layer (forward_lstm, query, ...) picks the group, in order.
    children = list(dict.fromkeys(n.split("/")[1] if n.count("/") > 1 else "" for n in names))
    if len(groups) > 1 and len(children) != len(groups):
        raise ConfigError(
            f"{key}: cannot write {class_name}: expected arrays for {len(groups)} sublayers "
            f"({', '.join(groups)}), got {children}."
        )
    counters: dict[str, int] = {}
    for name, array in zip(names, arrays, strict=True):
        child = name.split("/")[1] if name.count("/") > 1 else ""
        sub = groups[children.index(child)] if len(groups) > 1 else groups[0]
        target = layer.require_group(f"{sub}/vars" if sub else "vars")
        index = counters.get(sub, 0)
        counters[sub] = index + 1
        target.create_dataset(str(index), data=np.asarray(array))


def _history(ref: Mapping, graph: Mapping, keys: Sequence[str], names: Sequence[str]) -> list:
    """Keras's ``keras_history`` ``[layer, node, index]`` of a graph reference: an input is
    node 0 of its InputLayer; node ``j`` is the n-th call of its layer."""
    if "input" in ref:
        return [names[ref["input"]], 0, 0]
    nodes = graph["nodes"]
    layer = nodes[ref["node"]]["layer"]
    call = sum(1 for n in nodes[: ref["node"]] if n["layer"] == layer)
    return [keys[layer], call, int(ref["index"])]


def _functional_config(graph: Mapping, name: str, keys: Sequence[str]) -> dict:
    """The Keras ``Functional`` config of an fnn graph spec (``Functional(...).spec.config``):
    InputLayers, each layer with its ``inbound_nodes`` (tensor shapes by abstract
    evaluation), ``input_layers`` and ``output_layers`` in the graph's structure."""
    layers = list(graph["layers"])
    for layer, key in zip(layers, keys, strict=True):
        if layer.spec is not None and layer.spec.class_name in ("Functional", "Sequential"):
            raise ConfigError(
                f"{name}: cannot write layer {key!r} ({layer.spec.class_name}) to a Keras "
                "file: expected layers Keras has, got a model nested in the model; rebuild "
                "the outer model from the inner model's layers (flatten it)."
            )
    names = [s["name"] for s in graph["inputs"]]
    clash = sorted(set(names) & set(keys))
    if clash:
        raise ConfigError(
            f"{name}: cannot write a Keras file: expected distinct input and layer names, got "
            f"{clash} for both; name the inputs (fnn.Input(..., name=...)) differently."
        )
    symbols = [
        graph_lib.Tensor(tuple(s["shape"]), np.dtype(s["dtype"]), s["name"])
        for s in graph["inputs"]
    ]
    results: list[list] = []

    def symbol(ref):
        return symbols[ref["input"]] if "input" in ref else results[ref["node"]][ref["index"]]

    def keras_tensor(ref):
        t = symbol(ref)
        return {
            "class_name": "__keras_tensor__",
            "config": {
                "shape": list(t.shape),
                "dtype": np.dtype(t.dtype).name,
                "keras_history": _history(ref, graph, keys, names),
            },
        }

    inbound: list[list] = [[] for _ in layers]
    for node in graph["nodes"]:
        layer = layers[node["layer"]]
        args = graph_lib._fill(node["args"], symbol)
        kwargs = graph_lib._fill(node["kwargs"], symbol)
        shapes = graph_lib.infer(layer, tuple(args), kwargs, node["training"])
        results.append(
            [graph_lib.Tensor(s.shape, np.dtype(s.dtype), "t") for s in jax.tree.leaves(shapes)]
        )
        call_kwargs = graph_lib._fill(node["kwargs"], keras_tensor)
        if node["training"] is not None:
            call_kwargs["training"] = node["training"]
        call_args = graph_lib._fill(node["args"], keras_tensor)
        if layer.spec is not None and layer.spec.class_name in _MERGE:
            call_args = [call_args]  # Keras's merge layers take one list of inputs
        inbound[node["layer"]].append({"args": call_args, "kwargs": call_kwargs})
    entries = []
    for s, input_name in zip(graph["inputs"], names, strict=True):
        entry = _input_layer_shape(s["shape"], s["dtype"], input_name)
        entries.append({**entry, "name": input_name, "inbound_nodes": []})
    for layer, key, nodes in zip(layers, keys, inbound, strict=True):
        entries.append({**layer_to_keras(layer, key), "name": key, "inbound_nodes": nodes})
    structure = graph.get("input_structure", "list")
    refs = [_history({"input": i}, graph, keys, names) for i in range(len(names))]
    if structure == "dict":
        input_layers: Any = {s["key"]: r for s, r in zip(graph["inputs"], refs, strict=True)}
    elif structure == "single":
        input_layers = refs[0]
    else:
        input_layers = refs
    output_layers = graph_lib._fill(graph["outputs"], lambda ref: _history(ref, graph, keys, names))
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {
            "name": name,
            "trainable": True,
            "layers": entries,
            "input_layers": input_layers,
            "output_layers": output_layers,
        },
        "registered_name": "Functional",
        "build_config": {"input_shape": None},
        "compile_config": None,
    }


def write_model(
    path: str | os.PathLike,
    *,
    name: str,
    layers: Sequence[Layer],
    inputs: Sequence[Any],
    weight_names: Sequence[str],
    weights: Sequence[np.ndarray],
    who: str | None = None,
    graph: Mapping[str, Any] | None = None,
    compile_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Keras 3 ``.keras`` archive: a Sequential of ``layers`` in order built for the
    abstract ``inputs``, or (``graph``, the ``Functional(...).spec.config`` of
    ``fnn.Model(inputs, outputs)``; ``layers`` and ``inputs`` then unused) a functional
    model. Each layer must be built by a registered factory that Keras has; weights come
    with their ``weight_names`` (``Model.weight_names()``); ``compile_config`` is Keras's
    (optimizer, loss, metrics). ``keras.saving.load_model`` opens it; the file is replaced
    atomically."""
    p = Path(path)
    who = who or name
    if not p.name.lower().endswith(".keras"):
        suffix = p.suffix.lower() or "other"
        raise ConfigError(
            f"{who}: cannot write {os.fspath(path)!r}: fnn writes Keras 3 .keras archives, "
            f"not {suffix} files; use a path ending in .keras."
        )
    h5py = _h5py(path)
    if graph is not None:
        layers = list(graph["layers"])
        keys = child_names(layers, name)
        config = _functional_config(graph, name, keys)
        # Keras names the h5 groups in model.layers order, InputLayers included; their
        # groups hold no arrays, so only the order within each class matters.
        input_names = [s["name"] for s in graph["inputs"]]
    else:
        if len(inputs) != 1:
            raise ConfigError(f"{name}: expected a Sequential with one input, got {len(inputs)}.")
        keys = child_names(list(layers), name)
        entries = [_input_layer(inputs[0], "input_layer")]
        entries += [layer_to_keras(layer, key) for layer, key in zip(layers, keys, strict=True)]
        config = {
            "module": "keras",
            "class_name": "Sequential",
            "config": {"name": name, "trainable": True, "layers": entries},
            "registered_name": None,
            "compile_config": None,
        }
        input_names = []
    config["compile_config"] = None if compile_config is None else dict(compile_config)
    by_layer = split_weights(weight_names, weights)
    names_by_layer = split_weights(weight_names, weight_names)
    unknown = sorted(set(by_layer) - set(keys))
    if unknown:
        raise ConfigError(f"{name}: weights of unknown layers {unknown}; expected {keys}.")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.require_group("vars").attrs["name"] = name
        h5.require_group("layers")
        for input_name, group in zip(input_names, _group_names(["InputLayer"] * len(input_names))):
            h5.require_group(f"layers/{group}/vars").attrs["name"] = input_name
        classes = [layer.spec.class_name for layer in layers]
        for layer, key, group in zip(layers, keys, _group_names(classes), strict=True):
            _write_arrays(
                h5,
                key,
                group,
                layer.spec.class_name,
                names_by_layer.get(key, []),
                by_layer.get(key, []),
            )
    metadata = {
        "keras_version": "3.0.0",
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "saved_by": "fnn",
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr("metadata.json", json.dumps(metadata))
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("model.weights.h5", buffer.getvalue())
    os.replace(tmp, p)
    return p
