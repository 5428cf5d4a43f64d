"""The models a server serves (every folder of ``share_storages/models``, reloaded when its
``model.keras`` changes) and the TF Serving payloads: parsing, status and metadata."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab_utils.errors import LabError
from lab_utils.training import cnn as models

#: What a loader returns: pixels [N, H, W, C] (uint8, or metadata.json's ``input_dtype``) ->
#: probabilities [N, classes].
PredictFn = Callable[[np.ndarray], np.ndarray]
Loader = Callable[[models.ModelSpec], PredictFn]

#: More instances than this in one request is refused (413): split the batch.
MAX_INSTANCES = 4096
#: ... and more numbers than this in all (images x height x width x channels): 682 images of
#: 32x32x3, 13 of 224x224x3, some 8 MB of compact JSON. One ``json.loads`` call holds the GIL
#: while it runs, so this bound is what keeps ``/healthz`` answering while a request is parsed.
MAX_REQUEST_VALUES = 2 ** 21
#: A model's body limit (:func:`max_body_bytes`) is the worst-case JSON of its largest batch
#: times this margin (whitespace, named instances), plus this slack, capped at the overall cap.
BODY_MARGIN = 2
BODY_SLACK = 64 * 1024
MAX_BODY_BYTES = 256 * 1024 * 1024


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
            spec = models.load_spec(folder)
            input_dtype(spec)  # checked now: a bad one is the model's error state
            return _Entry(spec, version, stamp)
        except FileNotFoundError:
            raise
        except models.ModelError as exc:  # the message names the file and the fix
            return _Entry(None, version, stamp, error=str(exc), error_code="INVALID_ARGUMENT")
        except Exception as exc:  # noqa: BLE001 - any other failure is this model's, too
            return _Entry(None, version, stamp, error=f"{folder} cannot be read "
                                                      f"({type(exc).__name__}: {exc}): "
                                                      f"{models.HOW_TO_CREATE}")

    def usable(self, name: str) -> tuple[_Entry, models.ModelSpec]:
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
                    entry.error = f"{type(exc).__name__}: {exc}"
        if entry.predict is None:
            raise ServingError(500, f"model {name!r} failed to load: {entry.error}; fix the model "
                                    f"in {spec.path} ({models.HOW_TO_CREATE})")
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


def input_dtype(spec: models.ModelSpec) -> np.dtype:
    """The dtype the model's predict function takes: ``metadata.json``'s ``input_dtype``
    (``uint8`` when absent, as :func:`lab_utils.training.cnn.train` writes it).

    Raises
    ------
    lab_utils.training.cnn.ModelError
        ``input_dtype`` names no integer or floating-point numpy dtype.
    """
    name = spec.metadata.get("input_dtype", "uint8")
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "uif":
        raise models.ModelError(f"{spec.path / models.METADATA_FILE}: input_dtype {name!r} is "
                                "not an integer or float dtype (e.g. 'uint8', 'float32'): "
                                f"{models.HOW_TO_CREATE}")
    return dtype


def _value_text(dtype: np.dtype) -> str:
    """What one input value may be, in words, for the error messages."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return f"a JSON integer from {info.min} to {info.max}"
    return "a finite JSON number"


def _value_chars(dtype: np.dtype) -> int:
    """The most characters one valid value takes in JSON (``-2.2250738585072014e-308``: 24)."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return max(len(str(info.min)), len(str(info.max)))
    return 24


def max_batch(spec: models.ModelSpec) -> int:
    """The most images one request may hold: ``MAX_INSTANCES``, and no more than
    ``MAX_REQUEST_VALUES`` numbers in all (at least one image)."""
    h, w = spec.image_size
    return max(1, min(MAX_INSTANCES, MAX_REQUEST_VALUES // (h * w * spec.channels)))


def max_body_bytes(spec: models.ModelSpec) -> int:
    """The largest request body this model's predict accepts, in bytes.

    The worst-case JSON of :func:`max_batch` images: every value at its longest (``255`` for
    uint8) followed by ``", "``, four bytes of brackets and separator per nested list, times
    ``BODY_MARGIN`` (whitespace, ``{"pixels": ...}`` names) plus ``BODY_SLACK`` for the envelope,
    and never more than ``MAX_BODY_BYTES``. A body over it is refused with 413 as soon as that
    many bytes arrived, whatever its ``Content-Length`` says (or when it has none: chunked).
    """
    h, w = spec.image_size
    values, lists = h * w * spec.channels, 1 + h + h * w
    image = values * (_value_chars(input_dtype(spec)) + 2) + lists * 4
    return min(MAX_BODY_BYTES, max_batch(spec) * image * BODY_MARGIN + BODY_SLACK)


def _expected(spec: models.ModelSpec) -> str:
    h, w = spec.image_size
    shape = f"[{h}, {w}, {spec.channels}]"
    dtype = input_dtype(spec)
    return (f'expected {{"instances": [<image>, ...]}} or {{"inputs": [<image>, ...]}} where '
            f"each <image> is a {shape} nested list of {dtype} values (each "
            f'{_value_text(dtype)}), optionally named {{"{_input_name(spec)}": <image>}} in '
            "row form")


def _show(value: object) -> str:
    """A JSON value in a message: short, with its JSON type."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "null"
    if isinstance(value, int):
        text = str(value)
        return f"{text if len(text) <= 24 else text[:10] + '...'} (an integer)"
    if isinstance(value, float):
        text = {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, repr(value))
        return f"{'NaN' if math.isnan(value) else text} (a number)"
    if isinstance(value, str):
        text = json.dumps(value)
        return f"{text if len(text) <= 40 else text[:37] + '...'} (a string)"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"an object with keys {sorted(value)[:5]}" if isinstance(value, dict) else repr(value)


def _shape_of(value: object) -> list[int]:
    """The nested-list shape along the first elements (what an image looks like)."""
    shape: list[int] = []
    while isinstance(value, list) and len(shape) < 8:
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _to_array(data: list, where: Callable[[int], str], spec: models.ModelSpec) -> np.ndarray:
    """Check every image's shape and every value's type and range, then build the array.

    The nesting is checked level by level before any array exists, so a ragged, too deep or
    mistyped batch costs no numpy conversion and gets a message naming the first bad position.
    """
    h, w = spec.image_size
    dims = (h, w, spec.channels)
    expected = _expected(spec)
    dtype = input_dtype(spec)
    level = data
    for depth, size in enumerate(dims):
        for i, item in enumerate(level):
            if type(item) is not list or len(item) != size:
                index = np.unravel_index(i, (len(data), *dims[:depth]))
                k = int(index[0])
                at = "".join(f"[{int(j)}]" for j in index[1:])
                detail = f" ({where(k)}{at} is {_show(item)})" if at else ""
                raise ServingError(400, f"{where(k)} has shape {_shape_of(data[k])}, but the "
                                        f"model takes {list(dims)}{detail}; {expected}")
        level = list(itertools.chain.from_iterable(level))
    values = level

    def bad(i: int, why: str) -> ServingError:
        index = np.unravel_index(i, (len(data), *dims))
        at = "".join(f"[{int(j)}]" for j in index[1:])
        return ServingError(400, f"{where(int(index[0]))}{at} is {_show(values[i])}: {why}; "
                                 f"the model's input is {dtype}, so each value must be "
                                 f"{_value_text(dtype)}; {expected}")

    allowed = (int,) if dtype.kind in "ui" else (int, float)
    if not set(map(type, values)) <= set(allowed):  # bool and str are not numbers here
        first = next(i for i, v in enumerate(values) if type(v) not in allowed)
        raise bad(first, "not " + ("an integer" if dtype.kind in "ui" else "a number"))
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if min(values) < info.min or max(values) > info.max:
            first = next(i for i, v in enumerate(values) if not info.min <= v <= info.max)
            raise bad(first, "out of range")
        array = np.array(values, dtype=dtype)
    else:
        top = float(np.finfo(dtype).max)
        try:
            wide: np.ndarray | None = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer too large for a float
            wide = None
        if wide is None or not np.isfinite(wide).all() or np.abs(wide).max() > top:
            def fits(v: float) -> bool:  # an int is compared exactly, never made a float
                return abs(v) <= top if type(v) is int else math.isfinite(v) and abs(v) <= top

            first = next(i for i, v in enumerate(values) if not fits(v))
            raise bad(first, "not finite" if isinstance(values[first], float)
                      and not math.isfinite(values[first]) else "out of range")
        array = wide.astype(dtype)
    return array.reshape(len(data), *dims)


def parse_predict_body(body: bytes, spec: models.ModelSpec) -> tuple[np.ndarray, str]:
    """Decode a predict request into the model's input ``[N, H, W, C]`` and its form.

    Any body that is not a valid request is a :class:`ServingError` with 400, whatever is wrong
    with it (not JSON, nested too deeply, an integer of thousands of digits, a string, a
    boolean or a fraction where the model takes uint8, ...): the JSON parser's own exceptions
    never leave this function.

    Returns
    -------
    (pixels, form)
        ``pixels`` has the model's :func:`input_dtype`; ``form`` is ``"instances"`` (answer
        ``predictions``) or ``"inputs"`` (answer ``outputs``).

    Raises
    ------
    ServingError
        400 naming what is wrong (the first bad value's position and type) and the expected
        shape; 413 for more images than :func:`max_batch`.
    """
    expected = _expected(spec)
    try:
        payload = json.loads(body)
    except RecursionError:
        raise ServingError(400, "the request body is nested too deeply (an image is only "
                                f"[height, width, channels] deep); {expected}") from None
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise ServingError(400, f"the request body is not valid JSON ({str(exc)[:200]}); "
                                f"{expected}") from None
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
        shown = repr(signature)[:60] if isinstance(signature, str) else _show(signature)
        raise ServingError(400, f"unknown signature_name {shown}: this model has only "
                                "'serving_default'")
    extra = set(payload) - {"instances", "inputs", "signature_name"}
    if extra:
        raise ServingError(400, f"unexpected keys {sorted(extra)[:10]} in the request; "
                                f"{expected}")
    form = forms[0]
    data = payload[form]
    name = _input_name(spec)

    def where(k: int) -> str:
        return f"{form}[{k}]"

    if form == "instances":
        if not isinstance(data, list) or not data:
            raise ServingError(400, f'"instances" must be a non-empty list; {expected}')
        if isinstance(data[0], dict):
            if not all(isinstance(row, dict) and set(row) == {name} for row in data):
                raise ServingError(400, f'named instances must each be {{"{name}": <image>}} '
                                        f"(the model's only input); {expected}")
            data = [row[name] for row in data]

            def where(k: int) -> str:
                return f'instances[{k}]["{name}"]'
    else:
        if isinstance(data, dict):
            if set(data) != {name}:
                raise ServingError(400, f'"inputs" names {sorted(data)[:10]} but the model\'s '
                                        f'only input is "{name}"; {expected}')
            data = data[name]

            def where(k: int) -> str:
                return f'inputs["{name}"][{k}]'
        if not isinstance(data, list) or not data:
            raise ServingError(400, f'"inputs" must be a non-empty list of images; {expected}')
    most = max_batch(spec)
    if len(data) > most:
        h, w = spec.image_size
        raise ServingError(413, f"{len(data)} images in one request is more than {most} "
                                f"(at most {MAX_INSTANCES} images and {MAX_REQUEST_VALUES} "
                                f"values of [{h}, {w}, {spec.channels}] images): send "
                                "smaller batches")
    return _to_array(data, where, spec), form


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
    entry, spec = registry.usable(name)
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
