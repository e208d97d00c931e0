"""Compile resolution for the Keras-style ``Model``: losses, metrics, loss weights and
optimizers from ``compile``'s arguments (names or objects), resolved against the model's
output shapes once per ``compile``; and the compile settings as JSON for model files.
Keras keeps this apart from its trainer too (``compile_utils.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from fnn.core.errors import ConfigError
from fnn.training import losses as losses_lib
from fnn.training import metrics as metrics_lib
from fnn.training import optimizers as optimizers_lib


def resolve(
    config: Mapping[str, Any], out, y, model_name: str, output_names: list[str] | None = None
) -> tuple:
    """``(loss, metrics)`` of ``compile``'s settings for outputs shaped ``out`` and targets
    ``y``: per-output losses combined with ``loss_weights``, ``"<output>_loss"`` logs and
    per-output metrics for tuple/dict outputs; ``"accuracy"`` resolved as Keras does.
    ``output_names`` names tuple outputs (a functional model's output layers)."""
    cfg = config
    multi = isinstance(out, tuple | dict) or isinstance(cfg["loss"], list | tuple | dict)
    if multi:
        if not isinstance(out, tuple | dict):
            raise ConfigError(
                f"{model_name}: compile got one loss per output, but the model has a single "
                f"output of shape {out.shape}."
            )
        names = _output_names(out)
        if output_names is not None and not isinstance(out, dict):
            names = list(output_names)
        keys = list(out) if isinstance(out, dict) else list(range(len(out)))
        losses = [losses_lib.get(v) for v in _by_output(cfg["loss"], names, "losses")]
        weights = _by_output(
            1.0 if cfg["loss_weights"] is None else cfg["loss_weights"], names, "loss_weights"
        )
        loss = _combined_loss(losses, weights, names if isinstance(out, dict) else None)
        y_parts = (
            y if isinstance(y, Mapping) else (tuple(y) if isinstance(y, list | tuple) else (y,))
        )
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
    return loss, metrics


def hyperparam_states(opt_state) -> list:
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


def map_hyperparam_states(opt_state, fn):
    hyper = getattr(opt_state, "hyperparams", None)
    if isinstance(hyper, Mapping) and "learning_rate" in hyper:
        return fn(opt_state)
    if hasattr(opt_state, "_fields"):  # NamedTuple
        return type(opt_state)(*(map_hyperparam_states(c, fn) for c in opt_state))
    if isinstance(opt_state, tuple | list):
        return type(opt_state)(map_hyperparam_states(c, fn) for c in opt_state)
    if isinstance(opt_state, Mapping):
        return {k: map_hyperparam_states(v, fn) for k, v in opt_state.items()}
    return opt_state


def injectable_optimizer(optimizer):
    """A string optimizer built with ``optax.inject_hyperparams`` so its learning rate lives
    in ``opt_state`` (schedulers change it without recompiling); objects are used as given."""
    import optax

    if not isinstance(optimizer, str):
        return optimizers_lib.get(optimizer)
    name = optimizer.lower()
    lr = optimizers_lib.DEFAULT_LEARNING_RATE.get(name, 1e-3)
    optimizers_lib.get(name)  # unknown names raise here, listing the valid ones
    return optax.inject_hyperparams(
        lambda learning_rate: optimizers_lib.get(name, learning_rate=learning_rate)
    )(learning_rate=lr)


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
    keys = names if names else range(len(losses))

    def fn(y_true, y_pred):
        total = 0.0
        for key, loss, w in zip(keys, losses, weights):
            total = total + w * loss(y_true[key], y_pred[key])
        return total

    return losses_lib.Loss(fn, "loss")


def _output_metric(metric, key, prefix):
    def update(state, y_true, y_pred, sample_weight=None):
        return metric.update(state, y_true[key], y_pred[key], sample_weight)

    return metrics_lib.Metric(
        f"{prefix}_{metric.name}", metric.init, update, metric.compute, metric.config
    )


def compile_to_json(config: Mapping[str, Any] | None, name: str) -> dict | None:
    """``Model.compile`` arguments as JSON, or ``None`` (with a warning) if an optimizer,
    loss or metric is an object that has no registered name."""
    if config is None:
        return None
    out = dict(config)
    problem = None
    if not isinstance(out.get("optimizer"), str):
        problem = f"optimizer {out.get('optimizer')!r}"
    loss = out.get("loss")
    if isinstance(loss, losses_lib.Loss):
        try:
            out["loss"] = losses_lib.serialize(loss)
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
