"""The models a server serves (every folder of ``share_storages/models``, reloaded when its
``model.keras`` changes), and their TF Serving status and metadata. What a model takes is
:mod:`lab_utils.serving.inputs`; the predict payloads are :mod:`lab_utils.serving.payloads`."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab_utils.common.saved_model import (
    HOW_TO_CREATE,
    METADATA_FILE,
    MODEL_FILE,
    ModelError,
    ModelSpec,
    load_spec,
)
from lab_utils.common.tensorflow import PredictFn
from lab_utils.serving.inputs import (
    IMAGE_BYTES_INPUT,
    ServingError,
    input_dtype,
    input_name,
    takes_images,
)

#: Loads one model for the server: its predict function takes pixels [N, H, W, C] (uint8, or
#: metadata.json's ``input_dtype``) and returns probabilities [N, classes].
Loader = Callable[[ModelSpec], PredictFn]


def keras_loader(spec: ModelSpec) -> PredictFn:
    """Load a saved Keras model once; its predict function calls ``model(x)`` per request.

    The in-Spark loader, with TensorFlow's pools sized to this machine: the server is the only
    process doing the work.
    """
    from lab_utils.inference import keras_predict_fn

    return keras_predict_fn(spec.model_file, threads=os.cpu_count() or 1)()


@dataclass
class _Entry:
    """One version of one model folder: its metadata, or why it cannot be served.

    ``spec`` is None when the folder's files are broken (``metadata.json`` unreadable, or not
    matching ``model.keras``); ``error`` and ``error_code`` then say why, and the model is in
    TF Serving's ``END`` state until its files change.
    """

    spec: ModelSpec | None
    version: int
    stamp: tuple[int, int] = (0, 0)  # (model.keras, metadata.json) modification times, in ns
    predict: PredictFn | None = None
    error: str | None = None
    error_code: str = "UNKNOWN"
    loading: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelRegistry:
    """The models under ``models_dir``, found by folder, loaded once per version.

    A folder is a model when it holds ``model.keras`` and ``metadata.json`` and its name does
    not start with a dot (``save_model`` stages new models in hidden folders).
    """

    def __init__(self, models_dir: Path | str, loader: Loader = keras_loader):
        self.models_dir = Path(models_dir)
        self.loader = loader
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir()
                      if p.is_dir() and not p.name.startswith(".")
                      and (p / MODEL_FILE).is_file()
                      and (p / METADATA_FILE).is_file())

    def relative(self, text: str) -> str:
        """``text`` with the models folder left out of every path in it: a message a client
        reads names ``broken/metadata.json``, not where this server keeps its files."""
        folder = self.models_dir
        for base in sorted({str(folder), str(folder.absolute()), str(folder.resolve())},
                           key=len, reverse=True):
            text = text.replace(base + os.sep, "")
        return text

    def _not_found(self, name: str) -> ServingError:
        served = self.names()
        listing = ", ".join(served) if served else (
            f"none yet: {HOW_TO_CREATE} (models live in the server's "
            f"{self.models_dir.name}/<name>/ folders)")
        return ServingError(404, f"Servable not found for request: Latest({name}). "
                                 f"This server serves: {listing}")

    def entry(self, name: str) -> _Entry:
        """The current version's entry (metadata checked; the model itself not yet loaded).

        A folder whose files are broken gets an entry too, holding the error: one bad model is
        that model's error state, never an exception that stops the server or the others.
        """
        folder = self.models_dir / name
        if name.startswith(".") or "/" in name or name not in self.names():
            raise self._not_found(name)
        try:
            stamp = ((folder / MODEL_FILE).stat().st_mtime_ns,
                     (folder / METADATA_FILE).stat().st_mtime_ns)
            with self._lock:
                current = self._entries.get(name)
                if current is None or current.stamp != stamp:
                    current = self._read(name, stamp)
                    self._entries[name] = current
            return current
        except FileNotFoundError:  # swapped out between the listing and here: ask again
            raise self._not_found(name) from None

    def _read(self, name: str, stamp: tuple[int, int]) -> _Entry:
        version = stamp[0] // 1_000_000_000  # model.keras's mtime in whole seconds
        try:
            spec = load_spec(self.models_dir / name)
            input_dtype(spec)  # checked now: a bad one is the model's error state
            return _Entry(spec, version, stamp)
        except FileNotFoundError:
            raise
        except ModelError as exc:  # the message names the file and the fix
            return _Entry(None, version, stamp, error=self.relative(str(exc)),
                          error_code="INVALID_ARGUMENT")
        except Exception as exc:  # noqa: BLE001 - any other failure is this model's, too
            return _Entry(None, version, stamp, error=self.relative(
                f"{name}/ cannot be read ({type(exc).__name__}: {exc}): {HOW_TO_CREATE}"))

    def usable(self, name: str) -> tuple[_Entry, ModelSpec]:
        """The entry and its spec, or a 500 saying why the model cannot be served (its files
        are broken)."""
        entry = self.entry(name)
        if entry.spec is None:
            raise ServingError(500, f"model {name!r} cannot be served: {entry.error}")
        return entry, entry.spec

    def predictor(self, name: str) -> tuple[_Entry, PredictFn]:
        """The entry and its loaded predict function (loaded on first use, once per version)."""
        entry, spec = self.usable(name)
        with entry.lock:
            if entry.predict is None and entry.error is None:
                try:
                    predict = self.loader(spec)
                    # One call on a blank image traces the model now, not on a user's request.
                    h, w = spec.image_size
                    predict(np.zeros((1, h, w, spec.channels), input_dtype(spec)))
                    entry.predict = predict
                except Exception as exc:  # noqa: BLE001 - reported to every caller as a 500
                    entry.error = self.relative(f"{type(exc).__name__}: {exc}")
        if entry.predict is None:
            raise ServingError(500, f"model {name!r} failed to load: {entry.error}; fix the model "
                                    f"in {name}/ ({HOW_TO_CREATE})")
        return entry, entry.predict

    def state(self, name: str) -> tuple[_Entry, str]:
        """The entry and its TF Serving state; asking about a model starts loading it."""
        entry = self.entry(name)
        if entry.error is not None:
            return entry, "END"
        if entry.predict is not None:
            return entry, "AVAILABLE"
        with self._lock:
            start, entry.loading = not entry.loading, True
        if start:
            threading.Thread(target=self._load_quietly, args=(name,), daemon=True,
                             name=f"load-{name}").start()
        return entry, "LOADING"

    def _load_quietly(self, name: str) -> None:
        with contextlib.suppress(ServingError):  # the error is kept in the entry and reported
            self.predictor(name)


def model_status(name: str, registry: ModelRegistry, version: str | None = None) -> dict:
    """``GET /v1/models/NAME`` in TF Serving's shape."""
    entry, state = registry.state(name)
    if version is not None and version != str(entry.version):
        raise ServingError(404, f"Servable not found for request: Specific({name}, {version}). "
                                f"Version {entry.version} is served")
    error = entry.error or ""
    return {"model_version_status": [{
        "version": str(entry.version), "state": state,
        "status": {"error_code": entry.error_code if error else "OK", "error_message": error}}]}


def image_input(spec: ModelSpec) -> dict | None:
    """What ``metadata`` says about the model's image-file input (None: pixels only).

    The signature keeps the model's one tensor input, as a TF Serving export of it declares;
    this lab extra says that the server also takes image files for it (``{"b64": ...}``,
    decoded as in-Spark inference decodes them), so a client can send the files instead of
    their pixels.
    """
    if not takes_images(spec):
        return None
    h, w = spec.image_size
    return {"name": IMAGE_BYTES_INPUT, "encoding": "b64", "decoded_to": [h, w, 3],
            "decode": "lab_utils.data.images.decode_image: any image Pillow reads, converted "
                      "to RGB, resized (bilinear) to the model's size",
            "for_input": input_name(spec)}


def model_metadata(name: str, registry: ModelRegistry) -> dict:
    """``GET /v1/models/NAME/metadata``: the signature in TF Serving's shape, plus class names
    and the image-file input (:func:`image_input`)."""
    entry, spec = registry.usable(name)
    dim = [{"size": str(n), "name": ""} for n in (-1, *spec.image_size, spec.channels)]
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(entry.version)},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            # The Keras model's input is float32 holding 0-255 values, as an export would say.
            "inputs": {input_name(spec): {"dtype": "DT_FLOAT", "tensor_shape": {
                "dim": dim, "unknown_rank": False}, "name": input_name(spec)}},
            "outputs": {"probabilities": {"dtype": "DT_FLOAT", "tensor_shape": {
                "dim": [{"size": "-1", "name": ""},
                        {"size": str(len(spec.class_names)), "name": ""}],
                "unknown_rank": False}, "name": "probabilities"}},
            "method_name": "tensorflow/serving/predict"}}},
            # Not in TF Serving: what the lab's clients need to name the classes, and whether
            # image files may be sent instead of pixels (None: pixels only).
            "class_names": list(spec.class_names), "image_input": image_input(spec)},
    }
