"""The lab's image classifier: a small CNN trained in seconds on CPU, saved in the lab's format
(:mod:`lab_utils.common.saved_model`) with the metadata inference needs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lab_utils.common.saved_model import ModelError, ModelSpec, load_spec, save_model
from lab_utils.data import images
from lab_utils.errors import LabError

DEFAULT_MODEL_NAME = "digits_cnn"


class NoImagesError(LabError, FileNotFoundError):
    """The folder to train from holds no images in ``<label>/`` folders."""


class TooFewImagesError(LabError, ValueError):
    """The images all fall on one side of the held-out split, so nothing is left to train or
    to test on."""


def build_cnn(image_size: tuple[int, int], classes: int, channels: int = 3):
    """A small CNN for uint8 RGB input (it rescales to [0, 1] itself)."""
    import keras

    inputs = keras.Input(shape=(*image_size, channels), name="pixels")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def load_image_folder(root: Path, size: tuple[int, int]):
    """Decode every image under ``root/<label>/``: (pixels, label indices, paths, class names)."""
    pairs = list(images.list_labelled_images(root))
    if not pairs:
        raise NoImagesError(f"no images under {root}/<label>/: build them with "
                            "lab_utils.data.images.build_image_dataset (notebook 01)")
    class_names = sorted({label for _, label in pairs})
    index = {name: i for i, name in enumerate(class_names)}
    x = np.stack([images.decode_image(p.read_bytes(), size) for p, _ in pairs])
    y = np.array([index[label] for _, label in pairs])
    return x, y, [p for p, _ in pairs], class_names


def train_image_classifier(
    data_dir: Path,
    model_dir: Path,
    *,
    image_size: tuple[int, int] = (32, 32),
    epochs: int = 8,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the CNN on ``data_dir/<label>/`` images and save it with metadata to ``model_dir``.

    The held-out set is every fifth source scan (augmented copies stay on their scan's side),
    so the reported accuracy is on images the model never saw in any form.

    Returns
    -------
    dict
        The metadata written, including ``holdout_accuracy`` and the majority-class
        ``baseline_accuracy``.
    """
    import keras

    keras.utils.set_random_seed(seed)
    x, y, paths, class_names = load_image_folder(data_dir, image_size)
    test = np.array([images.holdout(p) for p in paths])
    if test.all() or not test.any():
        raise TooFewImagesError(f"{data_dir}: too few images to hold some out for testing: "
                                "add images, or build the lab's set with "
                                "lab_utils.data.images.build_image_dataset (notebook 01)")
    model = build_cnn(image_size, len(class_names))
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    started = time.perf_counter()
    history = model.fit(x[~test], y[~test], epochs=epochs, batch_size=batch_size, verbose=0,
                        shuffle=True)
    seconds = time.perf_counter() - started
    predicted = np.argmax(model.predict(x[test], batch_size=256, verbose=0), axis=1)
    accuracy = float(np.mean(predicted == y[test]))
    baseline = float(np.max(np.bincount(y[test])) / test.sum())
    meta = {
        "name": model.name,
        "class_names": class_names,
        "image_size": list(image_size),
        "channels": 3,
        "input_dtype": "uint8",
        "preprocessing": "decode to RGB, resize to image_size (bilinear), feed uint8; "
                         "the model rescales to [0, 1] itself",
        "holdout_accuracy": round(accuracy, 4),
        "baseline_accuracy": round(baseline, 4),
        "train_images": int((~test).sum()),
        "holdout_images": int(test.sum()),
        "epochs": epochs,
        "final_train_loss": round(float(history.history["loss"][-1]), 4),
        "train_seconds": round(seconds, 2),
        "seed": seed,
        "data_dir": str(data_dir),
        "keras_version": keras.__version__,
    }
    save_model(model, meta, model_dir)
    return meta


def ensure_model(cfg=None, *, smoke: bool | None = None) -> ModelSpec:
    """The lab's digits model; build the image set and train it first if it is missing.

    Notebooks after 01 call this so each one also runs on its own. ``smoke`` (default: the
    ``LAB_SMOKE`` setting) builds a small set.
    """
    from lab_utils import config

    cfg = cfg or config.load()
    model_dir = cfg.share_dir / "models" / DEFAULT_MODEL_NAME
    try:
        return load_spec(model_dir)
    except ModelError:
        pass
    smoke = cfg.smoke if smoke is None else smoke
    data = cfg.share_dir / "data" / "images"
    if not (data.is_dir() and any(images.list_labelled_images(data))):
        summary = images.build_image_dataset(data, per_class=30 if smoke else None)
        print(f"built {summary.files} images in {len(summary.classes)} classes under {data}")
    meta = train_image_classifier(data, model_dir)
    print(f"trained {model_dir}: held-out accuracy {meta['holdout_accuracy']:.3f} "
          f"(majority baseline {meta['baseline_accuracy']:.3f})")
    return load_spec(model_dir)


def main() -> int:
    """`make models`: build the image set and train the lab's CNN into share_storages."""
    ensure_model()
    return 0


if __name__ == "__main__":
    sys.exit(main())
