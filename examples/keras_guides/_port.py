"""Stand-ins for the guides' downloads: arrays with the shapes and dtypes of the originals.

Real data where it fits (scikit-learn's bundled digits, scaled up to MNIST's and CIFAR-10's
image sizes), seeded synthetic data where it does not (FordA, IMDB). Sample counts are cut
so that every guide runs in well under a minute on one CPU core.

>>> (x, y), (xt, yt) = mnist_like()
>>> x.shape, x.dtype, y.dtype, xt.shape
((1437, 28, 28), dtype('uint8'), dtype('uint8'), (360, 28, 28))
"""

from __future__ import annotations

import numpy as np

from fnn import datasets


def _digit_images(size: int):
    """Digits upsampled from 8x8 to ``size`` x ``size`` (nearest, centred), in 0..255."""
    (x_train, y_train), (x_test, y_test) = datasets.load_digits(as_images=True)
    scale = size // 8
    pad = (size - 8 * scale) // 2

    def grow(x):
        x = np.kron(x[..., 0], np.ones((scale, scale), np.float32))
        x = np.pad(x, ((0, 0), (pad, size - 8 * scale - pad), (pad, size - 8 * scale - pad)))
        return np.round(x * 255).astype(np.uint8)

    return (grow(x_train), y_train.astype(np.uint8)), (grow(x_test), y_test.astype(np.uint8))


def mnist_like():
    """``keras.datasets.mnist.load_data()`` layout: ``[n, 28, 28]`` uint8, labels uint8
    (1,437 train / 360 test digits instead of 60,000 / 10,000)."""
    return _digit_images(28)


def cifar10_like(n_train: int = 640):
    """``keras.datasets.cifar10.load_data()`` layout: ``[n, 32, 32, 3]`` uint8, labels
    ``[n, 1]`` uint8 (the digits in grey on three channels; 640 / 360 examples, so the
    guide's ``x_train[:1000]`` takes 640)."""
    (x_train, y_train), (x_test, y_test) = _digit_images(32)
    rgb = lambda x: np.repeat(x[..., None], 3, axis=-1)  # noqa: E731
    x_train, y_train = x_train[:n_train], y_train[:n_train]
    return (rgb(x_train), y_train[:, None]), (rgb(x_test), y_test[:, None])


def forda_like(split: str, length: int = 500):
    """FordA's layout for ``readucr(root_url + f"FordA_{split.upper()}.tsv")``: ``x [n, 500]``
    float64, each series z-normalized, ``y`` int in {-1, 1} (600 train / 200 test series,
    not 3,601 / 1,320). Class 1 is a noisy sine with four times the frequency of class -1
    (random phase and amplitude), so a small ConvNet separates them."""
    n, seed = {"train": (600, 0), "test": (200, 1)}[split]
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(n) < 0.5, -1, 1)
    t = np.arange(length)[None, :]
    freq = np.where(y == 1, 0.08, 0.02)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    x = rng.uniform(0.5, 2.0, (n, 1)) * np.sin(freq * t + phase)
    x = x + 0.5 * rng.standard_normal((n, length))
    x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    return x, y.astype(int)


def imdb_like(num_words: int = 20000, n_train: int = 1000, n_val: int = 250, seed: int = 0):
    """``keras.datasets.imdb.load_data(num_words=...)`` layout: object arrays of int lists
    (1 = start token, word indices from 4 to ``num_words - 1``), labels int64 in {0, 1}.
    A third of each review's words come from 25 words of its class, the rest are random."""
    rng = np.random.default_rng(seed)
    class_words = rng.choice(np.arange(4, num_words), size=(2, 25), replace=False)

    def make(n):
        y = (rng.random(n) < 0.5).astype(np.int64)
        reviews = np.empty(n, dtype=object)
        for i in range(n):
            length = int(rng.integers(40, 300))
            words = rng.integers(4, num_words, size=length)
            marked = rng.random(length) < 1 / 3
            words[marked] = rng.choice(class_words[y[i]], size=int(marked.sum()))
            reviews[i] = [1, *words.tolist()]
        return reviews, y

    return make(n_train), make(n_val)


def vgg19_standin(keras):
    """A small VGG-style functional model on 224x224x3 images, for the feature-extraction
    example (``keras.applications.VGG19()`` downloads 548 MB of weights and is not part
    of fnn). ``keras`` is the module the guide imported."""
    layers = keras.layers
    inputs = keras.Input(shape=(224, 224, 3), name="input_layer")
    x = layers.Conv2D(8, 3, activation="relu", padding="same", name="block1_conv1")(inputs)
    x = layers.MaxPooling2D(4, name="block1_pool")(x)
    x = layers.Conv2D(16, 3, activation="relu", padding="same", name="block2_conv1")(x)
    x = layers.MaxPooling2D(4, name="block2_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="vgg19_standin")
