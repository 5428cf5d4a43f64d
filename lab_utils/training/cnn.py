"""The lab's image classifier: trained in seconds on CPU, saved with the metadata inference needs.

A model lives in a folder, ``share_storages/models/<name>/``::

    model.keras      the Keras 3 model (it rescales uint8 pixels itself)
    metadata.json    class names, input size, channels, preprocessing, held-out accuracy

Inference code reads class names and input size from ``metadata.json`` through
:func:`load_spec`, which also checks the model before any Spark job starts, without importing
TensorFlow (it reads the input shape from the ``.keras`` archive's config).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lab_utils.data import images
from lab_utils.errors import LabError

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
DEFAULT_MODEL_NAME = "digits_cnn"
HOW_TO_CREATE = "run notebook 01_udf_inference_keras or `make models` to create it"


class ModelError(LabError, RuntimeError):
    """The model is missing or does not fit its metadata; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    """What inference needs to know about a saved model."""

    path: Path
    class_names: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width)
    channels: int
    metadata: dict[str, Any]

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE


def _keras_input_output(model_file: Path) -> tuple[list | None, int | None]:
    """Input shape and output units from a ``.keras`` archive's config.json (no TensorFlow)."""
    try:
        with zipfile.ZipFile(model_file) as archive:
            config = json.loads(archive.read("config.json"))
        layers = config.get("config", {}).get("layers", [])
        shape = None
        for layer in layers:
            if layer.get("class_name") == "InputLayer":
                shape = (layer["config"].get("batch_shape")
                         or layer["config"].get("batch_input_shape"))
                break
        if shape is None:
            shape = (config.get("build_config") or {}).get("input_shape")
        units = None
        if layers:
            units = layers[-1].get("config", {}).get("units")
        return None if shape is None else list(shape), units
    except (zipfile.BadZipFile, KeyError, ValueError, AttributeError, TypeError) as exc:
        # Not a zip, no config.json, or a config.json of another shape than Keras 3 writes.
        raise ModelError(f"{model_file} is not a Keras 3 .keras archive ({type(exc).__name__}: "
                         f"{str(exc)[:200]}): {HOW_TO_CREATE}") from None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _read_metadata(meta_file: Path) -> dict[str, Any]:
    """``metadata.json`` decoded and its three required fields checked, or :class:`ModelError`
    naming the file, the field and the fix (never a bare ``JSONDecodeError`` or ``TypeError``)."""
    try:
        meta = json.loads(meta_file.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, too deep
        raise ModelError(f"{meta_file} is not valid JSON ({type(exc).__name__}: "
                         f"{str(exc)[:200]}): {HOW_TO_CREATE} (it writes the file)") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_file} must hold a JSON object, not {type(meta).__name__}: "
                         f"{HOW_TO_CREATE}")
    missing = [k for k in ("class_names", "image_size", "channels") if k not in meta]
    if missing:
        raise ModelError(f"{meta_file} lacks {', '.join(missing)}: {HOW_TO_CREATE}")
    names, size, channels = meta["class_names"], meta["image_size"], meta["channels"]
    problems = []
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        problems.append(f"class_names must be a non-empty list of strings, not {names!r:.80}")
    if not (isinstance(size, list) and len(size) == 2 and all(map(_positive_int, size))):
        problems.append(f"image_size must be [height, width] in pixels, not {size!r:.80}")
    if not _positive_int(channels):
        problems.append(f"channels must be a positive integer, not {channels!r:.80}")
    if problems:
        raise ModelError(f"{meta_file}: {'; '.join(problems)}: {HOW_TO_CREATE}")
    return meta


def load_spec(model_dir: Path | str) -> ModelSpec:
    """Read and check a saved model's metadata; raise :class:`ModelError` naming the fix."""
    path = Path(model_dir)
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise ModelError(f"model not found at {model_file}: {HOW_TO_CREATE}")
    meta_file = path / METADATA_FILE
    if not meta_file.is_file():
        raise ModelError(f"{meta_file} is missing, so class names and input size are unknown: "
                         f"{HOW_TO_CREATE} (it writes both files)")
    meta = _read_metadata(meta_file)
    spec = ModelSpec(path, tuple(meta["class_names"]), tuple(meta["image_size"]),
                     meta["channels"], meta)
    shape, units = _keras_input_output(model_file)
    expected = [None, *spec.image_size, spec.channels]
    if shape is not None and list(shape) != expected:
        raise ModelError(f"incompatible model {model_file}: it takes input {list(shape)} but "
                         f"{meta_file} says {expected}; {HOW_TO_CREATE}")
    if units is not None and units != len(spec.class_names):
        raise ModelError(f"incompatible model {model_file}: {units} outputs for "
                         f"{len(spec.class_names)} class names in {meta_file}; {HOW_TO_CREATE}")
    return spec


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
        raise FileNotFoundError(f"no images under {root}/<label>/: build them with "
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
        raise ValueError(f"{data_dir}: too few images to hold some out for testing")
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


def save_model(model, meta: dict[str, Any], model_dir: Path) -> None:
    """Write model and metadata to a temporary folder, then swap it in (never a torn model)."""
    model_dir = Path(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = model_dir.with_name(f".{model_dir.name}.tmp-{time.time_ns()}")
    staging.mkdir()
    model.save(staging / MODEL_FILE)
    (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    old = model_dir.with_name(f".{model_dir.name}.old-{time.time_ns()}")
    if model_dir.exists():
        model_dir.rename(old)
    staging.rename(model_dir)
    shutil.rmtree(old, ignore_errors=True)


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
