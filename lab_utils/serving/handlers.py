"""What the model server's routes answer: :class:`Handlers` holds the registry, the fault
injector, the predicts' admission (:mod:`lab_utils.serving.admission`) and the counters the
routes share, and its methods are the route endpoints
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
from lab_utils.serving.admission import PredictGate
from lab_utils.serving.faults import FaultInjector, Stats
from lab_utils.serving.inputs import ServingError, max_batch, max_body_bytes
from lab_utils.serving.parsing import Parser
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


async def drain_body(request: Request, limit: int) -> None:
    """Read and drop the request's body (up to ``limit`` bytes), so that a refused request's
    client, still sending, reads the answer rather than a reset connection."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return  # past the limit: the connection is closed with the answer


async def serving_error(_request: Request, exc: Exception) -> JSONResponse:
    """A :class:`ServingError` in TF Serving's shape: ``{"error": message}`` and its status."""
    assert isinstance(exc, ServingError)  # registered for ServingError only
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


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
    """The route endpoints over one registry, one fault sequence, one predict gate, one parser
    and one set of counters.

    Parsing (in the parser's child processes, or threads) and predicting (in worker threads)
    run off the event loop, at most ``gate.concurrency`` at once; ``/healthz`` waits for none
    of them, so it keeps answering while requests are in flight.
    """

    def __init__(self, registry: ModelRegistry, injector: FaultInjector, stats: Stats,
                 gate: PredictGate, parser: Parser):
        self.registry, self.injector, self.stats = registry, injector, stats
        self.gate, self.parser = gate, parser

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
        return {**self.stats.as_dict(), "faults": vars(self.injector.faults),
                "admission": self.gate.as_dict()}

    async def status(self, name: str) -> dict:
        return await run_in_threadpool(model_status, name, self.registry)

    async def status_version(self, name: str, version: str) -> dict:
        return await run_in_threadpool(model_status, name, self.registry, version)

    async def metadata(self, name: str) -> dict:
        return await run_in_threadpool(model_metadata, name, self.registry)

    async def predict_latest(self, name: str, request: Request) -> JSONResponse:
        return await self.predict(name, request)

    async def predict_version(self, name: str, version: str, request: Request) -> JSONResponse:
        return await self.predict(name, request, version)

    async def predict(self, name: str, request: Request,
                      version: str | None = None) -> JSONResponse:
        """``POST .../NAME:predict``: admitted (or 429), read and parse the body, inject the
        faults drawn for this request, run the model; ``predictions`` for the row form,
        ``outputs`` for columnar."""
        entry, spec = await run_in_threadpool(self.registry.usable, name)
        if version is not None and version != str(entry.version):
            raise ServingError(404, f"Servable not found for request: Specific({name}, "
                                    f"{version}). Version {entry.version} is served")
        if not self.gate.try_admit():
            self.stats.add(busy_refusals=1)
            busy = self.gate.busy_error()
            await drain_body(request, max_body_bytes(spec))
            raise busy
        try:
            return await self._admitted_predict(name, spec, request)
        finally:
            self.gate.release()

    async def _admitted_predict(self, name: str, spec: ModelSpec,
                                request: Request) -> JSONResponse:
        try:
            body = await read_body(request, max_body_bytes(spec), _too_large(name, spec))
            async with self.gate.turn():
                # Off the event loop: json, the checks and numpy run in a child process
                # (or a worker thread): lab_utils.serving.parsing says why.
                pixels, form = await self.parser.parse(body, spec)
        except ServingError:
            self.stats.add(bad_requests=1)
            raise
        del body  # the parsed array is all that is kept while the request waits again
        rows = len(pixels)
        self.stats.add(predict_requests=1, rows_received=rows)
        await self._inject_faults(rows)  # an injected delay holds no slot: it is not work
        key = "predictions" if form == "instances" else "outputs"
        async with self.gate.turn():
            answer = await run_in_threadpool(self._run_model, name, pixels, key)
        self.stats.add(rows_answered=rows)
        return answer

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

    def _run_model(self, name: str, pixels: np.ndarray, key: str) -> JSONResponse:
        """The answer ``{key: probabilities}``, one row per image, rendered to JSON here in the
        worker thread, so the event loop only sends the bytes."""
        _entry, fn = self.registry.predictor(name)
        out = np.asarray(fn(pixels), dtype=np.float32)
        if out.shape[0] != len(pixels):
            raise ServingError(500, f"model {name!r} returned {out.shape[0]} rows for "
                                    f"{len(pixels)} images")
        return JSONResponse({key: out.tolist()})


def _too_large(name: str, spec: ModelSpec) -> str:
    """What a body over the model's limit is over, and what to do, for the 413."""
    h, w = spec.image_size
    return (f"{max_body_bytes(spec)} bytes, the most model {name!r} takes ({max_batch(spec)} "
            f"images of [{h}, {w}, {spec.channels}] as JSON, with room for whitespace): send "
            "smaller batches")
