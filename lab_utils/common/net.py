"""Ports and JSON over HTTP: what the launcher, the model server, the cluster views and the
tests all need, written once."""

from __future__ import annotations

import http.client
import json
import random
import socket
import urllib.request
from pathlib import Path
from typing import Any

from lab_utils.errors import LabError


class NotHttpError(LabError, ConnectionError):
    """Something answered at the address, but not with HTTP (another service on the port, or a
    garbled answer): an OSError, like nothing answering, so every caller's "not there" handling
    covers it."""


def http_json(url: str, timeout: float = 3.0, headers: dict[str, str] | None = None) -> Any:
    """GET ``url`` and decode its JSON.

    Raises OSError when nothing answers within ``timeout``, the answer is an HTTP error
    (:class:`urllib.error.HTTPError`, with the ``code`` and a readable body) or not HTTP at all
    (:class:`NotHttpError`; urllib lets http.client's errors, which are not OSErrors, through),
    and ValueError when it is not JSON (:class:`json.JSONDecodeError`, the text in ``doc``).
    """
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read().decode())
    except http.client.HTTPException as exc:
        raise NotHttpError(f"{url} did not answer with HTTP ({type(exc).__name__}: "
                           f"{str(exc)[:200]}): is another service on that port?") from exc


def port_free(host: str, port: int) -> bool:
    """True when ``port`` can be bound on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_range() -> tuple[int, int]:
    """The OS's range for ports handed to sockets bound to port 0."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports free on ``host`` right now (held open together so none repeats).

    Chosen below the OS's ephemeral range: a port picked there can be handed to any socket
    bound to port 0 before the service meant for it starts (a worker's RPC port once took a
    test lab's history server port, and the lab never became healthy).
    """
    low, _ = ephemeral_range()
    candidates = random.sample(range(20_000, low), min(2_000, low - 20_000)) if low > 21_000 else []
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            if len(sockets) == count:
                break
            sock = socket.socket()
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        while len(sockets) < count:  # no room below the ephemeral range: let the OS pick
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One port from :func:`free_ports`."""
    return free_ports(1, host)[0]
