"""``common.files.read_binary_files``: every file becomes a row, empty ones included."""

from __future__ import annotations

from lab_utils.common.files import read_binary_files
from lab_utils.data import audio
from lab_utils.inference import read_images


def _tree(root):
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "cat" / "a.wav").write_bytes(b"RIFF1234")
    (root / "cat" / "empty.wav").write_bytes(b"")
    (root / "dog" / "b.png").write_bytes(b"\x89PNG")
    (root / "dog" / "empty.png").write_bytes(b"")
    (root / "dog" / ".hidden.wav").write_bytes(b"")
    (root / "dog" / "_SUCCESS").write_bytes(b"")
    return root


def _rows(df):
    return {r["path"].rsplit("/", 2)[-2] + "/" + r["path"].rsplit("/", 1)[-1]:
            (r["label"], bytes(r["content"])) for r in df.collect()}


def test_every_visible_file_is_a_row_empty_ones_included(local_spark, tmp_path):
    rows = _rows(read_binary_files(local_spark, _tree(tmp_path / "data")))
    assert rows == {"cat/a.wav": ("cat", b"RIFF1234"), "cat/empty.wav": ("cat", b""),
                    "dog/b.png": ("dog", b"\x89PNG"), "dog/empty.png": ("dog", b"")}


def test_glob_filters_the_empty_files_too(local_spark, tmp_path):
    rows = _rows(read_binary_files(local_spark, _tree(tmp_path / "data"), glob="*.wav"))
    assert rows == {"cat/a.wav": ("cat", b"RIFF1234"), "cat/empty.wav": ("cat", b"")}


def test_images_and_audio_read_through_it(local_spark, tmp_path):
    root = _tree(tmp_path / "data")
    assert set(_rows(audio.read_audio(local_spark, root, partitions=2))) == {
        "cat/a.wav", "cat/empty.wav"}
    df = read_images(local_spark, root, partitions=3)
    assert df.rdd.getNumPartitions() == 3
    assert len(_rows(df)) == 4
