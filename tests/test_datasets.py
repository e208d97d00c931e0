"""Datasets: bundled data against scikit-learn, user files, sequence task, batching."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets as skd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fnn import ConfigError, datasets


def rows_as_set(x):
    return sorted(map(bytes, np.ascontiguousarray(x.reshape(len(x), -1))))


def test_digits_is_a_stratified_deterministic_split_of_sklearn_digits():
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    reference = skd.load_digits()
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    # Nothing lost or duplicated, pixels scaled by 1/16.
    both = np.concatenate([x_train, x_test])
    assert rows_as_set(both) == rows_as_set((reference.data / 16.0).astype(np.float32))
    assert x_train.max() == 1.0 and x_train.min() == 0.0
    # Labels travel with their images.
    lookup = {
        bytes(r): t for r, t in zip((reference.data / 16).astype(np.float32), reference.target)
    }
    assert all(lookup[bytes(r)] == t for r, t in zip(x_test, y_test))
    # Stratified: every class keeps its share (to within one sample).
    full = np.bincount(reference.target)
    np.testing.assert_allclose(np.bincount(y_test, minlength=10), 0.2 * full, atol=1)
    # Fixed seed: the same split every call; another seed, another split.
    (x2, _), _ = datasets.load_digits()
    np.testing.assert_array_equal(x_train, x2)
    (x3, _), _ = datasets.load_digits(seed=1)
    assert not np.array_equal(x_train, x3)


def test_digits_as_images_is_nhwc_view_of_flat():
    (flat, y), _ = datasets.load_digits()
    (images, y_img), _ = datasets.load_digits(as_images=True)
    assert images.shape == (1437, 8, 8, 1)
    np.testing.assert_array_equal(images.reshape(-1, 64), flat)
    np.testing.assert_array_equal(y, y_img)


@pytest.mark.parametrize(
    "name,loader,features,classes",
    [
        ("breast_cancer", skd.load_breast_cancer, 30, 2),
        ("wine", skd.load_wine, 13, 3),
        ("iris", skd.load_iris, 4, 3),
    ],
)
def test_tabular_standardized_with_training_statistics(name, loader, features, classes):
    (x_train, y_train), (x_test, y_test) = datasets.load(name)
    (raw_train, raw_y), (raw_test, _) = datasets.load(name, standardize=False)
    assert x_train.shape[1] == features and set(np.unique(y_train)) == set(range(classes))
    np.testing.assert_array_equal(y_train, raw_y)
    scaler = StandardScaler().fit(raw_train.astype(np.float64))
    np.testing.assert_allclose(x_train, scaler.transform(raw_train), atol=1e-5)
    np.testing.assert_allclose(x_test, scaler.transform(raw_test), atol=1e-5)
    n = len(loader().target)
    assert len(x_train) + len(x_test) == n and len(x_test) == int(np.ceil(0.2 * n))


def test_sequence_task_needs_accumulation_over_time():
    (x_train, y_train), (x_test, y_test) = datasets.load_sequence(num_samples=1000, length=20)
    assert x_train.shape == (800, 20, 3) and x_train.dtype == np.float32
    assert y_train.dtype == np.int32
    # The time-average separates the classes, a single step does not.
    mean_model = LogisticRegression().fit(x_train.mean(1), y_train)
    last_model = LogisticRegression().fit(x_train[:, -1], y_train)
    assert mean_model.score(x_test.mean(1), y_test) > 0.9
    assert last_model.score(x_test[:, -1], y_test) < 0.7
    again, _ = datasets.load_sequence(num_samples=1000, length=20)
    np.testing.assert_array_equal(again[0], x_train)
    with pytest.raises(ConfigError, match=r"expected length to be an int >= 2, got 1"):
        datasets.load_sequence(length=1)


def test_npz_split_and_presplit(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    y = np.arange(50) % 5
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (x_train, y_train), (x_test, y_test) = datasets.load_npz(tmp_path / "data.npz", test_size=0.2)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert len(x_test) == 10 and np.bincount(y_test).tolist() == [2] * 5
    np.savez(tmp_path / "pre.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    (a, _), (b, yb) = datasets.load_npz(tmp_path / "pre.npz")
    np.testing.assert_array_equal(a, x[:40].astype(np.float32))
    np.testing.assert_array_equal(yb, y[40:])


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(ConfigError, match=r"cannot read .*obj.npz' without pickle"):
        datasets.load_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "keys.npz", inputs=np.zeros(3))
    with pytest.raises(ConfigError, match=r"has no array 'x' \(it has \['inputs'\]\)"):
        datasets.load_npz(tmp_path / "keys.npz")
    with pytest.raises(ConfigError, match=r"load_npz: no such file"):
        datasets.load_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"load_npz: .*junk.npz"):
        datasets.load_npz(tmp_path / "junk.npz")


def test_csv_with_header_and_named_label(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = np.arange(40) % 2
    lines = ["a,label,b,c"] + [
        f"{float(r[0])!r},{t},{float(r[1])!r},{float(r[2])!r}" for r, t in zip(x, y)
    ]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    (x_train, y_train), (x_test, y_test) = datasets.load_csv(
        tmp_path / "t.csv", label_column="label"
    )
    assert x_train.shape == (32, 3) and y_train.dtype == np.int32
    got = np.concatenate([x_train, x_test])
    assert rows_as_set(got) == rows_as_set(x.astype(np.float32))


def test_csv_without_header_regression_target(tmp_path):
    table = np.random.default_rng(1).normal(size=(20, 4))
    np.savetxt(tmp_path / "r.csv", table, delimiter=",")
    (x_train, y_train), _ = datasets.load_csv(tmp_path / "r.csv")
    assert y_train.dtype == np.float32 and x_train.shape == (16, 3)
    # Rows stay whole: each (features, target) pair is a row of the file.
    full = {tuple(np.float32(r[:3])): np.float32(r[3]) for r in table}
    assert all(full[tuple(r)] == t for r, t in zip(x_train, y_train))


def test_csv_errors(tmp_path):
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(ConfigError, match=r"line 2: expected 3 values, got 2"):
        datasets.load_csv(tmp_path / "ragged.csv")
    (tmp_path / "text.csv").write_text("x,y\n1,2\n3,oops\n")
    with pytest.raises(ConfigError, match=r"line 3: could not convert string to float: 'oops'"):
        datasets.load_csv(tmp_path / "text.csv")
    with pytest.raises(ConfigError, match=r"no column 'label' .*header: \['x', 'y'\]"):
        datasets.load_csv(tmp_path / "text.csv", label_column="label")
    (tmp_path / "ok.csv").write_text("1,2\n3,4\n")
    with pytest.raises(ConfigError, match=r"expected label_column in \[-2, 2\), got 5"):
        datasets.load_csv(tmp_path / "ok.csv", label_column=5)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConfigError, match=r"is empty"):
        datasets.load_csv(tmp_path / "empty.csv")


def test_batches_cover_every_example_once_in_a_seeded_order():
    x = np.arange(103)
    y = x * 10
    got = list(datasets.batches(x, y, batch_size=10, seed=3))
    assert [len(b) for b, _ in got] == [10] * 10 + [3]
    order = np.concatenate([b for b, _ in got])
    assert sorted(order.tolist()) == list(range(103))
    np.testing.assert_array_equal(np.concatenate([t for _, t in got]), order * 10)
    np.testing.assert_array_equal(order, np.random.default_rng(3).permutation(103))
    again = np.concatenate([b for b, _ in datasets.batches(x, y, batch_size=10, seed=3)])
    np.testing.assert_array_equal(order, again)
    other = np.concatenate([b for b, _ in datasets.batches(x, y, batch_size=10, seed=4)])
    assert not np.array_equal(order, other)
    dropped = list(datasets.batches(x, None, batch_size=10, drop_remainder=True))
    assert len(dropped) == 10 and dropped[0].tolist() == list(range(10))


def test_batches_shuffle_load_errors():
    with pytest.raises(ConfigError, match=r"expected a positive int batch_size, got 0"):
        next(datasets.batches(np.zeros(3), None, batch_size=0))
    with pytest.raises(ConfigError, match=r"expected len\(y\) == len\(x\) == 3, got 2"):
        next(datasets.batches(np.zeros(3), np.zeros(2)))
    with pytest.raises(ConfigError, match=r"expected arrays of equal length, got \[3, 2\]"):
        datasets.shuffle(np.zeros(3), np.zeros(2), seed=0)
    a, b = datasets.shuffle(np.arange(6), np.arange(6) + 100, seed=1)
    np.testing.assert_array_equal(b, a + 100)
    with pytest.raises(ConfigError, match=r"unknown dataset 'digit'. Did you mean 'digits'\?"):
        datasets.load("digit")
    with pytest.raises(ConfigError, match=r"expected test_size in \(0, 1\), got 1.5"):
        datasets.load("iris", test_size=1.5)
