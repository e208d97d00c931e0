"""Recurrent layers against explicit per-step numpy loops written from the Keras equations."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.core.errors import ConfigError
from fnn.layers import GRU, LSTM, Bidirectional, Dense, SimpleRNN
from fnn.layers import recurrent as recurrent_module

B, T, F, U = 3, 5, 4, 6


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _np(params):
    return {k: np.asarray(v, np.float64) for k, v in params.items()}


# ------------------------------------------------------------------ numpy references
# Each cell takes the previous state tuple and one step x_t [batch, features] and returns the
# new state tuple; the first entry is h (the output).


def np_simple_cell(p):
    def cell(state, x_t):
        (h,) = state
        return (np.tanh(x_t @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"]),)

    return cell


def np_lstm_cell(p):
    u = p["recurrent_kernel"].shape[0]

    def cell(state, x_t):
        h, c = state
        z = x_t @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"]
        i = _sigmoid(z[:, :u])  # gate order i, f, c, o
        f = _sigmoid(z[:, u : 2 * u])
        g = np.tanh(z[:, 2 * u : 3 * u])
        o = _sigmoid(z[:, 3 * u :])
        c = f * c + i * g
        return (o * np.tanh(c), c)

    return cell


def np_gru_cell(p, reset_after):
    u = p["recurrent_kernel"].shape[0]
    w, rk = p["kernel"], p["recurrent_kernel"]
    w_z, w_r, w_h = w[:, :u], w[:, u : 2 * u], w[:, 2 * u :]  # gate order z, r, h
    u_z, u_r, u_h = rk[:, :u], rk[:, u : 2 * u], rk[:, 2 * u :]
    if reset_after:
        b_in, b_rec = p["bias"][0], p["bias"][1]
    else:
        b_in, b_rec = p["bias"], np.zeros(3 * u)

    def cell(state, x_t):
        (h,) = state
        z = _sigmoid(x_t @ w_z + b_in[:u] + h @ u_z + b_rec[:u])
        r = _sigmoid(x_t @ w_r + b_in[u : 2 * u] + h @ u_r + b_rec[u : 2 * u])
        if reset_after:
            cand = np.tanh(x_t @ w_h + b_in[2 * u :] + r * (h @ u_h + b_rec[2 * u :]))
        else:
            cand = np.tanh(x_t @ w_h + b_in[2 * u :] + (r * h) @ u_h)
        return (z * h + (1 - z) * cand,)

    return cell


def np_run(cell, x, state, mask=None, go_backwards=False, zero_output=False):
    """Keras's loop: returns (sequence outputs in processing order, final state)."""
    times = range(x.shape[1])
    times = reversed(times) if go_backwards else times
    outputs = []
    for t in times:
        new = cell(state, x[:, t])
        if mask is not None:
            keep = mask[:, t, None]
            new = tuple(np.where(keep, n, o) for n, o in zip(new, state))
            out = np.where(keep, new[0], 0.0) if zero_output else new[0]
        else:
            out = new[0]
        state = new
        outputs.append(out)
    return np.stack(outputs, 1), state


def _zeros(n):
    return tuple(np.zeros((B, U)) for _ in range(n))


CASES = {
    "simple_rnn": (SimpleRNN, {}, np_simple_cell, 1),
    "lstm": (LSTM, {}, np_lstm_cell, 2),
    "gru_after": (GRU, {"reset_after": True}, lambda p: np_gru_cell(p, True), 1),
    "gru_before": (GRU, {"reset_after": False}, lambda p: np_gru_cell(p, False), 1),
}


def _data(seed=0, shape=(B, T, F)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _init(layer, x, *extra):
    params, state = layer.init(jax.random.key(1), x, *extra)
    # Random biases so that every bias block is exercised (zeros would hide layout errors).
    if "bias" in params:
        noise = jax.random.normal(jax.random.key(2), params["bias"].shape, params["bias"].dtype)
        params = {**params, "bias": params["bias"] + 0.5 * noise}
    return params, state


# ------------------------------------------------------------------ core semantics


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("jit", [False, True])
def test_matches_numpy_loop_all_outputs(case, jit):
    factory, kwargs, np_cell, n_states = CASES[case]
    layer = factory(U, return_sequences=True, return_state=True, **kwargs)
    x = _data()
    params, state = _init(layer, x)
    apply = jax.jit(layer.apply) if jit else layer.apply
    (seq, *states), _ = apply(params, state, x)
    want_seq, want_state = np_run(np_cell(_np(params)), x.astype(np.float64), _zeros(n_states))
    np.testing.assert_allclose(seq, want_seq, rtol=1e-5, atol=1e-5)
    assert len(states) == n_states
    for got, want in zip(states, want_state):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The default output is the last step's h.
    last, _ = factory(U, **kwargs).apply(params, state, x)
    np.testing.assert_allclose(last, want_seq[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_go_backwards_and_initial_state(case):
    factory, kwargs, np_cell, n_states = CASES[case]
    layer = factory(U, return_sequences=True, return_state=True, go_backwards=True, **kwargs)
    x = _data(1)
    rng = np.random.default_rng(3)
    init_state = tuple(rng.normal(size=(B, U)).astype(np.float32) for _ in range(n_states))
    arg = init_state if n_states == 2 else init_state[0]
    params, state = _init(layer, x, None, arg)
    (seq, *states), _ = layer.apply(params, state, x, None, arg)
    want_seq, want_state = np_run(
        np_cell(_np(params)), x.astype(np.float64), init_state, go_backwards=True
    )
    # Keras returns the backward sequence in processing order (last input step first).
    np.testing.assert_allclose(seq, want_seq, rtol=1e-5, atol=1e-5)
    for got, want in zip(states, want_state):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # A one-element tuple works for single-state layers too.
    if n_states == 1:
        (seq2, _), _ = layer.apply(params, state, x, None, (arg,))
        np.testing.assert_allclose(seq2, seq, rtol=1e-6)


def test_lstm_layouts_and_unit_forget_bias():
    x = jnp.ones((2, 3, F))
    params, _ = LSTM(U).init(jax.random.key(0), x)
    assert {k: v.shape for k, v in params.items()} == {
        "kernel": (F, 4 * U),
        "recurrent_kernel": (U, 4 * U),
        "bias": (4 * U,),
    }
    expected_bias = np.concatenate([np.zeros(U), np.ones(U), np.zeros(2 * U)])  # i, f, c, o
    np.testing.assert_array_equal(params["bias"], expected_bias)
    params, _ = LSTM(U, unit_forget_bias=False).init(jax.random.key(0), x)
    np.testing.assert_array_equal(params["bias"], np.zeros(4 * U))
    params, _ = LSTM(U, use_bias=False).init(jax.random.key(0), x)
    assert set(params) == {"kernel", "recurrent_kernel"}
    # The recurrent kernel is orthogonal by default: rows orthonormal for [U, 4U].
    np.testing.assert_allclose(
        params["recurrent_kernel"] @ params["recurrent_kernel"].T, np.eye(U), atol=1e-5
    )


def test_gru_and_simple_rnn_layouts():
    x = jnp.ones((2, 3, F))
    shapes = {k: v.shape for k, v in GRU(U).init(jax.random.key(0), x)[0].items()}
    assert shapes == {"kernel": (F, 3 * U), "recurrent_kernel": (U, 3 * U), "bias": (2, 3 * U)}
    params, _ = GRU(U, reset_after=False).init(jax.random.key(0), x)
    assert params["bias"].shape == (3 * U,)
    shapes = {k: v.shape for k, v in SimpleRNN(U).init(jax.random.key(0), x)[0].items()}
    assert shapes == {"kernel": (F, U), "recurrent_kernel": (U, U), "bias": (U,)}


@pytest.mark.parametrize("case", CASES)
def test_without_bias_matches_numpy(case):
    factory, kwargs, np_cell, n_states = CASES[case]
    layer = factory(U, use_bias=False, return_sequences=True, **kwargs)
    x = _data(4)
    params, state = layer.init(jax.random.key(0), x)
    assert "bias" not in params
    seq, _ = layer.apply(params, state, x)
    p = _np(params)
    p["bias"] = (
        np.zeros((2, 3 * U)) if kwargs.get("reset_after") else np.zeros(params["kernel"].shape[1])
    )
    want, _ = np_run(np_cell(p), x.astype(np.float64), _zeros(n_states))
    np.testing.assert_allclose(seq, want, rtol=1e-5, atol=1e-5)


def test_simple_rnn_activation_argument():
    layer = SimpleRNN(U, activation="relu", return_sequences=True)
    x = _data(5)
    params, state = _init(layer, x)
    seq, _ = layer.apply(params, state, x)
    p = _np(params)
    h, want = np.zeros((B, U)), []
    for t in range(T):
        h = np.maximum(x[:, t] @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"], 0)
        want.append(h)
    np.testing.assert_allclose(seq, np.stack(want, 1), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ masking


def _padded_batch(lengths, seed=6):
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(n, F)).astype(np.float32) for n in lengths]
    x = np.zeros((len(lengths), max(lengths), F), np.float32)
    # Garbage (not zeros) in the padding proves that masked steps have no effect.
    x[:] = rng.normal(size=x.shape) * 100
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    mask = np.arange(max(lengths))[None] < np.array(lengths)[:, None]
    return seqs, x, mask


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_masked_padded_batch_equals_sequences_alone(case, go_backwards):
    factory, kwargs, _, _ = CASES[case]
    layer = factory(U, return_state=True, go_backwards=go_backwards, **kwargs)
    seqs, x, mask = _padded_batch([5, 2, 3])
    params, state = _init(layer, x, mask)
    (last, *states), _ = jax.jit(layer.apply)(params, state, x, mask)
    for i, s in enumerate(seqs):
        (want_last, *want_states), _ = layer.apply(params, state, s[None])
        np.testing.assert_allclose(last[i], want_last[0], rtol=1e-5, atol=1e-5)
        for got, want in zip(states, want_states):
            np.testing.assert_allclose(got[i], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["lstm", "gru_after"])
@pytest.mark.parametrize("zero_output", [False, True])
def test_masked_sequences_match_keras_loop(case, zero_output):
    factory, kwargs, np_cell, n_states = CASES[case]
    layer = factory(U, return_sequences=True, zero_output_for_mask=zero_output, **kwargs)
    x = _data(7)
    # Holes in the middle and at the start: masked outputs repeat the previous output.
    mask = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    params, state = _init(layer, x, mask)
    seq, _ = layer.apply(params, state, x, mask)
    want, _ = np_run(
        np_cell(_np(params)), x.astype(np.float64), _zeros(n_states), mask, zero_output=zero_output
    )
    np.testing.assert_allclose(seq, want, rtol=1e-5, atol=1e-5)
    # Integer masks are accepted too.
    seq_int, _ = layer.apply(params, state, x, mask.astype(np.int32))
    np.testing.assert_allclose(seq_int, seq)


def test_embedding_style_mask_through_serial_and_return_mask():
    # An Embedding(mask_zero=True) stand-in: outputs (x, mask), splatted by serial.
    def embed(ids):
        return jax.nn.one_hot(ids, F), ids != 0

    ids = np.array([[3, 1, 2, 0, 0], [2, 2, 0, 0, 0]])
    model = fnn.serial(
        fnn.Lambda(embed),
        LSTM(U, return_sequences=True, return_mask=True, name="l1"),
        GRU(U, name="l2"),
        Dense(2),
    )
    params, state = model.init(jax.random.key(0), ids)
    y, _ = model.apply(params, state, ids)
    alone, _ = model.apply(params, state, ids[:1, :3])
    np.testing.assert_allclose(y[0], alone[0], rtol=1e-5, atol=1e-5)
    alone, _ = model.apply(params, state, ids[1:, :2])
    np.testing.assert_allclose(y[1], alone[0], rtol=1e-5, atol=1e-5)
    # Bidirectional passes the mask on too; stacked over padded data it still matches.
    model = fnn.serial(
        fnn.Lambda(embed),
        Bidirectional(SimpleRNN(U, return_sequences=True, return_mask=True)),
        LSTM(U),
    )
    params_bi, state_bi = model.init(jax.random.key(1), ids)
    y, _ = model.apply(params_bi, state_bi, ids)
    alone, _ = model.apply(params_bi, state_bi, ids[:1, :3])
    np.testing.assert_allclose(y[0], alone[0], rtol=1e-5, atol=1e-5)
    # With go_backwards the mask is reversed along with the sequence.
    layer = GRU(U, return_sequences=True, return_mask=True, go_backwards=True)
    x, mask = embed(ids)
    (_, mask_out), _ = layer.apply(layer.init(jax.random.key(0), x)[0], {}, x, mask)
    np.testing.assert_array_equal(mask_out, np.asarray(mask)[:, ::-1])
    # Without a mask, return_mask=True returns an all-True mask.
    (seq, mask), _ = LSTM(U, return_sequences=True, return_mask=True).apply(
        params["l1"], {}, jnp.ones((2, 5, F))
    )
    assert seq.shape == (2, 5, U) and mask.dtype == bool and bool(mask.all())


# ------------------------------------------------------------------ Bidirectional


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_merges_match_manual(merge_mode, return_sequences):
    layer = LSTM(U, return_sequences=True, return_state=True)
    bi = Bidirectional(LSTM(U, return_sequences=return_sequences), merge_mode=merge_mode)
    x = _data(8)
    params, state = _init(bi, x)
    assert sorted(params) == ["backward_lstm", "forward_lstm"]
    params = {
        k: {**v, "bias": v["bias"] + 0.1 * (i + 1)} for i, (k, v) in enumerate(params.items())
    }
    y, _ = bi.apply(params, state, x)
    cell_f, cell_b = (np_lstm_cell(_np(params[k])) for k in ("forward_lstm", "backward_lstm"))
    fwd, _ = np_run(cell_f, x.astype(np.float64), _zeros(2))
    bwd, _ = np_run(cell_b, x.astype(np.float64), _zeros(2), go_backwards=True)
    if return_sequences:
        bwd = bwd[:, ::-1]  # back to input time order
    else:
        fwd, bwd = fwd[:, -1], bwd[:, -1]
    want = {
        "concat": lambda: np.concatenate([fwd, bwd], -1),
        "sum": lambda: fwd + bwd,
        "mul": lambda: fwd * bwd,
        "ave": lambda: (fwd + bwd) / 2,
        None: lambda: (fwd, bwd),
    }[merge_mode]()
    if merge_mode is None:
        assert isinstance(y, tuple) and len(y) == 2
        for got, w in zip(y, want):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    del layer


def test_bidirectional_states_initial_state_and_custom_backward():
    backward = GRU(U, go_backwards=True, return_state=True, name="back_gru")
    bi = Bidirectional(GRU(U, return_state=True), merge_mode="sum", backward_layer=backward)
    x = _data(9)
    rng = np.random.default_rng(10)
    h_f, h_b = (rng.normal(size=(B, U)).astype(np.float32) for _ in range(2))
    params, state = _init(bi, x, None, (h_f, h_b))
    assert sorted(params) == ["back_gru", "forward_gru"]
    (y, s_f, s_b), _ = bi.apply(params, state, x, None, (h_f, h_b))
    fwd, (want_f,) = np_run(np_gru_cell(_np(params["forward_gru"]), True), x, (h_f,))
    bwd, (want_b,) = np_run(
        np_gru_cell(_np(params["back_gru"]), True), x, (h_b,), go_backwards=True
    )
    np.testing.assert_allclose(y, fwd[:, -1] + bwd[:, -1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_f, want_f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_b, want_b, rtol=1e-5, atol=1e-5)


def test_bidirectional_masking_equals_sequences_alone():
    bi = Bidirectional(SimpleRNN(U, return_sequences=True), merge_mode="concat")
    seqs, x, mask = _padded_batch([4, 2, 3], seed=11)
    params, state = _init(bi, x, mask)
    y, _ = jax.jit(bi.apply)(params, state, x, mask)
    for i, s in enumerate(seqs):
        want, _ = bi.apply(params, state, s[None])
        np.testing.assert_allclose(y[i, : len(s)], want[0], rtol=1e-5, atol=1e-5)
        # As Keras, Bidirectional outputs zeros at masked steps when returning sequences.
        np.testing.assert_array_equal(y[i, len(s) :], 0)
    bi_last = Bidirectional(LSTM(U))
    params, state = bi_last.init(jax.random.key(0), x, mask)
    y, _ = bi_last.apply(params, state, x, mask)
    for i, s in enumerate(seqs):
        want, _ = bi_last.apply(params, state, s[None])
        np.testing.assert_allclose(y[i], want[0], rtol=1e-5, atol=1e-5)


def test_bidirectional_rebuilds_its_layers_like_the_factory():
    """Both directions come from the factory's own arguments plus the wrapper's overrides:
    the same spec and, with the same key, the same params as calling the factory."""
    x = _data(20)
    bi = Bidirectional(LSTM(U, dropout=0.25, return_sequences=True, input_shape=(T, F)))
    params, state = bi.init(jax.random.key(3), x)
    with fnn.core.combinators.record_calls() as records:
        bi.apply(params, state, x)
    (fwd_path, forward, *_), (bwd_path, backward, *_) = records
    assert (fwd_path, bwd_path) == (("forward_lstm",), ("backward_lstm",))
    common = dict(dropout=0.25, return_sequences=True, zero_output_for_mask=True)
    want_fwd = LSTM(U, **common, return_mask=False, name="forward_lstm")
    want_bwd = LSTM(U, **common, return_mask=False, go_backwards=True, name="backward_lstm")
    for got, want in ((forward, want_fwd), (backward, want_bwd)):
        config = dict(got.spec.config)
        assert "input_shape" not in config  # Keras's input_shape stays on the wrapper's child
        assert {k: config[k] for k in want.spec.config} == want.spec.config
        defaults = {
            k: p.default
            for k, p in LSTM.signature.parameters.items()
            # dtype= is recorded only when given (saved configs keep their old form)
            if k not in want.spec.config and k != "dtype"
        }
        assert {k: v for k, v in config.items() if k not in want.spec.config} == defaults
    k_fwd, k_bwd = jax.random.split(jax.random.key(3))
    for key, want, layer_key in (
        (k_fwd, want_fwd, "forward_lstm"),
        (k_bwd, want_bwd, "backward_lstm"),
    ):
        for a, b in zip(
            jax.tree.leaves(want.init(key, x)[0]), jax.tree.leaves(params[layer_key]), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def test_bidirectional_takes_what_the_factory_took():
    """The rebuild leaves argument checks to the factory: an int for a bool that LSTM
    accepted (return_sequences=1) still works inside Bidirectional, like return_sequences=True."""
    x = _data(22)
    loose = Bidirectional(LSTM(U, return_sequences=1))
    strict = Bidirectional(LSTM(U, return_sequences=True))
    params, state = strict.init(jax.random.key(0), x)
    np.testing.assert_array_equal(
        loose.apply(params, state, x)[0], strict.apply(params, state, x)[0]
    )


def test_bidirectional_summary_lists_both_directions():
    x = jax.ShapeDtypeStruct((2, T, F), jnp.float32)
    model = fnn.serial(Bidirectional(LSTM(U)), Dense(2))
    rows, totals = fnn.core.summary.summary_rows(model, x)
    lstm_count = fnn.core.summary.summary_rows(LSTM(U), x)[0][0]["params"]
    assert lstm_count == 4 * (F * U + U * U + U)  # Keras's LSTM count
    assert [(r["name"], r["depth"], r["kind"], r["params"]) for r in rows] == [
        ("bidirectional", 0, "Bidirectional", 2 * lstm_count),
        ("forward_lstm", 1, "LSTM", lstm_count),
        ("backward_lstm", 1, "LSTM", lstm_count),
        ("dense", 0, "Dense", 2 * U * 2 + 2),
    ]
    assert totals["trainable"] == 2 * lstm_count + 2 * U * 2 + 2
    lines = []
    fnn.summary(model, x, print_fn=lines.append)
    assert any(line.startswith("  forward_lstm (LSTM)") for line in lines)
    assert any(line.startswith("  backward_lstm (LSTM)") for line in lines)


def test_bidirectional_get_weights_follow_keras_order():
    """Sequential([Bidirectional(LSTM(4)), Dense(2)]) on (None, 5, 3): the forward layer's
    weights first, as Keras 3; Keras weights moved into fnn give Keras's predictions."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    k_model = keras.Sequential(
        [
            keras.Input((5, 3)),
            keras.layers.Bidirectional(keras.layers.LSTM(4)),
            keras.layers.Dense(2),
        ]
    )
    model = fnn.Sequential([fnn.Input((5, 3)), Bidirectional(LSTM(4)), Dense(2)])
    k_weights = k_model.get_weights()
    assert [w.shape for w in model.get_weights()] == [w.shape for w in k_weights]
    directions = [
        "forward" if "forward" in w.path else "backward" if "backward" in w.path else "-"
        for w in k_model.weights
    ]
    names = model.weight_names()
    assert names[0] == "bidirectional/forward_lstm/kernel"
    assert [
        "forward" if "forward" in n else "backward" if "backward" in n else "-" for n in names
    ] == directions
    rng = np.random.default_rng(21)
    k_model.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in k_weights])
    model.set_weights(k_model.get_weights())
    x = rng.normal(size=(6, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), k_model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------ transformations


@pytest.mark.parametrize("case", CASES)
def test_check_grads_float64(case):
    factory, kwargs, _, n_states = CASES[case]
    with jax.enable_x64(True):
        layer = factory(3, return_sequences=True, **kwargs)
        x = jnp.asarray(np.random.default_rng(12).normal(size=(2, 3, 2)))
        mask = jnp.array([[True, True, False], [True, False, True]])
        params, state = _init(layer, x)
        assert params["kernel"].dtype == jnp.float64

        @jax.jit
        def f(params, x):
            return layer.apply(params, state, x, mask)[0]

        check_grads(f, (params, x), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_bidirectional_check_grads_float64():
    with jax.enable_x64(True):
        bi = Bidirectional(GRU(2, return_sequences=True), merge_mode="mul")
        x = jnp.asarray(np.random.default_rng(13).normal(size=(2, 3, 2)))
        params, state = _init(bi, x)
        check_grads(
            jax.jit(lambda p, x: bi.apply(p, state, x)[0]),
            (params, x),
            order=1,
            modes=("rev",),
            atol=1e-6,
            rtol=1e-6,
        )


@pytest.mark.parametrize("case", CASES)
def test_vmap_matches_batched_call(case):
    factory, kwargs, _, _ = CASES[case]
    layer = factory(U, return_sequences=True, **kwargs)
    xs = _data(14, shape=(2, B, T, F))
    params, state = _init(layer, xs[0])
    batched = jax.vmap(lambda x: layer.apply(params, state, x)[0])(xs)
    for i in range(2):
        np.testing.assert_allclose(batched[i], layer.apply(params, state, xs[i])[0], rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_eval_shape_init_and_output_shapes(case):
    factory, kwargs, _, _ = CASES[case]
    x = jax.ShapeDtypeStruct((B, T, F), jnp.float32)
    for return_sequences, want in [(False, (B, U)), (True, (B, T, U))]:
        layer = factory(U, return_sequences=return_sequences, **kwargs)
        params, state = jax.eval_shape(layer.init, jax.random.key(0), x)
        assert isinstance(params["kernel"], jax.ShapeDtypeStruct)
        assert fnn.core.output_shapes(layer, params, state, x).shape == want
    bi = Bidirectional(factory(U, **kwargs))
    params, state = jax.eval_shape(bi.init, jax.random.key(0), x)
    assert fnn.core.output_shapes(bi, params, state, x).shape == (B, 2 * U)


def _scan_dot_counts(jaxpr):
    """Number of dot_general equations inside each scan body (recursively)."""
    counts = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            body = eqn.params["jaxpr"].jaxpr
            counts.append(sum(e.primitive.name == "dot_general" for e in body.eqns))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            counts.extend(_scan_dot_counts(sub))
    return counts


@pytest.mark.parametrize(
    ("case", "dots"), [("simple_rnn", 1), ("lstm", 1), ("gru_after", 3), ("gru_before", 3)]
)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("hoist", [False, True])
def test_scan_body_recurrent_matmul_count(case, dots, masked, hoist, monkeypatch):
    monkeypatch.setattr(recurrent_module, "_hoist_projection", lambda features, width: hoist)
    factory, kwargs, _, _ = CASES[case]
    layer = factory(U, return_sequences=True, **kwargs)
    x = jnp.ones((B, T, F))
    mask = jnp.ones((B, T), bool) if masked else None
    params, state = layer.init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda p, x: layer.apply(p, state, x, mask))(params, x).jaxpr
    # One scan; inside it h @ recurrent_kernel (GRU: one matmul per gate block of U,
    # sliced before the scan; LSTM: one matmul, split after it), plus the input
    # projection unless it is hoisted before the scan as one matmul.
    assert _scan_dot_counts(jaxpr) == [dots + (not hoist)]
    outside = sum(e.primitive.name == "dot_general" for e in jaxpr.eqns)
    assert outside == int(hoist)


@pytest.mark.parametrize("case", ["lstm"])
def test_hoisting_and_unroll_match_the_numpy_loop(case, monkeypatch):
    factory, kwargs, np_cell, n_states = CASES[case]
    x = _data(31)
    mask = np.arange(T) < np.array([[T], [2], [4]])
    grads = []
    for hoist, unroll in ((False, False), (True, 3)):
        monkeypatch.setattr(recurrent_module, "_hoist_projection", lambda f, w, h=hoist: h)
        layer = factory(U, return_sequences=True, unroll=unroll, **kwargs)
        params, state = _init(layer, x)

        def loss(p, layer=layer, state=state):
            seq = layer.apply(p, state, x, mask)[0]
            return jnp.sum(jnp.sin(seq)), seq

        (_, seq), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        want, _ = np_run(np_cell(_np(params)), x.astype(np.float64), _zeros(n_states), mask)
        np.testing.assert_allclose(seq, want, rtol=1e-5, atol=1e-5)
        grads.append(g)
    # Gradients of the default (on CPU: per-step projection) loop are checked against finite
    # differences in test_check_grads_float64; the hoisted, unrolled one must agree with it.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *grads)


def test_unroll_is_checked():
    with pytest.raises(ConfigError, match="lstm: expected unroll to be a bool or a positive int"):
        LSTM(U, unroll=0)


# ------------------------------------------------------------------ dropout


def test_dropout_masks_fixed_across_time_and_identity_in_eval():
    layer = SimpleRNN(U, dropout=0.5, recurrent_dropout=0.25, return_sequences=True)
    x = _data(15)
    params, state = _init(layer, x)
    # Eval: dropout is off, so the output equals the dropout-free layer.
    plain = SimpleRNN(U, return_sequences=True)
    np.testing.assert_allclose(
        layer.apply(params, state, x)[0], plain.apply(params, state, x)[0], rtol=1e-6
    )
    rng = jax.random.key(16)
    y, _ = layer.apply(params, state, x, rng=rng, train=True)
    # Documented contract: in_key, rec_key = split(rng); one mask per sequence.
    in_key, rec_key = jax.random.split(rng)
    m_in = np.asarray(jax.random.bernoulli(in_key, 0.5, (B, F))) / 0.5
    m_rec = np.asarray(jax.random.bernoulli(rec_key, 0.75, (B, U))) / 0.75
    p = _np(params)
    h, want = np.zeros((B, U)), []
    for t in range(T):
        h = np.tanh(
            (x[:, t] * m_in) @ p["kernel"] + (h * m_rec) @ p["recurrent_kernel"] + p["bias"]
        )
        want.append(h)
    np.testing.assert_allclose(y, np.stack(want, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(fnn.ConfigError, match=r"simple_rnn: train=True with dropout needs a PRNG"):
        layer.apply(params, state, x, train=True)


# ------------------------------------------------------------------ errors


def test_rank_and_feature_errors():
    layer = LSTM(U, name="lstm_1")
    with pytest.raises(
        fnn.ShapeError,
        match=r"lstm_1: expected inputs of rank 3 \[batch, time, features\], got rank 2 "
        r"\(shape \(2, 4\)\)\. Recurrent layers read sequences",
    ):
        layer.init(jax.random.key(0), jnp.ones((2, 4)))
    params, state = layer.init(jax.random.key(0), jnp.ones((2, 3, 4)))
    with pytest.raises(fnn.ShapeError, match=r"lstm_1: expected inputs of rank 3"):
        layer.apply(params, state, jnp.ones((2, 3, 4, 1)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"lstm_1: expected inputs with 4 features \(kernel has shape \(4, 24\)\), "
        r"got inputs of shape \(2, 3, 5\) \[batch, time, features\]\. The layer was built",
    ):
        layer.apply(params, state, jnp.ones((2, 3, 5)))
    with pytest.raises(
        fnn.ShapeError,
        match=r"lstm_1: expected a mask of shape \(2, 3\) \(\[batch, time\] of the inputs\), "
        r"got shape \(2, 4\) \(inputs shape \(2, 3, 4\)\); True marks real steps",
    ):
        layer.apply(params, state, jnp.ones((2, 3, 4)), jnp.ones((2, 4), bool))


def test_initial_state_errors():
    x = jnp.ones((2, 3, 4))
    lstm = LSTM(U)
    params, state = lstm.init(jax.random.key(0), x)
    with pytest.raises(
        fnn.ShapeError,
        match=r"lstm: expected initial_state \(h, c\) with each array of shape \[batch, units\] = "
        r"\(2, 6\), got 1 array\(s\) of shapes \[\(2, 6\)\]",
    ):
        lstm.apply(params, state, x, None, jnp.zeros((2, U)))
    gru = GRU(U)
    params, state = gru.init(jax.random.key(0), x)
    with pytest.raises(
        fnn.ShapeError,
        match=r"gru: expected initial_state h with each array of shape \[batch, units\] = "
        r"\(2, 6\), got 1 array\(s\) of shapes \[\(2, 5\)\]",
    ):
        gru.apply(params, state, x, None, jnp.zeros((2, 5)))
    bi = Bidirectional(LSTM(U))
    with pytest.raises(
        fnn.ShapeError,
        match=r"bidirectional: expected initial_state as a tuple of 4 arrays \(forward states "
        r"then backward states\)",
    ):
        bi.init(jax.random.key(0), x, None, (jnp.zeros((2, U)),) * 2)


def test_config_errors():
    with pytest.raises(fnn.ConfigError, match=r"gru: expected units to be a positive int, got 0"):
        GRU(0)
    with pytest.raises(fnn.ConfigError, match=r"lstm: expected dropout in \[0, 1\), got 1\.0"):
        LSTM(2, dropout=1.0)
    with pytest.raises(
        fnn.ConfigError, match=r"simple_rnn: return_mask=True needs return_sequences=True"
    ):
        SimpleRNN(2, return_mask=True)
    with pytest.raises(
        fnn.ConfigError,
        match=r"bidirectional: expected merge_mode to be one of 'concat', 'sum', 'mul', 'ave' "
        r"or None, got 'max'",
    ):
        Bidirectional(LSTM(2), merge_mode="max")
    with pytest.raises(
        fnn.ConfigError, match=r"bidirectional: expected layer to be a SimpleRNN, LSTM or GRU"
    ):
        Bidirectional(Dense(2))
    with pytest.raises(
        fnn.ConfigError, match=r"bidirectional: expected the forward and backward layers to differ"
    ):
        Bidirectional(LSTM(2), backward_layer=LSTM(2, name="b"))
    with pytest.raises(
        fnn.ConfigError, match=r"bidirectional: expected the forward and backward layers to share"
    ):
        Bidirectional(
            LSTM(2), backward_layer=LSTM(2, go_backwards=True, return_sequences=True, name="b")
        )


# ------------------------------------------------------------------ Keras itself (optional)

KERAS_CASES = [
    ("SimpleRNN", {}),
    ("LSTM", {}),
    ("GRU", {"reset_after": True}),
    ("GRU", {"reset_after": False}),
]


@pytest.mark.parametrize(("class_name", "kwargs"), KERAS_CASES)
def test_keras_weights_give_keras_outputs(class_name, kwargs):
    """With keras installed (the ``bench`` extra, jax backend), Keras weights load unchanged."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(17)
    x = rng.normal(size=(B, T, F)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 1, 0, 1]], bool)
    for return_sequences, go_backwards, m in [(False, False, None), (True, True, mask)]:
        config = dict(
            return_sequences=return_sequences, return_state=True, go_backwards=go_backwards
        )
        k_layer = getattr(keras.layers, class_name)(U, **config, **kwargs)
        k_layer.build((B, T, F))
        for w in k_layer.weights:
            w.assign(rng.normal(size=w.shape).astype(np.float32) * 0.5)
        want = k_layer(x, mask=m)
        layer = getattr(fnn.layers, class_name)(U, **config, **kwargs)
        params = {w.name: jnp.asarray(w.numpy()) for w in k_layer.weights}
        got, _ = layer.apply(params, {}, x, m)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, np.asarray(w), rtol=1e-5, atol=1e-5)
    k_bi = keras.layers.Bidirectional(getattr(keras.layers, class_name)(U, **kwargs))
    k_bi.build((B, T, F))
    for w in k_bi.weights:
        w.assign(rng.normal(size=w.shape).astype(np.float32) * 0.5)
    bi = Bidirectional(getattr(fnn.layers, class_name)(U, **kwargs))
    keys = sorted(bi.init(jax.random.key(0), x)[0])  # backward_*, forward_*
    params = {
        key: {w.name: jnp.asarray(w.numpy()) for w in k_bi.weights if direction in w.path}
        for key, direction in zip(keys, ("/backward_", "/forward_"))
    }
    got, _ = bi.apply(params, {}, x, mask)
    np.testing.assert_allclose(got, np.asarray(k_bi(x, mask=mask)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("class_name", ["SimpleRNN", "LSTM", "GRU"])
def test_signatures_are_keras_argument_lists(class_name):
    """The three factories share one implementation; each still takes exactly its Keras
    arguments, in Keras's order and with Keras's defaults, plus fnn's own extras."""
    import inspect
    import os
    import re

    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    ours = inspect.signature(getattr(fnn.layers, class_name)).parameters
    theirs = inspect.signature(getattr(keras.layers, class_name).__init__).parameters
    extras = ["zero_output_for_mask", "return_mask", "dtype", "name"]
    # Every other argument is Keras's, in Keras's order.
    assert [k for k in ours if k not in extras] == [k for k in theirs if k in ours]
    assert [k for k in ours if k in extras] == extras
    for k in ours:
        if k in theirs:
            assert ours[k].default == theirs[k].default, k
    keras_name = getattr(keras.layers, class_name)(2).name
    assert ours["name"].default == re.sub(r"_\d+$", "", keras_name)
    # The arguments of the other cells (hidden from this factory) are refused.
    for argument in {"unit_forget_bias", "reset_after", "recurrent_activation"} - set(theirs):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{argument}'"):
            getattr(fnn.layers, class_name)(2, **{argument: True})


def test_factory_doctests_are_collected_from_this_module():
    """The factories are made by ``_spatial.ranked``; their examples still run as doctests
    of ``fnn.layers.recurrent``."""
    import doctest

    found = {t.name for t in doctest.DocTestFinder().find(fnn.layers.recurrent) if t.examples}
    names = {"SimpleRNN", "LSTM", "GRU", "Bidirectional"}
    assert {f"fnn.layers.recurrent.{n}" for n in names} <= found
