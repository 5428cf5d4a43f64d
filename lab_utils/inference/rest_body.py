"""Reading a REST answer within a deadline and a size cap (for
:mod:`~lab_utils.inference.rest_client`).

``requests``' read timeout is per socket read, not per answer: a server dripping one byte every
2 s never trips a 30 s timeout however long its answer takes, and an answer of any size is read
whole. :func:`read_body` reads a ``stream=True`` answer one socket read at a time, each waiting
at most the time left, and stops at a byte cap (:func:`answer_byte_cap`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

#: An answer's size cap (:func:`answer_byte_cap`): a JSON number takes at most ~24 bytes
#: (``-1.2345678901234567e-308``), so 64 a value leaves room for separators and indentation;
#: the slack is for the envelope, or an error message.
ANSWER_BYTES_PER_VALUE = 64
ANSWER_SLACK_BYTES = 64 * 1024
#: The most one socket read asks for; it returns what has come, up to this.
_READ_SIZE = 64 * 1024


def answer_byte_cap(rows: int, classes: int) -> int:
    """The most bytes an answer to ``rows`` images of ``classes`` classes may take:
    ``rows * classes * 64 + 64 KiB`` (64 images of 10 classes: ~15 KB of JSON, capped at
    ~104 KB). A larger answer is cut, not read."""
    return rows * classes * ANSWER_BYTES_PER_VALUE + ANSWER_SLACK_BYTES


@dataclass(frozen=True)
class Body:
    """What :func:`read_body` got: the bytes read, and why it stopped early, if it did."""

    data: bytes
    cut: str | None = None  # "slow", "large" or "broken"
    detail: str = ""


def read_body(response: requests.Response, until: float, max_bytes: int | None,
              clock: Callable[[], float]) -> Body:
    """Read a ``stream=True`` answer's body until it ends, the ``clock()`` time ``until`` passes
    or it exceeds ``max_bytes`` (an announced ``Content-Length`` above it: nothing is read), then
    close the response: a complete answer's connection is back in the session's pool already
    (kept alive), a cut one's is closed.

    Each read waits at most the time left (the socket's timeout is set to it before the read),
    and ``read1`` returns what has come: ``iter_content(n)`` would wait for ``n`` bytes.
    """
    import urllib3

    announced = response.headers.get("Content-Length", "")
    if max_bytes is not None and announced.isdigit() and int(announced) > max_bytes:
        response.close()
        return Body(b"", "large")
    raw = response.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    chunks: list[bytes] = []
    size = 0
    cut: str | None = None
    detail = ""
    try:
        while True:
            left = until - clock()
            if left <= 0:
                cut = "slow"
                break
            if sock is not None:
                sock.settimeout(left)
            chunk = raw.read1(_READ_SIZE, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                cut = "large"
                break
            chunks.append(chunk)
    except (urllib3.exceptions.TimeoutError, TimeoutError):
        cut = "slow"
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # reset, cut short, bad gzip
        cut, detail = "broken", f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        response.close()
    if cut == "slow":
        detail = f"{size} of {announced} bytes came" if announced else f"{size} bytes came"
    return Body(b"".join(chunks), cut, detail)
