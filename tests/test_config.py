"""Config validation: every error path is one line naming the key path; CLI exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import fnn
from fnn.cli import commands as cli
from fnn.cli.config import apply_overrides, build_model, load_config, load_config_text

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

BASE = {
    "model": {
        "layers": [
            "Flatten",
            {"Dense": {"units": 32, "activation": "relu"}},
            {"Dense": {"units": 10}},
        ]
    },
    "dataset": {"name": "digits"},
}


def text(**changes) -> str:
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        cfg = apply_overrides(
            cfg, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
        )
    return yaml.safe_dump(cfg)


def with_layers(*layers) -> str:
    return yaml.safe_dump({**BASE, "model": {"layers": list(layers)}})


def test_defaults_and_overrides():
    cfg = load_config_text(
        text(epochs=3), ["optimizer.learning_rate=0.01", "model.layers[1].Dense.units=64"]
    )
    assert cfg["epochs"] == 3 and cfg["batch_size"] == 32 and cfg["seed"] == 0
    assert cfg["optimizer"] == {
        "name": "adam",
        "learning_rate": 0.01,
        "schedule": "constant",
        "warmup_epochs": 0,
        "options": {},
    }
    assert cfg["loss"] == {"name": "sparse_categorical_crossentropy", "from_logits": True}
    model = build_model(cfg)
    assert [layer.spec.class_name for layer in model.spec.config["layers"]] == [
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert model.spec.config["layers"][1].spec.config == {"units": 64, "activation": "relu"}


def test_layer_entries_build_like_python_calls():
    from fnn.layers import LSTM, Bidirectional, Conv2D

    cfg = load_config_text(
        with_layers(
            {"Conv2D": {"filters": 4, "kernel_size": [3, 3], "input_shape": [8, 8, 1]}},
            {"Bidirectional": {"layer": {"LSTM": {"units": 4}}, "merge_mode": "sum"}},
        )
    )
    conv, bi = build_model(cfg).spec.config["layers"]
    want_conv = Conv2D(4, (3, 3), input_shape=(8, 8, 1))
    assert conv.spec == want_conv.spec and conv.input_shape == (8, 8, 1)
    want_bi = Bidirectional(LSTM(4), merge_mode="sum")
    assert fnn.saving.layer_to_config(bi) == fnn.saving.layer_to_config(want_bi)


def test_exponent_floats_and_no_python_objects():
    cfg = load_config_text(
        text() + "optimizer: {learning_rate: 1e-3}\n", ["optimizer.options.epsilon=1E-7"]
    )
    assert (
        cfg["optimizer"]["learning_rate"] == 0.001
        and cfg["optimizer"]["options"]["epsilon"] == 1e-7
    )
    with pytest.raises(fnn.ConfigError, match=r"got -0.0003\.$"):
        load_config_text(text(), ["optimizer.learning_rate=-3e-4"])
    with pytest.raises(
        fnn.ConfigError, match=r"<config>: invalid YAML.*could not determine a constructor"
    ):
        load_config_text("epochs: !!python/object/apply:os.system ['true']")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path):
    if "search:" in path.read_text():  # a search config: fnn tune's loader checks it
        from fnn.cli import tune

        raw, search = tune.load_search(path)
        assert search["space"]
        cfg = load_config_text(yaml.safe_dump(raw))
    else:
        cfg = load_config(path)
    assert cfg["run_dir"] == f"runs/{path.stem}"
    build_model(cfg)


ERRORS = [
    # structure and unknown keys
    ("epoch: 3", r"^epoch: unknown key. Did you mean 'epochs'\? Valid keys: batch_size, "),
    ("[1, 2]", r"^<config>: expected a mapping \(key: value\), got \[1, 2\] \(list\)\.$"),
    ("dataset: {name: digits}", r"^model: required key is missing\.$"),
    (
        yaml.safe_dump({"model": BASE["model"], "dataset": {}}),
        r"^dataset.name: required key is missing",
    ),
    (
        text(**{"optimizer.learning_rat": 0.1}),
        r"^optimizer.learning_rat: unknown key. Did you mean 'learning_rate'\?",
    ),
    (text(checkpoint=5), r"^checkpoint: expected a mapping \(key: value\), got 5 \(int\)"),
    ("model: {layers: [Flatten]\n", r"^<config>: invalid YAML \(line 2\): "),
    # layers
    (with_layers(), r"^model.layers: expected a non-empty list of layers, got \[\] \(list\)"),
    (
        with_layers("Flatten", {"Dens": {"units": 3}}),
        r"^model.layers\[1\]: unknown layer 'Dens'. Did you mean 'Dense'\? Registered layers: ",
    ),
    (
        with_layers({"Dense": {"unit": 3}}),
        r"^model.layers\[0\].unit: unknown argument of Dense. Did you mean 'units'\?",
    ),
    (
        with_layers({"Dense": {"units": "ten"}}),
        r"^model.layers\[0\].units: expected int, got 'ten' \(str\)\.$",
    ),
    (
        with_layers("Flatten", {"Dense": {"units": 8}}, {"Dense": {"units": -3}}),
        r"^model.layers\[2\].units: expected units to be a positive int, got -3\.$",
    ),
    (
        with_layers({"Dense": {"units": True}}),
        r"^model.layers\[0\].units: expected int, got True \(bool\)",
    ),
    (with_layers("Dense"), r"^model.layers\[0\].units: required argument of Dense is missing\.$"),
    (
        with_layers({"Dropout": {"rate": 1.5}}),
        r"^model.layers\[0\].rate: expected rate in \[0, 1\), got 1.5\.$",
    ),
    (
        with_layers({"Dense": 5}),
        r"^model.layers\[0\].Dense: expected the layer's arguments as a mapping, got 5",
    ),
    (
        with_layers({"Dense": {"units": 1}, "Flatten": None}),
        r"^model.layers\[0\]: expected a layer name or a one-key mapping",
    ),
    (
        with_layers({"residual": {"layers": [{"Dense": {"units": 0}}]}}),
        r"^model.layers\[0\].layers\[0\].units: expected units to be a positive int, got 0",
    ),
    (
        with_layers({"residual": {"layers": "Dense"}}),
        r"^model.layers\[0\].layers: expected a list of layers, got 'Dense'",
    ),
    (
        with_layers({"Bidirectional": {"layer": {"LSTMM": {"units": 3}}}}),
        r"^model.layers\[0\].layer: unknown layer 'LSTMM'. Did you mean 'LSTM'\?",
    ),
    (
        with_layers({"Bidirectional": {"layer": {"LSTM": {"units": 0}}}}),
        r"^model.layers\[0\].layer.units: expected units to be a positive int, got 0",
    ),
    (
        with_layers({"Bidirectional": {"layer": 3}}),
        r"^model.layers\[0\].layer: expected a layer name or a one-key mapping",
    ),
    (
        with_layers({"Dense": {"units": 3, "input_shape": [0]}}),
        r"^model.layers\[0\].input_shape: expected input_shape to be a tuple of positive ints",
    ),
    (
        with_layers({"Dense": {"units": 3, "activation": "rel"}}),
        r"^model.layers\[0\].activation: unknown activation 'rel'. Did you mean 'relu'\?",
    ),
    (
        text(**{"model.input_shape": [8, 0]}),
        r"^model.input_shape\[1\]: expected a positive int, got 0 \(int\)",
    ),
    # numbers and choices
    (text(epochs=0), r"^epochs: expected a positive int, got 0 \(int\)\.$"),
    (text(epochs="ten"), r"^epochs: expected a positive int, got 'ten' \(str\)\.$"),
    (text(epochs=2.5), r"^epochs: expected a positive int, got 2.5 \(float\)\.$"),
    (text(batch_size=-1), r"^batch_size: expected a positive int, got -1"),
    (text(seed=-1), r"^seed: expected an int >= 0, got -1"),
    (text(plots="yes"), r"^plots: expected true or false, got 'yes' \(str\)"),
    (text(run_dir=3), r"^run_dir: expected a path string, got 3 \(int\)"),
    (
        text(**{"optimizer.learning_rate": 0}),
        r"^optimizer.learning_rate: expected a number in \(0.0, inf\], got 0\.$",
    ),
    (
        text(**{"optimizer.learning_rate": "fast"}),
        r"^optimizer.learning_rate: expected a number, got 'fast' \(str\)",
    ),
    (
        text(**{"optimizer.name": "adamm"}),
        r"^optimizer.name: expected an optimizer: .*got 'adamm' \(str\). Did you mean 'adam'\?",
    ),
    (
        text(**{"optimizer.schedule": "cosin"}),
        r"^optimizer.schedule: expected one of constant, cosine, got 'cosin' \(str\). Did you mean 'cosine'\?",
    ),
    (
        text(**{"optimizer.warmup_epochs": -2}),
        r"^optimizer.warmup_epochs: expected an int >= 0, got -2",
    ),
    (
        text(**{"optimizer.options": {"momentun": 0.9}}),
        r"^optimizer.options: optimizer 'adam': .*momentun",
    ),
    (
        text(**{"dataset.name": "digit"}),
        r"^dataset.name: expected a dataset: .*Did you mean 'digits'\?",
    ),
    (
        text(**{"dataset.options": {"as_image": True}}),
        r"^dataset.options.as_image: unknown option of the digits loader. Did you mean 'as_images'\?",
    ),
    (
        text(**{"dataset.name": "npz"}),
        r"^dataset.options.path: required for npz and csv datasets\.$",
    ),
    (
        text(**{"dataset.validation_split": 1.0}),
        r"^dataset.validation_split: expected a number in \[0.0, 1.0\), got 1.0\.$",
    ),
    (text(loss="cross"), r"^loss.name: unknown loss function 'cross'"),
    (
        text(loss={"name": "sparse_categorical_crossentropy", "from_logit": True}),
        r"^loss: .*from_logit",
    ),
    (text(loss={"from_logits": True}), r"^loss.name: required key is missing"),
    (
        text(metrics="accuracy"),
        r"^metrics: expected a list of metric names, got 'accuracy' \(str\)",
    ),
    (
        text(metrics=["accuracy", "acuracy"]),
        r"^metrics\[1\]: unknown metric 'acuracy'. Did you mean 'accuracy'\?",
    ),
    (text(metrics=[3]), r"^metrics\[0\]: expected a metric name, got 3 \(int\)"),
    (
        text(**{"checkpoint.monitor": "val_acc"}),
        r"^checkpoint.monitor: expected a logged value: loss, val_loss, accuracy, val_accuracy, got 'val_acc' \(str\). Did you mean 'val_accuracy'\?",
    ),
    (
        text(**{"checkpoint.mode": "best"}),
        r"^checkpoint.mode: expected one of min, max, got 'best' \(str\)",
    ),
    (
        text(**{"checkpoint.max_to_keep": 0}),
        r"^checkpoint.max_to_keep: expected a positive int, got 0",
    ),
    (
        text(**{"checkpoint.keep_best": "no"}),
        r"^checkpoint.keep_best: expected true or false, got 'no'",
    ),
    (
        text(**{"distribute.strategy": "pmapp"}),
        r"^distribute.strategy: expected one of none, data_parallel, sharded, got 'pmapp'",
    ),
    (
        text(**{"distribute.num_devices": 0}),
        r"^distribute.num_devices: expected a positive int, got 0",
    ),
    (
        text(**{"distribute.num_devices": 3}),
        r"^batch_size: expected a multiple of distribute.num_devices \(3\), got 32\.$",
    ),
]


@pytest.mark.parametrize("source,match", ERRORS)
def test_config_errors_name_the_key_path_in_one_line(source, match):
    with pytest.raises(fnn.ConfigError, match=match) as info:
        load_config_text(source)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override,match",
    [
        ("epochs", r"^--set epochs: expected key=value\.$"),
        ("model..layers=3", r"^--set model..layers: expected a key path like epochs"),
        (
            "model.layers[7].Dense.units=3",
            r"^--set model.layers\[7\].Dense.units: model.layers\[7\] is out of range \(3 items\)",
        ),
        (
            "model.layers[0].Flatten.x=3",
            r"^--set model.layers\[0\].Flatten.x: model.layers\[0\] is not a mapping",
        ),
        ("epochs=ten", r"^epochs: expected a positive int, got 'ten' \(str\)"),
        (
            "optimizer.lr=0.1",
            r"^optimizer.lr: unknown key. Valid keys: learning_rate, name, options, schedule, warmup",
        ),
    ],
)
def test_set_override_errors(override, match):
    with pytest.raises(fnn.ConfigError, match=match):
        load_config_text(text(), [override])


def test_cli_config_errors_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(with_layers("Flatten", {"Dense": {"units": 8}}, {"Dense": {"units": -3}}))
    for command in (["train"], ["evaluate", "--checkpoint", "x"], ["summary"]):
        code = cli.main([command[0], str(bad), *command[1:]])
        err = capsys.readouterr().err
        assert code == 2
        assert (
            err
            == "fnn: error: bad.yaml: model.layers[2].units: expected units to be a positive int, got -3.\n"
        )
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_cli_model_data_mismatch_exits_2_before_compiling(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load(text(**{"dataset.options": {"as_images": True}}))
    cfg["model"]["layers"] = [{"Dense": {"units": 10}}]  # no Flatten: [32, 8, 8, 10] outputs
    bad.write_text(yaml.safe_dump(cfg))
    code = cli.main(["summary", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("fnn: error: model: ")
    (tmp_path / "npz.yaml").write_text(
        text(**{"dataset.name": "npz", "dataset.options": {"path": "nope.npz"}})
    )
    assert cli.main(["summary", str(tmp_path / "npz.yaml")]) == 2
    assert capsys.readouterr().err == "fnn: error: dataset: load_npz: no such file 'nope.npz'.\n"


def test_console_entry_point_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text(epochs=0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "fnn", "train", str(bad)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert proc.stderr == "fnn: error: bad.yaml: epochs: expected a positive int, got 0 (int).\n"
    assert "Traceback" not in proc.stdout


def test_cli_checks_every_label_before_compiling(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 64)).astype(np.float32)
    y = np.zeros(200, np.int32)
    y[-1] = 12  # only in the test split's last rows: beyond the first batch
    np.savez(
        tmp_path / "data.npz", x_train=x[:150], y_train=y[:150], x_test=x[150:], y_test=y[150:]
    )
    cfg = tmp_path / "labels.yaml"
    cfg.write_text(
        text(**{"dataset.name": "npz", "dataset.options": {"path": str(tmp_path / "data.npz")}})
    )
    assert cli.main(["train", str(cfg), "--set", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "labels: expected labels in [0, 10)" in err and "got label 12" in err


def data_text(**data) -> str:
    """BASE with a streamed ``data:`` section instead of ``dataset:``."""
    cfg = {"model": BASE["model"], "data": {"format": "csv", "path": "t.csv", **data}}
    return yaml.safe_dump(cfg)


DATA_ERRORS = [
    (data_text(format="hdf5"), r"^data.format: expected a file format: image_folder, csv, parquet, npy, idx, got 'hdf5'"),
    (data_text(path=3), r"^data.path: expected a path string, got 3 \(int\)\.$"),
    (data_text(format="npy"), r"^data.labels: expected a path string, got None"),
    (data_text(image_size=[8, 8]), r"^data.image_size: applies to format image_folder, not csv; remove it\.$"),
    (data_text(format="npy", labels="y.npy", columns=[0]), r"^data.columns: applies to format csv or parquet, not npy; remove it\.$"),
    (data_text(format="image_folder", image_size=[8]), r"^data.image_size: expected \[height, width\], got \[8\]"),
    (data_text(format="image_folder", image_size=[8, 0]), r"^data.image_size\[1\]: expected a positive int, got 0"),
    (data_text(format="image_folder", color_mode="grey"), r"^data.color_mode: expected one of rgb, grayscale, got 'grey'"),
    (data_text(columns="a"), r"^data.columns: expected a list of column names or indices, got 'a'"),
    (data_text(columns=["a", 1.5]), r"^data.columns\[1\]: expected a name or an index, got 1.5"),
    (data_text(label_column=True), r"^data.label_column: expected a name or an index, got True"),
    (data_text(test_size=1.0), r"^data.test_size: expected a number in \(0.0, 1.0\), got 1.0\.$"),
    (data_text(format="npy", labels="y.npy", test="x.npy"), r"^data.test: expected \{path: ..., labels: ...\} for format npy, got 'x.npy'"),
    (data_text(shuffle="yes"), r"^data.shuffle: expected true or false, got 'yes'"),
    (data_text(workers=0), r"^data.workers: expected a positive int, got 0"),
    (data_text(shufle=True), r"^data.shufle: unknown key. Did you mean 'shuffle'\?"),
    (data_text(**{"format": None}), r"^data.format: required key is missing\.$"),
    (yaml.safe_dump({**BASE, "data": {"format": "csv", "path": "t.csv"}}), r"^data: a config reads dataset: or data:, not both; remove one\.$"),
    (yaml.safe_dump({"model": BASE["model"]}), r"^dataset: required key is missing \(or data: for files on disk\)\.$"),
]  # fmt: skip


@pytest.mark.parametrize("source,match", DATA_ERRORS)
def test_data_section_errors_name_the_key_in_one_line(source, match):
    with pytest.raises(fnn.ConfigError, match=match) as info:
        load_config_text(source)
    assert "\n" not in str(info.value)


def test_cli_data_section_file_errors_exit_2_with_one_line(tmp_path, capsys):
    """Problems only the files show (a missing file, a column not in the header, a split
    that leaves nothing to train on), and commands that need arrays: exit 2, one line."""
    rows = [f"{i},{2 * i},{i % 2}" for i in range(10)]
    (tmp_path / "t.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    cases = [
        ({"path": str(tmp_path / "none.csv")}, ["train"], "data: CsvDataset: no such file"),
        ({"path": str(tmp_path / "t.csv"), "columns": ["c"]}, ["train"], "no column 'c'"),
        ({"path": str(tmp_path / "t.csv"), "test_size": 0.01}, ["train"], "leaves no test examples"),
        ({"path": str(tmp_path / "t.csv")}, ["train"], "data: fairness needs the data in memory"),
    ]  # fmt: skip
    for data, command, message in cases:
        path = tmp_path / "c.yaml"
        cfg = {"model": {"layers": [{"Dense": {"units": 2}}]}, "run_dir": str(tmp_path / "r")}
        if "fairness" in message:
            cfg["fairness"] = {"feature": 0}
        path.write_text(yaml.safe_dump({**cfg, "data": {"format": "csv", **data}}))
        assert cli.main([command[0], str(path), *command[1:]]) == 2, message
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
