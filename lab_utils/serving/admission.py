"""How many predicts the model server takes at once: at most ``concurrency`` parsed and run at
the same time, at most ``queue`` more admitted and waiting, and ``429 Too Many Requests`` with a
``Retry-After`` for the rest.

Why a bound: a predict is CPU work (parsing some MB of JSON, then the model), and a server that
takes every request at once shares its cores among all of them: each takes longer, memory grows
with every body held, and nothing tells a client to slow down. About one parse per core keeps
the cores busy without oversubscribing them; the queue absorbs a burst (a Spark job's tasks
starting together); beyond it a client is told to come back (``Retry-After``: the turns ahead of
it times a turn's recent duration). Where the parse runs so that it never stalls ``/healthz`` is
:mod:`lab_utils.serving.parsing`.

The waiting requests read their bodies (on the event loop, which costs little and frees the
client's upload) but are not parsed: the memory they hold is at most ``concurrency + queue``
bodies of the model's limit (:func:`~lab_utils.serving.inputs.max_body_bytes`). A refused
request's body is read and dropped before the 429 is sent (a lingering close, as HTTP/1.1 asks
of a server that answers early), so a client that sends its whole body before reading gets the
answer, not a reset connection. The lab's REST client retries a 429, waiting what ``Retry-After``
says up to its ``backoff_max`` (:mod:`lab_utils.inference.rest_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator

from lab_utils.errors import LabError
from lab_utils.serving.inputs import ServingError

#: Requests admitted beyond the running ones, by default: a short queue, so that a burst of
#: clients (a Spark job's tasks) waits instead of being refused, while the memory held stays
#: bounded.
DEFAULT_QUEUE = 16
#: ``Retry-After`` never says more than this many seconds.
MAX_RETRY_AFTER = 30


class AdmissionSettingsError(LabError, ValueError):
    """A bound out of range: ``concurrency`` below 1 or ``queue`` below 0."""


def default_concurrency() -> int:
    """The cores this process may run on (its CPU affinity, so a container's cpuset counts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class PredictGate:
    """Admission for predict requests, on the server's event loop.

    Parameters
    ----------
    concurrency : int, optional
        Predicts parsed and run at the same time (default :func:`default_concurrency`).
    queue : int
        Predicts admitted beyond those, waiting for a turn (default :data:`DEFAULT_QUEUE`).
    """

    def __init__(self, concurrency: int | None = None, queue: int = DEFAULT_QUEUE):
        concurrency = default_concurrency() if concurrency is None else concurrency
        if concurrency < 1 or queue < 0:
            raise AdmissionSettingsError(
                f"concurrency={concurrency} and queue={queue}: concurrency must be at least 1 "
                "(predicts parsed and run at once; about the core count) and queue at least 0 "
                "(predicts waiting beyond those; 0 refuses every one that cannot start at once)")
        self.concurrency, self.queue = concurrency, queue
        self.admitted = 0
        self.running = 0
        self._slots = asyncio.Semaphore(concurrency)  # bound to the loop on first wait
        self._service_s = 0.0  # moving average of one turn's duration, for Retry-After

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    def as_dict(self) -> dict[str, int]:
        return {"concurrency": self.concurrency, "queue": self.queue,
                "running": self.running, "waiting": self.waiting}

    def retry_after(self) -> int:
        """Whole seconds until a turn is likely free: the admitted requests' turns, shared by the
        running slots (at least 1, at most :data:`MAX_RETRY_AFTER`)."""
        ahead = self.admitted / self.concurrency
        return max(1, min(MAX_RETRY_AFTER, math.ceil(self._service_s * ahead)))

    def busy_error(self) -> ServingError:
        """The 429 a request beyond the queue gets."""
        seconds = self.retry_after()
        return ServingError(
            429, f"the model server is busy: {self.running} predicts running and {self.waiting} "
                 f"waiting, the most it takes (--concurrency {self.concurrency}, --queue "
                 f"{self.queue}); retry after {seconds} s (Retry-After), or send from fewer "
                 "clients at once",
            headers={"Retry-After": str(seconds)})

    def try_admit(self) -> bool:
        """Take a place among the admitted requests (True), or none is left (False: answer
        :meth:`busy_error`). Every True is followed by one :meth:`release`."""
        if self.admitted >= self.concurrency + self.queue:
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        self.admitted -= 1

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for one of the ``concurrency`` slots (first come, first served) and hold it."""
        async with self._slots:
            self.running += 1
            began = time.monotonic()
            try:
                yield
            finally:
                self.running -= 1
                took = time.monotonic() - began
                self._service_s = took if not self._service_s else (
                    0.8 * self._service_s + 0.2 * took)
