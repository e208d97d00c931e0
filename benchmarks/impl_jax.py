"""Hand-written JAX: a params dict, ``jax.value_and_grad`` and an optax step jitted with
donated buffers. This is the floor every framework is measured against."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from benchmarks.common import Bench, device_pool, step_loop
from benchmarks.scenarios import (
    CNN_DENSE,
    CNN_FILTERS,
    CNN_KERNEL,
    CNN_POOL,
    LEARNING_RATE,
    LN_EPSILON,
    LSTM_UNITS,
    MULTI,
    NUM_CLASSES,
    RESNET_BLOCKS,
    RESNET_STAGES,
    TRANSFORMER_BLOCKS,
    TRANSFORMER_DIM,
    TRANSFORMER_FF,
    TRANSFORMER_HEADS,
    Scenario,
    cnn_flat_features,
)

KINDS = frozenset({"mlp", "cnn", "lstm", "gru", "resnet", "transformer"})


def _glorot(key, shape):
    fan_in, fan_out = (shape[-2] * (shape[0] * shape[1] if len(shape) == 4 else 1), shape[-1])
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def _dense(key, n_in, n_out):
    return {"kernel": _glorot(key, (n_in, n_out)), "bias": jnp.zeros((n_out,), jnp.float32)}


def _conv(key, c_in, c_out):
    return {"kernel": _glorot(key, (3, 3, c_in, c_out)), "bias": jnp.zeros((c_out,))}


def _init_resnet(scenario: Scenario, keys) -> dict:
    params = {"stem": _conv(next(keys), scenario.input_shape[-1], RESNET_STAGES[0])}
    c_in = RESNET_STAGES[0]
    for s, c in enumerate(RESNET_STAGES):
        if s:
            params[f"down_{s}"] = _conv(next(keys), c_in, c)
        for b in range(RESNET_BLOCKS):
            params[f"block_{s}_{b}"] = {"a": _conv(next(keys), c, c), "b": _conv(next(keys), c, c)}
        c_in = c
    params["head"] = _dense(next(keys), c_in, NUM_CLASSES)
    return params


def _init_transformer(scenario: Scenario, keys) -> dict:
    d = TRANSFORMER_DIM

    def ln():  # fresh buffers: the step donates its params, and a shared leaf would be donated twice
        return {"gamma": jnp.ones((d,)), "beta": jnp.zeros((d,))}

    params = {"embed": _dense(next(keys), scenario.input_shape[-1], d)}
    for b in range(TRANSFORMER_BLOCKS):
        params[f"block_{b}"] = {
            "ln1": ln(),
            "qkv": _dense(next(keys), d, 3 * d),
            "out": _dense(next(keys), d, d),
            "ln2": ln(),
            "ff1": _dense(next(keys), d, TRANSFORMER_FF),
            "ff2": _dense(next(keys), TRANSFORMER_FF, d),
        }
    params["head"] = _dense(next(keys), d, NUM_CLASSES)
    return params


def init_params(scenario: Scenario, key) -> dict:
    keys = iter(jax.random.split(key, 64))
    if scenario.kind == "resnet":
        return _init_resnet(scenario, keys)
    if scenario.kind == "transformer":
        return _init_transformer(scenario, keys)
    if scenario.kind == "mlp":
        widths = (scenario.input_shape[-1], *scenario.hidden, NUM_CLASSES)
        return {
            f"dense_{i}": _dense(next(keys), a, b)
            for i, (a, b) in enumerate(itertools.pairwise(widths))
        }
    if scenario.kind == "cnn":
        params, c_in = {}, scenario.input_shape[-1]
        for i, c_out in enumerate(CNN_FILTERS):
            shape = (CNN_KERNEL, CNN_KERNEL, c_in, c_out)
            params[f"conv_{i}"] = {
                "kernel": _glorot(next(keys), shape),
                "bias": jnp.zeros((c_out,)),
            }
            c_in = c_out
        params["dense_0"] = _dense(next(keys), cnn_flat_features(scenario), CNN_DENSE)
        params["dense_1"] = _dense(next(keys), CNN_DENSE, NUM_CLASSES)
        return params
    n_in, h = scenario.input_shape[-1], LSTM_UNITS
    if scenario.kind == "gru":
        gru = {
            "kernel": _glorot(next(keys), (n_in, 3 * h)),
            "recurrent_kernel": jax.nn.initializers.orthogonal()(next(keys), (h, 3 * h)),
            "bias": jnp.zeros((2, 3 * h)),
        }
        return {"gru": gru, "dense": _dense(next(keys), h, NUM_CLASSES)}
    lstm = {
        "kernel": _glorot(next(keys), (n_in, 4 * h)),
        "recurrent_kernel": jax.nn.initializers.orthogonal()(next(keys), (h, 4 * h)),
        "bias": jnp.zeros((4 * h,)).at[h : 2 * h].set(1.0),
    }
    return {"lstm": lstm, "dense": _dense(next(keys), h, NUM_CLASSES)}


def _lstm(p, x):
    # Gate order i, f, c, o (Keras). The input projection is done inside the loop: on
    # XLA:CPU that measured ~1.3x faster than one matmul over all steps before the scan.
    h_size = p["recurrent_kernel"].shape[0]

    def cell(carry, x_t):
        h, c = carry
        z = x_t @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    zeros = jnp.zeros((x.shape[0], h_size), x.dtype)
    (h, _), _ = lax.scan(cell, (zeros, zeros), jnp.swapaxes(x, 0, 1))
    return h


def _gru(p, x):
    # Keras GRU, reset_after=True: gate order z, r, h; bias row 0 input, row 1 recurrent.
    h_size = p["recurrent_kernel"].shape[0]

    def cell(h, x_t):
        xz, xr, xh = jnp.split(x_t @ p["kernel"] + p["bias"][0], 3, axis=-1)
        uz, ur, uh = jnp.split(h @ p["recurrent_kernel"] + p["bias"][1], 3, axis=-1)
        z = jax.nn.sigmoid(xz + uz)
        r = jax.nn.sigmoid(xr + ur)
        return z * h + (1 - z) * jnp.tanh(xh + r * uh), None

    h, _ = lax.scan(cell, jnp.zeros((x.shape[0], h_size), x.dtype), jnp.swapaxes(x, 0, 1))
    return h


def _conv_same(p, x, stride=1):
    y = lax.conv_general_dilated(
        x, p["kernel"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["bias"]


def _resnet(params, x):
    x = jax.nn.relu(_conv_same(params["stem"], x))
    for s in range(len(RESNET_STAGES)):
        if s:
            x = jax.nn.relu(_conv_same(params[f"down_{s}"], x, stride=2))
        for b in range(RESNET_BLOCKS):
            p = params[f"block_{s}_{b}"]
            x = jax.nn.relu(x + _conv_same(p["b"], jax.nn.relu(_conv_same(p["a"], x))))
    x = x.mean(axis=(1, 2))
    return x @ params["head"]["kernel"] + params["head"]["bias"]


def _layer_norm(p, x):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + LN_EPSILON) * p["gamma"] + p["beta"]


def _transformer(params, x):
    x = x @ params["embed"]["kernel"] + params["embed"]["bias"]
    batch, time, d = x.shape
    heads, head_dim = TRANSFORMER_HEADS, TRANSFORMER_DIM // TRANSFORMER_HEADS
    for b in range(TRANSFORMER_BLOCKS):
        p = params[f"block_{b}"]
        qkv = _layer_norm(p["ln1"], x) @ p["qkv"]["kernel"] + p["qkv"]["bias"]
        q, k, v = jnp.split(qkv.reshape(batch, time, 3 * heads, head_dim), 3, axis=2)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / head_dim**0.5
        att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
        x = x + att.reshape(batch, time, d) @ p["out"]["kernel"] + p["out"]["bias"]
        h = jax.nn.relu(_layer_norm(p["ln2"], x) @ p["ff1"]["kernel"] + p["ff1"]["bias"])
        x = x + h @ p["ff2"]["kernel"] + p["ff2"]["bias"]
    x = x.mean(axis=1)
    return x @ params["head"]["kernel"] + params["head"]["bias"]


def apply(scenario: Scenario, params: dict, x):
    if scenario.kind == "resnet":
        return _resnet(params, x)
    if scenario.kind == "transformer":
        return _transformer(params, x)
    if scenario.kind == "mlp":
        n = len(scenario.hidden)
        for i in range(n):
            x = jax.nn.relu(x @ params[f"dense_{i}"]["kernel"] + params[f"dense_{i}"]["bias"])
        return x @ params[f"dense_{n}"]["kernel"] + params[f"dense_{n}"]["bias"]
    if scenario.kind == "cnn":
        for i in range(len(CNN_FILTERS)):
            p = params[f"conv_{i}"]
            x = lax.conv_general_dilated(
                x, p["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            x = jax.nn.relu(x + p["bias"])
            window = (1, CNN_POOL, CNN_POOL, 1)
            x = lax.reduce_window(x, -jnp.inf, lax.max, window, window, "VALID")
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
        return x @ params["dense_1"]["kernel"] + params["dense_1"]["bias"]
    h = _gru(params["gru"], x) if scenario.kind == "gru" else _lstm(params["lstm"], x)
    return h @ params["dense"]["kernel"] + params["dense"]["bias"]


def _train_fns(scenario: Scenario):
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(params, x, y):
        logits = apply(scenario, params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def one_step(carry, x, y):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return optimizer, one_step


def build_jit(scenario: Scenario, x, y) -> Bench:
    optimizer, one_step = _train_fns(scenario)
    params = init_params(scenario, jax.random.key(0))
    step = jax.jit(one_step, donate_argnums=0)
    xs, ys = device_pool(x, y)
    return step_loop(step, (params, optimizer.init(params)), xs, ys)


def build_scan(scenario: Scenario, x, y) -> Bench:
    optimizer, one_step = _train_fns(scenario)
    params = init_params(scenario, jax.random.key(0))

    # XLA:CPU runs convolutions inside a rolled while loop several times slower (measured
    # 4-6x on this CNN, with no compile-time gain), so the CNN's loop is unrolled.
    unroll = True if scenario.kind in ("cnn", "resnet") and jax.default_backend() == "cpu" else 1

    @functools.partial(jax.jit, donate_argnums=0)
    def multi_step(carry, xs, ys):
        carry, losses = lax.scan(lambda c, b: one_step(c, *b), carry, (xs, ys), unroll=unroll)
        return carry, losses[-1]

    xs, ys = device_pool(x, y, unit=MULTI)
    bench = step_loop(multi_step, (params, optimizer.init(params)), xs, ys, unit=MULTI)
    bench.note = "unrolled" if unroll is True else ""
    return bench


VARIANTS = {"jax_jit": build_jit, "jax_scan10": build_scan}
