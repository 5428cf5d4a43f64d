"""The lab's saved-model format (:mod:`lab_utils.common.saved_model`): metadata checked with a
fix in every error, and a save that swaps a whole folder in or leaves the old one."""

import json
import zipfile

import pytest

from lab_utils.common import saved_model

CLASSES = ("dark", "light")


def fake_keras(path, shape=(None, 8, 8, 3), units=2):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"config": {"layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": list(shape)}},
            {"class_name": "Dense", "config": {"units": units}}]}}))


def write_model(folder, meta=True, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    fake_keras(folder / "model.keras", **kw)
    if meta:
        (folder / "metadata.json").write_text(json.dumps(
            {"class_names": list(CLASSES), "image_size": [8, 8], "channels": 3}))
    return folder


def test_model_spec_read_from_metadata(tmp_path):
    spec = saved_model.load_spec(write_model(tmp_path / "m"))
    assert spec.class_names == CLASSES and spec.image_size == (8, 8) and spec.channels == 3


def with_metadata(folder, text):
    write_model(folder)
    (folder / "metadata.json").write_text(text)
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "model not found at .*model.keras: run notebook 01_udf_inference_keras or "
                  "`make models`"),
    (lambda p: write_model(p, meta=False), "metadata.json is missing"),
    (lambda p: write_model(p, shape=(None, 16, 16, 3)), r"takes input \[None, 16, 16, 3\] but"),
    (lambda p: write_model(p, units=5), "5 outputs for 2 class names"),
    (lambda p: with_metadata(p, '{"class_names": ['), r"metadata.json is not valid JSON .*"
                                                      "make models"),
    (lambda p: with_metadata(p, "[1, 2]"), "metadata.json must hold a JSON object, not list"),
    (lambda p: with_metadata(p, json.dumps({"class_names": "ab", "image_size": [8, 8],
                                            "channels": "3"})),
     "class_names must be a non-empty list of strings, not 'ab'; channels must be a positive "
     "integer, not '3'"),
    (lambda p: with_metadata(p, json.dumps({"class_names": ["a", "b"], "image_size": 8,
                                            "channels": 3})),
     r"image_size must be \[height, width\] in pixels, not 8"),
    (lambda p: (write_model(p), (p / "model.keras").write_text("not a zip"))[0],
     "model.keras is not a Keras 3 .keras archive"),
])
def test_bad_models_fail_with_the_fix(tmp_path, make, message):
    folder = make(tmp_path / "m")
    with pytest.raises(saved_model.ModelError, match=message):
        saved_model.load_spec(folder)


class FakeModel:
    """Stands in for a Keras model: ``save`` writes a file, or fails like a full disk."""

    def __init__(self, payload: bytes, fail: bool = False):
        self.payload, self.fail = payload, fail

    def save(self, path):
        path.write_bytes(self.payload)
        if self.fail:
            raise OSError("No space left on device")


def test_save_model_swaps_the_folder_and_keeps_only_what_it_is_told(tmp_path):
    folder = tmp_path / "models" / "digits"
    saved_model.save_model(FakeModel(b"v1"), {"v": 1}, folder)
    (folder / "weights.h5").write_bytes(b"placed by hand")
    (folder / "stale.txt").write_text("from an old layout")
    saved_model.save_model(FakeModel(b"v2"), {"v": 2}, folder, keep=[folder / "weights.h5"])
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.keras",
                                                        "weights.h5"]
    assert (folder / "model.keras").read_bytes() == b"v2"
    assert json.loads((folder / "metadata.json").read_text()) == {"v": 2}
    assert (folder / "weights.h5").read_bytes() == b"placed by hand"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["digits"]  # no staging left


def test_a_failed_save_leaves_the_old_model_whole(tmp_path):
    folder = tmp_path / "digits"
    saved_model.save_model(FakeModel(b"v1"), {"v": 1}, folder)
    with pytest.raises(OSError, match="No space left"):
        saved_model.save_model(FakeModel(b"torn", fail=True), {"v": 2}, folder)
    assert (folder / "model.keras").read_bytes() == b"v1"
    assert json.loads((folder / "metadata.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]
