"""``fnn.utils`` against Keras 3's own ``keras.utils`` (JAX backend) and NumPy formulas;
``PyDataset`` batch sources against the same batches fed as a list."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import itertools
import math
import random
import re
import shutil
import sys

import keras
import numpy as np
import pytest
from keras.src.utils.dataset_utils import _rescale_dataset_split_sizes

import fnn
from fnn import utils
from fnn.core.errors import ConfigError, ShapeError
from fnn.io.data_adapter import IterableData
from fnn.layers import Dense
from fnn.training.loop import epoch_order

rng = np.random.default_rng(0)


# ---------------------------------------------------------------- to_categorical


@pytest.mark.parametrize(
    "y, num_classes",
    [
        ([0, 2, 1, 3], None),
        ([0, 2, 1], 5),
        (np.array([[1], [0], [2]]), None),
        (np.array([[0, 1], [2, 2]]), 4),
        (np.array([1.0, 0.0]), None),
    ],
)
def test_to_categorical_matches_keras(y, num_classes):
    want = keras.utils.to_categorical(y, num_classes)
    got = utils.to_categorical(y, num_classes)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_to_categorical_errors():
    with pytest.raises(ConfigError, match=r"to_categorical: expected labels in \[0, 2\), got"):
        utils.to_categorical([0, 3], 2)
    with pytest.raises(ConfigError, match=r"to_categorical: expected integer class labels"):
        utils.to_categorical([0.5, 1.0])


# ---------------------------------------------------------------- pad_sequences

SEQUENCES = [[1, 2, 3, 4], [5], [], [6, 7]]


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
@pytest.mark.parametrize("maxlen", [None, 3, 1])
def test_pad_sequences_matches_keras(padding, truncating, maxlen):
    kw = dict(maxlen=maxlen, padding=padding, truncating=truncating)
    want = keras.utils.pad_sequences(SEQUENCES, **kw)
    got = utils.pad_sequences(SEQUENCES, **kw)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_pad_sequences_dtype_value_and_sample_shape_match_keras():
    seqs = [rng.normal(size=(n, 2)).astype("float32") for n in (3, 1, 4)]
    kw = dict(maxlen=3, dtype="float32", padding="post", value=-1.0)
    np.testing.assert_array_equal(
        utils.pad_sequences(seqs, **kw), keras.utils.pad_sequences(seqs, **kw)
    )
    with pytest.raises(
        ShapeError, match=r"pad_sequences: expected every sequence's items of shape"
    ):
        utils.pad_sequences([np.zeros((2, 2)), np.zeros((2, 3))])
    with pytest.raises(ConfigError, match=r"pad_sequences: expected padding 'pre' or 'post'"):
        utils.pad_sequences(SEQUENCES, padding="middle")


# ---------------------------------------------------------------- normalize


@pytest.mark.parametrize("axis, order", [(-1, 2), (-1, 1), (1, 3)])
def test_normalize_matches_keras(axis, order):
    x = rng.normal(size=(4, 5))
    x[1] = 0.0  # a zero row keeps norm 1
    want = keras.utils.normalize(x, axis=axis, order=order)
    np.testing.assert_allclose(utils.normalize(x, axis=axis, order=order), want, rtol=1e-12)


def test_normalize_axis_0_is_the_formula():
    """Keras's NumPy path turns axis=0 into -1 (``axis or -1``) and fails to broadcast;
    fnn normalizes columns, as the formula says."""
    x = rng.normal(size=(4, 5))
    want = x / np.sqrt(np.sum(x**2, axis=0, keepdims=True))
    np.testing.assert_allclose(utils.normalize(x, axis=0), want, rtol=1e-12)


# ---------------------------------------------------------------- split_dataset
# keras.utils.split_dataset needs tf.data; the reference is Keras's own size rule
# (_rescale_dataset_split_sizes) and its shuffle (random.seed, random.shuffle of the samples).


def _keras_split(arrays, left_size, right_size, shuffle, seed):
    samples = list(zip(*arrays))
    if shuffle:
        random.seed(seed)
        random.shuffle(samples)
    left, right = _rescale_dataset_split_sizes(left_size, right_size, len(samples))
    unzip = lambda part: [np.stack(col) for col in zip(*part)]  # noqa: E731
    return unzip(samples[:left]), unzip(samples[-right:])


@pytest.mark.parametrize(
    "left_size, right_size, shuffle",
    [(0.8, None, False), (None, 3, True), (4, 0.3, True), (0.25, 0.5, False), (7, None, True)],
)
def test_split_dataset_matches_keras_rule(left_size, right_size, shuffle):
    x, y = rng.normal(size=(10, 3)), np.arange(10)
    want_left, want_right = _keras_split((x, y), left_size, right_size, shuffle, seed=3)
    left, right = utils.split_dataset((x, y), left_size, right_size, shuffle=shuffle, seed=3)
    assert isinstance(left, tuple) and isinstance(right, tuple)
    for got, want in zip((*left, *right), (*want_left, *want_right)):
        np.testing.assert_array_equal(got, want)
    single_left, _ = utils.split_dataset(x, left_size, right_size, shuffle=shuffle, seed=3)
    np.testing.assert_array_equal(single_left, want_left[0])
    as_dict, _ = utils.split_dataset({"a": x, "b": y}, left_size, right_size, shuffle, seed=3)
    np.testing.assert_array_equal(as_dict["b"], want_left[1])


def test_split_dataset_errors():
    x = np.arange(10)
    with pytest.raises(ConfigError, match=r"split_dataset: expected left_size or right_size"):
        utils.split_dataset(x)
    with pytest.raises(ConfigError, match=r"expected left_size a positive int below the 10"):
        utils.split_dataset(x, left_size=10)
    with pytest.raises(ConfigError, match=r"expected left_size \+ right_size <= 1"):
        utils.split_dataset(x, 0.7, 0.5)
    with pytest.raises(ConfigError, match=r"expected two non-empty splits within the 10 samples"):
        utils.split_dataset(x, 6, 5)
    with pytest.raises(ShapeError, match=r"split_dataset: expected arrays with the same number"):
        utils.split_dataset((x, x[:5]), 0.5)


# ---------------------------------------------------------------- seeds, get_file


def test_set_random_seed_matches_keras():
    keras.utils.set_random_seed(7)
    want = (random.random(), np.random.rand(3))
    utils.set_random_seed(7)
    got = (random.random(), np.random.rand(3))
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ConfigError, match=r"set_random_seed: expected an int seed, got 1.5"):
        utils.set_random_seed(1.5)
    # Eager layer calls draw their initial weights from the seeded sequence too.
    x = np.ones((1, 3), "float32")
    utils.set_random_seed(3)
    first = fnn.layers.Dense(2)(x)
    utils.set_random_seed(3)
    np.testing.assert_array_equal(fnn.layers.Dense(2)(x), first)


def test_get_file_refuses_to_download():
    with pytest.raises(ConfigError, match=r"get_file: fnn never downloads files .*local path"):
        utils.get_file("mnist.npz", origin="https://example.com/mnist.npz")


# ---------------------------------------------------------------- plot_model


@pytest.fixture(scope="module")
def stack():
    model = fnn.Sequential(
        [
            fnn.Input((6,)),
            Dense(5, activation="relu"),
            fnn.serial(Dense(4), Dense(3), name="block"),
            Dense(2),
        ]
    )
    return model


def _dot_graph(text):
    nodes = dict(re.findall(r'^\s*"([^"]+)" \[label="([^"]*)"\];$', text, re.M))
    edges = re.findall(r'^\s*"([^"]+)" -> "([^"]+)";$', text, re.M)
    return nodes, edges


def test_plot_model_dot_is_the_layer_chain(stack, tmp_path):
    path = utils.plot_model(
        stack, to_file=tmp_path / "m.dot", show_shapes=True, show_layer_names=True
    )
    with open(path) as f:
        nodes, edges = _dot_graph(f.read())
    names = [layer.name for layer in stack.layers]  # the Sequential's layer keys, in order
    assert names == ["dense", "block", "dense_1"]
    chain = ["input_layer", *names]
    assert edges == list(itertools.pairwise(chain))
    # Output shapes of every top-level layer, from running the layers one by one.
    x = np.zeros((1, 6), "float32")
    for name, layer in zip(names, stack.layers):
        x, _ = layer.apply(stack.params[name], stack.state.get(name, {}), x)
        assert nodes[name].endswith(f"Output shape: {(None, *x.shape[1:])}")
    assert nodes["input_layer"] == "InputLayer\\nInput shape: (None, 6)"


def test_plot_model_expand_nested_boxes_the_children(stack):
    text = utils.model_to_dot(stack, expand_nested=True, show_layer_names=True)
    nodes, edges = _dot_graph(text)
    inner = [n for n in nodes if n.startswith("block/")]
    assert [nodes[n] for n in inner] == [f"{k} (Dense)" for k in stack.params["block"]]
    assert (inner[0], inner[1]) in edges
    assert 'subgraph "cluster_block"' in text
    plain, _ = _dot_graph(utils.model_to_dot(stack))  # Keras's default: class names only
    assert plain["dense"] == "Dense" and plain["block"] == "serial"


def test_plot_model_without_graphviz_draws_with_matplotlib(stack, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)  # import pydot -> ImportError
    path = utils.plot_model(stack, to_file=tmp_path / "model.png", show_shapes=True)
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[0] > 100  # a real picture, read back
    with pytest.raises(
        ConfigError,
        match=r"expected pydot and Graphviz to draw .*model.gif, got no pydot package.*pip install pydot",
    ):
        utils.plot_model(stack, to_file=tmp_path / "model.gif")
    with pytest.raises(ConfigError, match=r"plot_model: expected show_dtype=False"):
        utils.plot_model(stack, to_file=tmp_path / "m.dot", show_dtype=True)


def test_plot_model_of_a_graph_draws_every_tensor_edge(tmp_path):
    a, b = fnn.Input((4,), name="a"), fnn.Input((3,), name="b")
    h = fnn.layers.concatenate([fnn.layers.Dense(5, name="d")(a), b])
    model = fnn.Model([a, b], [fnn.layers.Dense(1, name="p")(h), fnn.layers.Dense(2, name="q")(h)])
    nodes, edges = _dot_graph(utils.model_to_dot(model, show_layer_names=True))
    assert sorted(edges) == sorted(
        [("a", "d"), ("d", "concatenate"), ("b", "concatenate"), ("concatenate", "p"),
         ("concatenate", "q")]
    )  # fmt: skip


def test_plot_model_draws_a_png_with_graphviz(stack, tmp_path):
    pytest.importorskip("pydot")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    path = utils.plot_model(stack, to_file=tmp_path / "model.png", show_shapes=True)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- PyDataset

X = rng.normal(size=(40, 3)).astype("float32")
Y = (X @ np.array([1.0, -2.0, 0.5], "float32"))[:, None]
BATCH = 8


class Batches(utils.PyDataset):
    """Written the Keras way: super().__init__(**kwargs), __len__, __getitem__, on_epoch_end."""

    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.ends = 0

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, idx):
        low = idx * self.batch_size
        high = min(low + self.batch_size, len(self.x))
        return self.x[low:high], self.y[low:high]

    def on_epoch_end(self):
        self.ends += 1


class KerasBatches(keras.utils.PyDataset):
    """Keras's own PyDataset class, fed to fnn."""

    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, idx):
        sl = slice(idx * self.batch_size, (idx + 1) * self.batch_size)
        return self.x[sl], self.y[sl]


def _model():
    model = fnn.Sequential([fnn.Input((3,)), Dense(4, activation="tanh"), Dense(1)])
    model.compile(optimizer="adam", loss="mse", seed=1)
    return model


def _weights_after(data, **fit_kw):
    model = _model()
    model.fit(data, verbose=0, shuffle=False, **fit_kw)
    return model.get_weights()


@pytest.fixture(scope="module")
def list_weights():
    batches = [(X[i : i + BATCH], Y[i : i + BATCH]) for i in range(0, len(X), BATCH)]
    return _weights_after(batches, epochs=3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Batches(X, Y, BATCH),
        lambda: Batches(X, Y, BATCH, workers=3),
        lambda: KerasBatches(X, Y, BATCH),
    ],
)
def test_pydataset_fit_equals_the_same_batches_as_a_list(make, list_weights):
    data = make()
    steps = []

    class Steps(fnn.callbacks.Callback):
        def on_train_begin(self, logs=None):
            steps.append(self.params["steps"])

    got = _weights_after(data, epochs=3, callbacks=[Steps()])
    for g, w in zip(got, list_weights):
        np.testing.assert_array_equal(g, w)
    assert steps == [len(data)]
    if isinstance(data, Batches):
        assert data.ends == 3


def test_pydataset_steps_per_epoch_continues_the_pass_as_keras():
    """Keras's rule: with steps_per_epoch < len the next epoch goes on with the next batches;
    on_epoch_end runs after every epoch."""
    data = Batches(X[:32], Y[:32], BATCH)  # 4 batches: epochs of 2 + 2 == one pass of 4
    got = _weights_after(data, epochs=2, steps_per_epoch=2)
    want = _weights_after([data[i] for i in range(4)], epochs=1)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert data.ends == 2


def test_pydataset_shuffle_orders_batches_by_the_one_epoch_order():
    """``IterableData.epoch(shuffle=True)`` reads each pass in ``epoch_order(len, seed, pass)``
    (what ``fit(shuffle=True)`` uses for arrays)."""
    data = Batches(np.arange(10.0)[:, None], np.arange(10.0)[:, None], 2)
    source = IterableData(data)
    for p in range(3):
        got = [int(x[0, 0]) // 2 for x, _, _ in source.epoch(None, shuffle=True, seed=4)]
        assert got == epoch_order(5, seed=4, epoch=p).tolist()
    assert data.ends == 3


def test_pydataset_fit_shuffle_true_reads_batches_in_the_epoch_order():
    """Keras's fit(shuffle=True) (the default) shuffles a PyDataset's batch order each epoch;
    fnn draws that order from epoch_order(len, compile seed, epoch)."""
    data = Batches(X, Y, BATCH)
    got = _model()
    got.fit(data, epochs=2, verbose=0)
    batches = [data[i] for e in range(2) for i in epoch_order(len(data), seed=1, epoch=e)]
    want = _weights_after(batches, epochs=1)
    for g, w in zip(got.get_weights(), want):
        np.testing.assert_array_equal(g, w)


def test_pydataset_evaluate_and_predict_equal_arrays():
    model = _model()
    model.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    data = Batches(X, Y, BATCH)
    want = model.evaluate(X, Y, batch_size=BATCH, verbose=0)
    np.testing.assert_allclose(model.evaluate(data, verbose=0), want, rtol=1e-6)
    np.testing.assert_allclose(
        model.predict(data, verbose=0), model.predict(X, batch_size=BATCH, verbose=0), rtol=1e-6
    )
    assert data.ends == 1  # evaluate is one pass


def test_pydataset_without_len_says_what_to_define():
    class Empty(utils.PyDataset):
        pass

    with pytest.raises(NotImplementedError, match=r"Empty: define __len__"):
        len(Empty())
    assert utils.Sequence is utils.PyDataset


# ---------------------------------------------------------------- timeseries


@pytest.mark.parametrize(
    "kw",
    [
        dict(sequence_length=4),
        dict(sequence_length=3, sequence_stride=2, sampling_rate=2, batch_size=3),
        dict(sequence_length=2, start_index=3, end_index=15, batch_size=4, shuffle=True, seed=5),
    ],
)
def test_timeseries_windows_match_the_numpy_formula(kw):
    data = rng.normal(size=(20, 2)).astype("float32")
    targets = np.arange(100, 120)
    ds = utils.timeseries_dataset_from_array(data, targets, **kw)
    length, stride, rate = (
        kw["sequence_length"],
        kw.get("sequence_stride", 1),
        kw.get("sampling_rate", 1),
    )
    start, end = kw.get("start_index", 0), kw.get("end_index", 20)
    starts = list(range(0, end - start - (length - 1) * rate, stride))
    if kw.get("shuffle"):
        starts = np.array(starts)
        np.random.RandomState(kw["seed"]).shuffle(starts)
    want_x = np.stack([data[start + s : start + s + length * rate : rate] for s in starts])
    want_y = np.array([targets[start + s] for s in starts])
    got = [ds[i] for i in range(len(ds))]
    assert len(ds) == math.ceil(len(starts) / kw.get("batch_size", 128))
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), want_x)
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), want_y)


def test_timeseries_without_targets_feeds_predict():
    data = rng.normal(size=(12, 3)).astype("float32")
    ds = utils.timeseries_dataset_from_array(data, None, sequence_length=1, batch_size=5)
    model = fnn.Sequential([fnn.Input((1, 3)), fnn.layers.Flatten(), Dense(2)])
    np.testing.assert_allclose(
        model.predict(ds, verbose=0), model.predict(data[:, None], verbose=0), rtol=1e-6
    )
    with pytest.raises(ConfigError, match=r"expected sequence_length an int >= 1, got 0"):
        utils.timeseries_dataset_from_array(data, None, sequence_length=0)
