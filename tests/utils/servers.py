"""Servers for the serving tests, all on 127.0.0.1 and free ports, all stopped on exit: a real
uvicorn running an app in a thread of the test process, and two broken servers a client must
survive: a closed port (the server is down) and a socket that listens but never reads (the
server accepts the connection and never answers)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from lab_utils.common import net
from lab_utils.common.process import wait_until


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
