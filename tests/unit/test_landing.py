"""lab_utils.data.landing: a landed file is whole the moment its name appears, and never twice."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from lab_utils.data import landing
from lab_utils.data.landing import AlreadyLandedError, LandingNameError, land_file
from lab_utils.errors import LabError

CHUNK = 1 << 20  # 1 MiB
CHUNKS = 16


def _visible(folder: Path, pattern: str = "*.bin") -> dict[str, int]:
    """What a file stream with ``pathGlobFilter=pattern`` would list: name -> size."""
    return {p.name: p.stat().st_size for p in folder.glob(pattern)
            if not p.name.startswith((".", "_"))}


def _chunked_writer(seen: list[dict[str, int]], folder: Path):
    """Writes CHUNKS chunks, listing the folder as a reader would after each one."""
    def write(handle):
        for i in range(CHUNKS):
            handle.write(bytes([i]) * CHUNK)
            handle.flush()
            seen.append(_visible(folder))
    return write


def test_the_name_appears_only_with_the_whole_content(tmp_path):
    seen: list[dict[str, int]] = []
    path = land_file(tmp_path, "big.bin", _chunked_writer(seen, tmp_path))
    assert path == tmp_path / "big.bin"
    assert seen == [{}] * CHUNKS  # during the write, nothing a stream would list
    assert _visible(tmp_path) == {"big.bin": CHUNKS * CHUNK}
    assert path.read_bytes() == b"".join(bytes([i]) * CHUNK for i in range(CHUNKS))
    assert landing.staging_leftovers(tmp_path) == []


def test_the_same_reader_does_see_a_file_written_in_place(tmp_path):
    # The listing above would catch a half-visible file: writing in place shows every stage.
    seen: list[dict[str, int]] = []
    with open(tmp_path / "big.bin", "wb") as handle:
        _chunked_writer(seen, tmp_path)(handle)
    assert [s["big.bin"] for s in seen] == [CHUNK * (i + 1) for i in range(CHUNKS)]


def test_a_polling_thread_never_sees_part_of_a_landed_file(tmp_path):
    sizes: set[int] = set()
    done = threading.Event()

    def poll():
        while not done.is_set():
            sizes.update(_visible(tmp_path).values())

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for n in range(8):
            land_file(tmp_path, f"f{n}.bin", os.urandom(4 * CHUNK))
    finally:
        done.set()
        reader.join()
    assert sizes <= {4 * CHUNK}
    assert len(_visible(tmp_path)) == 8


def test_landing_a_name_twice_is_refused_and_keeps_the_first_file(tmp_path):
    land_file(tmp_path, "a.png", b"first")
    with pytest.raises(AlreadyLandedError, match=r"a\.png is already landed.*new name") as err:
        land_file(tmp_path, "a.png", b"second")
    assert isinstance(err.value, LabError) and isinstance(err.value, FileExistsError)
    assert (tmp_path / "a.png").read_bytes() == b"first"
    assert landing.staging_leftovers(tmp_path) == []


def test_a_file_appearing_during_the_write_is_not_replaced(tmp_path):
    # Another producer lands the same name while this one writes: the link step refuses.
    def write(handle):
        handle.write(b"mine")
        (tmp_path / "race.png").write_bytes(b"theirs")

    with pytest.raises(AlreadyLandedError):
        land_file(tmp_path, "race.png", write)
    assert (tmp_path / "race.png").read_bytes() == b"theirs"
    assert landing.staging_leftovers(tmp_path) == []


def test_a_failed_write_leaves_nothing(tmp_path):
    def write(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        land_file(tmp_path, "c.png", write)
    assert _visible(tmp_path, "*") == {}
    assert landing.staging_leftovers(tmp_path) == []


def test_without_hard_links_it_renames_and_still_refuses(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")  # EPERM, as on file systems without links

    monkeypatch.setattr(os, "link", no_links)
    land_file(tmp_path, "d.png", b"one")
    assert (tmp_path / "d.png").read_bytes() == b"one"
    with pytest.raises(AlreadyLandedError):
        land_file(tmp_path, "d.png", b"two")
    assert (tmp_path / "d.png").read_bytes() == b"one"
    assert landing.staging_leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["", "sub/a.png", ".hidden.png", "_meta.png", ".."])
def test_names_that_would_not_land_as_one_visible_file_are_refused(tmp_path, name):
    with pytest.raises(LandingNameError, match="cannot land"):
        land_file(tmp_path, name, b"x")
    assert list(tmp_path.iterdir()) == []


def test_the_modification_time_is_when_the_write_ended(tmp_path):
    # Spark's modificationTime column: the start of the arrival-to-prediction latency.
    written: list[float] = []

    def write(handle):
        handle.write(b"x" * CHUNK)
        handle.flush()
        written.append(time.time())

    path = land_file(tmp_path, "e.png", write)
    landed = time.time()
    assert written[0] - 0.05 <= path.stat().st_mtime <= landed + 0.05


def test_leftovers_of_a_killed_producer_are_listed(tmp_path):
    (tmp_path / landing.STAGING).mkdir()
    stale = tmp_path / landing.STAGING / "x.png.123-abc.tmp"
    stale.write_bytes(b"half")
    assert landing.staging_leftovers(tmp_path) == [stale]
    assert landing.staging_leftovers(tmp_path / "nowhere") == []
