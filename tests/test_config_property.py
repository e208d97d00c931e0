"""Random config documents built from the schema (``fnn.cli.config.DEFAULTS``) with wrong
types, extreme numbers, unicode and nested YAML anchors: ``fnn summary`` either accepts the
document (exit 0) or exits 2 with one bounded line on stderr, never a traceback, exit 1 or
an unbounded message. ``summary`` runs validation and builds the data and model as
``fnn train`` does, without training."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fnn.cli import commands as cli
from fnn.cli import config as config_lib

BASE = {
    "model": {
        "layers": [
            "Flatten",
            {"Dense": {"units": 4, "activation": "relu"}},
            {"Dense": {"units": 10}},
        ]
    },
    "dataset": {"name": "digits"},
    "epochs": 1,
    "batch_size": 64,
    "plots": False,
}


def _paths(tree, prefix=()):
    """Every key path of the schema's defaults, down to the leaves."""
    for key, value in tree.items():
        yield (*prefix, key)
        if isinstance(value, dict) and value:
            yield from _paths(value, (*prefix, key))


# Where a mutation lands: every schema key, the layer arguments and the layer list itself.
PATHS = sorted(_paths(config_lib.DEFAULTS), key=repr) + [
    ("model", "layers", 1, "Dense", "units"),
    ("model", "layers", 1, "Dense", "activation"),
    ("model", "layers", 2, "Dense"),
    ("model", "layers", 0),
    ("model", "layers"),
]

LONG_TEXT = st.text(min_size=300, max_size=3000)  # any unicode, longer than any message
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    LONG_TEXT,
    st.sampled_from(["relu", "adam", "digits", "1e-3", "val_loss", "sharded", "Dense"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def anchored(draw):
    """A value that YAML writes with nested anchors and aliases: each level repeats the
    same object ``width`` times (``width ** depth`` leaves once expanded)."""
    node = draw(SCALARS)
    for _ in range(draw(st.integers(1, 12))):
        node = [node] * draw(st.integers(2, 9))
    return node


def _set(doc, path, value):
    node = doc
    for part in path[:-1]:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return
            node = node[part]
        else:
            if not isinstance(node, dict):
                return
            if not isinstance(node.get(part), dict | list):
                node[part] = {}
            node = node[part]
    if isinstance(path[-1], int):
        if isinstance(node, list) and path[-1] < len(node):
            node[path[-1]] = value
    elif isinstance(node, dict):
        node[path[-1]] = value


@st.composite
def documents(draw):
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "value", "anchors", "unknown key"]))
        if kind == "unknown key":
            doc[draw(st.one_of(st.text(min_size=1, max_size=12), LONG_TEXT))] = draw(SCALARS)
            continue
        value = draw(anchored() if kind == "anchors" else VALUES)
        _set(doc, draw(st.sampled_from(PATHS)), value)
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), doc


def _long_strings(node, found=None, seen=None):
    """Every string (key or value) longer than 300 characters, each shared node once."""
    found, seen = (set(), set()) if found is None else (found, seen)
    if isinstance(node, str) and len(node) > 300:
        found.add(node)
    if isinstance(node, dict | list) and id(node) not in seen:
        seen.add(id(node))
        for item in [*node.keys(), *node.values()] if isinstance(node, dict) else node:
            _long_strings(item, found, seen)
    return found


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(document=documents())
def test_random_config_documents_exit_0_or_2_with_one_bounded_line(document, tmp_path, capsys):
    text, doc = document
    path = tmp_path / "random.yaml"
    path.write_text(text, encoding="utf-8")
    code = cli.main(["summary", str(path)])
    err = capsys.readouterr().err
    if code == 0:
        return
    lines = err.strip().splitlines()
    assert code == 2, err[:2000]
    assert len(lines) == 1 and lines[0].startswith("fnn: error: "), err[:2000]
    assert "Traceback" not in err
    assert len(lines[0]) <= len("fnn: error: ") + cli._MAX_LINE
    # At most 300 characters of any value or key (or of its repr).
    for long in _long_strings(doc):
        for shown in (long, repr(long)[1:-1]):
            assert shown[:301] not in lines[0], lines[0]


def test_the_base_document_is_valid():
    cfg = config_lib.load_config_text(yaml.safe_dump(BASE))  # mutations start from a valid one
    assert cfg["epochs"] == 1 and cfg["model"]["layers"][1] == BASE["model"]["layers"][1]


@pytest.mark.parametrize("levels", [3, 12])
def test_anchored_values_are_written_as_aliases(levels):
    node = "x"
    for _ in range(levels):
        node = [node] * 9
    text = yaml.safe_dump({"epochs": node})
    assert len(text) < 400 * levels and "*id" in text  # a bomb, not its expansion


@pytest.mark.parametrize(
    ("where", "pattern"),
    [
        ("top", r"^fnn: error: k\.yaml: '(é){50,60}\.\.\.: unknown key\. Valid keys: batch_size"),
        ("layer", r"unknown layer '(é){50,60}\.\.\.(é){50,60}'\. Registered layers: "),
        ("arg", r"model\.layers\[1\]\.'a\\nb': unknown argument of Dense"),
    ],
)
def test_long_and_multiline_keys_are_cut_in_messages(where, pattern, tmp_path, capsys):
    doc, long = copy.deepcopy(BASE), "é" * 3000
    if where == "top":
        doc[long] = 1
    elif where == "layer":
        doc["model"]["layers"][1] = {long: {"units": 4}}
    else:
        doc["model"]["layers"][1]["Dense"]["a\nb"] = 1
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    assert cli.main(["summary", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.search(pattern, line), line
    assert "é" * 301 not in line
