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
