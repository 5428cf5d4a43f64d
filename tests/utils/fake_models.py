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
