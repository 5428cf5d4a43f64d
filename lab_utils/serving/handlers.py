"""What the model server's routes answer: :class:`Handlers` holds the registry, the fault
injector and the counters the routes share, and its methods are the route endpoints
(:func:`lab_utils.serving.model_server.create_app` registers them).

FastAPI reads each endpoint's parameter annotations (``name: str``, ``request: Request``) to
know what to pass it; under ``from __future__ import annotations`` they are strings that it
resolves in this module's globals, so every annotated type is imported at module level.
Importing this module loads Starlette: only ``create_app`` does, so ``lab_utils.serving``
imports without the web stack.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from lab_utils.common.saved_model import ModelSpec
from lab_utils.serving.faults import FaultInjector, Stats
from lab_utils.serving.inputs import ServingError, max_batch, max_body_bytes
from lab_utils.serving.payloads import parse_predict_body
from lab_utils.serving.registry import ModelRegistry, model_metadata, model_status

#: The answer to a path the server does not serve: the routes it does.
ROUTES_TEXT = ("this server answers GET /v1/models/NAME, GET /v1/models/NAME/metadata and "
               "POST /v1/models/NAME:predict")


async def read_body(request: Request, limit: int, too_large: str) -> bytes:
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


async def serving_error(_request: Request, exc: Exception) -> JSONResponse:
    """A :class:`ServingError` in TF Serving's shape: ``{"error": message}`` and its status."""
    assert isinstance(exc, ServingError)  # registered for ServingError only
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no such path, method not allowed) in TF Serving's shape."""
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    message = exc.detail
    if exc.status_code == 404:
        message = f"no such endpoint {request.method} {request.url.path}: {ROUTES_TEXT}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return JSONResponse({"error": message}, status_code=exc.status_code)


class Handlers:
    """The route endpoints over one registry, one fault sequence and one set of counters.

    Parsing and predicting run in worker threads (``run_in_threadpool``), off the event loop,
    so ``/healthz`` keeps answering while requests are in flight.
    """

    def __init__(self, registry: ModelRegistry, injector: FaultInjector, stats: Stats):
        self.registry, self.injector, self.stats = registry, injector, stats

    def preload(self) -> None:
        """Start loading every model found, in the background (TF Serving's start-up)."""
        for name in self.registry.names():
            try:
                self.registry.state(name)  # starts loading it in the background
            except ServingError:
                pass  # gone since the listing
            except Exception as exc:  # noqa: BLE001 - one model never stops the server
                print(f"model {name!r} cannot be served: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)

    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": self.registry.names()}

    async def get_stats(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), "faults": vars(self.injector.faults)}

    async def status(self, name: str) -> dict:
        return await run_in_threadpool(model_status, name, self.registry)

    async def status_version(self, name: str, version: str) -> dict:
        return await run_in_threadpool(model_status, name, self.registry, version)

    async def metadata(self, name: str) -> dict:
        return await run_in_threadpool(model_metadata, name, self.registry)

    async def predict_latest(self, name: str, request: Request) -> dict[str, list]:
        return await self.predict(name, request)

    async def predict_version(self, name: str, version: str,
                              request: Request) -> dict[str, list]:
        return await self.predict(name, request, version)

    async def predict(self, name: str, request: Request,
                      version: str | None = None) -> dict[str, list]:
        """``POST .../NAME:predict``: read and parse the body, inject the faults drawn for this
        request, run the model; ``predictions`` for the row form, ``outputs`` for columnar."""
        entry, spec = await run_in_threadpool(self.registry.usable, name)
        if version is not None and version != str(entry.version):
            raise ServingError(404, f"Servable not found for request: Specific({name}, "
                                    f"{version}). Version {entry.version} is served")
        try:
            body = await read_body(request, max_body_bytes(spec), _too_large(name, spec))
            # Off the event loop: json, the checks and numpy run in a worker thread.
            pixels, form = await run_in_threadpool(parse_predict_body, body, spec)
        except ServingError:
            self.stats.add(bad_requests=1)
            raise
        rows = len(pixels)
        self.stats.add(predict_requests=1, rows_received=rows)
        await self._inject_faults(rows)
        outputs = await run_in_threadpool(self._run_model, name, pixels)
        self.stats.add(rows_answered=rows)
        return {"predictions": outputs} if form == "instances" else {"outputs": outputs}

    async def _inject_faults(self, rows: int) -> None:
        """Sleep and/or fail (503) as the fault sequence draws for this request."""
        fail, delay = self.injector.draw()
        if delay and not fail:  # a failed request is answered at once: the two never overlap
            self.stats.add(delayed=1, delayed_rows=rows)
            await asyncio.sleep(delay)
        if fail:
            self.stats.add(injected_errors=1, injected_error_rows=rows)
            raise ServingError(503, "injected fault: the server is unavailable "
                                    f"(--fail-rate {self.injector.faults.fail_rate})")

    def _run_model(self, name: str, pixels: np.ndarray) -> list:
        """The model's probabilities for ``pixels``, one row per image (in a worker thread)."""
        _entry, fn = self.registry.predictor(name)
        out = np.asarray(fn(pixels), dtype=np.float32)
        if out.shape[0] != len(pixels):
            raise ServingError(500, f"model {name!r} returned {out.shape[0]} rows for "
                                    f"{len(pixels)} images")
        return out.tolist()


def _too_large(name: str, spec: ModelSpec) -> str:
    """What a body over the model's limit is over, and what to do, for the 413."""
    h, w = spec.image_size
    return (f"{max_body_bytes(spec)} bytes, the most model {name!r} takes ({max_batch(spec)} "
            f"images of [{h}, {w}, {spec.channels}] as JSON, with room for whitespace): send "
            "smaller batches")
