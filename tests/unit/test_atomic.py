"""lab_utils.common.atomic: whole files or none, private from the first byte, nothing left."""

import os
import stat

import pytest

from lab_utils.common import atomic


def test_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    atomic.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.joblib"
    target.write_bytes(b"good")

    def half_then_crash(tmp):
        tmp.write_bytes(b"hal")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"good"
    assert atomic.leftovers(tmp_path) == []


def test_mode_is_set_before_the_content_is_written(tmp_path):
    target = tmp_path / ".env"
    seen = []

    def write(tmp):
        seen.append(stat.S_IMODE(os.stat(tmp).st_mode))
        tmp.write_text("SECRET=x\n")

    atomic.atomic_write(target, write, mode=0o600)
    assert seen == [0o600]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_temporary_names_are_hidden_unique_keep_the_suffix_and_stay_short(tmp_path):
    target = tmp_path / "model.keras"
    names = {atomic.temporary_name(target).name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(".model.") and n.endswith(".tmp.keras") for n in names)
    for name in ("x" * 250 + ".png", "數" * 80 + ".png"):  # 254 and 244 bytes
        tmp = atomic.temporary_name(tmp_path / name)
        assert len(tmp.name.encode()) <= 255 and tmp.name.endswith(".tmp.png"), name
        atomic.atomic_write_bytes(tmp_path / name, b"ok")  # the real file system agrees
        assert (tmp_path / name).read_bytes() == b"ok"


def test_leftovers_lists_only_temporary_files(tmp_path):
    (tmp_path / "part-00000.tfrecord").write_bytes(b"")
    stale = atomic.temporary_name(tmp_path / "part-00001.tfrecord")
    stale.write_bytes(b"torn")
    assert atomic.leftovers(tmp_path) == [stale]


def test_mode_wins_over_an_existing_file_and_a_stale_temporary(tmp_path, monkeypatch):
    target = tmp_path / "spark-defaults.conf"
    target.write_text("old")
    target.chmod(0o666)
    atomic.atomic_write_text(target, "secret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # A temporary name taken in advance is never written through: the write fails, the target
    # stays as it was, and the squatter's file is not given the content.
    squat = tmp_path / ".squat.tmp.conf"
    squat.write_text("")
    squat.chmod(0o666)
    monkeypatch.setattr(atomic, "temporary_name", lambda path: squat)
    with pytest.raises(FileExistsError):
        atomic.atomic_write_text(target, "new secret", mode=0o600)
    assert target.read_text() == "secret"


def test_replace_folder_swaps_a_whole_folder_and_leaves_nothing_hidden(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with atomic.replace_folder(dest) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".")
        (staging / "new.txt").write_text("new")
        assert (dest / "old.txt").exists()  # readers see the old folder until the swap
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_folder_refused_by_its_check_before_and_just_before_the_swap(tmp_path):
    dest = tmp_path / "out"
    calls = []

    def check(folder):
        calls.append(folder)
        if folder.exists():
            raise FileExistsError(f"{folder} appeared meanwhile: not replaced")

    with (pytest.raises(FileExistsError, match="appeared meanwhile"),
          atomic.replace_folder(dest, check=check) as staging):
        (staging / "part-0").write_text("data")
        dest.mkdir()
        (dest / "someone-elses.txt").write_text("keep me")
    assert calls == [dest, dest]
    assert sorted(p.name for p in dest.iterdir()) == ["someone-elses.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_folder_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (target / "v").write_text("1")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    with atomic.replace_folder(link) as staging:
        (staging / "v").write_text("2")
    assert link.is_symlink() and (link / "v").read_text() == "2"
    assert (target / "v").read_text() == "2"
