"""The Keras-style ``Model`` and ``Sequential``: a thin shell over the functional core.

``Model(layer)`` keeps exactly one piece of mutable state, a ``fnn.train.TrainState``
(step, params, state, opt_state, rng, metric states), and replaces it after each compiled
step. ``model.params``, ``model.state``, ``model.opt_state`` and ``model.layer`` expose it,
so research code can leave the shell at any time and come back
(``model.params = new_params``). The steps themselves are ``fnn.train``'s pure functions.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import weights as weights_lib
from fnn.core.combinators import serial
from fnn.core.errors import ConfigError, ShapeError
from fnn.core.layer import Layer, as_shape_struct, output_shapes
from fnn.io import data_adapter as data_lib
from fnn.shell import callbacks as callbacks_lib

__all__ = ["Input", "Model", "Sequential"]


@dataclasses.dataclass(frozen=True)
class Input:
    """The input shape of a ``Sequential`` (without the batch axis), as ``keras.Input``.

    >>> import fnn
    >>> from fnn.layers import Dense
    >>> model = fnn.Sequential([fnn.Input((4,)), Dense(2)])
    >>> model.params["dense"]["kernel"].shape
    (4, 2)
    """

    shape: tuple[int, ...]
    dtype: Any = "float32"
    name: str | None = None


def _is_verbose_auto(verbose) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ConfigError(f"expected verbose in 'auto', 0, 1 or 2, got {verbose!r}.")
    return int(verbose)


class _LazyLogs(Mapping):
    """Batch logs computed (and synchronised with the device) only when read."""

    def __init__(self, compute: Callable[[], dict]):
        self._compute = compute
        self._values: dict | None = None

    def _get(self) -> dict:
        if self._values is None:
            if self._compute is None:
                raise RuntimeError(
                    "batch logs were read after their batch ended; copy them with dict(logs) "
                    "inside the callback hook."
                )
            self._values = self._compute()
        return self._values

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._get())

    def close(self):
        self._compute = None


class Model:
    """A Keras-style model around any fnn ``Layer`` (multi-input/-output layers included).

    Inputs: a single array for one-input layers, a tuple/list of arrays for several inputs
    (passed positionally to ``layer.apply``), or a dict of arrays (passed as one pytree
    argument). Targets follow the layer's outputs (a tuple for several outputs).
    """

    def __init__(self, layer: Layer | None = None, name: str | None = None):
        if layer is not None and not isinstance(layer, Layer):
            raise ConfigError(
                f"Model: expected an fnn Layer (an init/apply pair), got {type(layer).__name__}."
            )
        self._layer = layer
        self.name = name or (layer.name if layer is not None else "model")
        self._train_state = None  # the only copy of params/state/opt_state (a TrainState)
        self._input_spec = None  # abstract inputs (tuple) the params were built for
        self._compile_config: dict | None = None
        self._resolved = None  # loss, metrics, optimizer resolved against the data
        self._programs: dict = {}
        self._weight_order: list | None = None
        self.stop_training = False
        self.history: callbacks_lib.History | None = None

    # ------------------------------------------------------------------ functional state

    @property
    def layer(self) -> Layer:
        """The wrapped ``Layer`` (the init/apply pair)."""
        return self._layer

    @property
    def built(self) -> bool:
        """Whether the parameters exist."""
        return self._train_state is not None

    def _require_built(self, what: str):
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
        self._build(self._input_struct(input_shape))

    def _build(self, inputs: tuple) -> None:
        from fnn.training import step as train_lib

        layer = self.layer
        if layer is None:
            raise ConfigError(f"{self.name}: the model has no layers; add some before building.")
        seed = (self._compile_config or {}).get("seed", 0)
        init_key, rng = jax.random.split(jax.random.key(seed))
        abstract = as_shape_struct(inputs)
        # One compiled program instead of one per initializer op.
        params, state = jax.jit(lambda key: layer.init(key, *abstract))(init_key)
        self._input_spec = abstract
        self._weight_order = None
        self._train_state = train_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            state=state,
            opt_state=None,
            rng=rng,
            metric_states=None,
        )

    def _ensure_built(self, x) -> None:
        if self._train_state is None:
            inputs = _as_inputs(x)
            self._build(
                jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *np.shape(a)[1:]), a.dtype), inputs)
            )

    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """Print the layer table (``fnn.summary``) for the built input shape."""
        from fnn.core.summary import summary

        self._require_built("summary")
        summary(self.layer, *self._input_spec, print_fn=print_fn, batch_label="None")

    # ------------------------------------------------------------------ Keras weights

    def _weight_paths(self) -> list[tuple[str, tuple]]:
        """``("params"|"state", path)`` of every array in Keras's ``get_weights`` order
        (``fnn.core.weights.weight_paths``), cached until the model is rebuilt."""
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
        from fnn.io import checkpoint, saving

        checkpoint.check_directory_path(filepath, f"{self.name}: save")
        return saving.save_model(
            filepath,
            self.layer,
            self.params,
            self.state,
            inputs=list(self._input_spec),
            compile_config=_compile_to_json(self._compile_config, self.name),
            metadata={
                "model_class": "Sequential" if isinstance(self, Sequential) else "Model",
                "name": self.name,
            },
        )

    # ------------------------------------------------------------------ learning rate

    @property
    def learning_rate(self) -> float:
        """The optimizer's current learning rate, read from ``opt_state``."""
        states = _hyperparam_states(self.opt_state)
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

        self.opt_state = _map_hyperparam_states(self.opt_state, set_lr)

    # ------------------------------------------------------------------ compile

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        metrics=None,
        loss_weights=None,
        steps_per_execution: int | str = 1,
        jit: bool = True,
        seed: int = 0,
    ) -> None:
        """Set the optimizer, loss and metrics (names or objects, as in Keras).

        ``steps_per_execution``: steps per compiled call (``"auto"`` picks by model and
        backend). ``jit=False`` runs the steps eagerly (debugging). ``seed`` seeds the
        parameter initialisation, dropout and shuffling.
        """
        from fnn.training import optimizers as optimizers_lib

        if loss is None:
            raise ConfigError(
                f"{self.name}: compile expected a loss (e.g. loss='sparse_categorical_crossentropy'), "
                "got None."
            )
        if not (
            steps_per_execution == "auto"
            or (isinstance(steps_per_execution, int) and steps_per_execution >= 1)
        ):
            raise ConfigError(
                f"{self.name}: expected steps_per_execution to be an int >= 1 or 'auto', got "
                f"{steps_per_execution!r}."
            )
        if isinstance(metrics, str):
            metrics = [metrics]
        optimizers_lib.get(optimizer)  # unknown names and wrong types raise here
        self._compile_config = {
            "optimizer": optimizer,
            "loss": loss,
            "metrics": list(metrics or []),
            "loss_weights": loss_weights,
            "steps_per_execution": steps_per_execution,
            "jit": bool(jit),
            "seed": int(seed),
        }
        self._resolved = None
        self._programs = {}
        if self._train_state is not None:
            self._train_state = _replace(self._train_state, opt_state=None, metric_states=None)

    @property
    def steps_per_execution(self) -> int:
        """Training steps per compiled call (``"auto"`` resolved once data was seen)."""
        if self._resolved is not None:
            return self._resolved.steps_per_execution
        return self._require_compiled("steps_per_execution")["steps_per_execution"]

    @property
    def compiled(self) -> bool:
        return self._compile_config is not None

    def _require_compiled(self, what: str) -> dict:
        if self._compile_config is None:
            raise ConfigError(
                f"{self.name}: {what} needs a compiled model; call model.compile(optimizer=..., "
                f"loss=..., metrics=[...]) before {what}."
            )
        return self._compile_config

    # ------------------------------------------------------------------ resolution

    def _resolve(self, inputs_spec: tuple, y) -> _Resolved:
        """Loss, metrics ("accuracy" as Keras resolves it) and optimizer for these shapes."""
        from fnn.training import losses as losses_lib
        from fnn.training import metrics as metrics_lib

        cfg = self._compile_config
        if self._resolved is not None:
            return self._resolved
        ts = self._train_state
        out = output_shapes(self.layer, ts.params, ts.state, *inputs_spec)
        multi = isinstance(out, tuple | dict) or isinstance(cfg["loss"], list | tuple | dict)
        if multi:
            if not isinstance(out, tuple | dict):
                raise ConfigError(
                    f"{self.name}: compile got one loss per output, but the model has a single "
                    f"output of shape {out.shape}."
                )
            names = _output_names(out)
            keys = list(out) if isinstance(out, dict) else list(range(len(out)))
            losses = [losses_lib.get(v) for v in _by_output(cfg["loss"], names, "losses")]
            weights = _by_output(
                1.0 if cfg["loss_weights"] is None else cfg["loss_weights"], names, "loss_weights"
            )
            loss = _combined_loss(losses, weights, names)
            y_parts = _as_inputs(y) if not isinstance(y, Mapping) else y
            # Keras logs each output's loss too: "<output>_loss" (mean over examples).
            metrics = [
                _output_metric(metrics_lib.MeanMetricWrapper(part_loss, "loss"), key, name)
                for key, name, part_loss in zip(keys, names, losses)
            ]
            for key, name, part_loss in zip(keys, names, losses):
                y_shape = np.shape(y_parts[key]) if y is not None else None
                for m in cfg["metrics"]:
                    metric = metrics_lib.get(
                        m, loss=part_loss, y_true_shape=y_shape, y_pred_shape=out[key].shape
                    )
                    metrics.append(_output_metric(metric, key, name))
        else:
            loss = losses_lib.get(cfg["loss"])
            if cfg["loss_weights"] is not None:
                weight = float(cfg["loss_weights"])
                inner = loss
                loss = losses_lib.Loss(
                    lambda t, p: weight * inner(t, p), inner.name, inner.config, inner.mask_fn
                )
            y_shape = None if y is None else tuple(np.shape(jax.tree.leaves(y)[0]))
            metrics = [
                metrics_lib.get(m, loss=loss, y_true_shape=y_shape, y_pred_shape=out.shape)
                for m in cfg["metrics"]
            ]
        metrics = metrics_lib.get_all(metrics)
        optimizer = _injectable_optimizer(cfg["optimizer"])
        spe = cfg["steps_per_execution"]
        if spe == "auto":
            steps, unroll = _auto_steps(self.layer, ts, inputs_spec)
        else:  # the user's step count, with the loop form measured best for this model
            steps, unroll = spe, _loop_unroll(self.layer, ts, inputs_spec) if spe > 1 else 1
        self._resolved = _Resolved(loss, tuple(metrics), optimizer, unroll)
        self._resolved.steps_per_execution = steps
        return self._resolved

    def _prepare_training(self, x, y, sample_weight=None, *, check_labels=True) -> _Resolved:
        """Build, resolve and check the data against the loss, all before compiling."""
        from fnn.training import step as train_lib

        self._ensure_built(x)
        inputs = _as_inputs(x)
        spec = as_shape_struct(inputs)
        resolved = self._resolve(spec, y)
        ts = self._train_state
        if check_labels and y is not None:
            try:
                batch = (
                    (tuple(inputs), y)
                    if sample_weight is None
                    else (tuple(inputs), y, sample_weight)
                )
                if isinstance(y, tuple | dict):  # several outputs: the combined loss's checks
                    out = output_shapes(self.layer, ts.params, ts.state, *inputs)
                    jax.eval_shape(lambda y_pred: resolved.loss(y, y_pred), out)
                else:
                    train_lib.check_batch(self.layer, resolved.loss, ts.params, ts.state, batch)
            except (ShapeError, ConfigError) as err:
                raise type(err)(
                    f"{self.name}: y does not fit the loss and model outputs: {err}"
                ) from None
        if ts.opt_state is None or ts.metric_states is None:
            self._train_state = _replace(
                ts,
                opt_state=resolved.optimizer.init(ts.params),
                metric_states=train_lib.init_metric_states(resolved.metrics),
            )
        return resolved

    def _program(self, name: str):
        """Compiled step functions (built once per compile; jit caches per shape)."""
        if name in self._programs:
            return self._programs[name]
        from fnn.training import step as train_lib

        r = self._resolved
        use_jit = self._compile_config["jit"] if self._compile_config else True
        if name == "predict":
            fn = train_lib.make_predict_step(self.layer)
            fn = jax.jit(fn) if use_jit else fn
        elif name == "compute":
            metrics = r.metrics

            def compute(metric_states):
                return train_lib.compute_metrics(metric_states, metrics)

            fn = jax.jit(compute) if use_jit else compute
        elif name == "eval":
            fn = train_lib.make_eval_step(self.layer, r.loss, r.metrics)
            fn = jax.jit(fn, donate_argnums=0) if use_jit else fn
        else:
            core = train_lib.make_train_step(self.layer, r.loss, r.optimizer, r.metrics)
            unroll = r.unroll
            if name == "train":  # (ts, batch)
                step = core
            elif name == "multi":  # (ts, batches stacked [K, batch, ...])
                step = train_lib.make_multi_step(core, unroll=unroll)
            elif name == "train_idx":  # (ts, data, idx): rows idx of device-resident data

                def step(ts, data, idx):
                    return core(ts, _make_batch(*data_lib.take(data, idx)))

            elif name.startswith("train_rows"):
                # (ts, data, rows, base): the epoch's batches are the rows of ``rows``
                # [steps, batch] (on the device), and step ``ts.step - base`` takes its row,
                # so no per-step index crosses from the host.
                k = int(name.removeprefix("train_rows"))

                def gathered(ts, data, rows, base):
                    row = jax.lax.dynamic_index_in_dim(rows, ts.step - base, keepdims=False)
                    return core(ts, _make_batch(*data_lib.take(data, row)))

                if k == 1:
                    step = gathered
                else:

                    def step(ts, data, rows, base):
                        multi = train_lib.make_multi_step(
                            lambda t, _: gathered(t, data, rows, base), unroll=unroll
                        )
                        return multi(ts, jnp.arange(k))

            else:
                raise KeyError(name)
            fn = jax.jit(step, donate_argnums=0) if use_jit else step
        self._programs[name] = fn
        return fn

    def _read_metrics(self, metric_states) -> dict[str, float]:
        values = jax.device_get(self._program("compute")(metric_states))
        return {k: float(np.asarray(v)) for k, v in values.items()}

    def reset_metrics(self) -> None:
        """Zero the running loss and metric states (as ``fit`` does at each epoch start)."""
        from fnn.training import step as train_lib

        ts = self._require_built("reset_metrics")
        if ts.metric_states is not None:
            self._train_state = train_lib.reset_metrics(ts)

    # ------------------------------------------------------------------ data

    def _fit_data(self, x, y, sample_weight, class_weight, name):
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
        return data_lib.IterableData(x, name=name)

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
        devices=None,
    ) -> callbacks_lib.History:
        """Train for ``epochs`` epochs; returns a ``History`` (Keras semantics and logs).

        ``x``/``y``: arrays (or tuples/dicts of arrays), or ``x`` an iterable of
        ``(x, y[, sample_weight])`` batches. Shuffling is a permutation seeded by
        ``compile(seed=...)`` and the epoch. ``devices`` (a list of devices or a count):
        data-parallel training with ``fnn.data_parallel(method="sharded")``; the
        batch size must divide by the device count (a last smaller batch that does not is
        skipped).
        """
        cfg = self._require_compiled("fit")
        verbose = _is_verbose_auto(verbose)
        if not isinstance(validation_split, int | float) or not 0.0 <= validation_split < 1.0:
            raise ConfigError(
                f"{self.name}: expected validation_split in [0, 1), got {validation_split!r}."
            )
        batch_size = 32 if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"{self.name}: expected batch_size >= 1, got {batch_size!r}.")
        data = self._fit_data(x, y, sample_weight, class_weight, "fit")
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
                val = data_lib.IterableData(validation_data, name="validation_data")
        # Everything below up to the first step is checked on shapes, before compiling.
        if isinstance(data, data_lib.ArrayData):
            resolved = self._prepare_training(data.x, data.y, data.sample_weight)
        else:
            resolved = None
            first = None
        callbacks = list(callbacks or [])
        if isinstance(data, data_lib.IterableData):
            # Peek the first batch to build and check; it is trained on like the others.
            iterator = data.epoch(None if steps_per_epoch is None else steps_per_epoch)
            try:
                first = next(iterator)
            except StopIteration:
                raise ConfigError(f"{self.name}: fit got an empty iterable.") from None
            resolved = self._prepare_training(first[0], first[1], first[2])
        keys = list(resolved.metric_names)
        if val is not None:
            keys += [f"val_{k}" for k in resolved.metric_names]
        if any(
            isinstance(c, callbacks_lib.LearningRateScheduler | callbacks_lib.ReduceLROnPlateau)
            for c in callbacks
        ):
            keys.append("learning_rate")
        callbacks_lib.check_monitors(callbacks, keys)
        if isinstance(data, data_lib.ArrayData):
            n_batches = math.ceil(data.n / batch_size)
            steps = n_batches if steps_per_epoch is None else min(steps_per_epoch, n_batches)
        else:
            steps = steps_per_epoch if steps_per_epoch is not None else _len_or_none(data.data)
        history = next((c for c in callbacks if isinstance(c, callbacks_lib.History)), None)
        if history is None:
            history = callbacks_lib.History()
            callbacks.append(history)
        if verbose and not any(isinstance(c, callbacks_lib.ProgbarLogger) for c in callbacks):
            callbacks.append(callbacks_lib.ProgbarLogger())
        cl = callbacks_lib.CallbackList(
            callbacks, model=self, verbose=verbose, epochs=epochs, steps=steps
        )
        # fit donates the train state to each step: work on a private copy so arrays the
        # caller holds (model.params taken before fit) stay valid.
        self._train_state = jax.tree.map(
            lambda a: a.copy() if isinstance(a, jax.Array) else a, self._train_state
        )
        self.stop_training = False
        spe = resolved.steps_per_execution
        seed = cfg["seed"]
        dp = self._data_parallel_step(devices) if devices is not None else None
        device_data = (
            dp is None
            and isinstance(data, data_lib.ArrayData)
            and data.fits_on_device()
            and cfg["jit"]
        )
        on_device = data.on_device() if device_data else None
        cl.on_train_begin(None)
        logs: dict = {}
        for epoch in range(initial_epoch, epochs):
            self.reset_metrics()
            cl.on_epoch_begin(epoch, None)
            if dp is not None:
                self._train_state = dp.put_state(self._train_state)
                if isinstance(data, data_lib.ArrayData):
                    indices = data.batch_indices(
                        batch_size=batch_size, epoch=epoch, shuffle=shuffle, seed=seed
                    )[:steps]
                    batches = _host_batches(data, indices)
                else:
                    batches, first = (
                        (_chain_first(first, iterator), None)
                        if first is not None
                        else (data.epoch(steps_per_epoch), None)
                    )
                self._train_parallel(dp, batches, cl)
                self._train_state = dp.get_state(self._train_state)
            elif isinstance(data, data_lib.ArrayData):
                order = data.order(epoch=epoch, shuffle=shuffle, seed=seed)
                if device_data:
                    self._train_order(on_device, order, batch_size, steps, spe, cl)
                else:
                    indices = [order[i : i + batch_size] for i in range(0, data.n, batch_size)]
                    batches = data_lib.prefetch(_host_batches(data, indices[:steps]))
                    self._train_batches(batches, spe, cl)
            else:
                if first is not None:
                    batches, first = _chain_first(first, iterator), None
                elif data.exhausted:
                    print(
                        f"{self.name}: the input iterator ran out of data after epoch {epoch}; "
                        "stopping. Pass steps_per_epoch or a re-iterable (e.g. a list).",
                        file=sys.stderr,
                    )
                    break
                else:
                    batches = data.epoch(steps_per_epoch)
                self._train_batches(batches, spe, cl)
            logs = self._read_metrics(self._train_state.metric_states)
            if val is not None:
                cl.on_test_begin(None)
                val_logs = self._evaluate_data(val, validation_batch_size or batch_size, cl)
                cl.on_test_end(val_logs)
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            cl.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cl.on_train_end(logs)
        return history

    def _batch_hooks(self, cl, begin: int, end: int, run: Callable[[], None]) -> None:
        """Run one compiled call between the batch hooks (only those callbacks override)."""
        if cl.wants("on_train_batch_begin"):
            cl.on_train_batch_begin(begin, None)
        run()
        if cl.wants("on_train_batch_end"):
            states = self._train_state.metric_states
            logs = _LazyLogs(lambda: self._read_metrics(states))
            cl.on_train_batch_end(end, logs)
            logs.close()

    def _train_order(self, on_device, order, batch_size: int, steps: int, spe: int, cl) -> None:
        """One epoch over device-resident data in ``order``: full batches are the rows of a
        ``[steps, batch]`` index matrix gathered inside the step; a last smaller batch runs
        as its own program."""
        n_full = min(len(order) // batch_size, steps)
        remainder = order[n_full * batch_size :] if steps > n_full else order[:0]
        if n_full:
            rows = jax.device_put(order[: n_full * batch_size].reshape(n_full, batch_size))
            base = self._train_state.step + 0  # a fresh buffer: the state's is donated
        i = 0
        while i < n_full and not self.stop_training:
            k = spe if spe > 1 and i + spe <= n_full else 1
            fn = self._program(f"train_rows{k}")
            self._batch_hooks(cl, i, i + k - 1, lambda fn=fn: self._run(fn, on_device, rows, base))
            i += k
        if len(remainder) and not self.stop_training:
            fn = self._program("train_idx")
            self._batch_hooks(cl, i, i, lambda: self._run(fn, on_device, remainder))

    def _data_parallel_step(self, devices):
        from fnn.distributed import data_parallel
        from fnn.training import step as train_lib

        r = self._resolved
        step = train_lib.make_train_step(self.layer, r.loss, r.optimizer, r.metrics)
        return data_parallel(step, devices=devices, method="sharded", donate=True)

    def _train_parallel(self, dp, batches, cl) -> None:
        for i, batch in enumerate(batches):
            if self.stop_training:
                break
            n = np.shape(jax.tree.leaves(batch)[0])[0]
            if n % dp.num_devices:
                continue
            self._batch_hooks(cl, i, i, lambda batch=batch: self._run(dp, _make_batch(*batch)))

    def _run(self, fn, *args) -> None:
        self._train_state, _ = fn(self._train_state, *args)

    def _train_batches(self, batches: Iterable, spe: int, cl) -> None:
        """One epoch over batches already on the device (iterables, large arrays)."""
        single = self._program("train")
        pending: list = []
        i = 0

        def flush_group():
            nonlocal i
            stacked = jax.tree.map(lambda *a: jnp.stack(a), *pending)
            multi = self._program("multi")
            k = len(pending)
            self._batch_hooks(cl, i, i + k - 1, lambda: self._run(multi, _make_batch(*stacked)))
            i += k
            pending.clear()

        def run_single(batch):
            nonlocal i
            self._batch_hooks(cl, i, i, lambda: self._run(single, _make_batch(*batch)))
            i += 1

        for batch in batches:
            if self.stop_training:
                break
            if spe == 1:
                run_single(batch)
                continue
            if pending and _shapes(batch) != _shapes(pending[0]):
                for b in list(pending):
                    pending.remove(b)
                    run_single(b)
            pending.append(batch)
            if len(pending) == spe:
                flush_group()
        for b in pending:
            if not self.stop_training:
                run_single(b)

    # ------------------------------------------------------------------ evaluate

    def _evaluate_data(
        self, data, batch_size: int, cl, steps: int | None = None
    ) -> dict[str, float]:
        from fnn.training import step as train_lib

        r = self._resolved
        eval_step = self._program("eval")
        ts = self._train_state
        metric_states = train_lib.init_metric_states(r.metrics)
        if isinstance(data, data_lib.ArrayData):
            indices = data.batch_indices(batch_size=batch_size, epoch=0, shuffle=False, seed=0)
            if steps is not None:
                indices = indices[:steps]
            batches = data_lib.prefetch(_host_batches(data, indices))
        else:
            batches = data.epoch(steps)
        for i, batch in enumerate(batches):
            if cl is not None and cl.wants("on_test_batch_begin"):
                cl.on_test_batch_begin(i, None)
            metric_states = eval_step(metric_states, ts.params, ts.state, _make_batch(*batch))
            if cl is not None and cl.wants("on_test_batch_end"):
                current = metric_states
                logs = _LazyLogs(lambda current=current: self._read_metrics(current))
                cl.on_test_batch_end(i, logs)
                logs.close()
        return self._read_metrics(metric_states)

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
    ):
        """Loss and metrics on the data: a float (loss only), a list ``[loss, *metrics]``
        in compile order, or a dict with ``return_dict=True`` (as Keras)."""
        self._require_compiled("evaluate")
        verbose = _is_verbose_auto(verbose)
        batch_size = 32 if batch_size is None else batch_size
        data = self._fit_data(x, y, sample_weight, None, "evaluate")
        if isinstance(data, data_lib.ArrayData):
            r = self._prepare_training(data.x, data.y, data.sample_weight)
            n_steps = math.ceil(data.n / batch_size)
            n_steps = n_steps if steps is None else min(steps, n_steps)
        else:
            if not data.one_shot:
                first = data_lib.unpack(next(iter(data.data)))
                r = self._prepare_training(*(data_lib.as_arrays(a) for a in first))
            elif self._resolved is None:
                raise ConfigError(
                    f"{self.name}: evaluate on a one-shot iterator needs a model that has been fit "
                    "or evaluated before (to know the data shapes); pass a list of batches."
                )
            r = self._resolved
            n_steps = steps if steps is not None else _len_or_none(data.data)
        callbacks = list(callbacks or [])
        if verbose and not any(isinstance(c, callbacks_lib.ProgbarLogger) for c in callbacks):
            callbacks.append(callbacks_lib.ProgbarLogger())
        cl = callbacks_lib.CallbackList(
            callbacks, model=self, verbose=verbose, epochs=1, steps=n_steps
        )
        cl.on_test_begin(None)
        logs = self._evaluate_data(data, batch_size, cl, steps)
        cl.on_test_end(logs)
        if return_dict:
            return logs
        values = [logs[k] for k in r.metric_names]
        return values[0] if len(values) == 1 else values

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
        """
        verbose = _is_verbose_auto(verbose)
        batch_size = 32 if batch_size is None else batch_size
        callbacks = list(callbacks or [])
        if verbose and not any(isinstance(c, callbacks_lib.ProgbarLogger) for c in callbacks):
            callbacks.append(callbacks_lib.ProgbarLogger())
        if data_lib.is_array_tree(x):
            data = data_lib.ArrayData(x, None, None, name="predict")
            self._ensure_built(data.x)
            indices = data.batch_indices(batch_size=batch_size, epoch=0, shuffle=False, seed=0)
            if steps is not None:
                indices = indices[:steps]
            n_steps = len(indices)
            sizes = [len(i) for i in indices]
            batches = data_lib.prefetch(
                data_lib.pad_rows(data_lib.take(data.x, i), batch_size) for i in indices
            )
        else:
            n_steps = steps if steps is not None else _len_or_none(x)
            sizes = []

            def padded():
                for count, item in enumerate(x):
                    if steps is not None and count >= steps:
                        return
                    bx = data_lib.as_arrays(data_lib.unpack(item)[0])
                    n = np.shape(jax.tree.leaves(bx)[0])[0]
                    size = max(batch_size, n)
                    sizes.append(n)
                    yield data_lib.pad_rows(bx, size)

            batches = data_lib.prefetch(padded())
        cl = callbacks_lib.CallbackList(
            callbacks, model=self, verbose=verbose, epochs=1, steps=n_steps
        )
        cl.on_predict_begin(None)
        outputs = []
        for i, bx in enumerate(batches):
            self._ensure_built(bx)
            ts = self._train_state
            if cl.wants("on_predict_batch_begin"):
                cl.on_predict_batch_begin(i, None)
            out = self._program("predict")(ts.params, ts.state, bx)
            outputs.append(out)
            if cl.wants("on_predict_batch_end"):
                cl.on_predict_batch_end(i, {"outputs": out})
        cl.on_predict_end(None)
        if not outputs:
            raise ConfigError(f"{self.name}: predict got no data (0 batches).")
        host = jax.device_get(outputs)
        trimmed = [jax.tree.map(lambda a, n=n: np.asarray(a)[:n], o) for o, n in zip(host, sizes)]
        return jax.tree.map(lambda *parts: np.concatenate(parts), *trimmed)

    # ------------------------------------------------------------------ single batches

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """One training step on exactly this batch; returns the running loss and metrics
        (accumulated since the last ``reset_metrics``, as Keras 3)."""
        self._require_compiled("train_on_batch")
        data = self._fit_data(x, y, sample_weight, class_weight, "train_on_batch")
        r = self._prepare_training(data.x, data.y, data.sample_weight)
        self._train_state = jax.tree.map(
            lambda a: a.copy() if isinstance(a, jax.Array) else a, self._train_state
        )
        self._run(self._program("train"), _make_batch(*data.arrays))
        return self._batch_result(
            self._read_metrics(self._train_state.metric_states), r, return_dict
        )

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """Loss and metrics on exactly this batch (fresh metric states)."""
        from fnn.training import step as train_lib

        self._require_compiled("test_on_batch")
        data = self._fit_data(x, y, sample_weight, None, "test_on_batch")
        r = self._prepare_training(data.x, data.y, data.sample_weight)
        ts = self._train_state
        states = self._program("eval")(
            train_lib.init_metric_states(r.metrics), ts.params, ts.state, _make_batch(*data.arrays)
        )
        return self._batch_result(self._read_metrics(states), r, return_dict)

    def predict_on_batch(self, x):
        """Outputs for exactly this batch (no padding, no batching)."""
        x = data_lib.as_arrays(x)
        self._ensure_built(x)
        ts = self._train_state
        return jax.tree.map(
            np.asarray, jax.device_get(self._program("predict")(ts.params, ts.state, x))
        )

    @staticmethod
    def _batch_result(logs, r, return_dict):
        if return_dict:
            return logs
        values = [logs[k] for k in r.metric_names]
        return values[0] if len(values) == 1 else values


# ---------------------------------------------------------------------- helpers


def _make_batch(x, y, sample_weight=None):
    """The batch tuple of ``fnn.train``'s steps."""
    return (x, y) if sample_weight is None else (x, y, sample_weight)


def _shapes(tree):
    return jax.tree.map(np.shape, tree)


def _len_or_none(data) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _host_batches(data: data_lib.ArrayData, indices):
    for idx in indices:
        yield data_lib.take(data.arrays, idx)


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


def _auto_steps(layer: Layer, train_state, inputs_spec) -> tuple[int, int | bool]:
    """``steps_per_execution="auto"``: (steps, unroll) by backend and model.

    Measured on XLA:CPU: small dense models gain from several steps per call inside
    ``lax.scan``; convolutions run slower inside a rolled scan, so they get a fully
    unrolled loop. Accelerators: several steps per call in a scan (dispatch dominates).
    """
    unroll = _loop_unroll(layer, train_state, inputs_spec)
    return (4, unroll) if unroll is True else (8, unroll)


def _loop_unroll(layer: Layer, train_state, inputs_spec) -> int | bool:
    """``True`` (unrolled) for convolutional models on XLA:CPU, where a convolution inside a
    rolled ``lax.scan`` runs 4-6x slower than alone; ``1`` (rolled scan) otherwise."""
    if jax.default_backend() != "cpu":
        return 1
    jaxpr = jax.make_jaxpr(lambda p, s, xs: layer.apply(p, s, *xs, rng=None, train=False))(
        as_shape_struct(train_state.params), as_shape_struct(train_state.state), inputs_spec
    )
    return True if "conv_general_dilated" in str(jaxpr) else 1


def _replace(train_state, **changes):
    if hasattr(train_state, "_replace"):
        return train_state._replace(**changes)
    return dataclasses.replace(train_state, **changes)


def _as_inputs(x) -> tuple:
    """Positional inputs of ``layer.apply``: a tuple/list is several inputs, anything else
    (an array or a dict) is one."""
    return tuple(x) if isinstance(x, list | tuple) else (x,)


def _hyperparam_states(opt_state) -> list:
    """``optax.inject_hyperparams`` states holding a ``learning_rate`` inside ``opt_state``."""
    found = []

    def visit(node):
        hyper = getattr(node, "hyperparams", None)
        if isinstance(hyper, Mapping) and "learning_rate" in hyper:
            found.append(node)
            return
        if isinstance(node, tuple | list):
            for child in node:
                visit(child)
        elif isinstance(node, Mapping):
            for child in node.values():
                visit(child)

    visit(opt_state)
    return found


def _map_hyperparam_states(opt_state, fn):
    hyper = getattr(opt_state, "hyperparams", None)
    if isinstance(hyper, Mapping) and "learning_rate" in hyper:
        return fn(opt_state)
    if hasattr(opt_state, "_fields"):  # NamedTuple
        return type(opt_state)(*(_map_hyperparam_states(c, fn) for c in opt_state))
    if isinstance(opt_state, tuple | list):
        return type(opt_state)(_map_hyperparam_states(c, fn) for c in opt_state)
    if isinstance(opt_state, Mapping):
        return {k: _map_hyperparam_states(v, fn) for k, v in opt_state.items()}
    return opt_state


def _injectable_optimizer(optimizer):
    """A string optimizer built with ``optax.inject_hyperparams`` so its learning rate lives
    in ``opt_state`` (schedulers change it without recompiling); objects are used as given."""
    import optax

    from fnn.training import optimizers as optimizers_lib

    if not isinstance(optimizer, str):
        return optimizers_lib.get(optimizer)
    name = optimizer.lower()
    lr = optimizers_lib.DEFAULT_LEARNING_RATE.get(name, 1e-3)
    optimizers_lib.get(name)  # unknown names raise here, listing the valid ones
    return optax.inject_hyperparams(
        lambda learning_rate: optimizers_lib.get(name, learning_rate=learning_rate)
    )(learning_rate=lr)


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

    def __init__(self, layers: Sequence[Layer | Input] | None = None, name: str | None = None):
        super().__init__(None, name=name or "sequential")
        self._layers: list[Layer] = []
        self._build_input: Input | None = None
        for layer in layers or ():
            self.add(layer)

    @property
    def layers(self) -> list[Layer]:
        return list(self._layers)

    def add(self, layer: Layer | Input) -> None:
        """Append a layer (or set the input shape with ``fnn.Input``)."""
        if self.built:
            raise ConfigError(
                f"{self.name}: cannot add layers after the model was built (its parameters "
                "exist); create a new Sequential instead."
            )
        if isinstance(layer, Input):
            if self._layers or self._build_input is not None:
                raise ConfigError(f"{self.name}: fnn.Input must come first and only once.")
            self._build_input = layer
            return
        if not isinstance(layer, Layer):
            raise ConfigError(
                f"{self.name}: expected an fnn Layer, got {type(layer).__name__} ({layer!r})."
            )
        if layer.input_shape is not None and not self._layers and self._build_input is None:
            # tf.keras style: Dense(64, input_shape=(784,)) as the first layer.
            self._build_input = Input(layer.input_shape)
        self._layers.append(layer)
        self._layer = None

    @property
    def layer(self) -> Layer:
        if self._layer is None and self._layers:
            self._layer = serial(*self._layers, name=self.name)
        return self._layer

    def _build(self, inputs):
        if self.layer is None:
            raise ConfigError(f"{self.name}: the model has no layers; call add(layer) first.")
        super()._build(inputs)

    def _maybe_build_from_input(self):
        if self._train_state is None and self._build_input is not None and self._layers:
            inp = self._build_input
            self._build(self._input_struct((None, *inp.shape), inp.dtype))

    def _require_built(self, what: str):
        self._maybe_build_from_input()
        return super()._require_built(what)


# ---------------------------------------------------------------------- losses/metrics


def _output_names(out_spec) -> list[str]:
    if isinstance(out_spec, Mapping):
        return list(out_spec)
    return [f"output_{i}" for i in range(len(out_spec))]


def _by_output(value, names, what):
    """A per-output list from one value, a list, or a dict keyed by output name."""
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise ConfigError(f"compile: expected {what} for outputs {names}, missing {missing}.")
        return [value[n] for n in names]
    if isinstance(value, list | tuple):
        if len(value) != len(names):
            raise ConfigError(
                f"compile: expected {len(names)} {what} (one per output), got {len(value)}."
            )
        return list(value)
    return [value] * len(names)


def _combined_loss(losses, weights, names):
    """One Loss over tuple/dict outputs: the weighted sum of per-output per-example losses."""
    from fnn.training import losses as losses_lib

    keys = names if names and not names[0].startswith("output_") else range(len(losses))

    def fn(y_true, y_pred):
        total = 0.0
        for key, loss, w in zip(keys, losses, weights):
            total = total + w * loss(y_true[key], y_pred[key])
        return total

    return losses_lib.Loss(fn, "loss")


def _output_metric(metric, key, prefix):
    from fnn.training.metrics import Metric

    def update(state, y_true, y_pred, sample_weight=None):
        return metric.update(state, y_true[key], y_pred[key], sample_weight)

    return Metric(f"{prefix}_{metric.name}", metric.init, update, metric.compute, metric.config)


class _Resolved:
    """Loss, metrics and optimizer resolved against the data (once per ``compile``)."""

    def __init__(self, loss, metrics, optimizer, unroll):
        self.loss = loss
        self.metrics = metrics
        self.optimizer = optimizer
        self.metric_names = ["loss", *(m.name for m in metrics)]
        self.unroll = unroll


def _compile_to_json(config: Mapping[str, Any] | None, name: str) -> dict | None:
    """``Model.compile`` arguments as JSON, or ``None`` (with a warning) if an optimizer,
    loss or metric is an object that has no registered name."""
    if config is None:
        return None
    from fnn.training import losses

    out = dict(config)
    problem = None
    if not isinstance(out.get("optimizer"), str):
        problem = f"optimizer {out.get('optimizer')!r}"
    loss = out.get("loss")
    if isinstance(loss, losses.Loss):
        try:
            out["loss"] = losses.serialize(loss)
        except ConfigError:
            problem = f"loss {loss.name!r}"
    elif not isinstance(loss, str | None):
        problem = f"loss {loss!r}"
    if any(not isinstance(m, str) for m in out.get("metrics") or []):
        problem = "metrics given as objects"
    try:
        import json

        json.dumps(out)
    except TypeError:
        problem = problem or "a compile argument"
    if problem:
        import warnings

        warnings.warn(
            f"{name}: saved without compile settings ({problem} cannot be stored by name); "
            "fnn.load_model returns it uncompiled: call compile() again.",
            stacklevel=3,
        )
        return None
    return out
