"""Where predict bodies are parsed: in worker threads of the server's process, or in a small pool
of child processes (what ``python -m lab_utils.serving`` runs).

Why processes: :func:`~lab_utils.serving.payloads.parse_predict_body` is ``json.loads`` and the
payload checks, C loops that hold the GIL from start to end: for the largest body allowed (9 MB
of JSON), ``json.loads`` alone takes 0.5 s on the lab's 2 cores (0.9 s when they are busy), the
whole parse 0.65 s. In a thread, the event loop that answers ``/healthz`` waits for the
GIL behind every such loop in flight, several times per answer: a second and more with one large
request, past the lab's 3 s probe with several. In a child process the parse holds that child's
GIL only; the server's process sends the body down a pipe and gets the array back (a copy of some
9 MB and 2 MB, milliseconds), and two parses really run at once on two cores. A child that dies
(killed, out of memory) costs its requests a ``503`` (which clients retry), and the next request
gets a new pool; a child whose server died (``kill -9``) exits within a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from starlette.concurrency import run_in_threadpool

from lab_utils.common.saved_model import ModelSpec
from lab_utils.serving.inputs import ServingError
from lab_utils.serving.payloads import parse_predict_body

#: How often a child checks that its server is still there.
PARENT_CHECK_S = 1.0


def _exit_with_parent(parent: int) -> None:
    """In each child: exit once the server that started it is gone. A child waits on a queue
    whose write end it holds itself, so the server's death alone never wakes it."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-server").start()


def _ready() -> bool:
    """A no-op run in each child at start-up, so the first request does not pay for the spawn."""
    return True


class Parser:
    """Parses predict bodies, in ``workers`` child processes or (``workers=0``) in threads.

    The children are started with ``spawn``: the server's process holds TensorFlow and threads,
    which a ``fork`` would copy in an undefined state. :meth:`start` starts them (in the
    background), :meth:`close` ends them; both are the app's start-up and shut-down.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self) -> None:
        if self.workers and self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent, initargs=(os.getpid(),))
            for _ in range(self.workers):
                self._pool.submit(_ready)  # start every child now, not on the first request

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def parse(self, body: bytes, spec: ModelSpec) -> tuple[np.ndarray, str]:
        """:func:`~lab_utils.serving.payloads.parse_predict_body`, off the event loop."""
        if not self.workers:
            return await run_in_threadpool(parse_predict_body, body, spec)
        self.start()  # a pool lost to a dead child (below) is started again
        pool = self._pool
        assert pool is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, parse_predict_body, body, spec)
        except BrokenProcessPool:
            if self._pool is pool:
                self.close()
            raise ServingError(503, "the model server's parser process ended while parsing "
                                    "this request (killed, or out of memory); it is started "
                                    "again: retry the request") from None
