"""The models a server serves (every folder of ``share_storages/models``, reloaded when its
``model.keras`` changes) and the TF Serving payloads: parsing, status and metadata."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab_utils.errors import LabError
from lab_utils.training import cnn as models

#: What a loader returns: uint8 pixels [N, H, W, C] -> probabilities [N, classes].
PredictFn = Callable[[np.ndarray], np.ndarray]
Loader = Callable[[models.ModelSpec], PredictFn]

#: More instances than this in one request is refused (413): split the batch.
MAX_INSTANCES = 4096


class ServingError(LabError):
    """An error answered to the client as TF Serving does: ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def keras_loader(spec: models.ModelSpec) -> PredictFn:
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

    spec: models.ModelSpec | None
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
                      and (p / models.MODEL_FILE).is_file()
                      and (p / models.METADATA_FILE).is_file())

    def _not_found(self, name: str) -> ServingError:
        served = self.names()
        listing = ", ".join(served) if served else (
            f"none yet: {models.HOW_TO_CREATE} (models live in {self.models_dir}/<name>/)")
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
            stamp = ((folder / models.MODEL_FILE).stat().st_mtime_ns,
                     (folder / models.METADATA_FILE).stat().st_mtime_ns)
            with self._lock:
                current = self._entries.get(name)
                if current is None or current.stamp != stamp:
                    current = self._read(folder, stamp)
                    self._entries[name] = current
            return current
        except FileNotFoundError:  # swapped out between the listing and here: ask again
            raise self._not_found(name) from None

    @staticmethod
    def _read(folder: Path, stamp: tuple[int, int]) -> _Entry:
        version = stamp[0] // 1_000_000_000  # model.keras's mtime in whole seconds
        try:
            return _Entry(models.load_spec(folder), version, stamp)
        except FileNotFoundError:
            raise
        except models.ModelError as exc:  # the message names the file and the fix
            return _Entry(None, version, stamp, error=str(exc), error_code="INVALID_ARGUMENT")
        except Exception as exc:  # noqa: BLE001 - any other failure is this model's, too
            return _Entry(None, version, stamp, error=f"{folder} cannot be read "
                                                      f"({type(exc).__name__}: {exc}): "
                                                      f"{models.HOW_TO_CREATE}")

    def usable(self, name: str) -> _Entry:
        """The entry, or a 500 saying why the model cannot be served (its files are broken)."""
        entry = self.entry(name)
        if entry.spec is None:
            raise ServingError(500, f"model {name!r} cannot be served: {entry.error}")
        return entry

    def predictor(self, name: str) -> tuple[_Entry, PredictFn]:
        """The entry and its loaded predict function (loaded on first use, once per version)."""
        entry = self.usable(name)
        with entry.lock:
            if entry.predict is None and entry.error is None:
                try:
                    predict = self.loader(entry.spec)
                    # One call on a blank image traces the model now, not on a user's request.
                    h, w = entry.spec.image_size
                    predict(np.zeros((1, h, w, entry.spec.channels), np.uint8))
                    entry.predict = predict
                except Exception as exc:  # noqa: BLE001 - reported to every caller as a 500
                    entry.error = f"{type(exc).__name__}: {exc}"
        if entry.predict is None:
            raise ServingError(500, f"model {name!r} failed to load: {entry.error}; fix the model "
                                    f"in {entry.spec.path} ({models.HOW_TO_CREATE})")
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


# --------------------------------------------------------------------------- payloads


def _input_name(spec: models.ModelSpec) -> str:
    return str(spec.metadata.get("input_name", "pixels"))


def _expected(spec: models.ModelSpec) -> str:
    h, w = spec.image_size
    shape = f"[{h}, {w}, {spec.channels}]"
    return (f'expected {{"instances": [<image>, ...]}} or {{"inputs": [<image>, ...]}} where '
            f"each <image> is a {shape} nested list of uint8 pixel values (0-255), optionally "
            f'named {{"{_input_name(spec)}": <image>}} in row form')


def parse_predict_body(body: bytes, spec: models.ModelSpec) -> tuple[np.ndarray, str]:
    """Decode a predict request into uint8 pixels ``[N, H, W, C]`` and its form.

    Returns
    -------
    (pixels, form)
        ``form`` is ``"instances"`` (answer ``predictions``) or ``"inputs"`` (answer
        ``outputs``).

    Raises
    ------
    ServingError
        400 naming what is wrong and the expected shape; 413 for too many instances.
    """
    expected = _expected(spec)
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServingError(400, f"the request body is not valid JSON ({exc}); {expected}") from None
    if not isinstance(payload, dict):
        raise ServingError(400, f"the request body must be a JSON object, got "
                                f"{type(payload).__name__}; {expected}")
    forms = [k for k in ("instances", "inputs") if k in payload]
    if len(forms) != 1:
        what = "both" if forms else "neither"
        raise ServingError(400, f'the request has {what} of "instances" and "inputs": send '
                                f"exactly one; {expected}")
    signature = payload.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise ServingError(400, f"unknown signature_name {signature!r}: this model has only "
                                "'serving_default'")
    extra = set(payload) - {"instances", "inputs", "signature_name"}
    if extra:
        raise ServingError(400, f"unexpected keys {sorted(extra)} in the request; {expected}")
    form = forms[0]
    data = payload[form]
    name = _input_name(spec)
    if form == "instances":
        if not isinstance(data, list) or not data:
            raise ServingError(400, f'"instances" must be a non-empty list; {expected}')
        if isinstance(data[0], dict):
            if not all(isinstance(row, dict) and set(row) == {name} for row in data):
                raise ServingError(400, f'named instances must each be {{"{name}": <image>}} '
                                        f"(the model's only input); {expected}")
            data = [row[name] for row in data]
    else:
        if isinstance(data, dict):
            if set(data) != {name}:
                raise ServingError(400, f'"inputs" names {sorted(data)} but the model\'s only '
                                        f'input is "{name}"; {expected}')
            data = data[name]
        if not isinstance(data, list) or not data:
            raise ServingError(400, f'"inputs" must be a non-empty list of images; {expected}')
    if len(data) > MAX_INSTANCES:
        raise ServingError(413, f"{len(data)} images in one request is more than "
                                f"{MAX_INSTANCES}: send smaller batches")
    try:
        array = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        raise ServingError(400, f"{form} are ragged or not numbers (every image must have the "
                                f"same shape and hold only numbers); {expected}") from None
    h, w = spec.image_size
    if array.ndim != 4 or array.shape[1:] != (h, w, spec.channels):
        got = list(array.shape[1:]) if array.ndim >= 1 else []
        raise ServingError(400, f"each image in {form} has shape {got}, but the model takes "
                                f"[{h}, {w}, {spec.channels}]; {expected}")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise ServingError(400, f"pixel values must be numbers from 0 to 255 (uint8); got values "
                                f"from {array.min()} to {array.max()}; {expected}")
    return array.astype(np.uint8), form


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


def model_metadata(name: str, registry: ModelRegistry) -> dict:
    """``GET /v1/models/NAME/metadata``: the signature in TF Serving's shape, plus class names."""
    entry = registry.usable(name)
    spec = entry.spec
    dim = [{"size": str(n), "name": ""} for n in (-1, *spec.image_size, spec.channels)]
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(entry.version)},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            # The Keras model's input is float32 holding 0-255 values, as an export would say.
            "inputs": {_input_name(spec): {"dtype": "DT_FLOAT", "tensor_shape": {
                "dim": dim, "unknown_rank": False}, "name": _input_name(spec)}},
            "outputs": {"probabilities": {"dtype": "DT_FLOAT", "tensor_shape": {
                "dim": [{"size": "-1", "name": ""},
                        {"size": str(len(spec.class_names)), "name": ""}],
                "unknown_rank": False}, "name": "probabilities"}},
            "method_name": "tensorflow/serving/predict"}}},
            # Not in TF Serving: what the lab's clients need to name the classes.
            "class_names": list(spec.class_names)},
    }
