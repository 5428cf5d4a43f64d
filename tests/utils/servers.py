"""Servers for the serving tests, all on 127.0.0.1 and free ports, all stopped on exit: a real
uvicorn running an app in a thread of the test process, and two broken servers a client must
survive: a closed port (the server is down) and a socket that listens but never reads (the
server accepts the connection and never answers). And the model server's app under FastAPI's
TestClient (:func:`client_for`) over fake models (:func:`served_models`), with the request
helpers the serving tests share. And two more a client must survive: a TF Serving look-alike
answering whatever a test scripts (:func:`scripted_model_server`), and a server dripping its
answer (:func:`dripping_server`)."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lab_utils.common import net
from lab_utils.common.process import wait_until
from lab_utils.common.saved_model import ModelSpec
from lab_utils.serving.model_server import create_app
from tests.utils.fake_models import CLASSES, brightness_loader, write_model

# The serving tests take TestClient from here, imported once under this filter:
with warnings.catch_warnings():
    # Starlette 1.x suggests httpx2 for its TestClient; the httpx it still supports is locked.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


def served_models(tmp_path: Path) -> Path:
    """``tmp_path/models`` holding the fake model ``tiny`` (4x4 RGB, dark/light), and a model
    being saved (a hidden staging folder), which is not served."""
    write_model(tmp_path / "models" / "tiny")
    write_model(tmp_path / "models" / ".tiny.tmp-1")  # a model being saved: not served
    return tmp_path / "models"


def client_for(models_dir, faults=None, loader=brightness_loader) -> TestClient:
    """The model server's app over ``models_dir`` under a TestClient, models loaded on first
    use (preload off)."""
    app = create_app(models_dir, faults=faults, loader=loader, preload=False)
    # An exception the app does not handle is answered as a server would (a plain 500), not
    # raised into the test: the tests check that no body gets that far.
    return TestClient(app, raise_server_exceptions=False)


def image(value, size=(4, 4)) -> list:
    """One image of ``size`` as the nested lists a predict body carries, every value ``value``."""
    return np.full((*size, 3), value, dtype=np.int64).tolist()


def spec_of(size, channels=3, dtype="uint8") -> ModelSpec:
    """A model's spec without its files: ``size`` images of ``channels``, ``dtype`` input."""
    return ModelSpec(Path("m"), CLASSES, size, channels, {"input_dtype": dtype})


@contextlib.contextmanager
def in_thread(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    from lab_utils.serving.process import server_healthy

    port = net.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: server_healthy(url, timeout=1.0), timeout=20, interval=0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)



@contextlib.contextmanager
def fake_model_server(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn on loopback serving the fake model ``tiny`` (brightness decides the
    class), in a thread of this process; yields its base URL."""
    write_model(tmp_path / "models" / "tiny")
    with in_thread(create_app(tmp_path / "models", loader=brightness_loader)) as url:
        yield url


def closed_port_url() -> str:
    """The URL of a port nothing listens on: every connection is refused."""
    return f"http://127.0.0.1:{net.free_port()}"


@contextlib.contextmanager
def never_answers() -> Iterator[str]:
    """A socket that listens and never accepts nor reads: the kernel completes the handshake,
    the request is sent, and no answer ever comes. Yields its URL."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def scripted_model_server(
        answer: Callable[[str, int, list], bytes | Iterator[bytes]]) -> Iterator[str]:
    """A TF Serving look-alike on loopback: ``POST /v1/models/NAME:predict`` is answered 200 with
    ``answer(NAME, n, instances)`` (``n`` counts NAME's requests from 0), sent as it is, not
    re-encoded: ``NaN``, ``Infinity``, ragged rows and strings reach the client as a broken
    server writes them. Bytes go with a ``Content-Length``, an iterator of bytes chunked
    (no length announced). Yields its base URL."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        instances = json.loads(await request.body())["instances"]
        with lock:
            n = counts[name]
            counts[name] += 1
        body = answer(name, n, instances)
        if isinstance(body, bytes):
            return Response(body, media_type="application/json")
        return StreamingResponse(body, media_type="application/json")

    app = Starlette(routes=[Route("/healthz", lambda request: JSONResponse({"status": "ok"})),
                            Route("/v1/models/{name}:predict", predict, methods=["POST"])])
    with in_thread(app) as url:
        yield url


@contextlib.contextmanager
def socket_server(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A raw TCP server on loopback: each connection is handed to ``handle(conn, stop)`` in a
    thread of its own (``stop`` is set when the block ends); for answers no HTTP server would
    send. Yields its ``http://`` URL."""
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                handle(conn, stop)
            except OSError:  # the client hung up (what a deadline does)
                return

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            stop.set()
            thread.join(5)


def garbled_server() -> contextlib.AbstractContextManager[str]:
    """Answers every request with a line that is not HTTP; yields its URL."""
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(4096)
        conn.sendall(b"garbage\r\n\r\n")

    return socket_server(answer)


def dripping_server(body: bytes, interval: float) -> contextlib.AbstractContextManager[str]:
    """Answers every request 200 at once, ``Content-Length`` announced, then sends ``body`` one
    byte every ``interval`` seconds: each socket read gets a byte long before any per-read
    timeout, so only a deadline on the whole answer cuts it. Yields its URL."""
    def drip(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for byte in body:
            if stop.wait(interval):
                return
            conn.sendall(bytes([byte]))

    return socket_server(drip)
