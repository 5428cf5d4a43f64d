"""The REST client's transport: its options, one POST with retries, and a task's breaker.

:func:`post_with_retries` sends one micro-batch and retries only what can succeed on a retry
(connection errors, timeouts, 429, 502, 503, 504), with exponential backoff and jitter, honouring
``Retry-After``, counting every attempt; it reads each answer within a deadline and a size cap
(:mod:`lab_utils.inference.rest_body`). :class:`TaskGuard` is one task's circuit breaker and
deadline. Pure Python (``requests`` is imported when a request is sent), so every branch is
unit-tested with fake sessions and clocks. :mod:`lab_utils.inference.rest_scoring` scores a
task's rows with it, :mod:`lab_utils.inference.rest_udf` builds the Spark UDF on top, and
:class:`RestOptions` is the one place the client's options and their defaults are declared.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab_utils.errors import LabError
from lab_utils.inference.rest_body import ANSWER_BYTES_PER_VALUE, ANSWER_SLACK_BYTES, read_body

if TYPE_CHECKING:
    import requests

#: Answers worth another try: overloaded (429), or a server or gateway not there right now
#: (502, 503, 504). A 500 is an error of the server's own making (a broken model): the next try
#: gets the same answer, so it is not retried, like the client's errors (400, 404, 413).
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class RestOptionsError(LabError, ValueError):
    """A :class:`RestOptions` value out of range; the message names the option and its range."""


@dataclass(frozen=True)
class RestOptions:
    """How the client talks to the server.

    Parameters
    ----------
    batch_size : int
        Images per request (micro-batch).
    connect_timeout, read_timeout : float
        Seconds to open a connection, and for the whole answer to arrive once the request is
        sent (a deadline on the answer, not on each socket read: a server dripping its answer
        is cut at it).
    retries : int
        Further attempts after the first one fails with a retryable error (0: no retry).
    backoff, backoff_max : float
        Attempt k waits ``min(backoff_max, backoff * 2**(k-1))`` seconds (times a jitter factor
        of 0.5-1, so tasks that failed together do not retry together), at least what the
        server's ``Retry-After`` asks for, capped at ``backoff_max``.
    fail_fast : bool
        Raise :class:`RestScoringError` instead of marking rows when a request finally fails.
    breaker_failures : int or None
        The circuit breaker: after this many micro-batches **in a row** of one task failed for
        want of a server (a connection error, a timeout, an answer cut for its deadline or
        size, or a 429/5xx answer on their last attempt, after all their retries), the task
        sends nothing more: each of its remaining
        rows gets ``error`` ``"not sent: circuit breaker open ..."`` with the last failure,
        and ``attempts`` 0. A scored batch resets the count; a refused one (400, 413, 500)
        neither counts nor resets. Default 3: with the default retries a down server costs a
        task about three batches' backoff (~20 s), not every batch's. ``None`` turns it off
        (every batch is tried, e.g. to count failures exactly).
    task_timeout : float or None
        Seconds one task may spend scoring, from its first row. Once passed, its remaining rows
        are marked ``"not sent: this task's task_timeout=...s passed"`` without a request; the
        request in flight has its connect timeout, its answer's deadline and its backoff cut to
        the time left.
        Default ``None`` (no deadline): how long a healthy task takes depends on its partition
        size. Set it to bound a job against a server that may hang: with the defaults, a
        server that accepts connections and never answers costs a task up to
        ``breaker_failures * (retries + 1) * read_timeout`` (~9 min) before the breaker opens.
    in_flight : int
        Requests one task keeps in flight at once: its micro-batches are sent by a pool of this
        many threads, each with its own ``requests.Session``, and their rows come back in input
        order. Each request keeps its own retries, timeouts and answer checks; the breaker and
        the deadline are the task's, shared by its threads. Default 1: one request at a time, in
        the task's own thread, no pool. A job then has up to ``in_flight`` times its running
        tasks in flight: keep that within the server's admission (the lab's ``--concurrency``
        plus ``--queue``, in its ``/stats``), or the surplus is answered 429 and retried.
    """

    batch_size: int = 64
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.25
    backoff_max: float = 8.0
    fail_fast: bool = False
    breaker_failures: int | None = 3
    task_timeout: float | None = None
    in_flight: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise RestOptionsError(f"batch_size={self.batch_size} must be at least 1")
        if self.retries < 0:
            raise RestOptionsError(f"retries={self.retries} must be 0 or more")
        if min(self.connect_timeout, self.read_timeout) <= 0:
            raise RestOptionsError("connect_timeout and read_timeout must be positive seconds")
        if self.backoff < 0 or self.backoff_max < 0:
            raise RestOptionsError("backoff and backoff_max must be >= 0 seconds")
        breaker = self.breaker_failures
        if breaker is not None and (isinstance(breaker, bool) or not isinstance(breaker, int)
                                    or breaker < 1):
            raise RestOptionsError(f"breaker_failures={self.breaker_failures!r} must be a whole "
                                   "number of micro-batches, at least 1 (None turns the breaker "
                                   "off)")
        if isinstance(self.in_flight, bool) or not isinstance(self.in_flight, int) or (
                self.in_flight < 1):
            raise RestOptionsError(f"in_flight={self.in_flight!r} must be a whole number of "
                                   "requests, at least 1 (1: one request at a time per task)")
        if self.task_timeout is not None and not self.task_timeout > 0:
            raise RestOptionsError(f"task_timeout={self.task_timeout} must be positive seconds "
                                   "(None: no deadline)")


@dataclass(frozen=True)
class PostResult:
    """The outcome of one micro-batch: the decoded answer or why there is none.

    ``unavailable`` is True when the failure says the server is not there to answer (a
    connection error, a timeout, a 429/502/503/504): what the circuit breaker counts.
    ``status`` is the HTTP status of a refused request (400, 404, 413, 500), else None.
    """

    outputs: Any | None
    attempts: int
    error: str | None = None
    unavailable: bool = False
    status: int | None = None


# --------------------------------------------------------------------------- HTTP with retries


def error_message(text: str, reason: str = "") -> str:
    """What an error answer says: its JSON ``error`` field (where TF Serving and the lab's server
    put the message), else its first 300 characters, else the HTTP ``reason``."""
    try:
        body = json.loads(text)
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return (text or reason or "")[:300]


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def post_with_retries(
    session: requests.Session,
    url: str,
    body: bytes,
    options: RestOptions,
    *,
    answer_key: str = "predictions",
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_answer_bytes: int | None = None,
) -> PostResult:
    """POST ``body`` (JSON) to ``url``; retry transient failures; never raise for HTTP trouble.

    ``deadline`` (a ``clock()`` time, the task's ``task_timeout``) ends the retries when it
    passes, and cuts each attempt's timeouts and each backoff to the time left. Each attempt's
    answer must be complete within its read timeout (``read_timeout``, or the time left) of
    sending, however slowly it trickles in, and at most ``max_answer_bytes`` long (see
    :func:`answer_byte_cap`); otherwise it is cut and closed, and counts as unavailable (a
    slow answer like a timeout, retried; an oversized one is not retried).

    Returns
    -------
    PostResult
        ``outputs`` is the answer's ``answer_key`` value; on failure ``error`` says what
        happened on the last attempt and how many attempts were made.
    """
    import requests

    last = ""
    attempt = 0
    for attempt in range(1, options.retries + 2):  # noqa: B007 - reported after the loop
        wait_at_least = 0.0
        connect, read = options.connect_timeout, options.read_timeout
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                return PostResult(None, attempt - 1, f"task_timeout={options.task_timeout}s "
                                  f"passed after {attempt - 1} attempts at {url}: {last}",
                                  unavailable=True)
            connect, read = min(connect, left), min(read, left)
        until = clock() + read
        try:
            response = session.post(url, data=body, timeout=(connect, read), stream=True,
                                     headers={"Content-Type": "application/json"})
        except requests.exceptions.ConnectTimeout:
            last = (f"no connection within connect_timeout={options.connect_timeout}s"
                    if connect == options.connect_timeout else
                    f"no connection within the {connect:.3g}s left of task_timeout="
                    f"{options.task_timeout}s")
        except requests.exceptions.ReadTimeout:
            last = (f"no answer within read_timeout={options.read_timeout}s"
                    if read == options.read_timeout else
                    f"no answer within the {read:.3g}s left of task_timeout="
                    f"{options.task_timeout}s")
        except (requests.exceptions.ConnectionError,
                requests.exceptions.ChunkedEncodingError) as exc:
            last = f"connection failed ({type(exc).__name__}: {str(exc)[:200]})"
        except requests.exceptions.RequestException as exc:  # invalid URL and the like
            return PostResult(None, attempt, f"request to {url} failed: {exc}")
        else:
            status = response.status_code
            answer = read_body(response, until, max_answer_bytes, clock)
            text = answer.data.decode(response.encoding or "utf-8", errors="replace")
            if status != 200:
                message = f"HTTP {status}: {error_message(text, response.reason or '')}"
                if status not in RETRY_STATUSES:  # a bad request stays bad: do not repeat it
                    return PostResult(None, attempt, f"{url} refused the request: {message}",
                                      status=status)
                last = message
                wait_at_least = _retry_after(response) or 0.0
            elif answer.cut == "large":  # a broken server: the same size next time
                return PostResult(None, attempt, f"{url} answered more than {max_answer_bytes} "
                                  f"bytes, the cap for this batch (rows x classes x "
                                  f"{ANSWER_BYTES_PER_VALUE} bytes + "
                                  f"{ANSWER_SLACK_BYTES // 1024} KiB): cut, not read",
                                  unavailable=True)
            elif answer.cut == "slow":  # a server dripping its answer: like a read timeout
                last = (f"answer not complete within read_timeout={options.read_timeout}s"
                        if read == options.read_timeout else
                        f"answer not complete within the {read:.3g}s left of task_timeout="
                        f"{options.task_timeout}s") + f" ({answer.detail})"
            elif answer.cut == "broken":
                last = f"connection failed while reading the answer ({answer.detail})"
            else:
                try:
                    return PostResult(json.loads(answer.data)[answer_key], attempt)
                except (ValueError, KeyError, TypeError, RecursionError):
                    return PostResult(None, attempt, f"{url} answered 200 without a JSON "
                                                     f'"{answer_key}" field: {text[:200]!r}')
        if attempt <= options.retries:
            delay = min(options.backoff_max, options.backoff * 2 ** (attempt - 1))
            delay *= 0.5 + 0.5 * jitter()
            delay = min(max(delay, wait_at_least), options.backoff_max)
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - clock()))
            sleep(delay)
    return PostResult(None, attempt, f"gave up after {attempt} attempts at {url}: {last}",
                      unavailable=True)


# --------------------------------------------------------------------------- breaker, deadline


class TaskGuard:
    """One task's circuit breaker and deadline (:class:`RestOptions` ``breaker_failures`` and
    ``task_timeout``): :meth:`blocked` says why nothing more is to be sent, if so.

    Thread-safe: with ``in_flight > 1`` the task's sending threads share it, and "in a row"
    means in the order their outcomes are recorded.
    """

    def __init__(self, options: RestOptions, where: str = "the model server",
                 clock: Callable[[], float] = time.monotonic):
        self.options, self.where, self.clock = options, where, clock
        self._lock = threading.Lock()
        self.deadline = None if options.task_timeout is None else clock() + options.task_timeout
        self.failures = 0  # micro-batches in a row the server was not there for
        self.last: str | None = None
        self.reason: str | None = None

    def blocked(self) -> str | None:
        """Why the task's remaining rows are not sent (None: send them)."""
        with self._lock:
            return self._blocked()

    def _blocked(self) -> str | None:
        if self.reason is None and self.deadline is not None and self.clock() >= self.deadline:
            self.reason = (f"not sent: this task's task_timeout={self.options.task_timeout}s "
                           f"passed" + (f" (last error: {self.last})" if self.last else ""))
        return self.reason

    def record(self, result: PostResult) -> None:
        """Count a micro-batch's outcome; open the breaker after too many failures in a row."""
        with self._lock:
            self._record(result)

    def _record(self, result: PostResult) -> None:
        if result.error is None:
            self.failures = 0
            return
        if not result.unavailable:  # the server answered (a refused request): no outage
            return
        self.failures += 1
        self.last = result.error
        limit = self.options.breaker_failures
        if limit is not None and self.failures >= limit and self.reason is None:
            self.reason = (f"not sent: circuit breaker open after {self.failures} failed "
                           f"micro-batches in a row at {self.where} (breaker_failures={limit}); "
                           f"last error: {result.error}")
