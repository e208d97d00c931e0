"""``fnn.ops`` against ``keras.ops`` (JAX backend) on random inputs, one case per op, and
the same ops with every array argument wrapped as an fnn weight variable."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras
import numpy as np
import pytest

from fnn import ops
from fnn.core.errors import ConfigError

rng = np.random.default_rng(0)
X = rng.normal(size=(3, 4)).astype("float32")
Y = rng.normal(size=(3, 4)).astype("float32")
POS = rng.uniform(0.1, 2.0, size=(3, 4)).astype("float32")
X3 = rng.normal(size=(2, 3, 4)).astype("float32")
B1, B2 = X > 0, Y > 0
LABELS = np.array([0, 3, 1], "int32")
PROBS = np.asarray(jax.nn.softmax(X, axis=-1))
ONEHOT = np.eye(4, dtype="float32")[LABELS]

SIGNED = (  # noqa: SIM905
    "negative abs absolute sign floor ceil round tanh sin cos erf isnan isinf "
    "isfinite sort argsort relu relu6 sigmoid softmax log_softmax gelu silu swish "
    "softplus softsign log_sigmoid elu selu leaky_relu hard_sigmoid hard_silu "
    "hard_swish exp expm1 square ravel ndim size shape dtype stop_gradient "
    "convert_to_numpy convert_to_tensor ones_like zeros_like transpose cumsum cumprod "
    "logsumexp norm normalize sum mean std var prod amax amin argmax argmin max min "
    "all any count_nonzero tril triu flip diag trace"
).split()
REDUCTIONS = (  # noqa: SIM905
    "sum mean std var prod amax amin argmax argmin max min all any logsumexp"
).split()
BINARY = (  # noqa: SIM905
    "add subtract multiply divide true_divide floor_divide mod maximum minimum equal "
    "not_equal greater greater_equal less less_equal"
).split()

CASES = {
    **{f"{n}": (n, (X,), {}) for n in SIGNED},
    **{f"{n}-axis1-keepdims": (n, (X, 1, True), {}) for n in REDUCTIONS},
    **{f"{n}": (n, (POS,), {}) for n in ["log", "log1p", "sqrt", "rsqrt"]},
    **{f"{n}": (n, (X, Y), {}) for n in BINARY},
    **{f"{n}": (n, (B1, B2), {}) for n in ["logical_and", "logical_or", "logical_xor"]},
    "logical_not": ("logical_not", (B1,), {}),
    "power": ("power", (POS, Y), {}),
    "matmul": ("matmul", (X, Y.T), {}),
    "dot": ("dot", (X, Y.T), {}),
    "outer": ("outer", (X[0], Y[1]), {}),
    "tensordot": ("tensordot", (X, Y.T), {"axes": 1}),
    "einsum": ("einsum", ("ij,kj->ik", X, Y), {}),
    "concatenate": ("concatenate", ([X, Y], 1), {}),
    "stack": ("stack", ([X, Y], 0), {}),
    "reshape": ("reshape", (X, (4, 3)), {}),
    "expand_dims": ("expand_dims", (X, 1), {}),
    "squeeze": ("squeeze", (X[:, None],), {}),
    "ones": ("ones", ((2, 3),), {}),
    "zeros": ("zeros", ((2, 3),), {"dtype": "int32"}),
    "full": ("full", ((2, 3), 7.0), {}),
    "full_like": ("full_like", (X, 2.0), {}),
    "arange": ("arange", (1, 7, 2), {}),
    "linspace": ("linspace", (0.0, 1.0, 5), {}),
    "eye": ("eye", (3,), {}),
    "split": ("split", (X, 2, 1), {}),
    "tile": ("tile", (X, (2, 1)), {}),
    "repeat": ("repeat", (X, 2, 0), {}),
    "take": ("take", (X, np.array([2, 0]), 1), {}),
    "take_along_axis": ("take_along_axis", (X, np.argsort(X, 1), 1), {}),
    "roll": ("roll", (X, 1, 1), {}),
    "pad": ("pad", (X, ((1, 0), (0, 2))), {}),
    "broadcast_to": ("broadcast_to", (X[0], (2, 4)), {}),
    "meshgrid": ("meshgrid", (X[0], Y[:, 0]), {}),
    "average": ("average", (X, 1, POS[0]), {}),
    "moveaxis": ("moveaxis", (X3, 0, 2), {}),
    "swapaxes": ("swapaxes", (X3, 0, 2), {}),
    "where": ("where", (B1, X, Y), {}),
    "where-indices": ("where", (B1,), {}),
    "nonzero": ("nonzero", (B1,), {}),
    "clip": ("clip", (X, -0.5, 0.5), {}),
    "one_hot": ("one_hot", (LABELS, 5), {}),
    "top_k": ("top_k", (X, 2), {}),
    "cast": ("cast", (X * 3, "int32"), {}),
    "moments": ("moments", (X3, [0, 2]), {}),
    "moments-keepdims": ("moments", (X3, [1]), {"keepdims": True}),
    "norm-fro": ("norm", (X,), {"ord": "fro", "axis": (0, 1)}),
    "categorical_crossentropy": ("categorical_crossentropy", (ONEHOT, PROBS), {}),
    "categorical_crossentropy-logits": (
        "categorical_crossentropy",
        (ONEHOT, X),
        {"from_logits": True},
    ),
    "sparse_categorical_crossentropy": ("sparse_categorical_crossentropy", (LABELS, PROBS), {}),
    "sparse_categorical_crossentropy-logits": (
        "sparse_categorical_crossentropy",
        (LABELS, X),
        {"from_logits": True},
    ),
    "binary_crossentropy": ("binary_crossentropy", (B1.astype("float32"), jax.nn.sigmoid(Y)), {}),
    "binary_crossentropy-logits": (
        "binary_crossentropy",
        (B1.astype("float32"), Y),
        {"from_logits": True},
    ),
}


class Var:
    """Stand-in for an fnn weight variable: only the two attributes ops may rely on."""

    _fnn_variable = True

    def __init__(self, value):
        self.value = value


def _host(out):
    if isinstance(out, list | tuple):
        return [_host(o) for o in out]
    return out if isinstance(out, str) else np.asarray(out)


def _assert_same(got, want):
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
    elif isinstance(want, str):
        assert got == want
    else:
        assert got.shape == want.shape
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_keras_and_unwraps_variables(case):
    name, args, kwargs = CASES[case]
    want = _host(getattr(keras.ops, name)(*args, **kwargs))
    _assert_same(_host(getattr(ops, name)(*args, **kwargs)), want)
    as_vars = jax.tree.map(lambda a: Var(a) if isinstance(a, np.ndarray) else a, args)
    _assert_same(_host(getattr(ops, name)(*as_vars, **kwargs)), want)


def test_table_covers_the_brief_and_nn_names_match_keras():
    for name in ops.nn.__dict__:
        assert hasattr(keras.ops.nn, name), name
        assert getattr(ops.nn, name) is getattr(ops, name)
    for name in ops.__all__:
        if name not in ("unwrap", "image", "nn"):
            assert hasattr(keras.ops, name), f"fnn.ops.{name} is not a keras.ops name"
    tested = {name for name, _, _ in CASES.values()}
    assert tested == set(ops.__all__) - {"unwrap", "image", "nn"}


@pytest.mark.parametrize("antialias", [False, True])
def test_image_resize_matches_keras(antialias):
    images = rng.normal(size=(2, 6, 8, 3)).astype("float32")
    for size, method in (((3, 4), "bilinear"), ((9, 5), "nearest"), ((4, 4), "bicubic")):
        want = keras.ops.image.resize(images, size, interpolation=method, antialias=antialias)
        got = ops.image.resize(Var(images), size, interpolation=method, antialias=antialias)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_ops_run_under_jit_on_variables():
    w = Var(Y.T)
    f = jax.jit(lambda x: ops.softmax(ops.matmul(x, w), axis=-1))
    np.testing.assert_allclose(
        np.asarray(f(X)), np.asarray(keras.ops.softmax(X @ Y.T)), rtol=1e-6, atol=1e-6
    )


def test_errors():
    with pytest.raises(AttributeError, match=r"fnn.ops has no 'matmull'. Did you mean 'matmul'"):
        ops.matmull  # noqa: B018
    with pytest.raises(ConfigError, match=r"ops.image.resize: expected data_format="):
        ops.image.resize(X3[None], (2, 2), data_format="channels_first")
    with pytest.raises(ConfigError, match=r"ops.image.resize: expected images of rank 3 or 4"):
        ops.image.resize(X, (2, 2))
    with pytest.raises(ConfigError, match=r"ops.where: expected both x1 and x2 or neither"):
        ops.where(B1, X)
    with pytest.raises(ConfigError, match=r"ops.one_hot: expected sparse=False"):
        ops.one_hot(LABELS, 4, sparse=True)
