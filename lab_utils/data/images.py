"""Image files: a real labelled data set written by the lab, and robust decoding.

The data set is scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes, shipped
inside the scikit-learn wheel: nothing is downloaded). ``build_image_dataset`` writes them as
ordinary PNG/JPEG files into ``share_storages/data/images/<label>/``, the same layout a user's
own ``cats/`` and ``dogs/`` folders would have, and can multiply them with light augmentation
to any size for benchmarks.

``decode_image`` turns the bytes of one file into the uint8 RGB array a model takes, and raises
:class:`ImageError` with a one-line reason for anything it cannot use (empty, truncated, not an
image, too large), so a bad file becomes one row's error, never a dead job.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab_utils.common import split
from lab_utils.errors import LabError

#: Files the data set builder writes; reading accepts any file (bad ones become row errors).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Decoding refuses images above this many pixels (a decompression bomb would exhaust memory).
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(LabError, ValueError):
    """One file cannot be used as an image; the message says why."""


@dataclass(frozen=True)
class DatasetSummary:
    root: Path
    classes: list[str]
    files: int
    per_class: dict[str, int]


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small rotation, shift, contrast and colour changes: a new but same-class image."""
    from PIL import Image

    pil = Image.fromarray(image)
    pil = pil.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR,
                     translate=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))))
    out = np.asarray(pil).astype(np.float32)
    out = out * rng.uniform(0.75, 1.0) + rng.uniform(0, 30)  # contrast and background level
    tint = rng.uniform(0.8, 1.0, size=3)                      # a faint colour cast
    return np.clip(out * tint, 0, 255).astype(np.uint8)


#: The names :func:`build_image_dataset` writes; only these are ever removed from its folder.
_GENERATED = re.compile(r"digit_\d{4}_\d{3}\.(png|jpg)")


def build_image_dataset(
    dest: Path,
    *,
    copies: int = 1,
    size: int = 32,
    per_class: int | None = None,
    image_format: str = "png",
    seed: int = 0,
) -> DatasetSummary:
    """Write the digits as image files under ``dest/<label>/``, deterministically.

    Parameters
    ----------
    dest : Path
        Folder to fill (``share_storages/data/images`` in the notebooks). It then holds exactly
        this set: files with the same names are overwritten, digits an earlier, different run
        wrote (``<label>/digit_<scan>_<copy>.png|jpg``) are removed, so a smaller run after a
        bigger one gets the size it asked for; every other file is left alone.
    copies : int
        1 writes each scan once; N > 1 adds N - 1 augmented variants of every scan, so the set
        grows to any size (10,000+ files for benchmarks).
    size : int
        Side of the written images in pixels (the 8x8 scans are upscaled).
    per_class : int, optional
        Keep only the first ``per_class`` scans of each class (smoke runs).
    image_format : {"png", "jpeg"}
    seed : int
        Seed of the augmentation: the same arguments always write the same bytes.

    Examples
    --------
    Two scans of each digit, as 16x16 PNGs, one folder per class:

    >>> summary = build_image_dataset(tmp / "images", per_class=2, size=16)
    >>> summary.files, summary.classes[:3], summary.per_class["7"]
    (20, ['0', '1', '2'], 2)
    >>> sorted(p.name for p in (tmp / "images" / "7").iterdir())
    ['digit_0007_000.png', 'digit_0017_000.png']
    """
    from PIL import Image

    if copies < 1:
        raise ImageError(f"copies={copies}: must be at least 1")
    if image_format not in {"png", "jpeg"}:
        raise ImageError(f"image_format={image_format!r}: use 'png' or 'jpeg'")
    images, targets = _digits()
    rng = np.random.default_rng(seed)
    suffix = ".png" if image_format == "png" else ".jpg"
    counts: dict[str, int] = {}
    seen: dict[int, int] = {}
    written: set[Path] = set()
    for index, (scan, target) in enumerate(zip(images, targets, strict=True)):
        label = str(int(target))
        seen[target] = seen.get(target, 0) + 1
        if per_class is not None and seen[target] > per_class:
            continue
        # 0..16 ink levels -> dark ink on a light background, like a scanned page.
        gray = (255 - scan * (255 / 16)).astype(np.uint8)
        big = np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BICUBIC))
        rgb = np.repeat(big[:, :, None], 3, axis=2)
        folder = dest / label
        folder.mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            pixels = rgb if copy == 0 else _augment(rgb, rng)
            path = folder / f"digit_{index:04d}_{copy:03d}{suffix}"
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=image_format.upper(), quality=95)
            path.write_bytes(buffer.getvalue())
            written.add(path)
            counts[label] = counts.get(label, 0) + 1
    for label in {str(int(t)) for t in targets}:
        for stale in (dest / label).glob("digit_*"):
            if _GENERATED.fullmatch(stale.name) and stale not in written:
                stale.unlink()
    summary = DatasetSummary(dest, sorted(counts), sum(counts.values()),
                             dict(sorted(counts.items())))
    # Hidden, so it is not mistaken for an image (readers skip dot files).
    (dest / ".dataset.json").write_text(json.dumps(
        {"source": "sklearn.datasets.load_digits", "copies": copies, "size": size,
         "per_class": per_class, "format": image_format, "seed": seed,
         "files": summary.files, "per_class_counts": summary.per_class}, indent=2))
    return summary


def list_labelled_images(root: Path) -> Iterator[tuple[Path, str]]:
    """``(path, label)`` for every image file under ``root/<label>/`` (sorted, deterministic)."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                yield path, folder.name


def holdout(path: Path | str, every: int = split.EVERY) -> bool:
    """Deterministic held-out split by source scan: augmented copies stay with their original.

    The lab's files are ``digit_<scan>_<copy>.png``: the scan index decides. Other names (the
    user's own files) are hashed whole.
    """
    name = Path(path).name
    try:
        key: str | int = int(name.split("_")[1])
    except (IndexError, ValueError):
        key = name
    return split.is_held_out(key, every)


def _to_8bit(image):
    """16-bit and float greyscale (mode I;16, I, F) scaled to 8 bits instead of clipped."""
    from PIL import Image

    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I") else max(float(array.max()), 1.0)
    return Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")


def decode_image(
    data: bytes | None, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode one image file's bytes to a ``(height, width, 3)`` uint8 RGB array of ``size``.

    Grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images are converted;
    large JPEGs are decoded at reduced scale. Raises :class:`ImageError` otherwise.

    *Any* exception Pillow raises for the file becomes the :class:`ImageError`, not only the
    ones it documents: for damaged files its plugins raise plain ``ValueError``,
    ``SyntaxError``, ``OSError``, ``struct.error``, ``IndexError``... depending on the format
    and on where the damage is (a fuzz test in ``tests/unit/test_images.py`` keeps it so).
    Pillow's decompression-bomb *warning* (above ``PIL.Image.MAX_IMAGE_PIXELS``) is raised as
    the file's error too, so a bomb never passes as a log line.

    Examples
    --------
    A 64x48 greyscale PNG becomes 32x32 RGB; bytes that are no image raise :class:`ImageError`:

    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("L", (64, 48), 200).save(buffer, format="PNG")
    >>> pixels = decode_image(buffer.getvalue(), (32, 32))
    >>> pixels.shape, pixels.dtype, pixels[0, 0].tolist()
    ((32, 32, 3), dtype('uint8'), [200, 200, 200])
    >>> decode_image(b"just text", (32, 32))
    Traceback (most recent call last):
    lab_utils.data.images.ImageError: not an image file...
    """
    import warnings

    from PIL import Image

    if data is None or len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _to_rgb(_open_image(data, max_pixels, size), size)
        except ImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever Pillow raises is this file's error
            raise ImageError(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None


def _open_image(data: bytes, max_pixels: int, size: tuple[int, int]):
    """The loaded Pillow image, or :class:`ImageError` for what can be named more precisely."""
    from PIL import Image, UnidentifiedImageError

    height, width = size
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image file (Pillow cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large: {exc} (Pillow's limit, PIL.Image.MAX_IMAGE_PIXELS="
                         f"{Image.MAX_IMAGE_PIXELS}); resize it or raise both limits") from None
    if image.width * image.height > max_pixels:
        raise ImageError(f"image too large: {image.width}x{image.height} pixels is more than "
                         f"max_pixels={max_pixels}; resize it or raise the limit")
    try:
        if image.format == "JPEG":
            image.draft("RGB", (width, height))  # decode big JPEGs at 1/2, 1/4, 1/8 scale
        image.load()
    except Exception as exc:  # noqa: BLE001 - named here, re-raised as this file's error
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    return image


def _to_rgb(image, size: tuple[int, int]) -> np.ndarray:
    """A loaded image in any mode -> ``size`` uint8 RGB (alpha composited on white)."""
    from PIL import Image

    height, width = size
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        image = _to_8bit(image)
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def write_bad_input_corpus(dest: Path, size: int = 32) -> dict[str, str | None]:
    """Write files that break naive image pipelines; return ``{file name: expected outcome}``.

    The outcome is ``None`` when the file must be scored (a usable image in an unusual format)
    and otherwise a fragment of the per-row error it must produce.

    Examples
    --------
    What :func:`decode_image` makes of each file is what the corpus says:

    >>> expected = write_bad_input_corpus(tmp / "unusual")
    >>> expected["cmyk.jpg"], expected["zero_bytes.png"], expected["bomb.png"]
    (None, 'empty file', 'image too large')
    >>> def outcome(name):
    ...     try:
    ...         decode_image((tmp / "unusual" / name).read_bytes(), (32, 32))
    ...     except ImageError as exc:
    ...         return str(exc)
    >>> all(outcome(name) is None if fragment is None else fragment in outcome(name)
    ...     for name, fragment in expected.items())
    True
    """
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)

    def encoded(image, fmt: str, **kw) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kw)
        return buffer.getvalue()

    good_png = encoded(Image.fromarray(rgb), "PNG")
    good_jpeg = encoded(Image.fromarray(rgb), "JPEG", quality=90)
    files: dict[str, tuple[bytes, str | None]] = {
        "zero_bytes.png": (b"", "empty file"),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "corrupt or truncated"),
        "truncated.png": (good_png[: len(good_png) // 2], "corrupt or truncated"),
        "garbage.jpg": (bytes(rng.integers(0, 256, 2048, dtype=np.uint8)), "not an image"),
        "notes.txt": (b"not an image, just a stray text file\n", "not an image"),
        "grayscale.png": (encoded(Image.fromarray(rgb[:, :, 0], mode="L"), "PNG"), None),
        "rgba.png": (encoded(Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]), mode="RGBA"),
                             "PNG"), None),
        "cmyk.jpg": (encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG"), None),
        "sixteen_bit.png": (encoded(Image.fromarray(
            rgb[:, :, 0].astype(np.uint16) * 257).convert("I;16"), "PNG"), None),
        "palette.gif": (encoded(Image.fromarray(rgb).convert("P"), "GIF"), None),
        "large.jpg": (encoded(Image.new("RGB", (6000, 4000), (200, 120, 40)), "JPEG",
                              quality=70), None),
        "file name with spaces ünïcode.png": (good_png, None),
    }
    # A decompression bomb: a tiny file that claims 40,000 x 40,000 pixels.
    files["bomb.png"] = (encoded(Image.new("1", (40_000, 40_000)), "PNG"), "image too large")
    for name, (data, _) in files.items():
        (dest / name).write_bytes(data)
    return {name: outcome for name, (_, outcome) in files.items()}


def decode_all(paths: list, contents: list, image_size: tuple[int, int], *,
               max_pixels: int = DEFAULT_MAX_PIXELS, fail_fast: bool = False,
               error_type: type[Exception] = ValueError
               ) -> tuple[list[int], list[np.ndarray], list[str | None]]:
    """Decode a batch of files: (positions that decoded, their pixels, per-row error or None).

    A file that is not a usable image is its own row's error; ``fail_fast`` raises
    ``error_type`` naming the file instead.
    """
    good: list[int] = []
    pixels: list[np.ndarray] = []
    error: list[str | None] = [None] * len(contents)
    for i, data in enumerate(contents):
        try:
            pixels.append(decode_image(data, image_size, max_pixels=max_pixels))
            good.append(i)
        except ImageError as exc:
            if fail_fast:
                raise error_type(f"{paths[i]}: {exc}") from None
            error[i] = str(exc)
    return good, pixels, error

