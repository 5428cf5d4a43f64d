"""Models the serving tests can load without TensorFlow: a folder that looks saved (a
``model.keras`` archive with the shape in its config, and ``metadata.json``) and a loader whose
predictions follow from the pixels (dark or light), so every answer can be checked."""

from __future__ import annotations

import json
import zipfile

import numpy as np

CLASSES = ("dark", "light")


def write_model(folder, size=(4, 4), classes=CLASSES):
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "model.keras", "w") as archive:
        archive.writestr("config.json", json.dumps({"config": {"layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [None, *size, 3]}},
            {"class_name": "Dense", "config": {"units": len(classes)}}]}}))
    (folder / "metadata.json").write_text(json.dumps(
        {"class_names": list(classes), "image_size": list(size), "channels": 3}))
    return folder


def brightness_loader(spec):
    def predict(pixels):
        assert pixels.dtype == np.uint8
        light = pixels.reshape(len(pixels), -1).mean(axis=1) / 255
        return np.stack([1 - light, light], axis=1)

    return predict


def make_predict_fn():
    """The ``make_predict_fn`` of a model written by :func:`write_model` (the inference factories'
    argument): :func:`brightness_loader`'s predict function, no TensorFlow. Module-level, so a
    Spark task imports it by name instead of unpickling a copy."""
    return brightness_loader(None)


#: The images :func:`write_images` writes: ``<true class>/<grey level>.png`` and an empty file.
IMAGE_LEVELS = {"dark": (0, 51), "light": (204, 255)}


def write_images(folder, size=(8, 8)):
    """One small grey PNG per level of :data:`IMAGE_LEVELS` in its class folder, and
    ``light/empty.png`` (0 bytes, an upload that never arrived): :func:`brightness_loader`
    classifies the four images correctly, with confidence 1.0 (levels 0, 255) or 0.8 (51, 204),
    and the empty file is a row's error."""
    from PIL import Image

    for label, levels in IMAGE_LEVELS.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for level in levels:
            Image.new("RGB", size, (level,) * 3).save(folder / label / f"{level:03d}.png")
    (folder / "light" / "empty.png").write_bytes(b"")
    return folder
