"""The scoring core every inference style shares: the result struct, the per-worker model
cache, the Keras predict function and :func:`score_images`, a pure function from image bytes
to result rows (tested without Spark). TensorFlow's per-task setup is
:mod:`lab_utils.common.tensorflow`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.common.cache import WorkerCache
from lab_utils.common.tensorflow import (
    MakePredictFn,
    PredictFn,
    configure_tensorflow,
    graph_predict,
)
from lab_utils.data import images
from lab_utils.errors import LabError
from lab_utils.inference import checks

RESULT_DDL = "prediction string, confidence float, error string"
RESULT_FIELDS = ("prediction", "confidence", "error")
DEFAULT_BATCH_SIZE = 256


class InferenceError(LabError, RuntimeError):
    """Raised with ``fail_fast=True``: names the file that could not be scored."""


# --------------------------------------------------------------------------- per-worker state

#: Models kept per Python worker, least recently used dropped first (predict_batch_udf keeps 3).
CACHE_SIZE = 3
_CACHE: WorkerCache[PredictFn] = WorkerCache(CACHE_SIZE, freeze=True)
#: How many times each key was loaded in this process (tests read it to prove "once per worker").
LOAD_COUNTS: dict[Any, int] = _CACHE.loads


def cached_predict_fn(key: Any, make_predict_fn: MakePredictFn) -> PredictFn:
    """Return this Python worker's predict function for ``key``, creating it on first use.

    Python workers are reused across tasks (``spark.python.worker.reuse``, on by default), so a
    model is loaded once per worker process, not per task or per batch. At most
    :data:`CACHE_SIZE` models stay cached; the least recently used is dropped.

    Examples
    --------
    The maker runs once per key in a process; later calls get the same predict function:

    >>> loads = []
    >>> def make_model():
    ...     loads.append(1)  # stands for loading a model from disk
    ...     return lambda pixels: pixels.mean(axis=(1, 2, 3))
    >>> first = cached_predict_fn(("doc-model", 1), make_model)
    >>> cached_predict_fn(("doc-model", 1), make_model) is first, len(loads)
    (True, 1)
    """
    return _CACHE.get(key, make_predict_fn)


def keras_predict_fn(model_file: Path | str, *, threads: int | None = None) -> MakePredictFn:
    """``make_predict_fn`` for a saved Keras model: load once, one compiled call per batch
    (:func:`graph_predict`)."""
    model_file = str(model_file)

    def make() -> PredictFn:
        configure_tensorflow(threads)
        import keras

        return graph_predict(keras.saving.load_model(model_file, compile=False))

    return make


# --------------------------------------------------------------------------- the pure core


def score_images(
    paths: Iterable[str | None],
    contents: Iterable[bytes | None],
    predict: PredictFn,
    class_names: tuple[str, ...],
    image_size: tuple[int, int],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fail_fast: bool = False,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
) -> pd.DataFrame:
    """Decode, batch and predict; one output row per input row, in order.

    Pure Python (no Spark): every UDF style calls it, and unit tests call it with fake models.
    A row whose output is not probabilities (NaN, inf, outside ``[0, 1]``:
    :func:`~lab_utils.inference.checks.row_problems`) gets an error and no prediction.

    Examples
    --------
    ``predict`` takes a batch of ``uint8[N, height, width, 3]`` pixels and returns ``float[N,
    classes]`` probabilities; here it calls an image dark or light by its mean pixel:

    >>> import io
    >>> from PIL import Image
    >>> def png(level):
    ...     buffer = io.BytesIO()
    ...     Image.new("RGB", (8, 8), (level, level, level)).save(buffer, format="PNG")
    ...     return buffer.getvalue()
    >>> def predict(pixels):
    ...     light = pixels.mean(axis=(1, 2, 3)) / 255
    ...     return np.stack([1 - light, light], axis=1)
    >>> score_images(["a.png", "b.png", "c.png"], [png(51), b"", png(255)], predict,
    ...              ("dark", "light"), (4, 4))
      prediction  confidence                 error
    0       dark         0.8                  None
    1       None         NaN  empty file (0 bytes)
    2      light         1.0                  None
    """
    prediction, confidence, error = score_columns(
        paths, contents, predict, class_names, image_size, batch_size=batch_size,
        fail_fast=fail_fast, max_pixels=max_pixels)
    return pd.DataFrame({"prediction": pd.Series(prediction, dtype=object),
                         "confidence": pd.Series(confidence, dtype="float32"),
                         "error": pd.Series(error, dtype=object)})


def score_columns(
    paths: Iterable[str | None],
    contents: Iterable[bytes | None],
    predict: PredictFn,
    class_names: tuple[str, ...],
    image_size: tuple[int, int],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fail_fast: bool = False,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
) -> tuple[list[str | None], list[float | None], list[str | None]]:
    """The loop :func:`score_images` (pandas out) and
    :func:`~lab_utils.inference.udfs.score_arrow` (Arrow out) share: decode, batch, predict,
    check; the ``prediction``, ``confidence`` and ``error`` columns as plain lists, one entry per
    input row, in order."""
    paths = list(paths)
    contents = list(contents)
    n = len(contents)
    prediction: list[str | None] = [None] * n
    confidence: list[float | None] = [None] * n
    good, pixels, error = images.decode_all(paths, contents, image_size, max_pixels=max_pixels,
                                            fail_fast=fail_fast, error_type=InferenceError)
    for start in range(0, len(good), batch_size):
        rows = good[start:start + batch_size]
        batch = np.stack(pixels[start:start + batch_size])
        probabilities = np.asarray(predict(batch))
        if probabilities.shape != (len(rows), len(class_names)):
            raise InferenceError(
                f"the model returned shape {probabilities.shape} for {len(rows)} images; "
                f"expected ({len(rows)}, {len(class_names)}) probabilities for {class_names}")
        # NaN, inf or -3 would give a confident-looking class: those rows get an error instead.
        problems = checks.row_problems(probabilities)
        if problems and fail_fast:
            first = min(problems)
            raise InferenceError(f"{paths[rows[first]]}: {checks.row_error(problems[first])}")
        best = probabilities.argmax(axis=1)
        for j, (row, k) in enumerate(zip(rows, best, strict=True)):
            if j in problems:
                error[row] = checks.row_error(problems[j])
            else:
                prediction[row] = class_names[int(k)]
                confidence[row] = float(probabilities[j, k])
    return prediction, confidence, error
