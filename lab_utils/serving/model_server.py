"""The lab's model server: saved Keras models over TensorFlow Serving's REST API.

Every model folder under ``share_storages/models/<name>/`` (``model.keras`` + ``metadata.json``,
as :mod:`lab_utils.training.cnn` saves them) is served under its folder name, in the shape of
TensorFlow Serving's REST API, so a notebook written against it runs unchanged against a real
TF Serving container serving the same model under the same name:

* ``GET  /v1/models/NAME``                 status (``model_version_status``)
* ``GET  /v1/models/NAME/metadata``        input/output signature (plus class names)
* ``POST /v1/models/NAME:predict``         ``{"instances": [...]}`` (row form) answered with
  ``{"predictions": [...]}``, or ``{"inputs": ...}`` (columnar) answered with ``{"outputs": ...}``
* ``/v1/models/NAME/versions/V…``          the same, for one version

Errors are TF Serving's ``{"error": "..."}`` with 400 (bad payload: what is wrong and the
expected shape) or 404 (unknown model: the models this server serves). Two lab extras, outside
TF Serving's API: ``GET /healthz`` (the lab's health probe) and ``GET /stats`` (request and
injected-fault counters, for tests and notebook 08).

Fault injection, **off unless asked for** (``--fail-rate``, ``--delay``/``--delay-rate``):
a seeded random sequence decides, per predict request, whether to answer 503 and whether to
sleep first, so a given seed injects the same faults into the same sequence of requests.

The version of a model is its ``model.keras`` modification time in whole seconds: retraining
(``save_model`` swaps the folder) makes a new version, which is loaded on the next request.

Run it: ``make lab`` (the ``model-server`` service), ``lab run model-server`` (containers),
``python -m lab_utils.serving --port 8501``, or :func:`launch` from Python (tests, notebook).
FastAPI, uvicorn and TensorFlow are imported only when a server is built or runs.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations
# (``request: Request``), and Request is imported inside create_app to keep imports light.
import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab_utils.common import process
from lab_utils.common.net import free_port, http_json
from lab_utils.errors import LabError
from lab_utils.training import cnn as models

#: What a loader returns: uint8 pixels [N, H, W, C] -> probabilities [N, classes].
PredictFn = Callable[[np.ndarray], np.ndarray]
Loader = Callable[[models.ModelSpec], PredictFn]

#: More instances than this in one request is refused (413): split the batch.
MAX_INSTANCES = 4096
#: Request bodies above this many bytes are refused (413) before they are parsed.
MAX_BODY_BYTES = 256 * 1024 * 1024
DEFAULT_PORT = 8501


class ServingError(LabError):
    """An error answered to the client as TF Serving does: ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- fault injection


@dataclass(frozen=True)
class Faults:
    """Faults injected into predict requests; all zero (the default) injects nothing.

    Parameters
    ----------
    fail_rate : float
        Fraction of predict requests answered ``503 Service Unavailable`` (at once).
    delay : float
        Seconds a delayed request waits before it is processed.
    delay_rate : float
        Fraction of the other predict requests delayed by ``delay``.
    seed : int
        Seed of the decision sequence: the same seed gives the same faults to the same sequence
        of requests.
    """

    fail_rate: float = 0.0
    delay: float = 0.0
    delay_rate: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("fail_rate", "delay_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be between 0 and 1")
        if self.delay < 0:
            raise ValueError(f"delay={self.delay} must be >= 0 seconds")

    @property
    def enabled(self) -> bool:
        return self.fail_rate > 0 or (self.delay > 0 and self.delay_rate > 0)


class FaultInjector:
    """Draws (fail, delay) for each predict request from one seeded sequence."""

    def __init__(self, faults: Faults):
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()

    def draw(self) -> tuple[bool, float]:
        if not self.faults.enabled:
            return False, 0.0
        with self._lock:
            # Always two draws per request, so one decision never shifts the other's sequence.
            fail, slow = self._rng.random(), self._rng.random()
        delay = self.faults.delay if slow < self.faults.delay_rate else 0.0
        return fail < self.faults.fail_rate, delay


@dataclass
class Stats:
    """Counters served at ``/stats``."""

    predict_requests: int = 0
    rows_received: int = 0
    rows_answered: int = 0
    bad_requests: int = 0
    injected_errors: int = 0
    injected_error_rows: int = 0
    delayed: int = 0
    delayed_rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


# --------------------------------------------------------------------------- models


def keras_loader(spec: models.ModelSpec) -> PredictFn:
    """Load a saved Keras model once; its predict function calls ``model(x)`` per request.

    The in-Spark loader, with TensorFlow's pools sized to this machine: the server is the only
    process doing the work.
    """
    from lab_utils.inference import keras_predict_fn

    return keras_predict_fn(spec.model_file, threads=os.cpu_count() or 1)()


@dataclass
class _Entry:
    spec: models.ModelSpec
    version: int
    predict: PredictFn | None = None
    error: str | None = None
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
        """The current version's entry (metadata checked; the model itself not yet loaded)."""
        folder = self.models_dir / name
        if name.startswith(".") or "/" in name or name not in self.names():
            raise self._not_found(name)
        try:
            version = int((folder / models.MODEL_FILE).stat().st_mtime)
            with self._lock:
                current = self._entries.get(name)
                if current is None or current.version != version:
                    current = _Entry(models.load_spec(folder), version)
                    self._entries[name] = current
            return current
        except FileNotFoundError:  # swapped out between the listing and here: ask again
            raise self._not_found(name) from None
        except models.ModelError as exc:
            raise ServingError(404, f"model {name!r} cannot be served: {exc}") from None

    def predictor(self, name: str) -> tuple[_Entry, PredictFn]:
        """The entry and its loaded predict function (loaded on first use, once per version)."""
        entry = self.entry(name)
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
        "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error}}]}


def model_metadata(name: str, registry: ModelRegistry) -> dict:
    """``GET /v1/models/NAME/metadata``: the signature in TF Serving's shape, plus class names."""
    entry = registry.entry(name)
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


# --------------------------------------------------------------------------- the app


def create_app(models_dir: Path | str, *, faults: Faults | None = None,
               loader: Loader = keras_loader, preload: bool = True):
    """The FastAPI application serving every model under ``models_dir``.

    Parameters
    ----------
    models_dir : Path or str
        Folder holding ``<name>/model.keras`` + ``<name>/metadata.json``.
    faults : Faults, optional
        Injected faults (default: none).
    loader : Callable[[ModelSpec], PredictFn]
        Loads one model; tests pass fakes, the default loads the Keras model.
    preload : bool
        Load every model found at start-up in the background (status ``LOADING`` meanwhile),
        as TF Serving does, so the first request does not pay for it.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    registry = ModelRegistry(models_dir, loader)
    injector = FaultInjector(faults or Faults())
    stats = Stats()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if preload:
            for name in registry.names():
                with contextlib.suppress(ServingError):
                    registry.state(name)  # starts loading it in the background
        yield

    app = FastAPI(title="Spark DL Lab model server (TF Serving REST API)", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry, app.state.stats, app.state.faults = registry, stats, injector.faults

    @app.exception_handler(ServingError)
    async def serving_error(_request, exc: ServingError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        message = exc.detail
        if exc.status_code == 404:
            message = (f"no such endpoint {request.method} {request.url.path}: this server "
                       "answers GET /v1/models/NAME, GET /v1/models/NAME/metadata and "
                       "POST /v1/models/NAME:predict")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": registry.names()}

    @app.get("/stats")
    async def get_stats():
        return {**stats.as_dict(), "faults": vars(injector.faults)}

    @app.get("/v1/models/{name}")
    async def status(name: str):
        return await run_in_threadpool(model_status, name, registry)

    @app.get("/v1/models/{name}/versions/{version}")
    async def status_version(name: str, version: str):
        return await run_in_threadpool(model_status, name, registry, version)

    @app.get("/v1/models/{name}/metadata")
    async def metadata(name: str):
        return await run_in_threadpool(model_metadata, name, registry)

    async def predict(name: str, request: Request, version: str | None = None):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ServingError(413, f"request body of {length} bytes is over {MAX_BODY_BYTES}: "
                                    "send smaller batches")
        entry = await run_in_threadpool(registry.entry, name)
        if version is not None and version != str(entry.version):
            raise ServingError(404, f"Servable not found for request: Specific({name}, "
                                    f"{version}). Version {entry.version} is served")
        body = await request.body()
        try:
            pixels, form = await run_in_threadpool(parse_predict_body, body, entry.spec)
        except ServingError:
            stats.add(bad_requests=1)
            raise
        rows = len(pixels)
        stats.add(predict_requests=1, rows_received=rows)
        fail, delay = injector.draw()
        if delay and not fail:  # a failed request is answered at once: the two never overlap
            stats.add(delayed=1, delayed_rows=rows)
            await asyncio.sleep(delay)
        if fail:
            stats.add(injected_errors=1, injected_error_rows=rows)
            return JSONResponse({"error": "injected fault: the server is unavailable "
                                          f"(--fail-rate {injector.faults.fail_rate})"},
                                status_code=503)

        def run() -> list:
            _entry, fn = registry.predictor(name)
            out = np.asarray(fn(pixels), dtype=np.float32)
            if out.shape[0] != rows:
                raise ServingError(500, f"model {name!r} returned {out.shape[0]} rows for "
                                        f"{rows} images")
            return out.tolist()

        outputs = await run_in_threadpool(run)
        stats.add(rows_answered=rows)
        return {"predictions": outputs} if form == "instances" else {"outputs": outputs}

    @app.post("/v1/models/{name}:predict")
    async def predict_latest(name: str, request: Request):
        return await predict(name, request)

    @app.post("/v1/models/{name}/versions/{version}:predict")
    async def predict_version(name: str, version: str, request: Request):
        return await predict(name, request, version)

    return app


# --------------------------------------------------------------------------- running it


def serve(host: str, port: int, models_dir: Path | str, *, faults: Faults | None = None,
          log_level: str = "warning") -> None:
    """Run the server in the foreground until SIGTERM/SIGINT."""
    import uvicorn

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    faults = faults or Faults()
    print(f"model server on http://{host}:{port} serving {models_dir}"
          + (f" with injected faults {faults}" if faults.enabled else ""), flush=True)
    uvicorn.run(create_app(models_dir, faults=faults), host=host, port=port,
                log_level=log_level, access_log=False)


def server_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when a lab model server answers ``/healthz`` at ``url``."""
    try:
        return http_json(f"{url.rstrip('/')}/healthz", timeout).get("status") == "ok"
    except (OSError, ValueError, AttributeError):
        return False


class ServerProcess:
    """A model server in a child process (tests, notebook 08, ``make bench``).

    Use :func:`launch` to start one; ``stop()`` (or ``with``) ends it, ``kill()`` simulates a
    crash and ``restart()`` starts it again on the same port with the same options.
    """

    def __init__(self, argv: list[str], url: str, log_file: Path | None, env: dict[str, str]):
        self.argv, self.url, self.log_file, self.env = argv, url, log_file, env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "ServerProcess":
        self.proc = process.spawn(self.argv, log=self.log_file, env=self.env)
        deadline = time.monotonic() + timeout
        while not server_healthy(self.url, timeout=1.0):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                state = "exited" if self.proc.poll() is not None else f"not healthy in {timeout}s"
                self.stop()
                tail = process.log_tail(self.log_file, indent="") if self.log_file else ""
                raise RuntimeError(f"model server {self.url} {state}: {' '.join(self.argv)}\n"
                                   f"{tail}")
            time.sleep(0.2)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> dict:
        return http_json(f"{self.url}/stats")

    def kill(self) -> None:
        """SIGKILL, like a crash: in-flight requests get their connections reset."""
        if self.running:
            process.signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, grace: float = 10.0) -> None:
        if not self.running:
            return
        proc = self.proc
        process.terminate_group(proc.pid, lambda: proc.poll() is not None, grace=grace)

    def restart(self, timeout: float = 90.0) -> "ServerProcess":
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(models_dir: Path | str | None = None, *, port: int | None = None,
           host: str | None = None, advertise: str | None = None, faults: Faults | None = None,
           log_file: Path | str | None = None, timeout: float = 90.0) -> "ServerProcess":
    """Start a model server in a child process and wait until it answers.

    Parameters
    ----------
    models_dir : Path or str, optional
        Default: the lab's ``share_storages/models``.
    port : int, optional
        Default: a free port.
    host : str, optional
        Address to bind; default the lab's ``LAB_HOST`` (127.0.0.1 natively; 0.0.0.0 in the
        JupyterLab container, so executors in other containers can reach it).
    advertise : str, optional
        Host name executors use in the URL; default ``LAB_DRIVER_HOST`` if set (containers),
        else the bound address.
    faults : Faults, optional
        Faults to inject (default none).
    log_file : Path or str, optional
        Where the server's output goes (default: discarded).
    """
    from lab_utils import config as lab_config

    cfg = lab_config.load()
    models_dir = Path(models_dir) if models_dir else cfg.share_dir / "models"
    host = host or cfg.host
    port = port or free_port("127.0.0.1" if host in {"0.0.0.0", "::"} else host)
    where = advertise or cfg.driver_host or ("127.0.0.1" if host in {"0.0.0.0", "::"} else host)
    faults = faults or Faults()
    argv = [sys.executable, "-m", "lab_utils.serving", "--host", host, "--port", str(port),
            "--models-dir", str(models_dir), "--fail-rate", str(faults.fail_rate),
            "--delay", str(faults.delay), "--delay-rate", str(faults.delay_rate),
            "--seed", str(faults.seed)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return ServerProcess(argv, f"http://{where}:{port}", Path(log_file) if log_file else None,
                         env).start(timeout)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def main(argv: list[str] | None = None) -> int:
    from lab_utils import config as lab_config

    cfg = lab_config.load()
    parser = argparse.ArgumentParser(prog="python -m lab_utils.serving",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=cfg.host, help="address to bind (default LAB_HOST)")
    parser.add_argument("--port", type=int, default=cfg.model_server_port,
                        help="port (default LAB_MODEL_SERVER_PORT, 8501)")
    parser.add_argument("--models-dir", default=str(cfg.share_dir / "models"),
                        help="folder of <name>/model.keras + metadata.json")
    parser.add_argument("--fail-rate", type=_rate, default=0.0,
                        help="fault injection: fraction of predict requests answered 503 (0)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="fault injection: seconds a delayed request waits (0)")
    parser.add_argument("--delay-rate", type=_rate, default=0.0,
                        help="fault injection: fraction of predict requests delayed (0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault sequence (0)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        faults = Faults(args.fail_rate, args.delay, args.delay_rate, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    serve(args.host, args.port, args.models_dir, faults=faults, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
