"""Checkpoint integrity: the index checksum, malformed indexes, overwrite safety, and a
property test that random byte edits of either file never restore different values."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The same exact-bits comparison as the checkpoint tests (pytest puts tests/ on sys.path).
from test_checkpoint import assert_bitwise_equal as assert_same_tree

from fnn import checkpoint
from fnn.checkpoint import CheckpointError


def small_tree():
    return {
        "params": {"w": jnp.asarray([[1.5, -2.0], [0.25, 3.0]], jnp.float32)},
        "step": jnp.asarray(7, jnp.int32),
        "epoch": 3,
        "lr": 0.1 + 0.2,
        "tag": "run-1",
        "done": False,
        "rng": jax.random.key(1),
        "seq": [jnp.arange(3), None],
    }


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    return checkpoint.save(tmp_path_factory.mktemp("ck") / "ckpt", small_tree())


@pytest.fixture
def saved(saved_dir, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(saved_dir, path)
    return path


def load_index(path):
    return json.loads((path / checkpoint.INDEX_FILE).read_text())


def write_index(path, index, *, sign=True):
    if sign:  # what a buggy writer would produce: a consistent checksum over a bad index
        index["index_sha256"] = checkpoint._index_sha256(index)
    (path / checkpoint.INDEX_FILE).write_text(json.dumps(index))


def rename_leaf(ix):
    next(r for r in ix["leaves"] if r["path"] == "['params']['w']")["path"] = "['params']['v']"


def drop_key(ix):
    del ix["structure"]


def truncate_leaves(ix):
    ix["leaves"] = ix["leaves"][:-1]


def out_of_range(ix):
    ix["structure"]["children"][0][1] = {"leaf": 99}


def wrong_type(ix):
    next(r for r in ix["leaves"] if r["path"] == "['params']['w']")["shape"] = "2x2"


def wrong_value_type(ix):
    record = next(r for r in ix["leaves"] if r["path"] == "['epoch']")
    record["value"] = "3"


def not_a_list(ix):
    ix["leaves"] = {"0": ix["leaves"][0]}


def bad_entry(ix):
    ix["structure"]["children"][0][0] = ["weird", 1]


MALFORMED = {
    "renamed leaf path": (
        rename_leaf,
        r"leaf \d+ is recorded as \['params'\]\['v'\], the structure puts it at \['params'\]\['w'\]",
    ),
    "missing key": (drop_key, r"no 'structure' entry"),
    "truncated leaf list": (
        truncate_leaves,
        r"leaf reference 7 at \['tag'\] is out of range \(the index lists 7 leaves\)",
    ),
    "out-of-range index": (out_of_range, r"leaf reference 99 at \['done'\] is out of range"),
    "wrong shape type": (wrong_type, r"leaf \['params'\]\['w'\] has a malformed shape 2x2"),
    "wrong scalar type": (wrong_value_type, r"Python value of \['epoch'\] is malformed"),
    "leaves not a list": (not_a_list, r"'leaves' is not a list"),
    "bad child entry": (bad_entry, r"child entry .* is malformed"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_index_raises_checkpoint_error_naming_file(saved, case):
    edit, pattern = MALFORMED[case]
    # Unsigned edits (by hand, or damage) fail the checksum.
    index = load_index(saved)
    edit(index)
    write_index(saved, index, sign=False)
    with pytest.raises(CheckpointError, match=r"checkpoint\.json is corrupted: its SHA-256"):
        checkpoint.restore(saved, target=small_tree())
    # Signed ones fail the consistency checks, named, with or without a target.
    write_index(saved, index)
    for target in (small_tree(), None):
        with pytest.raises(CheckpointError, match=r"checkpoint\.json is corrupted: " + pattern):
            checkpoint.restore(saved, target=target)


def test_changed_scalar_is_caught_by_the_index_checksum(saved):
    text = (saved / checkpoint.INDEX_FILE).read_text()
    assert '"value": "run-1"' in text
    (saved / checkpoint.INDEX_FILE).write_text(text.replace('"value": "run-1"', '"value": "run-2"'))
    with pytest.raises(CheckpointError, match=r"checkpoint\.json is corrupted: its SHA-256"):
        checkpoint.restore(saved, target=small_tree())
    with pytest.raises(CheckpointError, match=r"checkpoint\.json is corrupted: its SHA-256"):
        checkpoint.read_info(saved)  # the CLI reads its resume epoch through read_info


def test_whitespace_only_edit_still_restores(saved):
    index = load_index(saved)
    (saved / checkpoint.INDEX_FILE).write_text(json.dumps(index, indent=4))
    assert_same_tree(checkpoint.restore(saved, target=small_tree()), small_tree())


def test_version_1_checkpoints_still_read_and_cannot_be_faked(saved):
    index = load_index(saved)
    del index["index_sha256"]
    index["version"] = 1
    write_index(saved, index, sign=False)
    assert_same_tree(checkpoint.restore(saved, target=small_tree()), small_tree())
    # Downgrading a version-2 index (keeping its checksum entry) is refused.
    index["index_sha256"] = "0" * 64
    write_index(saved, index, sign=False)
    with pytest.raises(CheckpointError, match=r"unexpected entries \['index_sha256'\]"):
        checkpoint.restore(saved)
    index = load_index(saved)
    index["version"] = 4
    write_index(saved, index, sign=False)
    with pytest.raises(CheckpointError, match=r"format version 4, this fnn reads versions 1, 2, 3"):
        checkpoint.restore(saved)


def test_overwrite_never_moves_a_user_file_or_folder_aside(tmp_path):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("precious")
    with pytest.raises(CheckpointError, match=r"notes\.txt: it is a file, .*left untouched"):
        checkpoint.save(user_file, {"x": jnp.ones(1)}, overwrite=True)
    assert user_file.read_text() == "precious"
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"jpg")
    with pytest.raises(CheckpointError, match=r"photos: it is a non-empty directory without"):
        checkpoint.save(folder, {"x": jnp.ones(1)}, overwrite=True)
    assert (folder / "a.jpg").read_bytes() == b"jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]
    empty = tmp_path / "empty"
    empty.mkdir()
    checkpoint.save(empty, {"x": jnp.ones(1)}, overwrite=True)  # an empty folder is fine
    assert float(checkpoint.restore(empty)["x"][0]) == 1.0


def test_mismatch_list_is_bounded(tmp_path):
    path = checkpoint.save(tmp_path / "c", {f"w{i}": jnp.ones(2) for i in range(40)})
    target = {f"v{i}": jnp.ones(2) for i in range(40)}
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, target=target)
    message = str(info.value)
    assert "(80 mismatches)" in message and "... and 68 more" in message
    assert len(message) < 1500


mutation = st.tuples(
    st.sampled_from(["replace", "insert", "delete"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(0, 255),
)


def mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for op, where, byte in edits:
        i = int(where * len(out)) if out else 0
        if op == "replace" and out:
            out[i] = byte if out[i] != byte else (byte + 1) % 256
        elif op == "insert":
            out.insert(i, byte)
        elif op == "delete" and out:
            del out[i]
    return bytes(out)


# A biased alphabet for the index: edits inside JSON syntax reach the consistency checks.
json_mutation = st.tuples(
    st.sampled_from(["replace", "insert", "delete"]),
    st.floats(0, 1, exclude_max=True),
    st.sampled_from([ord(c) for c in '0123456789"[]{},:.-etruf ']),
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    which=st.sampled_from([checkpoint.INDEX_FILE, checkpoint.ARRAYS_FILE]),
    edits=st.one_of(
        st.lists(mutation, min_size=1, max_size=3), st.lists(json_mutation, min_size=1, max_size=3)
    ),
)
def test_random_byte_edits_raise_or_restore_exactly(saved_dir, which, edits):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt"
        shutil.copytree(saved_dir, path)
        file = path / which
        file.write_bytes(mutate(file.read_bytes(), edits))
        for target in (small_tree(), None):
            try:
                restored = checkpoint.restore(path, target=target)
            except CheckpointError as err:
                assert len(str(err)) < 1000
                continue
            if target is None:
                restored = checkpoint.restore(saved_dir)
                plain = checkpoint.restore(path)
                assert_same_tree(plain, restored)
            else:
                assert_same_tree(restored, small_tree())
