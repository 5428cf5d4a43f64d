"""lab_utils.inference.resnet: the photo set it builds and the model folder it saves."""

import json

from lab_utils.inference import resnet


def test_a_smaller_run_leaves_exactly_its_photos_and_nothing_of_the_users(tmp_path):
    resnet.build_photo_dataset(tmp_path, 6, size=32)
    mine = tmp_path / "china" / "my_own_photo.jpg"
    mine.write_bytes(b"not ours")
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*_0000[0-3].jpg")}
    resnet.build_photo_dataset(tmp_path, 4, size=32)
    written = sorted(p.name for p in tmp_path.rglob("*.jpg") if p != mine)
    assert written == ["china_00000.jpg", "china_00002.jpg", "flower_00001.jpg",
                       "flower_00003.jpg"]
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*_0000[0-3].jpg")} == before
    assert mine.read_bytes() == b"not ours"  # a file the generator did not write stays


class _SavedBytes:
    def save(self, path):
        path.write_bytes(b"keras archive")


def test_save_resnet_is_staged_and_keeps_the_weights_a_user_placed(tmp_path):
    folder = tmp_path / "resnet50"
    folder.mkdir()
    (folder / resnet.WEIGHTS_FILE).write_bytes(b"imagenet weights")
    (folder / "model.keras").write_bytes(b"an older model")
    resnet.save_resnet(_SavedBytes(), folder, imagenet=True)
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.keras",
                                                        resnet.WEIGHTS_FILE]
    assert (folder / resnet.WEIGHTS_FILE).read_bytes() == b"imagenet weights"
    assert (folder / "model.keras").read_bytes() == b"keras archive"
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["imagenet_weights"] is True and meta["image_size"] == [224, 224]
    assert meta["class_names"][:2] == ["imagenet_0", "imagenet_1"]  # no class index placed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet50"]
