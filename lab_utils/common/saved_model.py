"""The lab's saved-model format: a Keras model beside the metadata inference needs.

Training writes it (:func:`save_model`), inference, the model server and the benchmarks read
it (:func:`load_spec`); it sits below all of them. A model lives in a folder,
``share_storages/models/<name>/``::

    model.keras      the Keras 3 model (it rescales uint8 pixels itself)
    metadata.json    class names, input size, channels, preprocessing, held-out accuracy

Inference code reads class names and input size from ``metadata.json`` through
:func:`load_spec`, which also checks the model before any Spark job starts, without importing
TensorFlow (it reads the input shape from the ``.keras`` archive's config).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_utils.common.atomic import replace_folder
from lab_utils.errors import LabError

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
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


def save_model(model: Any, meta: dict[str, Any], model_dir: Path | str, *,
               keep: Iterable[Path | str] = ()) -> Path:
    """Write ``model`` and its ``metadata.json`` into a staging folder, then swap it in place
    of ``model_dir`` (:func:`~lab_utils.common.atomic.replace_folder`): readers see the old
    model or the new one, never a torn one, and a failed save leaves the old one as it was.

    ``keep`` names files of the old folder to carry into the new one (copied, so the old
    folder stays whole until the swap), e.g. weights a user placed beside the model.
    """
    model_dir = Path(model_dir)
    with replace_folder(model_dir) as staging:
        for path in map(Path, keep):
            shutil.copy2(path, staging / path.name)
        model.save(staging / MODEL_FILE)
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return model_dir
