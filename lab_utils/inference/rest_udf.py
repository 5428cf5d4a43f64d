"""Score images from Spark against a model server over TensorFlow Serving's REST API.

:func:`rest_udf` returns an iterator pandas UDF ``f(path, content)`` over ``binaryFile`` rows,
shaped like the in-Spark factories of :mod:`lab_utils.inference`. Each task runs
:func:`~lab_utils.inference.rest_scoring.score_task` (micro-batches, one result row per image),
which talks to the server through :mod:`lab_utils.inference.rest_client`, whose
:class:`~lab_utils.inference.rest_client.RestOptions` is the UDF's ``client=``. This module is
the driver's side: it checks the server and the model (:func:`check_model_server`) and picks
the payload from the model's metadata (:func:`resolve_payload`) before any job runs.

Robustness, by design:

* one ``requests.Session`` (keep-alive connection) per task, or per sending thread with
  ``in_flight > 1``, closed when the task ends;
* connect and read timeouts on every request, and a deadline on each answer as a whole: it must
  be complete within ``read_timeout`` (or the task's time left) of sending, however slowly it
  trickles in, and within a size cap derived from the batch
  (:func:`~lab_utils.inference.rest_body.answer_byte_cap`), or it is cut;
* every answer checked before use (:mod:`lab_utils.inference.checks`): ragged, non-numeric,
  mis-shaped, NaN, inf or out-of-[0, 1] predictions put one error naming the model and the
  server on each row of their batch, never a dead task or a confident wrong class;
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

Concurrency: a task keeps ``RestOptions.in_flight`` requests in flight (default 1: one at a
time), so a job has up to ``in_flight * min(partitions, cores given to the application)``.
``in_flight > 1`` sends a task's micro-batches from a bounded pool of threads, one
``requests.Session`` each, rows in input order, every request with its own retries and
timeouts, the breaker and deadline shared by the task
(:func:`~lab_utils.inference.rest_scoring.score_task`). Waiting on a server costs a thread, not
a core: more requests in flight than cores keep the server busy while the tasks wait. Spark's
``spark.sql.execution.pythonUDF.arrow.concurrency.level`` is not used: in PySpark 4.3 it
applies only to Arrow-optimized row-at-a-time ``@udf`` s (``SQL_ARROW_BATCHED_UDF``, one call
per row in a thread pool made per Arrow batch), not to this iterator pandas UDF, and one request
per row would lose the micro-batches. To spare a small server, ``coalesce`` the DataFrame to
fewer partitions or lower ``in_flight``.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.common.net import http_json
from lab_utils.common.process import wait_until
from lab_utils.common.saved_model import ModelSpec, load_spec
from lab_utils.errors import LabError
from lab_utils.inference.rest_client import RestOptions, error_message
from lab_utils.inference.rest_scoring import (
    REST_RESULT_DDL,
    SENT_PAYLOADS,
    PayloadError,
    score_task,
)

if TYPE_CHECKING:
    from pyspark.sql import Column
    from pyspark.sql._typing import ColumnOrName

HOW_TO_START = ("start the lab with `make lab` (it runs the model server on "
                "LAB_MODEL_SERVER_PORT, 8501), or one server alone with "
                "`.venv/bin/python -m lab_utils.serving --port 8501`, or pass the URL of your "
                "TensorFlow Serving (`docker run -p 127.0.0.1:8501:8501 tensorflow/serving`)")
#: ``payload=`` choices: ``auto`` sends image files when the model's metadata declares an image
#: input and pixel lists otherwise; ``b64`` and ``pixels`` force one.
PAYLOADS = ("auto", *SENT_PAYLOADS)
#: The metadata's signature input that takes image files, by TF Serving's naming convention.
BYTES_SUFFIX = "_bytes"
#: What a driver-side GET may raise when the server is down, unreachable or garbled (a
#: malformed answer is common.net's NotHttpError, an OSError).
_NO_ANSWER = (OSError, ValueError)


class ModelServerUnavailableError(LabError, RuntimeError):
    """The model server does not answer or does not serve the model (raised on the driver)."""


# --------------------------------------------------------------------------- driver-side checks


def _refused(exc: urllib.error.HTTPError) -> str:
    """The message in an HTTP error answer (its JSON ``error``, else its text)."""
    try:
        text = exc.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        text = ""
    return error_message(text, str(exc.reason or ""))


def _not_tf_serving(url: str, status_url: str, answer: str) -> ModelServerUnavailableError:
    return ModelServerUnavailableError(f"{status_url} did not answer TF Serving's model status "
                                       f"({answer[:200]!r}): is {url} a TF Serving REST "
                                       "endpoint?")


def _model_states(url: str, model_name: str, timeout: float) -> tuple[dict, list[str]]:
    """``GET {url}/v1/models/NAME`` and its versions' states; any failure is a
    :class:`ModelServerUnavailableError` naming the URL and what to do."""
    status_url = f"{url.rstrip('/')}/v1/models/{model_name}"
    try:
        body = http_json(status_url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ModelServerUnavailableError(
                f"{url} does not serve model {model_name!r}: {_refused(exc)}") from None
        raise ModelServerUnavailableError(
            f"{status_url} answered HTTP {exc.code}: {_refused(exc)}") from None
    except json.JSONDecodeError as exc:  # an answer, but not JSON
        raise _not_tf_serving(url, status_url, exc.doc) from None
    except UnicodeDecodeError as exc:  # an answer, not even text
        raise _not_tf_serving(url, status_url, exc.object.decode(errors="replace")) from None
    except _NO_ANSWER as exc:
        # What went wrong underneath: urllib's URLError wraps the socket's error in ``reason``,
        # common.net's NotHttpError wraps http.client's (e.g. BadStatusLine) as its cause.
        reason = getattr(exc, "reason", None) or exc.__cause__
        kind = type(reason if isinstance(reason, BaseException) else exc).__name__
        raise ModelServerUnavailableError(
            f"the model server at {url} does not answer ({kind}): {HOW_TO_START}") from None
    try:
        return body, [v["state"] for v in body["model_version_status"]]
    except (KeyError, TypeError):
        raise _not_tf_serving(url, status_url, json.dumps(body)) from None


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
    answer: tuple[dict, list[str]] = ({}, [])

    def available() -> bool:
        nonlocal answer
        answer = _model_states(url, model_name, timeout)
        return "AVAILABLE" in answer[1]

    def not_on_its_way() -> bool:  # neither available nor starting or loading: waiting is vain
        return not ({"START", "LOADING"} & set(answer[1]))

    if wait_until(available, wait, 0.5, abort=not_on_its_way):
        return answer[0]
    body, states = answer
    raise ModelServerUnavailableError(
        f"model {model_name!r} at {url} is {', '.join(states) or 'not loaded'}, not "
        f"AVAILABLE: {body}; read the server's log (.lab/logs/model-server.log for the lab's)")


def declares_image_input(metadata: dict) -> bool:
    """True when a ``GET /v1/models/NAME/metadata`` answer says the model takes image files.

    The lab's server says so in ``metadata.image_input``; a TF Serving model exported with a
    bytes input has one ``DT_STRING`` input whose name ends in ``_bytes`` (TF Serving's and
    Google Cloud's convention for binary inputs).
    """
    try:
        meta = metadata["metadata"]
        if meta.get("image_input"):
            return True
        inputs = meta["signature_def"]["signature_def"]["serving_default"]["inputs"]
    except (KeyError, TypeError, AttributeError):
        return False
    return (isinstance(inputs, dict) and len(inputs) == 1
            and all(name.endswith(BYTES_SUFFIX) and isinstance(spec, dict)
                    and spec.get("dtype") == "DT_STRING" for name, spec in inputs.items()))


def _check_payload(payload: str) -> None:
    if payload not in PAYLOADS:
        raise PayloadError(f"payload={payload!r} is not one of {PAYLOADS}: 'auto' (image files "
                           "when the model declares an image input), 'b64' (image files) or "
                           "'pixels' (decoded pixels as nested lists)")


def resolve_payload(url: str, model_name: str, payload: str = "auto", *,
                    timeout: float = 5.0) -> str:
    """The payload to send, ``"b64"`` or ``"pixels"``, decided on the driver.

    ``pixels`` and ``b64`` are taken as asked (forcing ``b64`` on a model that takes tensors
    gets each batch a 400 whose row error says to pass ``payload='pixels'``). ``auto`` reads
    ``GET {url}/v1/models/{model_name}/metadata`` (:func:`declares_image_input`): image files
    when the model declares an image input, pixels otherwise, including when the metadata
    cannot be read (a server that is down fails its rows either way).

    Raises
    ------
    PayloadError
        ``payload`` is not one of :data:`PAYLOADS`.
    """
    _check_payload(payload)
    if payload != "auto":
        return payload
    try:
        metadata = http_json(f"{url.rstrip('/')}/v1/models/{model_name}/metadata",
                             timeout=timeout)
    except _NO_ANSWER:
        metadata = {}
    return "b64" if declares_image_input(metadata) else "pixels"


# --------------------------------------------------------------------------- the UDF


def rest_udf(
    model: ModelSpec | Path | str,
    url: str | None = None,
    *,
    model_name: str | None = None,
    client: RestOptions | None = None,
    check: bool = True,
    payload: str = "auto",
    max_file_bytes: int | None = None,
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
    client : RestOptions, optional
        How the tasks talk to the server: images per request, connect and read timeouts,
        retries and backoff, ``fail_fast``, the circuit breaker (``breaker_failures``), a
        deadline per task (``task_timeout``) and requests in flight per task
        (``in_flight``). Default ``RestOptions()``, whose docstring declares each option's
        default; the driver's checks wait at least 5 s for an answer.
    check : bool
        Check the server and the model on the driver now, before any job. Without it,
        ``payload="auto"`` still asks for the model's metadata once (pixels if none answers).
    payload : {"auto", "b64", "pixels"}
        What a request carries: ``"b64"`` the image files (``{"b64": ...}``, TF Serving's binary
        form: ~10x fewer bytes and no decoding in the workers), ``"pixels"`` decoded pixels as
        nested lists (what a TF Serving model with a tensor input takes), ``"auto"`` (default)
        the files when the model's metadata declares an image input, else pixels
        (:func:`resolve_payload`, on the driver). The choice is the UDF's ``payload`` attribute.
    max_file_bytes : int, optional
        With ``b64``, a larger file is decoded and resized in the worker and sent as a PNG of
        the model's size; default the model's raw pixel size (``H * W * 3`` bytes), at least
        4 KiB (:func:`~lab_utils.inference.rest_scoring.default_max_file_bytes`).

    Returns
    -------
    A column function returning ``struct<prediction, confidence, error, attempts>``
    (:data:`~lab_utils.inference.rest_scoring.REST_RESULT_DDL`).

    Raises
    ------
    ModelServerUnavailableError
        ``check`` is on and the server is down or does not serve the model.
    PayloadError
        ``payload`` is not one of ``"auto"``, ``"b64"``, ``"pixels"``.

    Examples
    --------
    The lab's CNN on the lab's model server (``make lab``), one client option changed:

    >>> from lab_utils.inference.rest_client import RestOptions
    >>> score = rest_udf("share_storages/models/digits_cnn",
    ...                  client=RestOptions(batch_size=16))  # doctest: +SKIP

    Against a server that is down the job still gives one row per image, each with its error.
    ``check=False`` skips the driver's check; with ``breaker_failures=1`` a task stops sending
    after one failed micro-batch. The spec is what :func:`load_spec` reads from a model folder:

    >>> from PIL import Image
    >>> from lab_utils.common.net import free_port
    >>> from lab_utils.common.saved_model import ModelSpec
    >>> spec = ModelSpec(tmp / "tiny", ("dark", "light"), (4, 4), 3, {})
    >>> client = RestOptions(batch_size=1, retries=0, breaker_failures=1)
    >>> url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    >>> score = rest_udf(spec, url, client=client, check=False)
    >>> score.payload  # "auto", and no metadata answered: decoded pixels
    'pixels'
    >>> Image.new("RGB", (4, 4)).save(tmp / "black.png")
    >>> png = (tmp / "black.png").read_bytes()
    >>> rows = [("a.png", png), ("b.png", png), ("c.png", b"")]
    >>> df = spark.createDataFrame(rows, "path string, content binary").coalesce(1)
    >>> for r in df.select("path", score("path", "content").alias("r")).select("r.*").collect():
    ...     print(r.prediction, r.attempts, r.error)
    None 1 gave up after 1 attempts at http://127.0.0.1:.../v1/models/tiny:predict: connection
    failed (ConnectionError: ...)
    None 0 not sent: circuit breaker open after 1 failed micro-batches in a row at
    http://127.0.0.1:... (breaker_failures=1); last error: gave up after 1 attempts ...
    None 0 empty file (0 bytes)
    """
    from pyspark.sql.functions import pandas_udf

    spec = model if isinstance(model, ModelSpec) else load_spec(model)
    options = client if client is not None else RestOptions()
    if url is None:
        from lab_utils import config as lab_config

        url = lab_config.load().model_server_url
    url = url.rstrip("/")
    name = model_name or spec.path.name
    _check_payload(payload)  # before any request
    timeout = max(options.connect_timeout, 5.0)
    if check:
        check_model_server(url, name, timeout=timeout)
    chosen = resolve_payload(url, name, payload, timeout=timeout)
    endpoint = f"{url}/v1/models/{name}:predict"
    names, size = spec.class_names, spec.image_size

    # PySpark's stubs have no overload for the type-hint form (SPARK-39142), which the docs
    # recommend over functionType: the decorated function is untyped (Any) to mypy.
    @pandas_udf(REST_RESULT_DDL)  # type: ignore[call-overload]
    def score_rest(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        yield from score_task(batches, endpoint, options, names, size, where=url,
                              payload=chosen, max_file_bytes=max_file_bytes, model_name=name)

    score_rest.payload = chosen  # what the tasks send, for the caller to see
    return score_rest
