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
model's limit (:func:`~lab_utils.serving.inputs.max_body_bytes`, derived from its input shape
and counted while the body arrives, chunked or not) or more images than
:func:`~lab_utils.serving.inputs.max_batch`. At most ``--concurrency`` predicts are parsed and
run at once (the cores, by default) with ``--queue`` more waiting; beyond that ``429`` with
``Retry-After`` (:mod:`lab_utils.serving.admission`). Bodies are parsed in child processes
(``--parse-in processes``, :mod:`lab_utils.serving.parsing`) and the model runs in worker
threads, so no request holds the event loop's GIL for long and ``/healthz`` answers within
milliseconds while the largest requests are in flight. Two lab extras, outside
TF Serving's API: ``GET /healthz`` (the lab's health probe) and ``GET /stats`` (request,
refusal and injected-fault counters and the admission's state, for tests and notebook 08).

Fault injection, **off unless asked for** (``--fail-rate``, ``--delay``/``--delay-rate``):
a seeded random sequence decides, per predict request, whether to answer 503 and whether to
sleep first, so a given seed injects the same faults into the same sequence of requests.

The version of a model is its ``model.keras`` modification time in whole seconds: retraining
(``save_model`` swaps the folder) makes a new version, which is loaded on the next request.

Run it: ``make lab`` (the ``model-server`` service), ``lab run model-server`` (containers),
``python -m lab_utils.serving --port 8501``, or :func:`lab_utils.serving.process.launch` from
Python (tests, notebook). This module builds the app (:func:`create_app`) and runs it (the CLI);
what each route answers is :mod:`lab_utils.serving.handlers`. FastAPI, uvicorn and TensorFlow are
imported only when a server is built or runs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lab_utils.serving.admission import (
    DEFAULT_QUEUE,
    AdmissionSettingsError,
    PredictGate,
    default_concurrency,
)
from lab_utils.serving.faults import FaultInjector, Faults, FaultSettingsError, Stats
from lab_utils.serving.registry import Loader, ModelRegistry, keras_loader

if TYPE_CHECKING:
    from fastapi import FastAPI

    from lab_utils.serving.handlers import Handlers

DEFAULT_PORT = 8501


def create_app(models_dir: Path | str, *, faults: Faults | None = None,
               loader: Loader = keras_loader, preload: bool = True,
               concurrency: int | None = None, queue: int = DEFAULT_QUEUE,
               parse_processes: bool = False) -> FastAPI:
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
    concurrency : int, optional
        Predicts parsed and run at once (default: the cores this process may use).
    queue : int
        Predicts admitted beyond those, waiting; more at once are answered 429 with
        ``Retry-After`` (default 16).
    parse_processes : bool
        Parse predict bodies in ``concurrency`` child processes, so no parse holds this
        process's GIL (:mod:`lab_utils.serving.parsing`; what the server runs), rather than in
        threads (the default here, for tests: no process to start).
    """
    from fastapi import FastAPI

    from lab_utils.serving.handlers import Handlers
    from lab_utils.serving.parsing import Parser

    gate = PredictGate(concurrency, queue)
    handlers = Handlers(ModelRegistry(models_dir, loader), FaultInjector(faults or Faults()),
                        Stats(), gate, Parser(gate.concurrency if parse_processes else 0))
    app = FastAPI(title="Spark DL Lab model server (TF Serving REST API)",
                  lifespan=_lifespan(handlers, preload),
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry, app.state.stats = handlers.registry, handlers.stats
    app.state.faults, app.state.gate = handlers.injector.faults, handlers.gate
    _add_error_handlers(app)
    _add_routes(app, handlers)
    return app


def _lifespan(handlers: Handlers,
              preload: bool) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's start-up: start the parser's processes, preload the models (or not), then
    serve until shut down."""
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        handlers.parser.start()
        if preload:
            handlers.preload()
        try:
            yield
        finally:
            handlers.parser.close()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answered in TF Serving's shape, ``{"error": message}``."""
    from starlette.exceptions import HTTPException

    from lab_utils.serving.handlers import http_error, serving_error
    from lab_utils.serving.inputs import ServingError

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(HTTPException, http_error)


def _add_routes(app: FastAPI, handlers: Handlers) -> None:
    """TF Serving's REST routes and the lab's two extras (``/healthz``, ``/stats``)."""
    routes: list[tuple[str, str, Callable[..., object]]] = [
        ("GET", "/healthz", handlers.healthz),
        ("GET", "/stats", handlers.get_stats),
        ("GET", "/v1/models/{name}", handlers.status),
        ("GET", "/v1/models/{name}/versions/{version}", handlers.status_version),
        ("GET", "/v1/models/{name}/metadata", handlers.metadata),
        ("POST", "/v1/models/{name}:predict", handlers.predict_latest),
        ("POST", "/v1/models/{name}/versions/{version}:predict", handlers.predict_version),
    ]
    for method, path, endpoint in routes:
        # response_model=None: the endpoints' return annotations are for mypy, not a schema
        # FastAPI would validate every answer against.
        app.add_api_route(path, endpoint, methods=[method], response_model=None)


def serve(host: str, port: int, models_dir: Path | str, *, faults: Faults | None = None,
          log_level: str = "warning", concurrency: int | None = None,
          queue: int = DEFAULT_QUEUE, parse_processes: bool = True) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT."""
    import uvicorn

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    faults = faults or Faults()
    app = create_app(models_dir, faults=faults, concurrency=concurrency, queue=queue,
                     parse_processes=parse_processes)
    print(f"model server on http://{host}:{port} serving {models_dir}, "
          f"{app.state.gate.concurrency} predicts at once and {queue} waiting, parsed in "
          + ("processes" if parse_processes else "threads")
          + (f", with injected faults {faults}" if faults.enabled else ""), flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


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
    parser.add_argument("--concurrency", type=int, default=None,
                        help="predicts parsed and run at once (default: the cores, here "
                             f"{default_concurrency()})")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE,
                        help="predicts waiting beyond those; more at once get 429 with "
                             f"Retry-After ({DEFAULT_QUEUE})")
    parser.add_argument("--parse-in", choices=("processes", "threads"), default="processes",
                        help="where predict bodies are parsed: child processes, so no parse "
                             "holds the server's GIL and /healthz answers at once (default), "
                             "or threads of the server's process")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        faults = Faults(args.fail_rate, args.delay, args.delay_rate, args.seed)
        PredictGate(args.concurrency, args.queue)  # checked before anything starts
    except (FaultSettingsError, AdmissionSettingsError) as exc:
        parser.error(str(exc))
    serve(args.host, args.port, args.models_dir, faults=faults, log_level=args.log_level,
          concurrency=args.concurrency, queue=args.queue,
          parse_processes=args.parse_in == "processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
