import hashlib

import numpy as np
import pytest

from lab_utils.data import images


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dataset_is_real_labelled_and_deterministic(tmp_path):
    a = images.build_image_dataset(tmp_path / "a", per_class=4, copies=3)
    b = images.build_image_dataset(tmp_path / "b", per_class=4, copies=3)
    assert a.classes == b.classes == [str(d) for d in range(10)]
    assert a.files == 10 * 4 * 3 and a.per_class == {str(d): 12 for d in range(10)}
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    pairs = list(images.list_labelled_images(tmp_path / "a"))
    assert len(pairs) == 120 and {label for _, label in pairs} == set(a.classes)
    first = images.decode_image(pairs[0][0].read_bytes(), (32, 32))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert first.min() < 100 < first.max()  # ink on paper, not a blank image


def test_augmented_copies_differ_from_their_scan(tmp_path):
    images.build_image_dataset(tmp_path, per_class=1, copies=2, image_format="jpeg")
    original, variant = sorted((tmp_path / "0").glob("*.jpg"))
    a = images.decode_image(original.read_bytes(), (32, 32)).astype(int)
    b = images.decode_image(variant.read_bytes(), (32, 32)).astype(int)
    assert np.abs(a - b).mean() > 3


def test_holdout_keeps_copies_with_their_scan():
    assert images.holdout("digit_0005_000.png") == images.holdout("digit_0005_007.png") is True
    assert images.holdout("digit_0006_000.png") is False


def test_bad_input_corpus_decodes_as_declared(tmp_path):
    expected = images.write_bad_input_corpus(tmp_path)
    assert len(expected) >= 12
    for name, outcome in expected.items():
        data = (tmp_path / name).read_bytes()
        if outcome is None:
            pixels = images.decode_image(data, (32, 32))
            assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8, name
        else:
            with pytest.raises(images.ImageError, match=outcome):
                images.decode_image(data, (32, 32))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    images.write_bad_input_corpus(tmp_path)
    pixels = images.decode_image((tmp_path / "sixteen_bit.png").read_bytes(), (32, 32))
    assert 100 < pixels.mean() < 155  # uniform noise scaled to 8 bits averages ~128


def test_transparent_pixels_become_white():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, format="PNG")
    assert images.decode_image(buffer.getvalue(), (8, 8)).min() == 255


def test_pixel_limit_is_enforced_with_the_fix(tmp_path):
    images.write_bad_input_corpus(tmp_path)
    with pytest.raises(images.ImageError, match="max_pixels=1000; resize it or raise the limit"):
        images.decode_image((tmp_path / "large.jpg").read_bytes(), (32, 32), max_pixels=1000)
