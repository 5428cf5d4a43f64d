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


def test_a_smaller_run_leaves_exactly_its_set_and_the_users_files(tmp_path):
    images.build_image_dataset(tmp_path, per_class=2, copies=3)
    mine = tmp_path / "3" / "my_scan.png"
    mine.write_bytes(b"mine")
    notes = tmp_path / "3" / "digit_notes.txt"  # our prefix, not our name pattern
    notes.write_text("keep")
    summary = images.build_image_dataset(tmp_path, per_class=1, copies=1, image_format="jpeg")
    pairs = list(images.list_labelled_images(tmp_path))
    ours = [p for p, _ in pairs if p.name.startswith("digit_")]
    assert summary.files == len(ours) == 10  # no .png and no second copy of the first run left
    assert all(p.name.endswith("_000.jpg") for p in ours)
    assert mine.read_bytes() == b"mine" and notes.read_text() == "keep"


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


# --------------------------------------------------------------------------- damaged files


def _encoded(image, fmt: str, **kw) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _png_with_ihdr(width: int, height: int) -> bytes:
    """A valid 1-bit PNG whose header claims ``width`` x ``height`` (CRC fixed up)."""
    import struct
    import zlib

    from PIL import Image

    data = bytearray(_encoded(Image.new("1", (8, 8)), "PNG"))
    body = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = body
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + body))
    return bytes(data)


def _ihdr_of_length_8() -> bytes:
    import struct

    from PIL import Image

    data = bytearray(_encoded(Image.new("RGB", (4, 4)), "PNG"))
    data[8:12] = struct.pack(">I", 8)
    return bytes(data)


@pytest.mark.parametrize("data", [
    pytest.param(_ihdr_of_length_8(), id="png_ihdr_8_bytes"),
    pytest.param(b"P6\n1\x81 16\n255\n" + bytes(100), id="ppm_bad_width"),
])
def test_damaged_headers_are_the_files_error_not_an_exception(data):
    # Pillow raises a plain ValueError for both (the minimal cases).
    with pytest.raises(images.ImageError, match="corrupt or truncated image"):
        images.decode_image(data, (8, 8))


def test_decompression_bomb_warning_is_the_files_error(recwarn):
    from PIL import Image

    pixels = Image.MAX_IMAGE_PIXELS + 1000  # past Pillow's warning, below its error
    data = _png_with_ihdr(10_000, pixels // 10_000 + 1)
    with pytest.raises(images.ImageError, match="image too large"):
        images.decode_image(data, (8, 8), max_pixels=4 * pixels)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def _seed_files() -> list[bytes]:
    from PIL import Image

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    return [_encoded(rgb, "PNG"), _encoded(rgb.convert("L"), "PNG"),
            _encoded(rgb.convert("P"), "PNG"), _encoded(rgb.convert("RGBA"), "PNG"),
            _encoded(rgb, "JPEG", quality=80), _encoded(rgb, "JPEG", progressive=True),
            _encoded(rgb, "BMP"), _encoded(rgb.convert("P"), "BMP"),
            _encoded(rgb, "PPM"), _encoded(rgb.convert("L"), "PPM")]


def _png_chunk_starts(data: bytes) -> list[int]:
    import struct

    starts, pos = [], 8
    while pos + 8 <= len(data):
        starts.append(pos)
        pos += 12 + struct.unpack(">I", data[pos:pos + 4])[0]
    return starts


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One damaged copy: bytes flipped, cut short, a PNG chunk length edited, a header byte
    replaced, or bytes inserted."""
    import struct

    out = bytearray(data)
    kind = int(rng.integers(0, 5))
    if kind == 0:
        for _ in range(int(rng.integers(1, 5))):
            out[int(rng.integers(0, len(out)))] = int(rng.integers(0, 256))
    elif kind == 1:
        out = out[:int(rng.integers(0, len(out)))]
    elif kind == 2 and data.startswith(b"\x89PNG"):
        starts = _png_chunk_starts(data)
        at = starts[int(rng.integers(0, len(starts)))]
        length = int(rng.choice([0, 1, 8, 12, 13, 2**31 - 1, 2**32 - 1,
                                 int(rng.integers(0, 2**16))]))
        out[at:at + 4] = struct.pack(">I", length)
    elif kind in (2, 3):
        out[int(rng.integers(0, min(64, len(out))))] = int(rng.choice(
            [0, 0x7F, 0x80, 0x81, 0xFF, ord("9"), ord(" "), ord("\n")]))
    else:
        at = int(rng.integers(0, len(out)))
        out[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
    return bytes(out)


def test_fuzzed_files_give_pixels_or_the_files_error():
    # Seeded: a failure is reproducible. Small images and a small pixel limit keep the ~4,000
    # decodes under a few seconds (a mutated header may claim a large size).
    rng = np.random.default_rng(2024)
    outcomes = {"pixels": 0, "error": 0}
    for seed in _seed_files():
        for _ in range(400):
            data = _mutate(seed, rng)
            try:
                pixels = images.decode_image(data, (8, 8), max_pixels=1 << 20)
            except images.ImageError:
                outcomes["error"] += 1
                continue
            assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8, data[:32]
            outcomes["pixels"] += 1
    assert outcomes["pixels"] > 100 and outcomes["error"] > 100, outcomes  # both paths taken
