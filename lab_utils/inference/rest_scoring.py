"""The REST scoring core run in a task: payloads, micro-batches and one row per image.

Pure Python (no Spark): :mod:`lab_utils.inference.rest_udf` wraps :func:`score_task` in a pandas
UDF, and unit tests call :func:`score_images_rest` with fake ``post`` functions. Images go in
micro-batches as ``{"instances": [...]}`` to ``POST {url}/v1/models/{name}:predict``
(:mod:`lab_utils.inference.rest_client` sends them, retries and counts the attempts), and each
row gets ``prediction``, ``confidence``, ``error`` and ``attempts`` (:data:`REST_RESULT_DDL`).

Two payloads, chosen on the driver (:func:`lab_utils.inference.rest_udf.resolve_payload`):
``"b64"``, the image files in TF Serving's binary form ``{"b64": "..."}`` (a 32x32 JPEG is
~1.4 KB of JSON instead of ~13 KB of pixel lists, and the workers decode nothing; the lab's
server decodes them as in-Spark inference does), and ``"pixels"``, each image decoded here and
sent as nested lists of uint8 (what a TF Serving model with a tensor input takes). With
``b64`` a file the server cannot decode is its own row's error: the server refuses the batch
(400), the worker decodes that batch to find the bad files, marks their rows and sends the
others again.

An answer is checked before use (:func:`~lab_utils.inference.checks.answer_matrix`): one that
is ragged, not numbers, of the wrong shape, or not probabilities (NaN, inf, outside ``[0, 1]``)
puts one error naming the model and the server on each row of its batch. A request that still
fails after its retries marks exactly its rows with an ``error`` and the task goes on
(``fail_fast=True`` raises :class:`RestScoringError` instead, naming the first file); once
the task's :class:`~lab_utils.inference.rest_client.TaskGuard` (circuit breaker, deadline)
blocks, the remaining rows get its reason without a request. With ``in_flight > 1``
(:class:`~lab_utils.inference.rest_client.RestOptions`) a task posts its micro-batches from a
pool of that many threads, one session each, and takes the answers back in order: the same rows.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lab_utils.data import images
from lab_utils.errors import LabError
from lab_utils.inference import checks
from lab_utils.inference.rest_body import answer_byte_cap
from lab_utils.inference.rest_client import PostResult, RestOptions, TaskGuard, post_with_retries
from lab_utils.inference.scoring import RESULT_DDL, RESULT_FIELDS

if TYPE_CHECKING:
    import requests

#: A REST row: the in-Spark result struct (:data:`~lab_utils.inference.scoring.RESULT_DDL`)
#: plus the HTTP requests its micro-batch took.
REST_RESULT_DDL = f"{RESULT_DDL}, attempts int"
REST_RESULT_FIELDS = (*RESULT_FIELDS, "attempts")
#: What :func:`score_images_rest` sends; ``"auto"`` is resolved on the driver before a task runs.
SENT_PAYLOADS = ("b64", "pixels")
FORCE_PIXELS = ("if the model takes tensors, not image files, pass payload='pixels' to send "
                "decoded pixels as nested lists")


class PayloadError(LabError, ValueError):
    """``payload=`` names no known payload (raised on the driver; :func:`score_images_rest`
    takes only what the driver resolved ``auto`` to, ``"b64"`` or ``"pixels"``)."""


class RestScoringError(LabError, RuntimeError):
    """Raised in a task with ``fail_fast=True`` when a micro-batch could not be scored."""


# --------------------------------------------------------------------------- payloads


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


# --------------------------------------------------------------------------- one batch, one task


@dataclasses.dataclass
class _Rows:
    """The result columns of one call, filled in place as the answers come."""

    error: list[str | None]
    prediction: list[str | None] = dataclasses.field(init=False)
    confidence: list[float | None] = dataclasses.field(init=False)
    attempts: list[int] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        n = len(self.error)
        self.prediction, self.confidence, self.attempts = [None] * n, [None] * n, [0] * n

    def frame(self) -> pd.DataFrame:
        columns = {"prediction": pd.Series(self.prediction, dtype=object),
                   "confidence": pd.Series(self.confidence, dtype="float32"),
                   "error": pd.Series(self.error, dtype=object),
                   "attempts": pd.Series(self.attempts, dtype="int32")}
        return pd.DataFrame({name: columns[name] for name in REST_RESULT_FIELDS})


def _prepare(
    paths: list, contents: list, image_size: tuple[int, int], *, payload: str,
    guard: TaskGuard | None, fail_fast: bool, max_pixels: int, max_file_bytes: int | None,
) -> tuple[list[int], list, list[str | None]]:
    """What to send: (positions, their items, per-row error). Nothing when the guard blocks."""
    reason = guard.blocked() if guard is not None else None
    if reason is not None:
        if fail_fast and contents:
            raise RestScoringError(f"{len(contents)} images from {paths[0]} on were not scored: "
                                   f"{reason}")
        return [], [], [reason] * len(contents)
    if payload == "b64":
        return prepare_files(paths, contents, image_size,
                             max_file_bytes=max_file_bytes or default_max_file_bytes(image_size),
                             max_pixels=max_pixels, fail_fast=fail_fast)
    return images.decode_all(paths, contents, image_size, max_pixels=max_pixels,
                             fail_fast=fail_fast, error_type=RestScoringError)


def _micro_batches(good: list[int], items: list,
                   batch_size: int) -> Iterator[tuple[list[int], list]]:
    """``(row positions, their items)``, ``batch_size`` at a time: one request each."""
    for start in range(0, len(good), batch_size):
        yield good[start:start + batch_size], items[start:start + batch_size]


def _send(post: Callable[[Any], PostResult], batch: list, payload: str,
          guard: TaskGuard | None) -> PostResult:
    """Post one micro-batch (files as they are, pixels stacked), unless the guard blocks; the
    guard counts the outcome."""
    blocked = guard.blocked() if guard is not None else None
    if blocked is not None:
        return PostResult(None, 0, blocked)
    result = post(batch if payload == "b64" else np.stack(batch))
    if guard is not None:
        guard.record(result)
    return result


def _resend_decodable(
    rows: list[int], batch: list, refused: PostResult, send: Callable[[list], PostResult],
    out: _Rows, paths: list, image_size: tuple[int, int], *, max_pixels: int, fail_fast: bool,
) -> tuple[list[int], PostResult]:
    """After a 400 to image files: which did the server refuse? The same decode, here, on this
    batch only. The undecodable ones get their decode error (the text pixels would give) and
    the refused request's attempts; the others are sent again, their attempts counting both
    requests. Every file decodes: the payload itself was refused, and the error says so.
    """
    ok, _, bad = images.decode_all([paths[r] for r in rows], batch, image_size,
                                   max_pixels=max_pixels, fail_fast=fail_fast,
                                   error_type=RestScoringError)
    if len(ok) == len(rows):
        if refused.error is None:
            return rows, refused
        return rows, dataclasses.replace(refused, error=f"{refused.error} (sent as image files, "
                                                        f"payload='b64'; {FORCE_PIXELS})")
    for row, problem in zip(rows, bad, strict=True):
        if problem is not None:
            out.error[row], out.attempts[row] = problem, refused.attempts
    rows, batch = [rows[j] for j in ok], [batch[j] for j in ok]
    if not rows:
        return rows, refused
    again = send(batch)
    return rows, dataclasses.replace(again, attempts=refused.attempts + again.attempts)


def _take_answer(out: _Rows, rows: list[int], result: PostResult, class_names: tuple[str, ...],
                 *, where: str, paths: list, fail_fast: bool) -> None:
    """Turn one micro-batch's answer into its rows: the most probable class and its
    probability, or on each of them the request's error, or what is wrong with the answer
    (:func:`~lab_utils.inference.checks.answer_matrix`: its shape, count, kind or values)."""
    problem = result.error
    probabilities: np.ndarray | None = None
    if problem is None:
        probabilities, wrong = checks.answer_matrix(result.outputs, len(rows), class_names)
        problem = None if wrong is None else f"{where} {wrong}"
    if problem is not None and fail_fast:
        raise RestScoringError(f"{len(rows)} images from {paths[rows[0]]} on could not be "
                               f"scored: {problem}")
    for j, row in enumerate(rows):
        out.attempts[row] = result.attempts
        if problem is not None:
            out.error[row] = problem
        elif probabilities is not None:  # always, when there is no problem
            k = int(probabilities[j].argmax())
            out.prediction[row] = class_names[k]
            out.confidence[row] = float(probabilities[j, k])


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
    pool: Executor | None = None,
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
    With a ``pool`` (an executor of ``in_flight`` threads, :func:`score_task`'s), the
    micro-batches are posted from its threads, as many at once as it has threads, and their
    answers taken in order: the same rows as without it. ``post`` (and the ``guard``) must
    then be safe to call from several threads at once.
    """
    if payload not in SENT_PAYLOADS:
        raise PayloadError(f"payload={payload!r}: score_images_rest sends 'b64' or 'pixels'")
    paths, contents = list(paths), list(contents)
    good, items, error = _prepare(paths, contents, image_size, payload=payload, guard=guard,
                                  fail_fast=fail_fast, max_pixels=max_pixels,
                                  max_file_bytes=max_file_bytes)
    out = _Rows(error)

    def send(batch: list) -> PostResult:
        return _send(post, batch, payload, guard)

    def one_batch(rows: list[int], batch: list) -> tuple[list[int], PostResult]:
        """Send one micro-batch (and its decodable files again after a 400); the undecodable
        files' rows are written here, each batch's rows being its own."""
        result = send(batch)
        if payload == "b64" and result.status == 400:
            return _resend_decodable(rows, batch, result, send, out, paths, image_size,
                                     max_pixels=max_pixels, fail_fast=fail_fast)
        return rows, result

    for rows, result in _in_order(one_batch, _micro_batches(good, items, batch_size), pool):
        if rows:
            _take_answer(out, rows, result, class_names, where=where, paths=paths,
                         fail_fast=fail_fast)
    return out.frame()


def _in_order(
    one_batch: Callable[[list[int], list], tuple[list[int], PostResult]],
    batches: Iterator[tuple[list[int], list]], pool: Executor | None,
) -> Iterator[tuple[list[int], PostResult]]:
    """``one_batch`` over the micro-batches, outcomes in their order: one after the other in
    this thread without a ``pool``; with one, all submitted at once (the pool's size bounds
    how many run) and taken back in order. An error raised in a batch (``fail_fast``) comes out
    at that batch's turn, and the batches not yet started are cancelled."""
    if pool is None:
        for rows, batch in batches:
            yield one_batch(rows, batch)
        return
    futures = [pool.submit(one_batch, rows, batch) for rows, batch in batches]
    try:
        for future in futures:
            yield future.result()
    finally:  # an error, or the caller stopped early: send nothing more
        for future in futures:
            future.cancel()


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
    model_name: str | None = None,
    new_session: Callable[[], requests.Session] | None = None,
) -> Iterator[pd.DataFrame]:
    """What one task of :func:`~lab_utils.inference.rest_udf.rest_udf` does with its batches of
    ``(path, content)``: HTTP sessions, one :class:`TaskGuard` (breaker and deadline), one
    frame per batch. An answer that is wrong in kind is its rows' error naming ``model_name``
    at ``where``; an answer over :func:`answer_byte_cap` of its batch is cut.

    With ``options.in_flight`` 1 the task posts from its own thread through one session
    (``session``, default a new ``requests.Session``). With more, a pool of ``in_flight``
    threads posts the micro-batches of each Arrow batch, and each thread has a session of its
    own from ``new_session`` (default ``requests.Session``); ``session`` is then refused.
    A session per thread, not one shared: ``requests`` does not promise that a ``Session`` is
    thread-safe (its cookie jar and adapters are shared state), and a shared one would keep at
    most its adapter's ``pool_maxsize`` (10) connections alive, reconnecting beyond that. Every
    session is closed when the task ends.
    """
    import requests

    if session is not None and options.in_flight > 1:
        raise RestScoringError(f"session= is one thread's session; with in_flight="
                               f"{options.in_flight} pass new_session= (a function returning "
                               "one for each sending thread)")
    guard = TaskGuard(options, where)
    encode = encode_b64 if payload == "b64" else encode_instances
    answerer = where if model_name is None else f"model {model_name} at {where}"
    make = new_session or requests.Session
    with contextlib.ExitStack() as stack:
        if options.in_flight == 1:
            # One session (one kept-alive connection) per task, closed when the task ends.
            one = stack.enter_context(session or make())

            def session_here() -> requests.Session:
                return one
            pool: Executor | None = None
        else:
            local, lock, opened = threading.local(), threading.Lock(), []

            def session_here() -> requests.Session:
                if not hasattr(local, "session"):
                    local.session = make()
                    with lock:
                        opened.append(local.session)
                return local.session

            # Registered before the pool is entered, so run after it has shut down: no
            # session is closed under a request still in flight.
            stack.callback(lambda: [s.close() for s in opened])
            pool = stack.enter_context(ThreadPoolExecutor(
                options.in_flight, thread_name_prefix="rest-in-flight"))

        def post(batch: Any) -> PostResult:
            return post_with_retries(session_here(), endpoint, encode(batch), options,
                                     deadline=guard.deadline,
                                     max_answer_bytes=answer_byte_cap(len(batch),
                                                                      len(class_names)))

        for paths, contents in batches:
            yield score_images_rest(paths, contents, post, class_names, image_size,
                                    batch_size=options.batch_size,
                                    fail_fast=options.fail_fast, where=answerer, guard=guard,
                                    payload=payload, max_file_bytes=max_file_bytes, pool=pool)
