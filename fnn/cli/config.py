"""YAML run configs for the ``fnn`` CLI, validated before anything is built or compiled.

A config names layers by their registered factory (``Dense``, ``Conv2D``, ...) with
constructor arguments, the dataset, optimizer, loss, metrics and the run settings::

    model:
      layers:
        - Flatten
        - Dense: {units: 128, activation: relu}
        - Dense: {units: 10}
    dataset: {name: digits}
    optimizer: {name: adam, learning_rate: 0.001}
    loss: {name: sparse_categorical_crossentropy, from_logits: true}
    metrics: [accuracy]
    epochs: 20
    batch_size: 64

Every problem raises a one-line :class:`fnn.errors.ConfigError` that starts with the key
path, e.g. ``model.layers[2].units: expected units to be a positive int, got -3`` or
``optimizer.learning_rat: unknown key. Did you mean 'learning_rate'? ...``.

>>> cfg = load_config_text("model: {layers: [Flatten, {Dense: {units: 10}}]}\\n"
...                        "dataset: {name: digits}\\nepochs: 3")
>>> cfg["epochs"], cfg["batch_size"], cfg["optimizer"]["name"]
(3, 32, 'adam')
>>> load_config_text("epoch: 3")
Traceback (most recent call last):
...
fnn.core.errors.ConfigError: epoch: unknown key. Did you mean 'epochs'? Valid keys: batch_size, checkpoint, data, dataset, distribute, dp, epochs, explain, fairness, loss, metrics, model, optimizer, plots, run_dir, seed, sweep, tensorboard.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fnn.core import spec
from fnn.core.errors import ConfigError, FnnError, closest
from fnn.core.layer import Layer

__all__ = [
    "DEFAULTS",
    "apply_overrides",
    "build_layer",
    "build_loss",
    "build_model",
    "build_readers",
    "load_config",
    "load_config_text",
    "validate",
]

DEFAULTS: dict[str, Any] = {
    "model": {"layers": None, "input_shape": None},
    "dataset": {"name": None, "options": {}, "validation_split": 0.0},
    # Files streamed from disk a batch at a time (fnn.datasets readers) instead of dataset:.
    "data": None,
    "optimizer": {
        "name": "adam",
        "learning_rate": 0.001,
        "schedule": "constant",
        "warmup_epochs": 0,
        "options": {},
    },
    "loss": {"name": "sparse_categorical_crossentropy", "from_logits": True},
    "metrics": ["accuracy"],
    "epochs": 10,
    "batch_size": 32,
    "seed": 0,
    "run_dir": None,
    "checkpoint": {
        "every_epochs": 1,
        "every_steps": None,  # also back up inside epochs (a resumed run continues there)
        "max_to_keep": 3,
        "keep_best": True,
        "monitor": "val_loss",
        "mode": "min",
    },
    "distribute": {"strategy": "none", "num_devices": None, "mesh": None, "rules": {}},
    "plots": True,
    "tensorboard": None,  # None: if tensorboardX is installed; true: say when it is not
    # Per-group test metrics: the group of each test example from input column ``feature``
    # (split in two at ``split_at`` if given) or from a .npy file ``path``.
    "fairness": {"feature": None, "split_at": None, "path": None, "pos_label": 1},
    # DP-SGD (fnn.train.DPConfig: l2_norm_clip, noise_multiplier, delta, chunk_size); null: off.
    "dp": None,
    # Attribution images of the first ``examples`` test examples (fnn.explain ``method``;
    # ``window``: occlusion's window, default 1 per input axis); method null: off.
    "explain": {"method": None, "examples": 8, "window": None},
    # Optimizer, dropout and label-smoothing values trained as members of one program
    # (fnn.cli.sweep).
    "sweep": None,
}
EXPLAIN_METHODS = (
    "saliency",
    "gradient_x_input",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
)
_REQUIRED = {"": ("model",), "model": ("layers",), "dataset": ("name",), "data": ("format", "path")}
DATA_DEFAULTS: dict[str, Any] = {
    "format": None,  # image_folder, csv, parquet, npy or idx
    "path": None,  # the image folder, .csv/.parquet file, .npy or IDX file of the inputs
    "labels": None,  # npy/idx: the .npy or IDX file of the labels
    "test": None,  # test files (a path, or {path, labels}); default: test_size of path's
    "test_size": 0.2,
    "validation": None,  # validation files; default: the test split
    "columns": None,  # csv/parquet: feature columns (names or indices); default: all but label
    "label_column": -1,  # csv/parquet: name or index
    "image_size": [32, 32],  # image_folder: [height, width] after resizing
    "color_mode": "rgb",  # image_folder: rgb or grayscale
    "shuffle": True,  # permute the training examples anew every epoch (seeded by seed)
    "workers": 1,  # threads reading batches ahead
}
DATA_FORMATS = ("image_folder", "csv", "parquet", "npy", "idx")
_FORMAT_KEYS = {
    "labels": ("npy", "idx"),
    "columns": ("csv", "parquet"),
    "label_column": ("csv", "parquet"),
    "image_size": ("image_folder",),
    "color_mode": ("image_folder",),
}
# Free keyword arguments, checked later.
_OPEN = ("dataset.options", "optimizer.options", "loss", "distribute.rules")
_SCHEDULES = ("constant", "cosine")
_STRATEGIES = ("none", "data_parallel", "sharded")


def _type_name(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


_got = spec.describe
_join = spec.join_path


# Larger ints overflow JAX's int32/int64 arguments deep inside XLA; reject them up front.
_MAX_INT = 2**31 - 1


def _positive_int(path, value, minimum=1, maximum=_MAX_INT):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ConfigError(f"{path}: expected {what}, {_got(value)}.")
    if value > maximum:
        raise ConfigError(f"{path}: expected an int <= {maximum}, {_got(value)}.")
    return value


def _number(path, value, low=None, high=None, *, low_open=False, high_open=False):
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{path}: expected a number, {_got(value)}.")
    if not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}.")
    bad = (
        (low is not None and (value < low or (low_open and value == low)))
        or (high is not None and (value > high or (high_open and value == high)))
    )  # fmt: skip
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(f"{path}: expected a number in {span}, got {value!r}.")
    return float(value)


def _bool(path, value):
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, {_got(value)}.")
    return value


def _choice(path, value, choices, what="one of"):
    if not isinstance(value, str) or value not in choices:
        hint = closest(str(value), choices) if isinstance(value, str) else ""
        raise ConfigError(f"{path}: expected {what} {', '.join(choices)}, {_got(value)}.{hint}")
    return value


def _mapping(path, value):
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping (key: value), {_got(value)}.")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: expected string keys, got key {key!r} ({_type_name(key)}).")
    return value


def _merge_defaults(path: str, value: Any, defaults: Mapping) -> dict:
    """``value`` over ``defaults`` with unknown keys rejected (closest valid key suggested)."""
    value = _mapping(path, value)
    for key in value:
        if key not in defaults:
            valid = sorted(defaults)
            raise ConfigError(
                f"{_join(path, key)}: unknown key.{closest(key, valid)} Valid keys: "
                f"{', '.join(valid)}."
            )
    for key in _REQUIRED.get(path, ()):
        if value.get(key) is None:
            raise ConfigError(f"{_join(path, key)}: required key is missing.")
    merged = copy.deepcopy(dict(defaults))
    for key, item in value.items():
        sub = _join(path, key)
        if isinstance(defaults[key], dict) and sub not in _OPEN:
            merged[key] = _merge_defaults(sub, item, defaults[key])
        else:
            merged[key] = copy.deepcopy(item)
    return merged


# ---------------------------------------------------------------------------------------
# Layers


def _layer_entry(path: str, entry: Any) -> tuple[str, dict]:
    """A YAML layer entry (``Flatten`` or ``{Dense: {units: 10}}``) as ``(class_name,
    arguments)``; YAML lists become tuples, as Python callers pass them."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, Mapping) and len(entry) == 1:
        ((name, args),) = entry.items()
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise ConfigError(
                f"{_join(path, str(name))}: expected the layer's arguments as a mapping, {_got(args)}."
            )
        for key, value in args.items():
            _check_int_sizes(_join(_join(path, str(name)), str(key)), value)
        return str(name), {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    raise ConfigError(
        f"{path}: expected a layer name or a one-key mapping like {{Dense: {{units: 10}}}}, "
        f"{_got(entry)}."
    )


def _check_int_sizes(path: str, value: Any) -> None:
    """Reject ints beyond int32 in layer arguments (units, kernel sizes, ...): JAX would
    raise a raw ``OverflowError`` naming no layer."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
        raise ConfigError(f"{path}: expected an int of at most {_MAX_INT}, {_got(value)}.")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value[:16]):  # kernel sizes, strides: short lists
            _check_int_sizes(f"{path}[{i}]", item)


def build_layer(path: str, entry: Any) -> Layer:
    """Build one layer entry (``Flatten``, ``{Dense: {units: 10}}``, nested lists for
    ``*layers`` arguments of combinators, ``{Bidirectional: {layer: {LSTM: {units: 8}}}}``)
    through :func:`fnn.core.spec.build`, every error prefixed with its key path."""
    name, args = _layer_entry(path, entry)
    return spec.build(name, args, path=path, parse_layer=_layer_entry)


def build_model(config: Mapping[str, Any]) -> Layer:
    """The ``serial`` model of a validated config's ``model.layers``."""
    layers = tuple(config["model"]["layers"])
    return spec.build("serial", {"layers": layers}, path="model", parse_layer=_layer_entry)


# ---------------------------------------------------------------------------------------
# Whole config


def _check_loss(value: Any) -> dict:
    if isinstance(value, str):
        value = {"name": value}
    value = dict(_mapping("loss", value))
    if "name" not in value:
        raise ConfigError("loss.name: required key is missing.")
    from fnn.training import losses

    name = value["name"]
    try:
        base = losses.get(name)
    except FnnError as err:
        raise ConfigError(f"loss.name: {err}") from None
    options = {k: v for k, v in value.items() if k != "name"}
    if options:
        try:
            losses.get({"class_name": base.class_name, "config": options})
        except TypeError as err:
            raise ConfigError(f"loss: {err}.") from None
        except FnnError as err:
            raise ConfigError(f"loss: {err}") from None
    return value


def _check_dataset(data: dict) -> None:
    from fnn.io import datasets

    _choice("dataset.name", data["name"], list(datasets.DATASETS), "a dataset:")
    options = _mapping("dataset.options", data["options"])
    loader = datasets.DATASETS[data["name"]]
    valid = list(inspect.signature(loader).parameters)
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"dataset.options.{key}: unknown option of the {data['name']} loader."
                f"{closest(key, valid)} Valid options: {', '.join(valid)}."
            )
    if data["name"] in ("npz", "csv") and "path" not in options:
        raise ConfigError("dataset.options.path: required for npz and csv datasets.")
    _number("dataset.validation_split", data["validation_split"], 0.0, 1.0, high_open=True)


def _path(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: expected a path string, {_got(value)}.")
    return value


def _check_data(raw: Any) -> dict:
    """The ``data:`` section: checked values, a split's files as ``{path, labels}``."""
    data = _merge_defaults("data", raw, DATA_DEFAULTS)
    fmt = _choice("data.format", data["format"], DATA_FORMATS, "a file format:")
    for key, formats in _FORMAT_KEYS.items():
        if key in raw and fmt not in formats:
            raise ConfigError(
                f"data.{key}: applies to format {' or '.join(formats)}, not {fmt}; remove it."
            )
    _path("data.path", data["path"])
    paired = fmt in ("npy", "idx")
    if paired:
        _path("data.labels", data["labels"])
    for split in ("test", "validation"):
        files = data[split]
        if files is None:
            continue
        if not paired:
            data[split] = {"path": _path(f"data.{split}", files), "labels": None}
            continue
        if not isinstance(files, Mapping) or set(files) != {"path", "labels"}:
            raise ConfigError(
                f"data.{split}: expected {{path: ..., labels: ...}} for format {fmt}, "
                f"{_got(files)}."
            )
        data[split] = {k: _path(f"data.{split}.{k}", files[k]) for k in ("path", "labels")}
    _number("data.test_size", data["test_size"], 0.0, 1.0, low_open=True, high_open=True)
    if data["columns"] is not None:
        if not isinstance(data["columns"], list) or not data["columns"]:
            raise ConfigError(
                f"data.columns: expected a list of column names or indices, "
                f"{_got(data['columns'])}."
            )
        for i, c in enumerate(data["columns"]):
            if isinstance(c, bool) or not isinstance(c, int | str):
                raise ConfigError(f"data.columns[{i}]: expected a name or an index, {_got(c)}.")
    label = data["label_column"]
    if isinstance(label, bool) or not isinstance(label, int | str):
        raise ConfigError(f"data.label_column: expected a name or an index, {_got(label)}.")
    size = data["image_size"]
    if not isinstance(size, list) or len(size) != 2:
        raise ConfigError(f"data.image_size: expected [height, width], {_got(size)}.")
    for i, v in enumerate(size):
        _positive_int(f"data.image_size[{i}]", v)
    _choice("data.color_mode", data["color_mode"], ["rgb", "grayscale"])
    _bool("data.shuffle", data["shuffle"])
    _positive_int("data.workers", data["workers"], maximum=256)
    return data


def build_readers(cfg: Mapping[str, Any]) -> tuple:
    """``(train, validation, test)`` readers (``fnn.datasets``) of a validated config's
    ``data:`` section, batches of ``batch_size``: the training one shuffles every epoch
    (seeded by ``seed``) and reads ahead in ``workers`` threads. Without ``test`` files,
    a seeded ``test_size`` fraction of ``path``'s examples is held out; without
    ``validation`` files, the test split validates (as with ``dataset:``)."""
    import numpy as np

    from fnn.io import readers

    data, batch = cfg["data"], cfg["batch_size"]

    def open_(files: Mapping[str, Any], **kwargs):
        path, labels = files["path"], files.get("labels")
        fmt = data["format"]
        if fmt == "image_folder":
            size, mode = tuple(data["image_size"]), data["color_mode"]
            return readers.ImageFolder(path, size, batch, color_mode=mode, **kwargs)
        if fmt == "csv":
            columns, label = data["columns"], data["label_column"]
            return readers.CsvDataset(path, columns, label, batch, **kwargs)
        if fmt == "parquet":
            columns, label = data["columns"], data["label_column"]
            return readers.ParquetDataset(path, columns, label, batch, **kwargs)
        if fmt == "npy":
            return readers.NpyDataset(path, labels, batch, **kwargs)
        return readers.IdxDataset(path, labels, batch, **kwargs)

    try:
        train = open_(data, shuffle=data["shuffle"], seed=cfg["seed"], workers=data["workers"])
        if data["test"] is not None:
            test = open_(data["test"])
        else:
            n = train.num_examples
            held = round(n * data["test_size"])
            if not 0 < held < n:
                raise ConfigError(
                    f"test_size {data['test_size']} of {n} examples leaves "
                    f"{'no test' if held == 0 else 'no training'} examples."
                )
            perm = np.random.default_rng(cfg["seed"]).permutation(n)
            test = train.subset(np.sort(perm[:held]), shuffle=False, workers=1)
            train = train.subset(np.sort(perm[held:]))
        val = test if data["validation"] is None else open_(data["validation"])
    except ConfigError as err:
        raise ConfigError(f"data: {err}") from None
    return train, val, test


def validate(raw: Any) -> dict:
    """Check a parsed config and fill in defaults; raises a one-line ``ConfigError``."""
    if raw is None:
        raw = {}
    cfg = _merge_defaults("", _mapping("<config>", raw), DEFAULTS)
    cfg["loss"] = _check_loss(cfg["loss"])

    layers = cfg["model"]["layers"]
    if not isinstance(layers, list) or not layers:
        raise ConfigError(f"model.layers: expected a non-empty list of layers, {_got(layers)}.")
    for i, entry in enumerate(layers):  # builds nothing heavy: factories only record args
        build_layer(f"model.layers[{i}]", entry)
    shape = cfg["model"]["input_shape"]
    if shape is not None:
        if not isinstance(shape, list) or not shape:
            raise ConfigError(f"model.input_shape: expected a list of ints, {_got(shape)}.")
        for i, dim in enumerate(shape):
            _positive_int(f"model.input_shape[{i}]", dim)

    if cfg["data"] is not None:
        if "dataset" in raw:
            raise ConfigError("data: a config reads dataset: or data:, not both; remove one.")
        cfg["data"] = _check_data(raw["data"])
    elif "dataset" not in raw or raw["dataset"] is None:
        raise ConfigError("dataset: required key is missing (or data: for files on disk).")
    else:
        _check_dataset(cfg["dataset"])

    opt = cfg["optimizer"]
    from fnn.training import optimizers

    _choice("optimizer.name", opt["name"], list(optimizers.names()), "an optimizer:")
    _number("optimizer.learning_rate", opt["learning_rate"], 0.0, low_open=True)
    _choice("optimizer.schedule", opt["schedule"], _SCHEDULES)
    _positive_int("optimizer.warmup_epochs", opt["warmup_epochs"], minimum=0)
    _mapping("optimizer.options", opt["options"])
    try:
        optimizers.get(opt["name"], learning_rate=opt["learning_rate"], **opt["options"])
    except FnnError as err:
        raise ConfigError(f"optimizer.options: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optimizer.options: {err}.") from None

    metrics = cfg["metrics"]
    if not isinstance(metrics, list):
        raise ConfigError(f"metrics: expected a list of metric names, {_got(metrics)}.")
    from fnn.training import metrics as metrics_lib

    for i, name in enumerate(metrics):
        if not isinstance(name, str):
            raise ConfigError(f"metrics[{i}]: expected a metric name, {_got(name)}.")
        try:
            metrics_lib.get(name, loss=build_loss(cfg["loss"]), num_classes=2)
        except FnnError as err:
            raise ConfigError(f"metrics[{i}]: {err}") from None

    _positive_int("epochs", cfg["epochs"])
    _positive_int("batch_size", cfg["batch_size"])
    _positive_int("seed", cfg["seed"], minimum=0)
    if cfg["run_dir"] is not None and not isinstance(cfg["run_dir"], str):
        raise ConfigError(f"run_dir: expected a path string, {_got(cfg['run_dir'])}.")
    _bool("plots", cfg["plots"])
    if cfg["tensorboard"] is not None:
        _bool("tensorboard", cfg["tensorboard"])

    ckpt = cfg["checkpoint"]
    _positive_int("checkpoint.every_epochs", ckpt["every_epochs"])
    if ckpt["every_steps"] is not None:
        _positive_int("checkpoint.every_steps", ckpt["every_steps"])
    _positive_int("checkpoint.max_to_keep", ckpt["max_to_keep"])
    _bool("checkpoint.keep_best", ckpt["keep_best"])
    _choice("checkpoint.mode", ckpt["mode"], ["min", "max"])
    names = [m for m in metrics]
    monitors = ["loss", "val_loss", *names, *(f"val_{m}" for m in names)]
    _choice("checkpoint.monitor", ckpt["monitor"], monitors, "a logged value:")

    fair = cfg["fairness"]
    if fair["feature"] is not None and fair["path"] is not None:
        raise ConfigError("fairness: expected feature or path, not both.")
    if fair["feature"] is not None:
        _positive_int("fairness.feature", fair["feature"], minimum=0)
    if fair["split_at"] is not None:
        _number("fairness.split_at", fair["split_at"])
    if fair["path"] is not None and not isinstance(fair["path"], str):
        raise ConfigError(f"fairness.path: expected a .npy path string, {_got(fair['path'])}.")
    _positive_int("fairness.pos_label", fair["pos_label"], minimum=0)

    if cfg["dp"] is not None:
        from fnn.training.privacy import DPConfig

        cfg["dp"] = DPConfig.get(cfg["dp"], what="dp")._asdict()
        if cfg["distribute"]["strategy"] != "none":
            raise ConfigError("dp: DP-SGD runs on one device; set distribute.strategy: none.")
    explain = cfg["explain"]
    if explain["method"] is not None:
        _choice("explain.method", explain["method"], EXPLAIN_METHODS, "an attribution method:")
    _positive_int("explain.examples", explain["examples"], maximum=64)
    if explain["window"] is not None:
        if not isinstance(explain["window"], list) or not explain["window"]:
            raise ConfigError(
                f"explain.window: expected a list of ints, {_got(explain['window'])}."
            )
        for i, w in enumerate(explain["window"]):
            _positive_int(f"explain.window[{i}]", w)
    from fnn.cli import sweep as sweep_lib

    cfg["sweep"] = sweep_lib.check_sweep(cfg)
    if cfg["sweep"] is not None and cfg["dp"] is not None:
        raise ConfigError("sweep: a sweep trains without DP-SGD; remove dp: or sweep:.")
    if cfg["sweep"] is not None and cfg["explain"]["method"] is not None:
        raise ConfigError("sweep: a sweep writes no attributions; remove explain: or sweep:.")

    dist = cfg["distribute"]
    _choice("distribute.strategy", dist["strategy"], _STRATEGIES)
    if dist["num_devices"] is not None:
        _positive_int("distribute.num_devices", dist["num_devices"])
        if cfg["batch_size"] % dist["num_devices"]:
            raise ConfigError(
                f"batch_size: expected a multiple of distribute.num_devices "
                f"({dist['num_devices']}), got {cfg['batch_size']}."
            )
    if dist["strategy"] == "sharded":
        # Checked against the devices (sizes, divisibility) when the run starts.
        from fnn.distributed.sharding import parse_mesh

        if not isinstance(dist["mesh"], str | dict):
            raise ConfigError(
                f"distribute.mesh: expected axis sizes such as 'fsdp=4,tensor=2' for strategy "
                f"sharded, {_got(dist['mesh'])}."
            )
        parse_mesh(dist["mesh"])
        if not isinstance(dist["rules"], dict):
            raise ConfigError(
                f"distribute.rules: expected a mapping {{glob: [axis, ...]}}, {_got(dist['rules'])}."
            )
    return cfg


def build_loss(loss: Mapping) -> Any:
    """The loss of a validated config's ``loss`` entry: its name, or a configured ``Loss``."""
    from fnn.training import losses

    return losses.from_entry(loss)


def load_config_text(text: str, overrides: Sequence[str] = ()) -> dict:
    """Parse YAML ``text`` (safe loader), apply ``--set`` overrides, validate."""
    try:
        raw = _safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"<config>: invalid YAML{line}: {problem}.") from None
    raw = apply_overrides(raw if raw is not None else {}, overrides)
    _check_expanded_size(raw)
    return validate(raw)


# A real config has a few hundred values; nested YAML anchors can expand a 600-byte file
# to billions, which every later step (copying, messages, loaders) would walk.
_MAX_VALUES = 100_000


def _check_expanded_size(raw: Any) -> None:
    """Raise ``ConfigError`` if ``raw`` expands to more than ``_MAX_VALUES`` values, counted
    once per distinct node (aliases share objects), so a YAML bomb is measured, not walked."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        key = id(node)
        if key not in sizes:
            sizes[key] = _MAX_VALUES + 1  # a cycle (a recursive alias) counts as too big
            items = node.values() if isinstance(node, dict) else node
            total = 1
            for item in items:
                total += size(item)
                if total > _MAX_VALUES:
                    break
            sizes[key] = total
        return sizes[key]

    try:
        total = size(raw)
    except RecursionError:
        total = _MAX_VALUES + 1
    if total > _MAX_VALUES:
        raise ConfigError(
            f"<config>: the document expands to more than {_MAX_VALUES:,} values (nested YAML "
            "anchors and aliases?); a config needs far fewer."
        )


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """Read, override and validate the YAML config at ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {str(path)!r}: {err.strerror}.") from None
    try:
        return load_config_text(text, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path.name}: {err}") from None


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python objects, no code) that also reads ``1e-3`` as a float;
    plain YAML 1.1 needs a dot (``1.0e-3``) and would give the string ``'1e-3'``."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader: no Python objects


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _split_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for match in _TOKEN.finditer(key):
        if match.start() not in (pos, pos + 1):
            break
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if not parts or pos != len(key) or ".." in key or key.startswith("."):
        raise ConfigError(
            f"--set {key}: expected a key path like epochs, optimizer.learning_rate or "
            "model.layers[1].Dense.units."
        )
    return parts


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to the parsed config.

    >>> apply_overrides({"optimizer": {"name": "adam"}}, ["optimizer.learning_rate=0.01"])
    {'optimizer': {'name': 'adam', 'learning_rate': 0.01}}
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected key=value.")
        try:
            value = _safe_load(text)
        except yaml.YAMLError:
            value = text
        parts = _split_key(key.strip())
        node = raw
        for depth, part in enumerate(parts[:-1]):
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts[: depth + 1])
            where = where.lstrip(".")
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    size = len(node) if isinstance(node, list) else 0
                    raise ConfigError(f"--set {key}: {where} is out of range ({size} items).")
                node = node[part]
            else:
                if not isinstance(node, dict):
                    parent = where.rsplit(".", 1)[0] if "." in where else "<config>"
                    raise ConfigError(f"--set {key}: {parent} is not a mapping.")
                if not isinstance(node.get(part), dict | list):
                    node[part] = {}
                node = node[part]
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ConfigError(f"--set {key}: index {last} is out of range.")
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {key}: cannot set {last!r} inside a {_type_name(node)}.")
    return raw
