"""Score images from Spark against a model server over TensorFlow Serving's REST API.

:func:`rest_udf` returns an iterator pandas UDF ``f(path, content)`` over ``binaryFile`` rows,
shaped like the in-Spark factories of :mod:`lab_utils.inference`: images are sent in
micro-batches as ``{"instances": [...]}`` to ``POST {url}/v1/models/{name}:predict``, and
each row gets ``prediction``, ``confidence``, ``error`` and ``attempts`` (HTTP requests its
micro-batch took).

Two payloads (``payload=``), chosen on the driver from the model's metadata by default:

* ``"b64"``: the image files themselves, base64-encoded in TF Serving's binary form
  ``{"b64": "..."}``, when the server declares an image input (the lab's server decodes them
  with :func:`lab_utils.data.images.decode_image`, as in-Spark inference does, so predictions
  are the same). A 32x32 JPEG is ~1.4 KB of JSON instead of ~13 KB of pixel lists, and the
  workers decode nothing. A file larger than the model's raw pixels (``H * W * 3`` bytes, at
  least 4 KiB: ``max_file_bytes``) is decoded, resized and sent as a PNG of the model's size
  (lossless: the same pixels). A file the server cannot decode is its own row's error: the
  server refuses the batch naming it (400), the worker decodes that batch to find the bad
  files, marks their rows and sends the others again;
* ``"pixels"``: each image decoded and resized in the Python worker and sent as nested lists
  of uint8, what a TF Serving model exported with a tensor input takes.

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

import base64
import dataclasses
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.common.saved_model import ModelSpec, load_spec
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


#: ``payload=`` choices: ``auto`` sends image files when the model's metadata declares an image
#: input and pixel lists otherwise; ``b64`` and ``pixels`` force one.
PAYLOADS = ("auto", "b64", "pixels")
#: The metadata's signature input that takes image files, by TF Serving's naming convention.
BYTES_SUFFIX = "_bytes"
FORCE_PIXELS = ("if the model takes tensors, not image files, pass payload='pixels' to send "
                "decoded pixels as nested lists")


class ModelServerUnavailableError(LabError, RuntimeError):
    """The model server does not answer or does not serve the model (raised on the driver)."""


class PayloadError(LabError, ValueError):
    """``payload=`` names no known payload, or ``b64`` was forced for a model that declares no
    image input (raised on the driver)."""


class RestScoringError(LabError, RuntimeError):
    """Raised in a task with ``fail_fast=True`` when a micro-batch could not be scored."""


# --------------------------------------------------------------------------- the pure core


def encode_instances(pixels: np.ndarray) -> bytes:
    """``{"instances": [...]}`` with uint8 pixels as JSON integers (TF Serving's row form)."""
    return json.dumps({"instances": pixels.tolist()}, separators=(",", ":")).encode()


def encode_b64(files: Sequence[bytes]) -> bytes:
    """``{"instances": [{"b64": ...}, ...]}``: image files in TF Serving's binary form.

    Joined as bytes, not through ``json.dumps``: base64's alphabet needs no JSON escaping.
    """
    return (b'{"instances":[' + b",".join(b'{"b64":"' + base64.b64encode(f) + b'"}'
                                          for f in files) + b"]}")


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of ``pixels`` (lossless: :func:`~lab_utils.data.images.decode_image` of it gives
    ``pixels`` back when they already have the model's size)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def default_max_file_bytes(image_size: tuple[int, int]) -> int:
    """Files above this many bytes are sent as a PNG of the model's size: the model's raw
    pixels (``H * W * 3``), and at least 4 KiB (a tiny image's PNG has ~70 bytes of headers)."""
    h, w = image_size
    return max(h * w * 3, 4096)


def prepare_files(
    paths: list, contents: list, image_size: tuple[int, int], *, max_file_bytes: int,
    max_pixels: int = images.DEFAULT_MAX_PIXELS, fail_fast: bool = False,
) -> tuple[list[int], list[bytes], list[str | None]]:
    """The files to send as ``{"b64": ...}``: (positions to send, their bytes, per-row error).

    A file of at most ``max_file_bytes`` is sent as it is, undecoded. A larger one is decoded
    and resized here and sent as a PNG of ``image_size`` (the same pixels, fewer bytes); an
    empty one, or a large one that does not decode, is its row's error and is never sent.
    """
    good: list[int] = []
    files: list[bytes] = []
    error: list[str | None] = [None] * len(contents)
    for i, data in enumerate(contents):
        try:
            if data is None or len(data) == 0 or len(data) > max_file_bytes:
                files.append(png_bytes(images.decode_image(data, image_size,
                                                           max_pixels=max_pixels)))
            else:
                files.append(bytes(data))
            good.append(i)
        except images.ImageError as exc:
            if fail_fast:
                raise RestScoringError(f"{paths[i]}: {exc}") from None
            error[i] = str(exc)
    return good, files, error


def score_images_rest(
    paths: list[str | None] | pd.Series,
    contents: list[bytes | None] | pd.Series,
    post: Callable[[Any], PostResult],
    class_names: tuple[str, ...],
    image_size: tuple[int, int],
    *,
    batch_size: int = 64,
    fail_fast: bool = False,
    where: str = "the model server",
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    guard: TaskGuard | None = None,
    payload: str = "pixels",
    max_file_bytes: int | None = None,
) -> pd.DataFrame:
    """Prepare, micro-batch, ``post`` each batch; one output row per input row, in order.

    Pure Python (no Spark): the UDF calls it, unit tests call it with fake ``post`` functions.
    ``payload="pixels"``: each image is decoded here and ``post`` gets a ``[n, H, W, 3]`` uint8
    array; a file that is not a usable image is its own row's error and is never sent.
    ``payload="b64"``: ``post`` gets the files' bytes (:func:`prepare_files`, with
    ``max_file_bytes``, default :func:`default_max_file_bytes`); when the server
    refuses a batch (400), its files are decoded here: the undecodable ones get their decode
    error (the same text as with pixels) and the batch's first ``attempts``, and the rest are
    sent again, their ``attempts`` counting both requests.
    With a ``guard`` (the task's breaker and deadline), once it is blocked the remaining rows
    get its reason as their error, ``attempts`` 0, and are neither decoded nor sent.
    """
    if payload not in ("b64", "pixels"):
        raise PayloadError(f"payload={payload!r}: score_images_rest sends 'b64' or 'pixels'")
    paths = list(paths)
    contents = list(contents)
    n = len(contents)
    prediction: list[str | None] = [None] * n
    confidence: list[float | None] = [None] * n
    attempts = [0] * n
    reason = guard.blocked() if guard is not None else None
    good: list[int]
    items: list
    error: list[str | None]
    if reason is not None:
        if fail_fast and n:
            raise RestScoringError(f"{n} images from {paths[0]} on were not scored: {reason}")
        good, items, error = [], [], [reason] * n
    elif payload == "b64":
        good, items, error = prepare_files(paths, contents, image_size,
                                           max_file_bytes=(max_file_bytes
                                                           or default_max_file_bytes(image_size)),
                                           max_pixels=max_pixels, fail_fast=fail_fast)
    else:
        good, items, error = images.decode_all(paths, contents, image_size,
                                               max_pixels=max_pixels, fail_fast=fail_fast,
                                               error_type=RestScoringError)

    def send(batch: list) -> PostResult:
        blocked = guard.blocked() if guard is not None else None
        if blocked is not None:
            return PostResult(None, 0, blocked)
        result = post(batch if payload == "b64" else np.stack(batch))
        if guard is not None:
            guard.record(result)
        return result

    for start in range(0, len(good), batch_size):
        rows = good[start:start + batch_size]
        batch = items[start:start + batch_size]
        result = send(batch)
        if payload == "b64" and result.status == 400:
            # Which files did the server refuse? The same decode, here, on this batch only.
            ok, _, bad = images.decode_all([paths[r] for r in rows], batch, image_size,
                                           max_pixels=max_pixels, fail_fast=fail_fast,
                                           error_type=RestScoringError)
            if len(ok) < len(rows):
                for row, problem in zip(rows, bad, strict=True):
                    if problem is not None:
                        error[row], attempts[row] = problem, result.attempts
                first = result.attempts
                rows, batch = [rows[j] for j in ok], [batch[j] for j in ok]
                if not rows:
                    continue
                result = send(batch)
                result = dataclasses.replace(result, attempts=first + result.attempts)
            elif result.error is not None:  # every file decodes: the payload itself was refused
                result = dataclasses.replace(result, error=f"{result.error} (sent as image "
                                                           f"files, payload='b64'; "
                                                           f"{FORCE_PIXELS})")
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
    payload: str = "pixels",
    max_file_bytes: int | None = None,
) -> Iterator[pd.DataFrame]:
    """What one task of :func:`rest_udf` does with its batches of ``(path, content)``: one
    HTTP session, one :class:`TaskGuard` (breaker and deadline), one frame per batch."""
    import requests

    guard = TaskGuard(options, where)
    encode = encode_b64 if payload == "b64" else encode_instances
    # One session (one kept-alive connection) per task, closed when the task ends.
    with (session or requests.Session()) as http:
        def post(batch: Any) -> PostResult:
            return post_with_retries(http, endpoint, encode(batch), options,
                                     deadline=guard.deadline)

        for paths, contents in batches:
            yield score_images_rest(paths, contents, post, class_names, image_size,
                                    batch_size=options.batch_size,
                                    fail_fast=options.fail_fast, where=where, guard=guard,
                                    payload=payload, max_file_bytes=max_file_bytes)


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
    if payload not in PAYLOADS:
        raise PayloadError(f"payload={payload!r} is not one of {PAYLOADS}: 'auto' (image files "
                           "when the model declares an image input), 'b64' (image files) or "
                           "'pixels' (decoded pixels as nested lists)")
    if payload != "auto":
        return payload
    import requests

    try:
        response = requests.get(f"{url.rstrip('/')}/v1/models/{model_name}/metadata",
                                timeout=timeout)
        metadata = response.json() if response.status_code == 200 else {}
    except (requests.RequestException, ValueError):
        metadata = {}
    return "b64" if declares_image_input(metadata) else "pixels"


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
    batch_size, connect_timeout, read_timeout, retries, backoff, backoff_max, fail_fast
        See :class:`RestOptions`.
    breaker_failures : int or None
        Failed micro-batches in a row after which a task marks its remaining rows without
        sending them (default 3; ``None``: off). See :class:`RestOptions`.
    task_timeout : float or None
        Seconds one task may spend; then its remaining rows are marked without being sent
        (default ``None``: no deadline). See :class:`RestOptions`.
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
        4 KiB (:func:`default_max_file_bytes`).

    Returns
    -------
    A column function returning ``struct<prediction, confidence, error, attempts>``.

    Raises
    ------
    ModelServerUnavailableError
        ``check`` is on and the server is down or does not serve the model.
    PayloadError
        ``payload`` is not one of ``"auto"``, ``"b64"``, ``"pixels"``.
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
    if payload not in PAYLOADS:  # before any request
        resolve_payload(url, name, payload)
    if check:
        check_model_server(url, name, timeout=max(connect_timeout, 5.0))
    chosen = resolve_payload(url, name, payload, timeout=max(connect_timeout, 5.0))
    endpoint = f"{url}/v1/models/{name}:predict"
    names, size = spec.class_names, spec.image_size

    # PySpark's stubs have no overload for the type-hint form (SPARK-39142), which the docs
    # recommend over functionType: the decorated function is untyped (Any) to mypy.
    @pandas_udf(RESULT_DDL)  # type: ignore[call-overload]
    def score_rest(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        yield from score_task(batches, endpoint, options, names, size, where=url,
                              payload=chosen, max_file_bytes=max_file_bytes)

    score_rest.payload = chosen  # what the tasks send, for the caller to see
    return score_rest
