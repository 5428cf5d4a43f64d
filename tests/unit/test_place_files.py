"""The pure core of ``place_by_class``: names that never clash, folders that stay in ``dest``,
links not followed, permission bits kept (the Spark side is in ``tests/spark/test_files.py``)."""

from __future__ import annotations

import os
import stat

import pytest

from lab_utils.inference.files import class_folder, place_file, placed_name


def test_placed_names_keep_the_name_and_tell_clashing_sources_apart():
    a, b = placed_name("/data/a/IMG_0001.JPG"), placed_name("/data/b/IMG_0001.JPG")
    assert a != b and a == placed_name("/data/a/IMG_0001.JPG")  # the same path, the same name
    assert a.startswith("IMG_0001.") and a.endswith(".JPG") and len(a) == len("IMG_0001.JPG") + 11
    assert placed_name("/d/noext").startswith("noext.")


@pytest.mark.parametrize("name", ["x" * 250 + ".png", "名" * 90 + ".jpeg", "y" * 300])
def test_placed_names_stay_within_255_bytes(name):
    placed = placed_name(f"/d/{name}")
    assert len(placed.encode()) <= 255
    assert placed.endswith(".png") or placed.endswith(".jpeg") or name.startswith("y")


@pytest.mark.parametrize("label", ["", ".", "..", "../../x", "a/b", "a\\b", "nul\0", "_errors",
                                   ".hidden", "z" * 256])
def test_unsafe_class_names_go_to_errors_naming_the_class_and_the_fix(label):
    folder, problem = class_folder(label)
    assert folder == "_errors"
    assert repr(label) in problem and "class_names" in problem


@pytest.mark.parametrize("label, folder", [("cat", "cat"), (3, "3"), ("noir é", "noir é")])
def test_safe_class_names_are_the_folder(label, folder):
    assert class_folder(label) == (folder, None)


def test_a_rerun_replaces_its_own_copy_and_keeps_the_mode(tmp_path):
    source = tmp_path / "data" / "IMG_0001.JPG"
    source.parent.mkdir()
    source.write_bytes(b"photo")
    source.chmod(0o400)  # read-only and private: the copy is both too
    dest = tmp_path / "sorted"
    first = place_file(f"file:{source}", dest, "cat", None)
    assert first == place_file(f"file:{source}", dest, "cat", None)
    placed = dest / "cat" / placed_name(str(source))
    assert first == (str(placed), None)
    assert [p.name for p in (dest / "cat").iterdir()] == [placed.name]  # no temporary left
    assert placed.read_bytes() == b"photo"
    assert stat.S_IMODE(placed.stat().st_mode) == 0o400


def test_errors_and_missing_predictions_go_to_errors(tmp_path):
    source = tmp_path / "a.png"
    source.write_bytes(b"")
    for prediction, error in [(None, None), ("cat", "ImageError: empty file")]:
        placed, problem = place_file(str(source), tmp_path / "out", prediction, error)
        assert problem is None and placed == str(tmp_path / "out" / "_errors" /
                                                 placed_name(str(source)))


@pytest.mark.parametrize("link", [False, True])
def test_symbolic_links_are_not_followed(tmp_path, link):
    secret = tmp_path / "secret"
    secret.write_bytes(b"key")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.png").symlink_to(secret)
    placed, problem = place_file(str(tmp_path / "data" / "x.png"), tmp_path / "out", "cat", None,
                                 link=link)
    assert placed is None and "symbolic link" in problem and str(secret) in problem
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_only_regular_files_are_copied(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    placed, problem = place_file(str(fifo), tmp_path / "out", "cat", None)
    assert placed is None and "not a regular file" in problem


def test_other_file_systems_are_a_row_problem(tmp_path):
    placed, problem = place_file("s3a://bucket/x.png", tmp_path, "cat", None)
    assert placed is None and problem.startswith("NonLocalPathError: s3a://bucket/x.png")
