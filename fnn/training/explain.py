"""Attributions: which input features a prediction depends on (``fnn.explain``).

Every method scores one output per example, ``f(x) = output[target]`` (the target class's
logit; by default the predicted class), and returns attributions shaped like the inputs,
``[batch, ...] -> [batch, ...]``, vmapped over the batch:

- ``saliency``: ``|df/dx|`` (Simonyan et al., 2013); ``gradient_x_input``: ``x * df/dx``;
- ``smoothgrad``: the mean gradient over noisy copies ``x + N(0, (noise * (max - min))^2)``
  (Smilkov et al., 2017);
- ``integrated_gradients``: ``(x - x') * mean_k df/dx(x' + a_k (x - x'))`` over a
  trapezoid rule on ``a`` in [0, 1] (Sundararajan et al., 2017); it satisfies
  completeness, ``sum(attr) == f(x) - f(x')`` up to the quadrature error;
- ``occlusion``: ``f(x) - f(x with a window set to the baseline)`` for each window of a
  sliding grid, averaged over the windows covering a feature (Zeiler & Fergus, 2014).

``model``: a ``Layer`` (pass ``params`` and ``state``) or a ``Model`` (its ``layer``,
``params`` and ``state`` are used).

>>> import jax, jax.numpy as jnp, fnn
>>> layer = fnn.layers.Dense(3)
>>> params, state = layer.init(jax.random.key(0), jnp.zeros((2, 4)))
>>> fnn.explain.saliency(layer, jnp.ones((2, 4)), params=params, state=state).shape
(2, 4)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core.errors import ConfigError, ShapeError

__all__ = [
    "gradient_x_input",
    "integrated_gradients",
    "occlusion",
    "plot_attributions",
    "saliency",
    "smoothgrad",
]


def _parts(model, params, state):
    if hasattr(model, "init") and hasattr(model, "apply") and not hasattr(model, "layer"):
        if params is None:
            raise ConfigError(
                f"explain: expected params= (and state=) with the layer {model.name!r}."
            )
        return model, params, {} if state is None else state
    layer = getattr(model, "layer", None)
    if layer is None:
        raise ConfigError(f"explain: expected a fnn Layer or Model, got {type(model).__name__}.")
    return (
        layer,
        model.params if params is None else params,
        model.state if state is None else state,
    )


def _scorer(model, params, state, x, target) -> tuple[Callable, jax.Array]:
    """``(score(x_one, t) -> scalar, targets [batch])``."""
    layer, params, state = _parts(model, params, state)
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ShapeError(f"explain: expected inputs with a batch axis, got shape {x.shape}.")

    def outputs(x_one):
        y, _ = layer.apply(params, state, x_one[None], train=False)
        return jnp.reshape(y[0], (-1,))

    if target is None:
        target = jax.vmap(lambda xi: jnp.argmax(outputs(xi)))(x)
    target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), (x.shape[0],))

    def score(x_one, t):
        return outputs(x_one)[t]

    return score, target


def saliency(model, x, *, target=None, params=None, state=None) -> jax.Array:
    """``|d output[target] / d x|`` per example: ``[batch, ...] -> [batch, ...]``."""
    score, target = _scorer(model, params, state, x, target)
    return jnp.abs(jax.vmap(jax.grad(score))(jnp.asarray(x), target))


def gradient_x_input(model, x, *, target=None, params=None, state=None) -> jax.Array:
    """``x * d output[target] / d x``: ``[batch, ...] -> [batch, ...]``."""
    score, target = _scorer(model, params, state, x, target)
    x = jnp.asarray(x)
    return x * jax.vmap(jax.grad(score))(x, target)


def smoothgrad(
    model,
    x,
    *,
    key: jax.Array,
    samples: int = 32,
    noise: float = 0.15,
    target=None,
    params=None,
    state=None,
) -> jax.Array:
    """Mean gradient over ``samples`` noisy copies of each example, noise std
    ``noise * (max(x) - min(x))`` per example: ``[batch, ...] -> [batch, ...]``."""
    score, target = _scorer(model, params, state, x, target)
    x = jnp.asarray(x)
    keys = jax.random.split(key, x.shape[0])

    def one(xi, t, k):
        std = noise * (jnp.max(xi) - jnp.min(xi))
        eps = jax.random.normal(k, (samples, *xi.shape), xi.dtype) * std
        return jnp.mean(jax.vmap(lambda e: jax.grad(score)(xi + e, t))(eps), axis=0)

    return jax.vmap(one)(x, target, keys)


def integrated_gradients(
    model, x, *, baseline=None, steps: int = 64, target=None, params=None, state=None
) -> jax.Array:
    """``(x - baseline) * integral_0^1 df/dx(baseline + a (x - baseline)) da`` with the
    trapezoid rule on ``steps`` intervals: ``[batch, ...] -> [batch, ...]``. ``baseline``:
    zeros by default, or an array broadcastable to ``x``'s shape."""
    if steps < 1:
        raise ConfigError(f"integrated_gradients: expected steps >= 1, got {steps}.")
    score, target = _scorer(model, params, state, x, target)
    x = jnp.asarray(x)
    base = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(baseline, x.shape)
    alphas = jnp.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
    weights = jnp.full((steps + 1,), 1.0 / steps, x.dtype).at[jnp.array([0, -1])].mul(0.5)

    def one(xi, bi, t):
        path = bi[None] + alphas.reshape(-1, *([1] * xi.ndim)) * (xi - bi)[None]
        grads = jax.vmap(lambda p: jax.grad(score)(p, t))(path)
        return (xi - bi) * jnp.tensordot(weights, grads, axes=1)

    return jax.vmap(one)(x, base, target)


def occlusion(
    model,
    x,
    *,
    window: Sequence[int],
    stride: Sequence[int] | None = None,
    baseline: float = 0.0,
    target=None,
    params=None,
    state=None,
) -> jax.Array:
    """Drop of ``output[target]`` when a window of the example is set to ``baseline``,
    averaged over all windows that cover a feature: ``[batch, ...] -> [batch, ...]``.

    ``window``/``stride`` (default: ``window``) have one entry per non-batch axis of
    ``x``, e.g. ``(2, 2, 1)`` for ``[batch, h, w, c]`` images; features no window covers
    get 0.
    """
    score, target = _scorer(model, params, state, x, target)
    x = jnp.asarray(x)
    shape = x.shape[1:]
    window = tuple(int(w) for w in window)
    stride = window if stride is None else tuple(int(s) for s in stride)
    if len(window) != len(shape) or len(stride) != len(shape) or min(window + stride) < 1:
        raise ShapeError(
            f"occlusion: expected window and stride with {len(shape)} positive entries (one "
            f"per non-batch axis of inputs {x.shape}), got window={window}, stride={stride}."
        )
    if any(w > s for w, s in zip(window, shape)):
        raise ShapeError(f"occlusion: window {window} is larger than the example shape {shape}.")
    starts = np.stack(
        np.meshgrid(
            *[np.arange(0, s - w + 1, st) for s, w, st in zip(shape, window, stride)],
            indexing="ij",
        ),
        axis=-1,
    ).reshape(-1, len(shape))
    masks = np.zeros((len(starts), *shape), bool)
    for i, start in enumerate(starts):
        masks[(i, *[slice(a, a + w) for a, w in zip(start, window)])] = True
    masks = jnp.asarray(masks)
    coverage = jnp.maximum(jnp.sum(masks, axis=0), 1).astype(x.dtype)

    def one(xi, t):
        full = score(xi, t)
        occluded = jax.vmap(lambda m: score(jnp.where(m, baseline, xi), t))(masks)
        drops = (full - occluded).astype(xi.dtype)
        return jnp.tensordot(drops, masks.astype(xi.dtype), axes=1) / coverage

    return jax.vmap(one)(x, target)


def plot_attributions(images, attributions, path: str, *, titles=None, cmap: str = "bwr"):
    """Write a PNG: a row of images (``[n, h, w]`` or ``[n, h, w, c]``) over a row of their
    attributions of the same shape (summed over channels, colour scale symmetric around 0).
    Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, attributions = np.asarray(images), np.asarray(attributions)
    if images.shape[0] != attributions.shape[0]:
        raise ShapeError(
            f"plot_attributions: expected as many attributions as images, got "
            f"{attributions.shape[0]} and {images.shape[0]}."
        )
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        img = images[i][..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images[i]
        att = attributions[i].sum(-1) if attributions.ndim == 4 else attributions[i]
        lim = float(np.abs(att).max()) or 1.0
        axes[0, i].imshow(img, cmap="gray_r")
        axes[1, i].imshow(att, cmap=cmap, vmin=-lim, vmax=lim)
        if titles is not None:
            axes[0, i].set_title(str(titles[i]), fontsize=8)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
