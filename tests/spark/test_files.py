"""``common.files.read_binary_files``: every file becomes a row, empty ones included; and
``place_by_class`` puts every one of those rows' files into the sorted folder."""

from __future__ import annotations

from pathlib import Path

from lab_utils.common.files import read_binary_files
from lab_utils.data import audio
from lab_utils.inference import local_path, place_by_class, read_images


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


# --------------------------------------------------------------------------- place_by_class


def _jpeg(value: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (6, 6), (value, value, value)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _camera_folder(root):
    """Camera exports: the same names in several (nested) folders, a torn file, an empty one."""
    files = {
        "2024/trip/IMG_0001.JPG": _jpeg(10), "2024/trip/IMG_0002.JPG": _jpeg(250),
        "2024/home/IMG_0001.JPG": _jpeg(240), "2025/IMG_0001.JPG": _jpeg(20),
        "2025/deep/er/IMG_0001.JPG": _jpeg(230), "phone/IMG_0001.JPG": _jpeg(30)[:40],  # torn
        "phone/sub/IMG_0001.JPG": b"",  # an upload that never arrived
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _files_under(folder):
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


def test_camera_photos_with_clashing_names_are_sorted_one_file_per_input(local_spark, tmp_path):
    """Issue 16's Done-when: read, scored on the real scoring path, placed; nothing lost."""
    from lab_utils.inference import map_in_pandas
    from tests.utils.fake_models import brightness_loader, write_model

    root = tmp_path / "camera"
    files = _camera_folder(root)
    model = write_model(tmp_path / "model", classes=("dark", "light"))
    scored = map_in_pandas(read_images(local_spark, root, partitions=3), model,
                           lambda: brightness_loader(None), keep=("path",))
    scores = {local_path(p): (pred, err) for p, pred, err in
              scored.select("path", "prediction", "error").collect()}
    assert set(scores) == {str(root / n) for n in files}
    broken = {str(root / "phone/IMG_0001.JPG"), str(root / "phone/sub/IMG_0001.JPG")}
    assert {p for p, (_, err) in scores.items() if err is not None} == broken
    dest = tmp_path / "sorted"
    runs = []
    for _ in range(2):  # a rerun (or a retried task) places every file at the same name
        out = place_by_class(scored, dest).toPandas()
        runs.append(dict(zip(out["path"].map(local_path), out["placed"], strict=True)))
        assert len(out) == len(files), "one output row per input file"
        assert out["placed_error"].isna().all(), out["placed_error"].dropna().tolist()
    assert runs[0] == runs[1]
    placed = runs[0]
    on_disk = _files_under(dest)
    assert len(on_disk) == len(files), "one placed file per input file, no extra on a rerun"
    assert sorted(Path(p) for p in placed.values()) == on_disk
    for source, target in placed.items():
        assert Path(target).read_bytes() == (root / Path(source).relative_to(root)).read_bytes()
        assert Path(target).resolve().is_relative_to(dest.resolve())
        prediction, error = scores[source]
        expected = "_errors" if error is not None else prediction
        assert Path(target).parent == dest / expected
        assert Path(target).name.startswith("IMG_000") and Path(target).suffix == ".JPG"
    assert {p.parent.name for p in on_disk} == {"dark", "light", "_errors"}
    assert len(list((dest / "_errors").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera", "model", "sorted"]
    assert _files_under(root) == sorted(root / n for n in files)  # the sources untouched


def test_unsafe_class_names_links_and_modes(local_spark, tmp_path):
    """A class name cannot climb out of ``dest``, a link is not followed, modes are kept."""
    import os
    import stat

    data = tmp_path / "data"
    data.mkdir()
    secret = tmp_path / "private" / "id_rsa"
    secret.parent.mkdir()
    secret.write_bytes(b"secret")
    secret.chmod(0o600)
    (data / "link.png").symlink_to(secret)
    rows = [(f"x{i}.png", label) for i, label in
            enumerate(["../../x", "..", ".", "", "a/b", "nul\0byte", "_errors", ".hidden"])]
    for name, _ in rows:
        (data / name).write_bytes(name.encode())
    (data / "mine.png").write_bytes(b"private photo")
    (data / "mine.png").chmod(0o640)
    rows += [("mine.png", "cat"), ("link.png", "cat")]
    frame = local_spark.createDataFrame(
        [(f"file:{data / name}", label, None) for name, label in rows],
        "path string, prediction string, error string")
    dest = tmp_path / "out" / "sorted"
    out = {local_path(r["path"]).rsplit("/", 1)[-1]: r
           for r in place_by_class(frame, dest).collect()}
    assert len(out) == len(rows)
    for name, label in rows[:8]:
        row = out[name]
        assert Path(row["placed"]).parent == dest / "_errors", (label, row)
        assert repr(label) in row["placed_error"] and "class_names" in row["placed_error"]
        assert Path(row["placed"]).read_bytes() == name.encode()
    mine = out["mine.png"]
    assert mine["placed_error"] is None and Path(mine["placed"]).parent == dest / "cat"
    assert stat.S_IMODE(os.stat(mine["placed"]).st_mode) == 0o640  # never widened to 0644
    link = out["link.png"]
    assert link["placed"] is None and "symbolic link" in link["placed_error"]
    assert str(data / "link.png") in link["placed_error"]
    outside = [p for p in _files_under(tmp_path) if not p.is_relative_to(dest)
               and not p.is_relative_to(data) and p != secret]
    assert outside == []
    assert len(_files_under(dest)) == 9  # every row but the link
