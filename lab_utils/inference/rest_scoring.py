"""Score images from Spark against a model server over TensorFlow Serving's REST API.

:func:`rest_udf` returns an iterator pandas UDF ``f(path, content)`` over ``binaryFile`` rows,
shaped like the in-Spark factories of :mod:`lab_utils.inference`: images are decoded and resized
in the Python workers (the same :func:`lab_utils.data.images.decode_image`), sent in
micro-batches as ``{"instances": [...]}`` to ``POST {url}/v1/models/{name}:predict``, and
each row gets ``prediction``, ``confidence``, ``error`` and ``attempts`` (HTTP requests its
micro-batch took).

Robustness, by design:

* one ``requests.Session`` (keep-alive connection) per task, closed when the task ends;
* connect and read timeouts on every request;
* retries with exponential backoff (and jitter, honouring ``Retry-After``) on what can succeed
  on a retry: connection errors, timeouts, 429, 502, 503 and 504, POST included (a predict call
  has no side effects, so repeating it is safe). A 400, 404, 413 or 500 is the same answer the
  next time, so it is not repeated. The loop is explicit (not urllib3's ``Retry``) so every
  attempt is counted in the ``attempts`` column;
* a request that still fails marks exactly its rows with an ``error`` and the job goes on;
  ``fail_fast=True`` raises instead, naming the server and the first file;
* a circuit breaker per task: after ``breaker_failures`` (3) micro-batches in a row failed for
  want of a server (connection errors, timeouts, 429/5xx after all their retries), the rest of
  the task's rows are marked with the reason at once, without another request; and an optional
  deadline per task (``task_timeout``) that also cuts the timeouts of the request in flight;
* the driver checks the server and the model **before** any job runs, and fails with a message
  naming the URL and how to start the lab's server.

Concurrency: a task sends one request at a time, so at most as many requests are in flight as
tasks run at once, i.e. ``min(partitions, cores given to the application)``. To spare a small
server, ``coalesce`` the DataFrame to fewer partitions.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.data import images
from lab_utils.errors import LabError
from lab_utils.training.cnn import ModelSpec, load_spec

if TYPE_CHECKING:
    import requests
    from pyspark.sql import Column
    from pyspark.sql._typing import ColumnOrName

RESULT_DDL = "prediction string, confidence float, error string, attempts int"
RESULT_FIELDS = ("prediction", "confidence", "error", "attempts")
#: Answers worth another try: overloaded (429), or a server or gateway not there right now
#: (502, 503, 504). A 500 is an error of the server's own making (a broken model): the next try
#: gets the same answer, so it is not retried, like the client's errors (400, 404, 413).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
HOW_TO_START = ("start the lab with `make lab` (it runs the model server on "
                "LAB_MODEL_SERVER_PORT, 8501), or one server alone with "
                "`.venv/bin/python -m lab_utils.serving --port 8501`, or pass the URL of your "
                "TensorFlow Serving (`docker run -p 127.0.0.1:8501:8501 tensorflow/serving`)")


class ModelServerUnavailableError(LabError, RuntimeError):
    """The model server does not answer or does not serve the model (raised on the driver)."""


class RestScoringError(LabError, RuntimeError):
    """Raised in a task with ``fail_fast=True`` when a micro-batch could not be scored."""


@dataclass(frozen=True)
class RestOptions:
    """How the client talks to the server.

    Parameters
    ----------
    batch_size : int
        Images per request (micro-batch).
    connect_timeout, read_timeout : float
        Seconds to open a connection, and to wait for an answer once the request is sent.
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
        want of a server (a connection error, a timeout or a 429/5xx answer on their last
        attempt, after all their retries), the task sends nothing more: each of its remaining
        rows gets ``error`` ``"not sent: circuit breaker open ..."`` with the last failure,
        and ``attempts`` 0. A scored batch resets the count; a refused one (400, 413, 500)
        neither counts nor resets. Default 3: with the default retries a down server costs a
        task about three batches' backoff (~20 s), not every batch's. ``None`` turns it off
        (every batch is tried, e.g. to count failures exactly).
    task_timeout : float or None
        Seconds one task may spend scoring, from its first row. Once passed, its remaining rows
        are marked ``"not sent: this task's task_timeout=...s passed"`` without a request; the
        request in flight has its connect/read timeouts and backoff cut to the time left.
        Default ``None`` (no deadline): how long a healthy task takes depends on its partition
        size. Set it to bound a job against a server that may hang: with the defaults, a
        server that accepts connections and never answers costs a task up to
        ``breaker_failures * (retries + 1) * read_timeout`` (~9 min) before the breaker opens.
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

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be at least 1")
        if self.retries < 0:
            raise ValueError(f"retries={self.retries} must be 0 or more")
        if min(self.connect_timeout, self.read_timeout) <= 0:
            raise ValueError("connect_timeout and read_timeout must be positive seconds")
        if self.backoff < 0 or self.backoff_max < 0:
            raise ValueError("backoff and backoff_max must be >= 0 seconds")
        breaker = self.breaker_failures
        if breaker is not None and (isinstance(breaker, bool) or not isinstance(breaker, int)
                                    or breaker < 1):
            raise ValueError(f"breaker_failures={self.breaker_failures!r} must be a whole number "
                             "of micro-batches, at least 1 (None turns the breaker off)")
        if self.task_timeout is not None and not self.task_timeout > 0:
            raise ValueError(f"task_timeout={self.task_timeout} must be positive seconds "
                             "(None: no deadline)")


@dataclass(frozen=True)
class PostResult:
    """The outcome of one micro-batch: the decoded answer or why there is none.

    ``unavailable`` is True when the failure says the server is not there to answer (a
    connection error, a timeout, a 429/502/503/504): what the circuit breaker counts.
    """

    outputs: Any | None
    attempts: int
    error: str | None = None
    unavailable: bool = False


# --------------------------------------------------------------------------- HTTP with retries


def _server_message(response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return (response.text or response.reason or "")[:300]


def _retry_after(response) -> float | None:
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
) -> PostResult:
    """POST ``body`` (JSON) to ``url``; retry transient failures; never raise for HTTP trouble.

    ``deadline`` (a ``clock()`` time, the task's ``task_timeout``) ends the retries when it
    passes, and cuts each attempt's timeouts and each backoff to the time left.

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
        try:
            response = session.post(url, data=body, timeout=(connect, read),
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
            if status == 200:
                try:
                    return PostResult(response.json()[answer_key], attempt)
                except (ValueError, KeyError, TypeError):
                    return PostResult(None, attempt, f"{url} answered 200 without a JSON "
                                                     f'"{answer_key}" field: '
                                                     f"{response.text[:200]!r}")
            message = f"HTTP {status}: {_server_message(response)}"
            if status not in RETRY_STATUSES:  # a bad request stays bad: do not repeat it
                return PostResult(None, attempt, f"{url} refused the request: {message}")
            last = message
            wait_at_least = _retry_after(response) or 0.0
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
    ``task_timeout``): :meth:`blocked` says why nothing more is to be sent, if so."""

    def __init__(self, options: RestOptions, where: str = "the model server",
                 clock: Callable[[], float] = time.monotonic):
        self.options, self.where, self.clock = options, where, clock
        self.deadline = None if options.task_timeout is None else clock() + options.task_timeout
        self.failures = 0  # micro-batches in a row the server was not there for
        self.last: str | None = None
        self.reason: str | None = None

    def blocked(self) -> str | None:
        """Why the task's remaining rows are not sent (None: send them)."""
        if self.reason is None and self.deadline is not None and self.clock() >= self.deadline:
            self.reason = (f"not sent: this task's task_timeout={self.options.task_timeout}s "
                           f"passed" + (f" (last error: {self.last})" if self.last else ""))
        return self.reason

    def record(self, result: PostResult) -> None:
        """Count a micro-batch's outcome; open the breaker after too many failures in a row."""
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


# --------------------------------------------------------------------------- the pure core


def encode_instances(pixels: np.ndarray) -> bytes:
    """``{"instances": [...]}`` with uint8 pixels as JSON integers (TF Serving's row form)."""
    return json.dumps({"instances": pixels.tolist()}, separators=(",", ":")).encode()


def score_images_rest(
    paths: list[str | None] | pd.Series,
    contents: list[bytes | None] | pd.Series,
    post: Callable[[np.ndarray], PostResult],
    class_names: tuple[str, ...],
    image_size: tuple[int, int],
    *,
    batch_size: int = 64,
    fail_fast: bool = False,
    where: str = "the model server",
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    guard: TaskGuard | None = None,
) -> pd.DataFrame:
    """Decode, micro-batch, ``post`` each batch; one output row per input row, in order.

    Pure Python (no Spark): the UDF calls it, unit tests call it with fake ``post`` functions.
    A file that is not a usable image is its own row's error and is never sent. With a
    ``guard`` (the task's breaker and deadline), once it is blocked the remaining rows get its
    reason as their error, ``attempts`` 0, and are neither decoded nor sent.
    """
    paths = list(paths)
    contents = list(contents)
    n = len(contents)
    prediction: list[str | None] = [None] * n
    confidence: list[float | None] = [None] * n
    attempts = [0] * n
    reason = guard.blocked() if guard is not None else None
    good: list[int]
    pixels: list[np.ndarray]
    error: list[str | None]
    if reason is not None:
        if fail_fast and n:
            raise RestScoringError(f"{n} images from {paths[0]} on were not scored: {reason}")
        good, pixels, error = [], [], [reason] * n
    else:
        good, pixels, error = images.decode_all(paths, contents, image_size,
                                                max_pixels=max_pixels, fail_fast=fail_fast,
                                                error_type=RestScoringError)
    for start in range(0, len(good), batch_size):
        rows = good[start:start + batch_size]
        reason = guard.blocked() if guard is not None else None
        if reason is not None:
            result = PostResult(None, 0, reason)
        else:
            result = post(np.stack(pixels[start:start + batch_size]))
            if guard is not None:
                guard.record(result)
        problem = result.error
        probabilities: np.ndarray | None = None
        if problem is None:
            probabilities = np.asarray(result.outputs, dtype=np.float64)
            if probabilities.shape != (len(rows), len(class_names)):
                problem = (f"{where} answered shape {list(probabilities.shape)} for "
                           f"{len(rows)} images; expected [{len(rows)}, {len(class_names)}] "
                           f"probabilities for {class_names}: is it serving the same model?")
        if problem is not None and fail_fast:
            raise RestScoringError(f"{len(rows)} images from {paths[rows[0]]} on could not be "
                                   f"scored: {problem}")
        for j, row in enumerate(rows):
            attempts[row] = result.attempts
            if problem is not None:
                error[row] = problem
            elif probabilities is not None:  # always, when there is no problem
                k = int(probabilities[j].argmax())
                prediction[row] = class_names[k]
                confidence[row] = float(probabilities[j, k])
    return pd.DataFrame({"prediction": pd.Series(prediction, dtype=object),
                         "confidence": pd.Series(confidence, dtype="float32"),
                         "error": pd.Series(error, dtype=object),
                         "attempts": pd.Series(attempts, dtype="int32")})


def score_task(
    batches: Iterator[tuple[pd.Series, pd.Series]],
    endpoint: str,
    options: RestOptions,
    class_names: tuple[str, ...],
    image_size: tuple[int, int],
    *,
    where: str = "the model server",
    session: requests.Session | None = None,
) -> Iterator[pd.DataFrame]:
    """What one task of :func:`rest_udf` does with its batches of ``(path, content)``: one
    HTTP session, one :class:`TaskGuard` (breaker and deadline), one frame per batch."""
    import requests

    guard = TaskGuard(options, where)
    # One session (one kept-alive connection) per task, closed when the task ends.
    with (session or requests.Session()) as http:
        def post(pixels: np.ndarray) -> PostResult:
            return post_with_retries(http, endpoint, encode_instances(pixels), options,
                                     deadline=guard.deadline)

        for paths, contents in batches:
            yield score_images_rest(paths, contents, post, class_names, image_size,
                                    batch_size=options.batch_size,
                                    fail_fast=options.fail_fast, where=where, guard=guard)


# --------------------------------------------------------------------------- driver-side check


def check_model_server(url: str, model_name: str, *, timeout: float = 5.0,
                       wait: float = 120.0) -> dict:
    """Check on the driver that ``url`` serves ``model_name``; wait while it is loading.

    Returns
    -------
    dict
        The server's ``GET /v1/models/NAME`` answer.

    Raises
    ------
    ModelServerUnavailableError
        Nothing answers at ``url``, the model is unknown there, or it did not become
        ``AVAILABLE`` within ``wait`` seconds; the message names the URL and the fix.
    """
    import requests

    status_url = f"{url.rstrip('/')}/v1/models/{model_name}"
    deadline = time.monotonic() + wait
    while True:
        try:
            response = requests.get(status_url, timeout=timeout)
        except requests.RequestException as exc:
            raise ModelServerUnavailableError(
                f"the model server at {url} does not answer ({type(exc).__name__}): "
                f"{HOW_TO_START}") from None
        if response.status_code == 404:
            raise ModelServerUnavailableError(
                f"{url} does not serve model {model_name!r}: {_server_message(response)}")
        if response.status_code != 200:
            raise ModelServerUnavailableError(
                f"{status_url} answered HTTP {response.status_code}: "
                f"{_server_message(response)}")
        try:
            body = response.json()
            states = [v["state"] for v in body["model_version_status"]]
        except (ValueError, KeyError, TypeError):
            raise ModelServerUnavailableError(
                f"{status_url} did not answer TF Serving's model status "
                f"({response.text[:200]!r}): is {url} a TF Serving REST endpoint?") from None
        if "AVAILABLE" in states:
            return body
        if time.monotonic() > deadline or not ({"START", "LOADING"} & set(states)):
            raise ModelServerUnavailableError(
                f"model {model_name!r} at {url} is {', '.join(states) or 'not loaded'}, not "
                f"AVAILABLE: {body}; read the server's log (.lab/logs/model-server.log for "
                "the lab's)")
        time.sleep(0.5)


# --------------------------------------------------------------------------- the UDF


def rest_udf(
    model: ModelSpec | Path | str,
    url: str | None = None,
    *,
    model_name: str | None = None,
    batch_size: int = 64,
    connect_timeout: float = 3.0,
    read_timeout: float = 30.0,
    retries: int = 5,
    backoff: float = 0.25,
    backoff_max: float = 8.0,
    fail_fast: bool = False,
    breaker_failures: int | None = 3,
    task_timeout: float | None = None,
    check: bool = True,
) -> Callable[[ColumnOrName, ColumnOrName], Column]:
    """Iterator pandas UDF ``f(path, content)`` scoring images on a TF Serving REST server.

    Parameters
    ----------
    model : ModelSpec, Path or str
        The model's folder (``metadata.json``: class names and input size, read on the driver).
        The server must serve the same model.
    url : str, optional
        Server base URL, e.g. ``http://127.0.0.1:8501``; default the lab's model server
        (``LAB_MODEL_SERVER_URL`` / ``LAB_MODEL_SERVER_PORT``).
    model_name : str, optional
        Name on the server; default the model folder's name.
    batch_size, connect_timeout, read_timeout, retries, backoff, backoff_max, fail_fast
        See :class:`RestOptions`.
    breaker_failures : int or None
        Failed micro-batches in a row after which a task marks its remaining rows without
        sending them (default 3; ``None``: off). See :class:`RestOptions`.
    task_timeout : float or None
        Seconds one task may spend; then its remaining rows are marked without being sent
        (default ``None``: no deadline). See :class:`RestOptions`.
    check : bool
        Check the server and the model on the driver now, before any job.

    Returns
    -------
    A column function returning ``struct<prediction, confidence, error, attempts>``.

    Raises
    ------
    ModelServerUnavailableError
        ``check`` is on and the server is down or does not serve the model.
    """
    from pyspark.sql.functions import pandas_udf

    spec = model if isinstance(model, ModelSpec) else load_spec(model)
    if url is None:
        from lab_utils import config as lab_config

        url = lab_config.load().model_server_url
    url = url.rstrip("/")
    name = model_name or spec.path.name
    options = RestOptions(batch_size=batch_size, connect_timeout=connect_timeout,
                          read_timeout=read_timeout, retries=retries, backoff=backoff,
                          backoff_max=backoff_max, fail_fast=fail_fast,
                          breaker_failures=breaker_failures, task_timeout=task_timeout)
    if check:
        check_model_server(url, name, timeout=max(connect_timeout, 5.0))
    endpoint = f"{url}/v1/models/{name}:predict"
    names, size = spec.class_names, spec.image_size

    # PySpark's stubs have no overload for the type-hint form (SPARK-39142), which the docs
    # recommend over functionType: the decorated function is untyped (Any) to mypy.
    @pandas_udf(RESULT_DDL)  # type: ignore[call-overload]
    def score_rest(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        yield from score_task(batches, endpoint, options, names, size, where=url)

    return score_rest
