"""Per-example gradients and differentially private SGD (Abadi et al., 2016).

``per_example_grads`` is ``jax.vmap`` of ``jax.grad`` over the batch axis (in chunks, so
only ``chunk_size`` gradients live at once). ``make_dp_train_step`` is ``make_train_step``
with the gradient replaced by the DP-SGD estimate: each example's gradient clipped to
global l2 norm ``l2_norm_clip``, summed, Gaussian noise of std
``noise_multiplier * l2_norm_clip`` added, divided by the batch size. ``dp_epsilon``
asks Google's ``dp-accounting`` (the accountant TF-Privacy and JAX-Privacy use) for the
epsilon of that many Poisson-sampled Gaussian steps at a given delta.

>>> import jax, jax.numpy as jnp, fnn
>>> def loss(w, x, y):
...     return (x @ w - y) ** 2
>>> g = fnn.train.per_example_grads(loss, jnp.ones(3), jnp.eye(3), jnp.zeros(3))
>>> g.shape
(3, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fnn.core.errors import ConfigError
from fnn.core.layer import Layer
from fnn.training import ghost_norms as ghost_lib
from fnn.training import losses as losses_lib
from fnn.training import optimizers as optimizers_lib
from fnn.training import step as step_lib

__all__ = [
    "DPConfig",
    "clip_by_global_norm",
    "dp_epsilon",
    "make_dp_train_step",
    "per_example_grads",
]


class DPConfig(NamedTuple):
    """DP-SGD settings of ``Model.fit(dp=...)`` and the CLI's ``dp:`` section:
    ``l2_norm_clip`` (per-example gradient norm bound, > 0), ``noise_multiplier`` (noise
    std over the clip, >= 0), ``delta`` (of the reported epsilon, in (0, 1)),
    ``chunk_size`` (examples per per-example-gradient chunk; None: the whole batch) and
    ``accountant`` (``"rdp"`` or ``"pld"``, see ``dp_epsilon``).

    >>> import fnn
    >>> fnn.train.DPConfig.get({"l2_norm_clip": 1.0, "noise_multiplier": 1.1}).delta
    1e-05
    """

    l2_norm_clip: float
    noise_multiplier: float
    delta: float = 1e-5
    chunk_size: int | None = None
    accountant: str = "rdp"

    @classmethod
    def get(cls, value, *, what: str = "dp") -> DPConfig:
        """A checked ``DPConfig`` from one or a mapping of its fields (``ConfigError``
        naming ``what`` and the field on a bad value)."""
        if isinstance(value, DPConfig):
            value = value._asdict()
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{what}: expected a mapping with l2_norm_clip and noise_multiplier (and "
                f"optionally delta, chunk_size, accountant), got {value!r}."
            )
        unknown = sorted(set(value) - set(cls._fields))
        missing = [k for k in ("l2_norm_clip", "noise_multiplier") if k not in value]
        if unknown or missing:
            problems = [f"unknown keys {unknown}"] * bool(unknown)
            problems += [f"missing keys {missing}"] * bool(missing)
            raise ConfigError(
                f"{what}: {', '.join(problems)}; valid keys: {', '.join(cls._fields)}."
            )
        cfg = cls(**value)

        def number(name, ok, rule):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not ok(v):
                raise ConfigError(f"{what}: expected {name} {rule}, got {v!r}.")

        number("l2_norm_clip", lambda v: v > 0, "> 0")
        number("noise_multiplier", lambda v: v >= 0, ">= 0")
        number("delta", lambda v: 0 < v < 1, "in (0, 1)")
        if cfg.chunk_size is not None and (
            isinstance(cfg.chunk_size, bool)
            or not isinstance(cfg.chunk_size, int)
            or cfg.chunk_size < 1
        ):
            raise ConfigError(
                f"{what}: expected chunk_size an int >= 1 or null, got {cfg.chunk_size!r}."
            )
        if cfg.accountant not in ("rdp", "pld"):
            raise ConfigError(
                f"{what}: expected accountant 'rdp' or 'pld', got {cfg.accountant!r}."
            )
        return cfg._replace(
            l2_norm_clip=float(cfg.l2_norm_clip),
            noise_multiplier=float(cfg.noise_multiplier),
            delta=float(cfg.delta),
        )

    def epsilon(self, *, num_examples: int, batch_size: int, steps: int) -> float:
        """``dp_epsilon`` after ``steps`` steps (``inf`` without noise)."""
        if self.noise_multiplier == 0 or steps == 0:
            return math.inf if steps else 0.0
        return dp_epsilon(
            num_examples=num_examples,
            batch_size=min(batch_size, num_examples),
            noise_multiplier=self.noise_multiplier,
            delta=self.delta,
            steps=steps,
            accountant=self.accountant,
        )


def _chunked_map(
    fn, batch_args, batch_size: int, chunk_size: int | None, *, pad=False, what="per_example_grads"
):
    """``vmap(fn)`` over the leading axis of ``batch_args`` in ``lax.map`` chunks; with
    ``pad``, a batch that ``chunk_size`` does not divide is padded with zero rows whose
    outputs are dropped."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise ConfigError(f"{what}: expected chunk_size >= 1 or None, got {chunk_size!r}.")
    if chunk_size is None or chunk_size >= batch_size:
        return jax.vmap(fn)(*batch_args)
    extra = -batch_size % chunk_size
    if extra and not pad:
        raise ConfigError(
            f"{what}: expected chunk_size dividing the batch size {batch_size}, "
            f"got chunk_size={chunk_size}. Pick a divisor (or None for one vmap)."
        )

    def chunked(a):
        if extra:
            a = jnp.concatenate([a, jnp.zeros((extra, *a.shape[1:]), a.dtype)])
        return a.reshape(-1, chunk_size, *a.shape[1:])

    out = jax.lax.map(lambda args: jax.vmap(fn)(*args), jax.tree.map(chunked, batch_args))
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:batch_size], out)


def per_example_grads(
    loss_fn: Callable, params, *batch, chunk_size: int | None = None, has_aux: bool = False
):
    """Gradients of ``loss_fn(params, *example) -> scalar`` for every example of ``batch``.

    ``batch``: arrays (or pytrees) with a leading ``[batch]`` axis; ``loss_fn`` sees one
    example at a time (no batch axis). Returns ``params``' tree with each leaf
    ``[batch, *leaf.shape]`` (and the stacked aux with ``has_aux``). ``chunk_size``: at
    most that many per-example gradients at once (a ``lax.map`` over chunks), to bound
    memory; it must divide the batch size.
    """
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ConfigError("per_example_grads: expected at least one batched array, got none.")
    n = leaves[0].shape[0]
    grad_fn = jax.grad(loss_fn, has_aux=has_aux)
    return _chunked_map(lambda *ex: grad_fn(params, *ex), batch, n, chunk_size)


def global_norm(tree) -> jax.Array:
    """Scalar l2 norm over all leaves of ``tree`` (accumulated in float32)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)))


def _add_noise(summed, key, std, n):
    """``(summed + N(0, std^2 I)) / n`` leaf by leaf, from one normal draw split over
    the leaves (one random program instead of one per leaf)."""
    leaves, treedef = jax.tree.flatten(summed)
    sizes = [leaf.size for leaf in leaves]
    z = jax.random.normal(key, (sum(sizes),), jnp.float32)
    out, offset = [], 0
    for leaf, size in zip(leaves, sizes):
        noise = z[offset : offset + size].reshape(leaf.shape).astype(leaf.dtype)
        out.append((leaf + std * noise) / n)
        offset += size
    return jax.tree.unflatten(treedef, out)


def clip_by_global_norm(grads, l2_norm_clip: float):
    """``grads * min(1, l2_norm_clip / ||grads||)`` (global l2 norm over all leaves of one
    example's gradient tree); returns ``(clipped, norm)``."""
    norm = global_norm(grads)
    factor = jnp.minimum(1.0, l2_norm_clip / jnp.maximum(norm, 1e-12))
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads), norm


def make_dp_train_step(
    layer: Layer,
    loss,
    optimizer,
    metrics: Sequence = (),
    *,
    l2_norm_clip: float,
    noise_multiplier: float,
    chunk_size: int | None = None,
    ghost_norms: bool = True,
) -> Callable:
    """Pure DP-SGD ``step(train_state, batch) -> (train_state, logs)``, a drop-in for
    ``make_train_step`` (same ``TrainState``, metrics and ``logs["loss"]``).

    Gradient: ``(sum_i clip(g_i) + N(0, (noise_multiplier * l2_norm_clip)^2 I)) / batch``
    where ``g_i`` is example i's gradient of ``loss`` (``layer.apply(..., train=True)`` on
    that example alone, its own dropout key) and ``clip`` scales it to global norm at most
    ``l2_norm_clip``. The noise key is derived from ``(train_state.rng, step)``. Extra logs:
    ``"grad_norm_mean"`` (mean unclipped per-example norm) and ``"clipped_fraction"``.
    Model state (e.g. BatchNorm statistics) is not updated: batch statistics mix examples,
    which per-example clipping cannot bound. ``sample_weight`` is not supported.

    ``ghost_norms=True`` (default): one pass gives each example's loss and gradient norm,
    with the leaves that ``fnn.training.ghost_norms`` has a rule for (Dense kernels and
    biases: ``||x_i||^2 ||g_i||^2``) taken from their op's input and output cotangent and
    the rest by per-example ``jax.grad`` (``chunk_size`` examples at a time; a batch it
    does not divide is padded); the ruled leaves' clipped sum is
    ``sum_i factor_i x_i^T g_i`` with ``factor_i = min(1, l2_norm_clip / ||g_i||)``, and
    only the other leaves take a second, weighted backward pass. ``ghost_norms=False``:
    two passes for every leaf (per-example norms by ``vmap`` of ``grad``, then the
    gradient of ``sum_i factor_i * loss_i``). Both give the same step; the
    ``[batch, *params]`` stack of gradients is never kept.
    """
    concrete = not any(isinstance(v, jax.core.Tracer) for v in (l2_norm_clip, noise_multiplier))
    # Traced values are allowed (e.g. a noise sweep under one jit); only concrete ones are checked.
    if concrete and (l2_norm_clip <= 0 or noise_multiplier < 0):
        raise ConfigError(
            "make_dp_train_step: expected l2_norm_clip > 0 and noise_multiplier >= 0, got "
            f"l2_norm_clip={l2_norm_clip}, noise_multiplier={noise_multiplier}."
        )
    loss = losses_lib.get(loss)
    optimizer = optimizers_lib.get(optimizer)
    if isinstance(optimizer, optimizers_lib.LossScaleOptimizer):
        # Its update expects scaled gradients; per-example clipping bounds unscaled ones.
        raise ConfigError(
            "make_dp_train_step: LossScaleOptimizer is not supported by DP-SGD; train in "
            "float32 or mixed_bfloat16 (no loss scaling needed)."
        )
    metrics = step_lib._resolve_metrics(metrics, loss)

    def example_loss(params, model_state, inputs, y, rng):
        # One example as a batch of one: no layer (BatchNorm in train mode included) can
        # mix examples, which the per-example bound needs.
        batched = jax.tree.map(lambda a: a[None], inputs)
        y_pred, _ = layer.apply(params, model_state, *batched, rng=rng, train=True)
        value = loss(y[None], y_pred)
        if jnp.ndim(value):
            value = jnp.sum(value)
        return value, y_pred[0]

    example_grad = jax.grad(lambda *a: example_loss(*a)[0])

    def clip_factors(norms):
        return jax.lax.stop_gradient(jnp.minimum(1.0, l2_norm_clip / jnp.maximum(norms, 1e-12)))

    def chunked(fn, batch_args, n):
        return _chunked_map(fn, batch_args, n, chunk_size, pad=True, what="make_dp_train_step")

    def weighted_grad(params, model_state, batch_args, factors, wrt=None):
        """``sum_i factor_i * g_i`` as the gradient of ``sum_i factor_i * loss_i``, one
        backward pass over the examples (each still alone in its forward pass, with the
        same key); only the flat leaves ``wrt`` (default all) are differentiated."""
        leaves, treedef = jax.tree.flatten(params)
        wrt = range(len(leaves)) if wrt is None else wrt

        def weighted(chosen):
            flat = list(leaves)
            for i, leaf in zip(wrt, chosen):
                flat[i] = leaf
            p = jax.tree.unflatten(treedef, flat)
            values, y_pred = jax.vmap(example_loss, in_axes=(None, None, 0, 0, 0))(
                p, model_state, *batch_args
            )
            return jnp.sum(factors * values), (values, y_pred)

        return jax.grad(weighted, has_aux=True)([leaves[i] for i in wrt])

    def two_pass_clipped_sum(params, model_state, batch_args, n):
        # Pass 1: only the per-example norms leave the vmap, so XLA fuses each example's
        # gradient into its squared sum instead of keeping [batch, *params] for a second
        # read (measured 2x faster than clipping the stacked gradients on XLA:CPU).
        def norm(ex_inputs, ex_y, key):
            return global_norm(example_grad(params, model_state, ex_inputs, ex_y, key))

        norms = chunked(norm, batch_args, n)
        # Pass 2: sum_i clip(g_i) = grad of sum_i factor_i * loss_i.
        flat, (values, y_pred) = weighted_grad(params, model_state, batch_args, clip_factors(norms))
        summed = jax.tree.unflatten(jax.tree.structure(params), flat)
        return summed, norms, values, y_pred

    def ghost_clipped_sum(params, model_state, batch_args, n):
        # One pass gives the losses, the outputs and every norm (ruled leaves from their
        # op's input and output cotangent, the others by per-example grad); the ruled
        # leaves' clipped sum is then one contraction, and only the other leaves need
        # the weighted backward pass.
        def one(p, ex_inputs, ex_y, key):
            return example_loss(p, model_state, ex_inputs, ex_y, key)

        fast = ghost_lib.ghost_pass(
            one, params, batch_args, has_aux=True, chunk_map=lambda f, b: chunked(f, b, n)
        )
        norms = jnp.sqrt(fast.sq_norms)
        factors = clip_factors(norms)
        flat = fast.weighted_sum(factors)
        rest = [i for i, fallback in enumerate(fast.fallback) if fallback]
        if rest:
            grads, _ = weighted_grad(params, model_state, batch_args, factors, rest)
            for i, g in zip(rest, grads):
                flat[i] = g
        summed = jax.tree.unflatten(jax.tree.structure(params), flat)
        return summed, norms, fast.values, fast.aux

    def step(train_state, batch):
        inputs, y, sw = step_lib._unpack(batch)
        if sw is not None:
            raise ConfigError("make_dp_train_step: sample_weight is not supported by DP-SGD.")
        n = step_lib._batch_size(inputs)
        step_rng = jax.random.fold_in(train_state.rng, train_state.step)
        noise_key, example_key = jax.random.split(step_rng)
        # Unused (and compiled away) when the layer draws no randomness.
        example_keys = jax.random.split(example_key, n)
        params, model_state = train_state.params, train_state.state
        batch_args = (inputs, y, example_keys)
        if ghost_norms:
            summed, norms, values, y_pred = ghost_clipped_sum(params, model_state, batch_args, n)
        else:
            summed, norms, values, y_pred = two_pass_clipped_sum(params, model_state, batch_args, n)
        grads = _add_noise(summed, noise_key, noise_multiplier * l2_norm_clip, n)
        updates, opt_state = optimizer.update(grads, train_state.opt_state, params)
        loss_value = jnp.mean(values)
        metric_states = step_lib._update_metrics(
            train_state.metric_states, metrics, loss_value, n, y, y_pred, None, None
        )
        new = train_state._replace(
            step=train_state.step + 1,
            params=optax.apply_updates(params, updates),
            opt_state=opt_state,
            metric_states=metric_states,
        )
        logs = {
            "loss": loss_value,
            "grad_norm_mean": jnp.mean(norms),
            "clipped_fraction": jnp.mean((norms > l2_norm_clip).astype(jnp.float32)),
        }
        return new, logs

    return step


def dp_epsilon(
    *,
    num_examples: int,
    batch_size: int,
    noise_multiplier: float,
    delta: float,
    epochs: float | None = None,
    steps: int | None = None,
    accountant: str = "rdp",
) -> float:
    """Epsilon of DP-SGD at ``delta``: ``steps`` (default ``ceil(epochs * num_examples /
    batch_size)``) compositions of a Gaussian mechanism (``noise_multiplier``) on a
    Poisson subsample of rate ``batch_size / num_examples``, from ``dp-accounting``'s
    ``"rdp"`` (Renyi DP) or ``"pld"`` (privacy loss distribution, tighter) accountant.

    >>> import fnn
    >>> round(fnn.train.dp_epsilon(num_examples=60000, batch_size=256, noise_multiplier=1.1,
    ...                            epochs=60, delta=1e-5), 2)
    2.6
    """
    from dp_accounting import dp_event, pld, rdp

    if (epochs is None) == (steps is None):
        raise ConfigError("dp_epsilon: expected exactly one of epochs= or steps=.")
    if not 0 < batch_size <= num_examples or noise_multiplier <= 0 or not 0 < delta < 1:
        raise ConfigError(
            "dp_epsilon: expected 0 < batch_size <= num_examples, noise_multiplier > 0 and "
            f"0 < delta < 1, got batch_size={batch_size}, num_examples={num_examples}, "
            f"noise_multiplier={noise_multiplier}, delta={delta}."
        )
    if steps is None:
        steps = math.ceil(epochs * num_examples / batch_size)
    event = dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(
            batch_size / num_examples, dp_event.GaussianDpEvent(noise_multiplier)
        ),
        int(steps),
    )
    if accountant == "rdp":
        acc = rdp.RdpAccountant()
    elif accountant == "pld":
        acc = pld.PLDAccountant()
    else:
        raise ConfigError(f"dp_epsilon: expected accountant 'rdp' or 'pld', got {accountant!r}.")
    acc.compose(event)
    return float(acc.get_epsilon(delta))
