"""Streaming readers of fnn.datasets on tiny files the tests write, against the arrays they
were written from (and Pillow/NumPy read directly); training through fit from them; the
mid-epoch structure check; a memory-mapped dataset 4x a host-memory budget."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fnn
from fnn import datasets, layers
from fnn.core.errors import ConfigError, ShapeError

RNG = np.random.default_rng(0)
ROOT = Path(__file__).resolve().parents[1]


def test_npy_memmap_batches_and_shuffle(tmp_path):
    x = RNG.normal(size=(11, 3)).astype(np.float32)
    y = np.arange(11, dtype=np.int32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    data = datasets.NpyDataset(tmp_path / "x.npy", tmp_path / "y.npy", batch_size=4)
    assert isinstance(data.x, np.memmap)
    got = [b for b in data]
    assert [len(b[1]) for b in got] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)
    shuffled = datasets.NpyDataset(
        tmp_path / "x.npy", tmp_path / "y.npy", batch_size=4, shuffle=True, seed=3
    )
    from fnn.training.loop import epoch_order

    for epoch in range(2):
        ys = np.concatenate([shuffled[i][1] for i in range(len(shuffled))])
        np.testing.assert_array_equal(ys, epoch_order(11, seed=3, epoch=epoch))
        np.testing.assert_array_equal(
            np.concatenate([shuffled[i][0] for i in range(len(shuffled))]), x[ys]
        )
        shuffled.on_epoch_end()
    np.save(tmp_path / "y_short.npy", y[:3])
    with pytest.raises(ConfigError, match="as many labels as examples"):
        datasets.NpyDataset(tmp_path / "x.npy", tmp_path / "y_short.npy")
    with pytest.raises(ConfigError, match="positive int batch_size"):
        datasets.NpyDataset(tmp_path / "x.npy", batch_size=0)


def test_idx_round_trip_and_errors(tmp_path):
    images = RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    datasets.write_idx(tmp_path / "img.idx", images)
    datasets.write_idx(tmp_path / "lab.idx", labels)
    # The header by hand (IDX spec: 0, 0, type 0x08, ndim, big-endian sizes).
    raw = (tmp_path / "img.idx").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:16] == (5).to_bytes(4, "big") + (4).to_bytes(
        4, "big"
    ) + (3).to_bytes(4, "big")
    data = datasets.IdxDataset(tmp_path / "img.idx", tmp_path / "lab.idx", batch_size=5)
    x, y = data[0]
    np.testing.assert_allclose(x[..., 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    (tmp_path / "bad.idx").write_bytes(b"PK\x03\x04")
    with pytest.raises(ConfigError, match="is not an IDX file"):
        datasets.read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(raw[:-1])
    with pytest.raises(ConfigError, match="size does not match"):
        datasets.read_idx(tmp_path / "short.idx")


def test_csv_columns_and_label(tmp_path):
    table = np.round(RNG.normal(size=(7, 4)), 3)
    labels = np.arange(7) % 3
    path = tmp_path / "t.csv"
    lines = ["a,b,label,c,d"] + [
        ",".join([str(float(r[0])), str(float(r[1])), str(lab), str(float(r[2])), str(float(r[3]))])
        for r, lab in zip(table, labels)
    ]
    path.write_text("\n".join(lines) + "\n")
    want = np.loadtxt(path, delimiter=",", skiprows=1)
    data = datasets.CsvDataset(path, columns=["d", "a"], label_column="label", batch_size=3)
    x = np.concatenate([data[i][0] for i in range(len(data))])
    y = np.concatenate([data[i][1] for i in range(len(data))])
    np.testing.assert_allclose(x, want[:, [4, 0]].astype(np.float32))
    np.testing.assert_array_equal(y, labels)
    everything = datasets.CsvDataset(path, label_column=2, batch_size=7)
    np.testing.assert_allclose(everything[0][0], want[:, [0, 1, 3, 4]].astype(np.float32))
    with pytest.raises(ConfigError, match=r"no column 'e'"):
        datasets.CsvDataset(path, columns=["e"], label_column="label")
    with pytest.raises(ConfigError, match=r"label_column in \[-5, 5\)"):
        datasets.CsvDataset(path, label_column=9)
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ConfigError, match="data row 1: expected 2 values, got 1"):
        datasets.CsvDataset(path, label_column=None, batch_size=2)[0]


def test_image_folder_against_pillow(tmp_path):
    from PIL import Image

    pixels = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            a = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
            pixels[(cls, i)] = a
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = datasets.ImageFolder(tmp_path, image_size=(6, 5), batch_size=4)
    assert data.class_names == ["cat", "dog"] and len(data) == 2
    x = np.concatenate([data[0][0], data[1][0]])
    y = np.concatenate([data[0][1], data[1][1]])
    want = np.stack([pixels[(c, i)] for c in ("cat", "dog") for i in range(3)]) / 255.0
    np.testing.assert_allclose(x, want, rtol=1e-6)
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])
    gray = datasets.ImageFolder(tmp_path, image_size=(3, 2), color_mode="grayscale")
    with Image.open(tmp_path / "cat" / "0.png") as img:
        ref = np.asarray(img.convert("L").resize((2, 3), Image.Resampling.BILINEAR)) / 255.0
    np.testing.assert_allclose(gray[0][0][0, ..., 0], ref, rtol=1e-6)
    with pytest.raises(ConfigError, match="no images under"):
        datasets.ImageFolder(tmp_path / "cat")
    with pytest.raises(ConfigError, match=r"image_size \(height, width\)"):
        datasets.ImageFolder(tmp_path, image_size=(4,))


def test_parquet_row_groups_columns_and_label(tmp_path):
    """A Parquet file of 3 row groups the test writes with pyarrow: batches (in order,
    shuffled, across group boundaries, and a subset) against pyarrow's own table."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 23
    table = pa.table(
        {
            "a": RNG.normal(size=n),
            "label": np.arange(n, dtype=np.int64) % 4,
            "b": RNG.integers(-5, 5, size=n).astype(np.int32),
            "name": [f"row{i}" for i in range(n)],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10)
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.num_row_groups == 3
    want = np.stack([table["b"].to_numpy(), table["a"].to_numpy()], 1).astype(np.float32)
    labels = table["label"].to_numpy()
    data = datasets.ParquetDataset(
        tmp_path / "t.parquet", columns=["b", "a"], label_column="label", batch_size=7
    )
    assert len(data) == 4 and data.num_examples == n
    got = [data[i] for i in range(len(data))]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), want)
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), labels)
    assert got[0][1].dtype == np.int32
    from fnn.training.loop import epoch_order

    shuffled = datasets.ParquetDataset(
        tmp_path / "t.parquet", ["a", 2], "label", batch_size=5, shuffle=True, seed=4
    )
    ys = np.concatenate([shuffled[i][1] for i in range(len(shuffled))])
    xs = np.concatenate([shuffled[i][0] for i in range(len(shuffled))])
    order = epoch_order(n, seed=4, epoch=0)
    np.testing.assert_array_equal(ys, labels[order])
    np.testing.assert_array_equal(xs, want[order][:, ::-1])
    part = data.subset([22, 0, 11])  # one row of each group
    np.testing.assert_array_equal(part[0][0], want[[22, 0, 11]])
    with pytest.raises(ConfigError, match=r"column 'name' of .* holds string, expected numbers"):
        datasets.ParquetDataset(tmp_path / "t.parquet", label_column="label")
    with pytest.raises(ConfigError, match=r"no column 'c' in"):
        datasets.ParquetDataset(tmp_path / "t.parquet", columns=["c"], label_column="label")
    (tmp_path / "bad.parquet").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"is not a Parquet file"):
        datasets.ParquetDataset(tmp_path / "bad.parquet")


@pytest.fixture(scope="module")
def tiny_model():
    model = fnn.Sequential([fnn.Input((3,)), layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", seed=0)
    return model


def test_fit_from_reader_equals_fit_from_arrays(tmp_path, tiny_model):
    x = RNG.normal(size=(12, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    start = tiny_model.get_weights()
    data = datasets.NpyDataset(tmp_path / "x.npy", tmp_path / "y.npy", batch_size=4)
    tiny_model.fit(data, epochs=2, shuffle=False, verbose=0)
    from_reader = tiny_model.get_weights()
    tiny_model.set_weights(start)
    tiny_model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(from_reader, tiny_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_grain_map_dataset_and_mid_epoch_shape_change(tiny_model):
    grain = pytest.importorskip("grain")
    x = RNG.normal(size=(8, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    ds = grain.MapDataset.source(list(range(8))).map(lambda i: (x[i], y[i])).batch(4)
    assert "torch" not in sys.modules and "tensorflow" not in sys.modules
    start = tiny_model.get_weights()
    tiny_model.fit(ds, epochs=1, verbose=0)
    from_grain = tiny_model.get_weights()
    tiny_model.set_weights(start)
    tiny_model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(from_grain, tiny_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # An IterDataset and a DataLoader give the same batches in the same order.
    source = [(x[i], y[i]) for i in range(8)]
    loader = grain.DataLoader(
        data_source=source,
        sampler=grain.samplers.IndexSampler(8, shuffle=False, num_epochs=1, seed=0),
        operations=[grain.transforms.Batch(4)],
        worker_count=0,
    )
    for data in (ds.to_iter_dataset(), loader):
        tiny_model.set_weights(start)
        tiny_model.fit(data, epochs=1, verbose=0)
        for a, b in zip(from_grain, tiny_model.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    bad = [(x[:4], y[:4]), (x[4:, :2], y[4:])]
    with pytest.raises(ShapeError, match="batch 2 changed structure or shapes mid-epoch"):
        tiny_model.fit(bad, epochs=1, verbose=0)
    tiny_model.set_weights(start)


def test_memmap_training_stays_under_a_host_memory_budget(tmp_path):
    """A 192 MB float32 .npy file trained through fit while peak RSS growth stays below a
    48 MB budget (file / 4): only batches are ever read."""
    script = textwrap.dedent(
        f"""
        import resource, numpy as np
        rows, cols = 12 * 4096, 1024  # 192 MiB of float32
        x = np.lib.format.open_memmap({str(tmp_path / "x.npy")!r}, "w+", np.float32,
                                      (rows, cols))
        for i in range(0, rows, 4096):
            x[i:i + 4096] = np.float32((i // 4096) % 3) * 1e-3
        x.flush(); del x
        np.save({str(tmp_path / "y.npy")!r}, (np.arange(rows) % 2).astype(np.int32))
        import fnn
        from fnn import datasets, layers
        model = fnn.Sequential([fnn.Input((cols,)), layers.Dense(2, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", seed=0)
        data = datasets.NpyDataset({str(tmp_path / "x.npy")!r}, {str(tmp_path / "y.npy")!r},
                                   batch_size=512)
        model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # compiles
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hist = model.fit(data, epochs=1, verbose=0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert np.isfinite(hist.history["loss"][-1])
        print(before, after)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        timeout=300,
        capture_output=True,  # stderr shown on failure below
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    before_kb, after_kb = map(int, out.stdout.split()[-2:])
    file_mb = 12 * 4096 * 1024 * 4 / 2**20
    budget_mb = file_mb / 4
    # Peak RSS during the full epoch grows by less than the budget (the file is 4x it).
    assert (after_kb - before_kb) / 1024 < budget_mb, (before_kb, after_kb)


@pytest.mark.parametrize("name", ["digits_image_folder", "digits_csv", "digits_parquet"])
def test_cli_trains_from_generated_files(name, tmp_path, capsys):
    from fnn.cli import commands as cli

    files = datasets.write_digits_files(tmp_path / "files")
    assert sum(f.stat().st_size for f in files.rglob("*") if f.is_file()) < 200_000
    config = str(ROOT / "configs" / f"{name.replace('parquet', 'csv')}.yaml")
    path = files / ("images" if name == "digits_image_folder" else "digits.csv")
    args = ["--set", f"data.path={path}", "--set", f"run_dir={tmp_path / 'run'}"]
    if name == "digits_parquet":  # the CSV config, reading the same table as Parquet
        pyarrow_csv = pytest.importorskip("pyarrow.csv")
        pq = pytest.importorskip("pyarrow.parquet")
        pq.write_table(pyarrow_csv.read_csv(path), files / "digits.parquet", row_group_size=64)
        path = files / "digits.parquet"
        args = ["--set", f"data.path={path}", "--set", "data.format=parquet", *args[2:]]
    quick = ["--set", "epochs=5", "--set", "plots=false", "--set", "tensorboard=false"]
    # The same data path with a Dense head only (the shipped CNN validates in test_config),
    # to keep the compile time of this test small.
    quick += ["--set", "model.layers=[Flatten, {Dense: {units: 10}}]"]
    assert cli.main(["train", config, *args, *quick]) == 0
    results = __import__("json").loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["accuracy"] > 0.6  # 10 classes: chance is 0.1
    missing = ["--set", f"data.path={tmp_path / 'none'}"]
    assert cli.main(["train", config, *missing, "--set", f"run_dir={tmp_path / 'r2'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such" in err[0] and "none" in err[0], err


@pytest.mark.parametrize(("n", "count"), [(44, 2), (44, 3)])
def test_process_shards_read_every_example_once_a_pass(tmp_path, n, count):
    """Simulated processes (``process_shard = (index, count)``) of a shuffling reader and
    of in-memory arrays: batch i of process p is block p of global batch i of the unsharded
    reader, the processes' examples are disjoint and together cover the pass exactly once
    (with batches of 6, a last global batch of 2 divides by 2 processes, not by 3: then
    all leave it out)."""
    from fnn.io.data_adapter import ArrayData
    from fnn.training.loop import epoch_order

    np.save(tmp_path / "x.npy", np.arange(n, dtype=np.float32)[:, None])
    np.save(tmp_path / "y.npy", np.arange(n, dtype=np.int32))  # y = the example's index

    def reader(shard=None):
        data = datasets.NpyDataset(
            tmp_path / "x.npy", tmp_path / "y.npy", batch_size=6, shuffle=True, seed=1
        )
        data.process_shard = shard
        return data

    whole = reader()
    kept = n if (n % 6) % count == 0 else n - n % 6
    for epoch in range(2):
        order = epoch_order(n, seed=1, epoch=epoch)
        parts = []
        for p in range(count):
            shard = reader((p, count))
            shard.set_state({"epoch": epoch})
            assert len(shard) == -(-kept // 6)
            ys = [shard[i][1] for i in range(len(shard))]
            for i, y in enumerate(ys):
                block = len(whole[i][1]) // count
                np.testing.assert_array_equal(y, whole[i][1][p * block : (p + 1) * block])
            # In-memory arrays, cut by the same rule.
            arrays = ArrayData(np.arange(n)[:, None], np.arange(n))
            batches = arrays.epoch(order, 6, steps=8, on_device=False, ahead=False,
                                   process=(p, count))  # fmt: skip
            np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]),
                                          np.concatenate(ys))  # fmt: skip
            parts.append(np.concatenate(ys))
        seen = np.concatenate(parts)
        assert len(seen) == len(set(seen.tolist())) == kept  # disjoint, none left out
        np.testing.assert_array_equal(np.sort(seen), np.sort(order[:kept]))
        whole.on_epoch_end()
