"""Compile resolution for the Keras-style ``Model``: losses, metrics, loss weights and
optimizers from ``compile``'s arguments (names or objects), resolved against the model's
output shapes once per ``compile``; and the compile settings as JSON for model files.
Keras keeps this apart from its trainer too (``compile_utils.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
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
    ``output_names`` names tuple outputs (a functional model's output layers).

    ``config["metrics"]`` are reported without sample or class weights and
    ``config.get("weighted_metrics")`` with them (Keras 3's rule; a weighted metric whose
    name is taken is renamed ``"weighted_<name>"``). Metrics whose state is per class are
    built from the output shape, and ``"precision"``/``"recall"``/``"f1_score"``/``"auc"``/
    ``"confusion_matrix"`` with a categorical cross-entropy are multi-class (macro) over the
    output's last axis (see ``fnn.metrics.get``)."""
    cfg = config
    plain, weighted = cfg.get("metrics") or [], cfg.get("weighted_metrics") or []
    if (isinstance(plain, Mapping) or isinstance(weighted, Mapping)) and not isinstance(
        out, tuple | dict
    ):
        raise ConfigError(
            f"{model_name}: compile got metrics per output name, but the model has a "
            f"single output of shape {out.shape}; pass a list."
        )
    plain, weighted = _as_metric_group(plain), _as_metric_group(weighted)
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
        # Keras logs each output's loss too: "<output>_loss" (mean over examples, with the
        # sample weights as the loss itself).
        metrics = [
            _output_metric(
                metrics_lib.weighted(metrics_lib.MeanMetricWrapper(part_loss, "loss")), key, name
            )
            for key, name, part_loss in zip(keys, names, losses)
        ]
        for group in (plain, weighted):
            unknown = sorted(set(group) - set(names)) if isinstance(group, Mapping) else []
            if unknown:
                raise ConfigError(
                    f"{model_name}: compile got metrics for {unknown}, which are not outputs "
                    f"of the model (its outputs are {names})."
                )
        for i, (key, name, part_loss) in enumerate(zip(keys, names, losses)):
            y_shape = np.shape(y_parts[key]) if y is not None else None
            for group, is_weighted in ((plain, False), (weighted, True)):
                for m in _per_output(group, name, i, len(names)):
                    metric = _resolve_metric(
                        m, part_loss, y_shape, out[key].shape, is_weighted, metrics
                    )
                    metrics.append(_output_metric(metric, key, name))
    else:
        # No loss: the model's add_loss terms are the whole objective (Keras allows it).
        loss = _no_loss() if cfg["loss"] is None else losses_lib.get(cfg["loss"])
        if cfg["loss_weights"] is not None:
            weight = float(cfg["loss_weights"])
            inner = loss
            loss = losses_lib.Loss(
                inner.name,
                inner.reduction,
                fn=lambda t, p: weight * jnp.asarray(inner.call(t, p)),
                config=inner.config,
                mask_fn=inner.mask,
            )
        y_shape = None if y is None else tuple(np.shape(jax.tree.leaves(y)[0]))
        metrics = []
        for group, is_weighted in ((plain, False), (weighted, True)):
            for m in group:
                metrics.append(_resolve_metric(m, loss, y_shape, out.shape, is_weighted, metrics))
    return loss, metrics


def _no_loss():
    def zeros(y_true, y_pred):
        del y_true
        return jnp.zeros((jax.tree.leaves(y_pred)[0].shape[0],), jnp.float32)

    return losses_lib.Loss("loss", fn=zeros)


def _as_metric_group(group):
    return group if isinstance(group, Mapping) else list(group)


def _per_output(group, name: str, index: int, count: int) -> list:
    """The metrics of output ``name``: Keras accepts one list for every output, a dict
    keyed by output name, or one list per output."""
    if isinstance(group, Mapping):
        chosen = group.get(name, [])
    elif len(group) == count and group and all(isinstance(g, list | tuple) for g in group):
        chosen = group[index]
    else:
        chosen = group
    if isinstance(chosen, list | tuple):
        return list(chosen)
    return [chosen]


def _resolve_metric(identifier, loss, y_shape, out_shape, is_weighted, taken):
    """One compile metric: resolved against the loss and shapes, built for the output
    shape, marked weighted or not (a copy, so one object may sit in both lists)."""
    classes = out_shape[-1] if len(out_shape) >= 2 and out_shape[-1] > 1 else None
    metric = metrics_lib.get(
        identifier, loss=loss, num_classes=classes, y_true_shape=y_shape, y_pred_shape=out_shape
    )
    metric = metric.build(out_shape)
    metric = metrics_lib.weighted(metric) if is_weighted else metrics_lib.unweighted(metric)
    if is_weighted and metric.name in {m.name for m in taken}:
        metric = metric.renamed(f"weighted_{metric.name}")
    return metric


def hyperparam_states(opt_state) -> list:
    """``optax.inject_hyperparams`` states holding a ``learning_rate`` inside ``opt_state``."""

    def has_learning_rate(node) -> bool:
        hyper = getattr(node, "hyperparams", None)
        return isinstance(hyper, Mapping) and "learning_rate" in hyper

    return optimizers_lib.find_states(opt_state, has_learning_rate)


def map_hyperparam_states(opt_state, fn):
    """``opt_state`` with ``fn`` applied to every ``optax.inject_hyperparams`` state in it."""
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


def optimizer_object(optimizer):
    """The optimizer object of ``compile(optimizer=...)``: a name (``"adam"``) or a
    ``serialize`` dict as its ``fnn.optimizers`` class instance, with Keras's defaults;
    class instances and optax transformations as given. Class instances keep their
    learning rate in ``opt_state`` (``optax.inject_hyperparams``), so schedulers change
    it without recompiling."""
    if isinstance(optimizer, str):
        optimizers_lib.get(optimizer)  # unknown names raise here, listing the valid ones
        return optimizers_lib.by_name(optimizer)
    return optimizers_lib.get(optimizer)


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
            total = total + w * loss.per_example(y_true[key], y_pred[key])
        return total

    return losses_lib.Loss("loss", fn=fn)


def _output_metric(metric, key, prefix):
    def update(state, y_true, y_pred, sample_weight=None):
        return metric.update(state, y_true[key], y_pred[key], sample_weight)

    return metrics_lib.Metric(
        f"{prefix}_{metric.name}",
        metric.init,
        update,
        metric.compute,
        metric.config,
        weighted=metric.weighted,
    )


def compile_to_json(config: Mapping[str, Any] | None, name: str) -> dict | None:
    """``Model.compile`` arguments as JSON, or ``None`` (with a warning) if an optimizer,
    loss or metric is an object that has no registered name. ``fnn.optimizers`` class
    instances are stored as Keras writes them (``optimizers.serialize``)."""
    if config is None:
        return None
    out = dict(config)
    problem = None
    optimizer = out.get("optimizer")
    if isinstance(optimizer, optimizers_lib.Optimizer | optimizers_lib.LossScaleOptimizer):
        try:
            out["optimizer"] = optimizers_lib.serialize(optimizer)
        except ConfigError:
            problem = f"optimizer {optimizer!r}"
    elif not isinstance(optimizer, str | Mapping):
        problem = f"optimizer {optimizer!r}"
    loss = out.get("loss")
    if isinstance(loss, losses_lib.Loss):
        try:
            out["loss"] = losses_lib.serialize(loss)
        except ConfigError:
            problem = f"loss {loss.name!r}"
    elif not isinstance(loss, str | None):
        problem = f"loss {loss!r}"

    def names(group):  # every metric of one list, a dict per output or lists per output
        group = group or []
        items = group.values() if isinstance(group, Mapping) else group
        for item in items:
            yield from (item if isinstance(item, list | tuple) else [item])

    if any(
        not isinstance(m, str)
        for m in [*names(out.get("metrics")), *names(out.get("weighted_metrics"))]
    ):
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


def compile_to_keras(config: Mapping[str, Any] | None, optimizer) -> dict | None:
    """``compile``'s settings as a Keras file's ``compile_config`` (optimizer class
    serialized, loss and metrics by name), or None when one of them has no Keras name."""
    if config is None:
        return None
    try:
        opt = optimizers_lib.serialize(optimizer)
    except ConfigError:
        return None
    loss = config.get("loss")
    if isinstance(loss, losses_lib.Loss):
        try:
            loss = losses_lib.serialize(loss)
        except ConfigError:
            return None
    metrics = config.get("metrics") or []
    if not isinstance(loss, str | dict | None) or not all(isinstance(m, str) for m in metrics):
        return None
    return {
        "optimizer": opt,
        "loss": loss,
        "loss_weights": config.get("loss_weights"),
        "metrics": list(metrics) or None,
        "weighted_metrics": None,
        "run_eagerly": False,
        "steps_per_execution": 1,
        "jit_compile": True,
    }
