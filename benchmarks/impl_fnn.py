"""fnn: the functional training step (``fnn.train.make_train_step`` compiled by
``fnn.train.jit_step``: jitted with the train state donated, its key undonated) and the
Keras-style ``Model.fit`` with ``steps_per_execution`` 1 and 10. Layers or APIs that this
checkout of fnn lacks make a variant "unavailable". The ``fnn_base_*`` variants are the
same code run against the ``--fnn-base`` checkout."""

from __future__ import annotations

import jax
import optax

import fnn
from benchmarks.common import Bench, UnavailableError, device_pool, step_loop
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
    fit_arrays,
)

KINDS = frozenset({"mlp", "cnn", "lstm", "gru", "resnet", "transformer"})


def _layer(name: str):
    factory = getattr(fnn.layers, name, None)
    if factory is None:
        raise UnavailableError(f"fnn.layers.{name} is not in this checkout")
    return factory


def make_layers(scenario: Scenario) -> list:
    Dense = _layer("Dense")
    if scenario.kind == "mlp":
        layers = [Dense(w, activation="relu") for w in scenario.hidden]
    elif scenario.kind == "cnn":
        Conv2D, MaxPooling2D = _layer("Conv2D"), _layer("MaxPooling2D")
        layers = []
        for filters in CNN_FILTERS:
            layers += [Conv2D(filters, CNN_KERNEL, activation="relu"), MaxPooling2D(CNN_POOL)]
        layers += [_layer("Flatten")(), Dense(CNN_DENSE, activation="relu")]
    elif scenario.kind == "resnet":
        layers = _resnet_layers()
    elif scenario.kind == "transformer":
        block = _layer("TransformerEncoderBlock")
        layers = [Dense(TRANSFORMER_DIM)]
        layers += [
            block(TRANSFORMER_HEADS, TRANSFORMER_DIM // TRANSFORMER_HEADS, TRANSFORMER_FF,
                  norm_first=True, epsilon=LN_EPSILON)
            for _ in range(TRANSFORMER_BLOCKS)
        ]  # fmt: skip
        layers.append(_layer("GlobalAveragePooling1D")())
    else:
        layers = [_layer(scenario.kind.upper())(LSTM_UNITS)]
    return [*layers, Dense(NUM_CLASSES)]


def _resnet_layers() -> list:
    Conv2D, Activation = _layer("Conv2D"), _layer("Activation")
    layers = [Conv2D(RESNET_STAGES[0], 3, padding="same", activation="relu")]
    for s, c in enumerate(RESNET_STAGES):
        if s:
            layers.append(Conv2D(c, 3, strides=2, padding="same", activation="relu"))
        for _ in range(RESNET_BLOCKS):
            branch = (Conv2D(c, 3, padding="same", activation="relu"), Conv2D(c, 3, padding="same"))
            layers += [fnn.residual(*branch), Activation("relu")]
    return [*layers, _layer("GlobalAveragePooling2D")()]


def _loss():
    try:
        from fnn import losses
    except ImportError as err:
        raise UnavailableError(f"fnn.losses is not in this checkout ({err})") from None
    return losses.SparseCategoricalCrossentropy(from_logits=True)


def _optax_step(scenario: Scenario, x, y) -> Bench:
    # Stand-in while fnn.train is missing: an optax step over ``serial(...).apply``.
    model = fnn.serial(*make_layers(scenario))
    optimizer = optax.adam(LEARNING_RATE)
    params, state = model.init(jax.random.key(0), jax.numpy.asarray(x[0]))

    def loss_fn(params, state, x, y):
        logits, state = model.apply(params, state, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    def one_step(carry, x, y):
        params, state, opt_state = carry
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), state, opt_state), loss

    xs, ys = device_pool(x, y)
    step = jax.jit(one_step, donate_argnums=0)
    bench = step_loop(step, (params, state, optimizer.init(params)), xs, ys)
    bench.note = "fnn.train missing: optax step over fnn.serial(...).apply"
    return bench


def build_step(scenario: Scenario, x, y) -> Bench:
    try:
        from fnn.train import init_train_state, make_train_step
    except ImportError:
        return _optax_step(scenario, x, y)
    model = fnn.serial(*make_layers(scenario))
    optimizer = optax.adam(LEARNING_RATE)
    train_state = init_train_state(model, optimizer, jax.random.key(0), jax.numpy.asarray(x[0]))
    step = make_train_step(model, _loss(), optimizer)
    xs, ys = device_pool(x, y)
    jit_step = getattr(fnn.train, "jit_step", None)
    if jit_step is None:  # an older checkout: the documented jax.jit(step, donate_argnums=0)
        return step_loop(jax.jit(step, donate_argnums=0), train_state, xs, ys, pack=True)
    # fnn's compile of a step (jax.jit with the state donated, its key kept undonated).
    compiled = jit_step(step)
    bench = step_loop(compiled, train_state, xs, ys, pack=True)
    example = (train_state._replace(rng=None), train_state.rng, (xs[0], ys[0]))
    bench.lowerable = (compiled.compiled, example)
    return bench


def _build_fit(scenario: Scenario, x, y, spe: int) -> Bench:
    Sequential = getattr(fnn, "Sequential", None)
    if Sequential is None:
        raise UnavailableError("fnn.Sequential is not in this checkout")
    model = Sequential(make_layers(scenario))
    model.compile(optimizer=optax.adam(LEARNING_RATE), loss=_loss(), steps_per_execution=spe)
    # Parameters are made here, as Keras does from keras.Input and the hand-written and
    # functional variants do before their first step: the first call times compilation.
    model.build((None, *scenario.input_shape))
    cache: dict[int, tuple] = {}

    def run(n):
        if n not in cache:
            cache[n] = fit_arrays(x, y, n)
        xf, yf = cache[n]
        model.fit(xf, yf, batch_size=scenario.batch, epochs=1, verbose=0, shuffle=False)
        jax.block_until_ready(model.get_weights() if hasattr(model, "get_weights") else None)

    return Bench(run, spe, warm_block=True)


def build_fit(scenario: Scenario, x, y) -> Bench:
    return _build_fit(scenario, x, y, 1)


def build_fit10(scenario: Scenario, x, y) -> Bench:
    return _build_fit(scenario, x, y, MULTI)


VARIANTS = {
    "fnn_step": build_step,
    "fnn_fit": build_fit,
    "fnn_fit10": build_fit10,
    # The ``fnn_base`` framework: the same builders in a worker that imports another checkout.
    "fnn_base_step": build_step,
    "fnn_base_fit": build_fit,
    "fnn_base_fit10": build_fit10,
}
