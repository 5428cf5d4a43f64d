"""The lab's model server: saved Keras models over TensorFlow Serving's REST API.

Every model folder under ``share_storages/models/<name>/`` (``model.keras`` + ``metadata.json``,
as :mod:`lab_utils.training.cnn` saves them) is served under its folder name, in the shape of
TensorFlow Serving's REST API, so a notebook written against it runs unchanged against a real
TF Serving container serving the same model under the same name:

* ``GET  /v1/models/NAME``                 status (``model_version_status``)
* ``GET  /v1/models/NAME/metadata``        input/output signature (plus class names)
* ``POST /v1/models/NAME:predict``         ``{"instances": [...]}`` (row form) answered with
  ``{"predictions": [...]}``, or ``{"inputs": ...}`` (columnar) answered with ``{"outputs": ...}``;
  each image a nested list of pixels or, in TF Serving's binary form, an image file
  ``{"b64": "..."}`` (bare or under ``image_bytes``), decoded as in-Spark inference decodes it
  (:mod:`lab_utils.serving.payloads`; the metadata's ``image_input`` says a model takes files)
* ``/v1/models/NAME/versions/V…``          the same, for one version

Errors are TF Serving's ``{"error": "..."}`` with 400 (bad payload: what is wrong and the
expected shape) or 404 (unknown model: the models this server serves); 413 for a body over the
model's limit (:func:`~lab_utils.serving.registry.max_body_bytes`, derived from its input shape
and counted while the body arrives, chunked or not) or more images than
:func:`~lab_utils.serving.registry.max_batch`. Parsing and predicting run in worker threads, and
the limits bound how long one request's JSON parse holds the GIL, so ``/healthz`` keeps
answering while requests are in flight. Two lab extras, outside
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
import math
import os
import sys
from pathlib import Path

import numpy as np

from lab_utils.serving.faults import FaultInjector, Faults, Stats  # noqa: F401
from lab_utils.serving.process import ServerProcess, launch, server_healthy  # noqa: F401
from lab_utils.serving.registry import (  # noqa: F401
    MAX_BODY_BYTES,
    MAX_INSTANCES,
    MAX_REQUEST_VALUES,
    Loader,
    ModelRegistry,
    PredictFn,
    ServingError,
    keras_loader,
    max_batch,
    max_body_bytes,
    model_metadata,
    model_status,
    parse_predict_body,
)

DEFAULT_PORT = 8501


async def read_body(request, limit: int, too_large: str) -> bytes:
    """The request's body, counted while it arrives: 413 as soon as it passes ``limit`` bytes.

    ``Content-Length`` is only a first check (a chunked upload has none); the bytes received
    are what counts, so no body past the limit is ever held whole or parsed.
    """
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ServingError(413, f"the request body of {length} bytes is over {too_large}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServingError(413, f"the request body is over {too_large} (refused after "
                                    f"{size} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


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
                try:
                    registry.state(name)  # starts loading it in the background
                except ServingError:
                    pass  # gone since the listing
                except Exception as exc:  # noqa: BLE001 - one model never stops the server
                    print(f"model {name!r} cannot be served: {type(exc).__name__}: {exc}",
                          file=sys.stderr, flush=True)
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
        entry, spec = await run_in_threadpool(registry.usable, name)
        if version is not None and version != str(entry.version):
            raise ServingError(404, f"Servable not found for request: Specific({name}, "
                                    f"{version}). Version {entry.version} is served")
        h, w = spec.image_size
        limit = max_body_bytes(spec)
        try:
            body = await read_body(request, limit, (
                f"{limit} bytes, the most model {name!r} takes ({max_batch(spec)} images of "
                f"[{h}, {w}, {spec.channels}] as JSON, with room for whitespace): send smaller "
                "batches"))
        except ServingError:
            stats.add(bad_requests=1)
            raise
        try:
            # Off the event loop: json, the checks and numpy run in a worker thread.
            pixels, form = await run_in_threadpool(parse_predict_body, body, spec)
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
