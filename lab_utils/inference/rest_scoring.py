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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.data import images
from lab_utils.errors import LabError
from lab_utils.inference.rest_client import (  # noqa: F401 (re-exported: the client's API)
    RETRY_STATUSES,
    PostResult,
    RestOptions,
    TaskGuard,
    post_with_retries,
    server_message,
)
from lab_utils.training.cnn import ModelSpec, load_spec

if TYPE_CHECKING:
    import requests
    from pyspark.sql import Column
    from pyspark.sql._typing import ColumnOrName

RESULT_DDL = "prediction string, confidence float, error string, attempts int"
RESULT_FIELDS = ("prediction", "confidence", "error", "attempts")
HOW_TO_START = ("start the lab with `make lab` (it runs the model server on "
                "LAB_MODEL_SERVER_PORT, 8501), or one server alone with "
                "`.venv/bin/python -m lab_utils.serving --port 8501`, or pass the URL of your "
                "TensorFlow Serving (`docker run -p 127.0.0.1:8501:8501 tensorflow/serving`)")


class ModelServerUnavailableError(LabError, RuntimeError):
    """The model server does not answer or does not serve the model (raised on the driver)."""


class RestScoringError(LabError, RuntimeError):
    """Raised in a task with ``fail_fast=True`` when a micro-batch could not be scored."""


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
                f"{url} does not serve model {model_name!r}: {server_message(response)}")
        if response.status_code != 200:
            raise ModelServerUnavailableError(
                f"{status_url} answered HTTP {response.status_code}: "
                f"{server_message(response)}")
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
