"""Per-example gradient norms without per-example gradients ("ghost clipping").

A parameter used once, by one linear op with a closed rule, has a per-example gradient
that is a function of that op's other input and of the cotangent of its output, both of
which one batched forward and backward pass yields:

- ``dot_general`` with the parameter as one operand (Dense, EinsumDense, attention
  projections): ``dW_i = X_i^T G_i`` with ``X_i [T, C]`` the other operand and ``G_i
  [T, P]`` the output's cotangent of example i (``T``: its positions, 1 for an MLP), so
  ``||dW_i||^2 = sum_{t,s} (X_i X_i^T)_{ts} (G_i G_i^T)_{ts}`` (Goodfellow 2015; Li et
  al. 2022 for the sequence case), or ``||X_i^T G_i||^2`` when that is cheaper;
- ``broadcast_in_dim``, ``add`` or ``mul`` of the parameter (biases, normalization
  scales): the cotangent (times the other factor), summed over the broadcast axes; a
  parameter may be reshaped first.

The rules are found on the jaxpr of the per-example loss (no hooks in the layers): every
parameter's uses are counted through nested ``jit`` calls; one that is used exactly once
by a ruled op is "ghost", any other (convolutions, embeddings, shared weights, use inside
``scan``/``remat``/custom derivatives, a dtype cast first) falls back to ``jax.grad`` of
that example, so the norms are exact either way. Probes (zeros added to each ruled op's
output) carry the cotangents out of the backward pass; their gradient is ``G``.

>>> import jax, jax.numpy as jnp
>>> def loss(p, x, y):
...     return jnp.sum((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2)
>>> @jax.jit
... def norms(p, x, y):  # ghost norms, and a loop of jax.grad over the 4 examples
...     loop = [jax.tree.leaves(jax.grad(loss)(p, x[i], y[i])) for i in range(4)]
...     exact = jnp.stack([sum(jnp.sum(g**2) for g in gs) for gs in loop])
...     return ghost_pass(loss, p, (x, y)).sq_norms, exact
>>> p = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
>>> fast, exact = norms(p, jnp.arange(12.0).reshape(4, 3) / 10, jnp.zeros((4, 2)))
>>> bool(jnp.allclose(fast, exact, rtol=1e-5))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

try:
    from jax.extend.core import Literal, Var
except ImportError:  # older jax
    from jax.core import Literal, Var

__all__ = ["GhostPass", "ghost_pass"]

# Calls whose body is inlined when a parameter flows into it (jnp functions are jitted).
_CALLS = ("jit", "pjit", "closed_call", "core_call")
_VIEWS = ("reshape", "squeeze")


class _Rule(NamedTuple):
    kind: str  # "dot", "broadcast", "add" or "mul"
    leaf: int  # index of the parameter among the flat params
    pos: int  # the parameter's operand position in the op
    eqn: Any  # the jaxpr equation (its params and shapes)


def _find_rules(jaxpr, n_leaves: int) -> tuple[dict[tuple, _Rule], tuple[bool, ...]]:
    """``({path: rule}, fallback per leaf)`` from the uses of the first ``n_leaves`` invars
    of ``jaxpr``; a path is the equation's index at each level of nested calls."""
    uses: dict[int, list] = {i: [] for i in range(n_leaves)}

    def scan(jx, alias, prefix):
        for i, eqn in enumerate(jx.eqns):
            hits = [(p, alias[v]) for p, v in enumerate(eqn.invars) if _is_var(v) and v in alias]
            if not hits:
                continue
            if eqn.primitive.name in _CALLS and "jaxpr" in eqn.params:
                sub = eqn.params["jaxpr"]
                sub = getattr(sub, "jaxpr", sub)
                scan(sub, {sub.invars[p]: leaf for p, leaf in hits}, prefix + (i,))
                continue
            if eqn.primitive.name in _VIEWS and len(eqn.invars) == 1:
                # Same values in another shape (LayerNorm's scale as [1, 1, features]):
                # the uses of the view are the parameter's, its gradient reshaped back.
                alias[eqn.outvars[0]] = hits[0][1]
                continue
            for p, leaf in hits:
                uses[leaf].append((prefix + (i,), p, eqn, len(hits)))
        for v in jx.outvars:
            if _is_var(v) and v in alias:
                uses[alias[v]].append((None, None, None, None))  # returned as is: no rule

    scan(jaxpr, {v: i for i, v in enumerate(jaxpr.invars[:n_leaves])}, ())
    rules, fallback = {}, []
    for leaf in range(n_leaves):
        rule = _rule(leaf, uses[leaf]) if len(uses[leaf]) == 1 else None
        # An unused leaf has a zero gradient: a rule with nothing to add.
        fallback.append(rule is None and bool(uses[leaf]))
        if rule is not None:
            rules[uses[leaf][0][0]] = rule
    return rules, tuple(fallback)


def _is_var(v) -> bool:
    return isinstance(v, Var) and not isinstance(v, Literal)


def _rule(leaf, use) -> _Rule | None:
    ((path, pos, eqn, params_in_op),) = use
    if eqn is None or params_in_op != 1:
        return None
    if not jnp.issubdtype(eqn.invars[pos].aval.dtype, jnp.floating):
        return None
    name = eqn.primitive.name
    if name == "dot_general" and pos in (0, 1):
        (_, _), (lb, rb) = eqn.params["dimension_numbers"]
        # Batch dims would make the weight per-position, not shared: no rule.
        if not lb and not rb:
            return _Rule("dot", leaf, pos, eqn)
    if name == "broadcast_in_dim" and pos == 0 and len(eqn.invars) == 1:
        return _Rule("broadcast", leaf, pos, eqn)
    shapes = [v.aval.shape for v in eqn.invars]
    if name in ("add", "mul") and len({len(s) for s in shapes}) == 1:  # size-1 axes broadcast
        return _Rule(name, leaf, pos, eqn)
    return None


def _nested(paths) -> set:
    return {path[:k] for path in paths for k in range(1, len(path))}


def _run(jaxpr, consts, args, probes, taps, rules, nested, prefix=()):
    """Evaluate ``jaxpr`` (as ``jax.core.eval_jaxpr``), adding ``probes[path]`` to the
    output of each ruled op and keeping its other operand in ``taps[path]``."""
    env = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for i, eqn in enumerate(jaxpr.eqns):
        path = prefix + (i,)
        invals = [read(v) for v in eqn.invars]
        if path in nested:
            sub = eqn.params["jaxpr"]
            jx, consts = getattr(sub, "jaxpr", sub), getattr(sub, "consts", ())
            outs = _run(jx, consts, invals, probes, taps, rules, nested, path)
        else:
            bind_params = eqn.primitive.get_bind_params(eqn.params)
            if isinstance(bind_params, tuple):  # older jax: (subfuns, params)
                subfuns, bind_params = bind_params
                invals = [*subfuns, *invals]
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*invals, **bind_params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            if path in rules:
                outs = [outs[0] + probes[path]]
                if rules[path].kind in ("dot", "mul"):
                    taps[path] = read(eqn.invars[1 - rules[path].pos])
        for v, out in zip(eqn.outvars, outs):
            env[v] = out
    return [read(v) for v in jaxpr.outvars]


def _dot_factors(rule: _Rule, x, g):
    """``(X [B, T, C], G [B, T, P], finish)`` of a dot rule from the stacked other operand
    ``x [B, ...]`` and output cotangent ``g [B, ...]``; ``finish`` maps a ``[C, P]`` matrix
    back to the parameter's layout."""
    (lc, rc), _ = rule.eqn.params["dimension_numbers"]
    pc, oc = (lc, rc) if rule.pos == 0 else (rc, lc)
    shape = tuple(rule.eqn.invars[rule.pos].aval.shape)
    other_rank = x.ndim - 1
    pf = [d for d in range(len(shape)) if d not in pc]
    of = [d for d in range(other_rank) if d not in oc]
    b = x.shape[0]
    xm = jnp.transpose(x, [0, *(d + 1 for d in of), *(d + 1 for d in oc)])
    t = math.prod(x.shape[d + 1] for d in of)
    xm = xm.reshape(b, t, -1)
    # The output's dims are (lhs free, rhs free): put the other operand's free dims first.
    if rule.pos == 0:
        perm = [0, *range(1 + len(pf), 1 + len(pf) + len(of)), *range(1, 1 + len(pf))]
        g = jnp.transpose(g, perm)
    gm = g.reshape(b, t, -1)
    order = [*pc, *pf]
    inverse = [order.index(d) for d in range(len(shape))]

    def finish(m):
        return jnp.transpose(m.reshape([shape[d] for d in order]), inverse)

    return xm, gm, finish


def _dot_sq_norms(xm, gm):
    """``[B]`` squared Frobenius norms of ``X_i^T G_i``, by the cheaper of the Gram form
    and the product itself."""
    _, t, c = xm.shape
    p = gm.shape[-1]
    if t == 1:  # an MLP: ||x_i||^2 ||g_i||^2, elementwise (no matmul kernel)
        return jnp.sum(jnp.square(xm), axis=(1, 2)) * jnp.sum(jnp.square(gm), axis=(1, 2))
    if t * (c + p) <= c * p:
        gram_x = jnp.einsum("btc,bsc->bts", xm, xm)
        gram_g = jnp.einsum("btp,bsp->bts", gm, gm)
        return jnp.sum(gram_x * gram_g, axis=(1, 2))
    return jnp.sum(jnp.square(jnp.einsum("btc,btp->bcp", xm, gm)), axis=(1, 2))


def _elementwise_grads(rule: _Rule, g, other):
    """``[B, *operand shape]``: per-example gradients of a parameter that is broadcast
    (``broadcast_in_dim``), added or multiplied elementwise (size-1 axes broadcast), from
    the output cotangent ``g [B, ...]`` (and the other factor ``other [B, ...]`` of a
    ``mul``)."""
    aval = rule.eqn.invars[rule.pos].aval
    if rule.kind == "mul":
        g = g * other
    if rule.kind == "broadcast":
        dims = rule.eqn.params["broadcast_dimensions"]
    else:
        dims = tuple(range(len(aval.shape)))
    summed = tuple(d + 1 for d in range(g.ndim - 1) if d not in dims)
    kept = jnp.sum(g, axis=summed) if summed else g
    # A size-1 operand axis broadcast to a longer one: summed, kept as 1.
    expand = tuple(k + 1 for k, d in enumerate(dims) if aval.shape[k] == 1 and g.shape[d + 1] != 1)
    if expand:
        kept = jnp.sum(kept, axis=expand, keepdims=True)
    return kept.reshape(g.shape[0], *aval.shape)


class GhostPass(NamedTuple):
    """What ``ghost_pass`` returns: ``values [B]`` (per-example losses), ``aux`` (stacked
    ``[B, ...]``, None without ``has_aux``), ``sq_norms [B]`` (squared per-example gradient
    norms over all leaves, float32 or the params' float64), ``fallback`` (per flat leaf:
    True where no rule applied), and ``weighted_sum(factors [B]) -> list`` of
    ``sum_i factors_i * g_i`` for each ruled leaf (None for fallback leaves)."""

    values: jax.Array
    aux: Any
    sq_norms: jax.Array
    fallback: tuple[bool, ...]
    weighted_sum: Callable


def ghost_pass(
    loss_fn: Callable,
    params,
    batch: tuple,
    *,
    has_aux: bool = False,
    chunk_map: Callable | None = None,
) -> GhostPass:
    """One pass over ``batch`` (a tuple of arrays or pytrees, leading ``[B]`` axis) giving
    each example's loss and gradient norm of ``loss_fn(params, *example) -> scalar`` (or
    ``(scalar, aux)`` with ``has_aux``), seen one example at a time as in
    ``per_example_grads``. ``chunk_map(fn, batch)``: how the per-example function is
    mapped over the batch (default ``jax.vmap(fn)(*batch)``).
    """
    leaves, treedef = jax.tree.flatten(params)
    example = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), batch)

    def flat_loss(flat, *ex):
        return loss_fn(jax.tree.unflatten(treedef, flat), *ex)

    closed, out_shape = jax.make_jaxpr(flat_loss, return_shape=True)(leaves, *example)
    out_tree = jax.tree.structure(out_shape)
    rules, fallback = _find_rules(closed.jaxpr, len(leaves))
    nested = _nested(rules)
    probe_shapes = {
        path: jax.ShapeDtypeStruct(r.eqn.outvars[0].aval.shape, r.eqn.outvars[0].aval.dtype)
        for path, r in rules.items()
    }
    fb = [i for i, f in enumerate(fallback) if f]

    def one(*ex):
        ex_leaves = jax.tree.leaves(ex)

        def f(probes, fb_leaves):
            flat = list(leaves)
            for i, leaf in zip(fb, fb_leaves):
                flat[i] = leaf
            taps: dict = {}
            outs = _run(
                closed.jaxpr, closed.consts, [*flat, *ex_leaves], probes, taps, rules, nested
            )
            out = jax.tree.unflatten(out_tree, outs)
            value, aux = out if has_aux else (out, None)
            return value, (value, aux, taps)

        zeros = {p: jnp.zeros(s.shape, s.dtype) for p, s in probe_shapes.items()}
        grad_fn = jax.grad(f, argnums=(0, 1), has_aux=True)
        (g_probes, g_fb), (value, aux, taps) = grad_fn(zeros, [leaves[i] for i in fb])
        fb_sq = sum((jnp.sum(jnp.square(g)) for g in g_fb), jnp.zeros((), _acc(leaves)))
        return value, aux, taps, g_probes, fb_sq

    mapped = chunk_map or (lambda fn, b: jax.vmap(fn)(*b))
    values, aux, taps, cots, sq = mapped(one, batch)
    # Low-precision (mixed-precision) activations and cotangents: norms and sums in float32.
    taps, cots = jax.tree.map(_at_least_f32, (taps, cots))
    pieces = {}
    for path, rule in rules.items():
        if rule.kind == "dot":
            xm, gm, finish = _dot_factors(rule, taps[path], cots[path])
            sq = sq + _dot_sq_norms(xm, gm).astype(sq.dtype)
            pieces[rule.leaf] = (xm, gm, finish)
        else:
            per = _elementwise_grads(rule, cots[path], taps.get(path))
            sq = sq + jnp.sum(jnp.square(per).reshape(per.shape[0], -1), axis=1).astype(sq.dtype)
            pieces[rule.leaf] = (per,)

    def weighted_sum(factors):
        out = []
        for i, leaf in enumerate(leaves):
            if fallback[i]:
                out.append(None)
                continue
            if i not in pieces:
                g = jnp.zeros_like(leaf)
            elif len(pieces[i]) == 3:
                xm, gm, finish = pieces[i]
                g = finish(
                    jnp.einsum("btc,btp->cp", xm, gm * factors[:, None, None].astype(gm.dtype))
                )
            else:
                (per,) = pieces[i]
                g = jnp.tensordot(factors.astype(per.dtype), per, axes=1)
            out.append(g.reshape(leaf.shape).astype(leaf.dtype))
        return out

    # The Gram form is a sum of products: rounding may leave a tiny negative.
    return GhostPass(values, aux, jnp.maximum(sq, 0), fallback, weighted_sum)


def _at_least_f32(a):
    return a.astype(jnp.float32) if jnp.finfo(a.dtype).bits < 32 else a


def _acc(leaves):
    """float64 accumulation when every parameter is float64, else float32."""
    if leaves and all(leaf.dtype == jnp.float64 for leaf in leaves):
        return jnp.float64
    return jnp.float32
