"""Batch image inference on Spark, one factory per UDF style, all shaped like Spark's own
``pyspark.ml.functions.predict_batch_udf``.

Every style reads ``binaryFile`` rows (``path``, ``content``), decodes and resizes the image in
the Python worker (JPEG/PNG bytes cross Arrow, never float tensors), and returns the struct
``prediction`` (class name), ``confidence`` (its probability) and ``error`` (null, or why this
row could not be scored). A bad file is one row's error, not a dead job; ``fail_fast=True``
raises instead, naming the file.

The model comes from ``make_predict_fn``: a zero-argument function returning
``predict(pixels: uint8[N, H, W, 3]) -> float[N, classes]``. It is called once per Python
worker and cached (:func:`cached_predict_fn`), never once per batch; with the default
:func:`keras_predict_fn` TensorFlow is imported only there, and its thread pools are sized to
the cores Spark gave the task before TensorFlow runs its first op.

Styles:

* :func:`row_udf` - row-at-a-time Python UDF, pickled (``use_arrow=False``) or Arrow-optimised;
* :func:`pandas_udf_series` - Series -> Series pandas UDF, one call per Arrow batch;
* :func:`iterator_udf` - Iterator[Series] pandas UDF, one call per partition;
* :func:`spark_predict_batch_udf` - Spark's ``predict_batch_udf`` around the same predict fn;
* :func:`arrow_iterator_udf` - Iterator[pyarrow.Array] Arrow UDF (``arrow_udf``, Spark 4.1),
  one call per partition, no pandas objects;
* :func:`map_in_pandas` - ``DataFrame.mapInPandas`` over whole partitions;
* :class:`PartitionPredictor` - a ``mapPartitionsWithIndex`` predictor with a pluggable
  model loader, row pre/post-processors, batch size and GPU placement.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals
import pyarrow as pa  # the same, for the Arrow UDF's

from lab_utils.common.cache import file_key
from lab_utils.common.saved_model import ModelSpec, load_spec
from lab_utils.common.tensorflow import MakePredictFn, PredictFn
from lab_utils.inference.scoring import (
    DEFAULT_BATCH_SIZE,
    RESULT_DDL,
    RESULT_FIELDS,
    cached_predict_fn,
    keras_predict_fn,
    score_columns,
    score_images,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql._typing import ColumnOrName


def _resolve(model: ModelSpec | Path | str, make_predict_fn: MakePredictFn | None):
    """Check the model on the driver (before any job) and pick the predict function maker."""
    spec = model if isinstance(model, ModelSpec) else load_spec(model)
    make = make_predict_fn or keras_predict_fn(spec.model_file)
    # One cache entry per model file version (a retrained model is loaded afresh) and per
    # custom predict function.
    key = (*file_key(spec.model_file), _maker_key(make_predict_fn) if make_predict_fn else 0)
    return spec, make, key


def udf_cache_key(model: ModelSpec | Path | str, make_predict_fn: MakePredictFn | None = None):
    """The key under which the UDF factories here cache ``make_predict_fn``'s model in a worker.

    Other code in the same Python workers can share that model instead of loading its own:
    ``cached_predict_fn(udf_cache_key(spec, make), make)`` as a partition predictor's loader
    finds the model a UDF of the same maker loaded (with the lab's session, RDD functions and
    SQL UDFs run in the same workers). Pass the maker the UDFs were given.

    Examples
    --------
    One key per model file version and maker: factories given the same maker share a model.

    >>> key = udf_cache_key(model_dir, make_predict_fn)
    >>> key == udf_cache_key(model_dir, make_predict_fn), key == udf_cache_key(model_dir)
    (True, False)
    >>> from lab_utils.inference import cached_predict_fn
    >>> predict = cached_predict_fn(key, make_predict_fn)  # what a UDF's worker loaded
    >>> predict(np.full((1, 4, 4, 3), 255, np.uint8)).tolist()  # dark, light
    [[0.0, 1.0]]
    """
    return _resolve(model, make_predict_fn)[2]


def _maker_key(make_predict_fn: MakePredictFn) -> str:
    """A key for ``make_predict_fn`` that no other maker ever gets.

    Not ``id()``: CPython reuses a freed object's id, so a maker made in a loop (one per model)
    could get the id of the previous one, and every worker would keep serving the previous
    model from its cache. The key is stored on the maker, so factories given the same maker
    share one cached model per worker.
    """
    key = getattr(make_predict_fn, "_lab_cache_key", None)
    if key is None:
        key = uuid.uuid4().hex
        # A maker without __dict__ (a builtin, a slotted object) gets a new key per call.
        with contextlib.suppress(AttributeError):
            make_predict_fn._lab_cache_key = key  # type: ignore[attr-defined]
    return key


def _scorer(spec: ModelSpec, make: MakePredictFn, key: Any, batch_size: int, fail_fast: bool):
    names, size = spec.class_names, spec.image_size

    def predict(batch):
        # Looked up per model batch, so the model loads only once a batch decodes: a task of
        # bad files, or one that fail_fast stops at its first bad file, never imports
        # TensorFlow (Spark retries a failed task 4 times, each in a fresh Python worker).
        return cached_predict_fn(key, make)(batch)

    def score(paths, contents) -> pd.DataFrame:
        return score_images(paths, contents, predict, names, size, batch_size=batch_size,
                            fail_fast=fail_fast)

    return score


def row_udf(
    model: ModelSpec | Path | str,
    make_predict_fn: MakePredictFn | None = None,
    *,
    use_arrow: bool,
    fail_fast: bool = False,
) -> Callable[[ColumnOrName, ColumnOrName], Column]:
    """Row-at-a-time Python UDF ``f(path, content)``: one Python call and one model call per row.

    Kept for comparison: ``use_arrow=False`` is the classic pickled UDF, ``use_arrow=True`` the
    Arrow-optimised one (Spark's default since 4.2). Both are the slow way.

    Examples
    --------
    ``model_dir`` holds a two-class model (``dark``, ``light``) and ``make_predict_fn`` loads it
    (without it, :func:`keras_predict_fn` loads ``model.keras``); ``images_dir`` has four
    images in ``dark/`` and ``light/`` and an empty ``light/empty.png``:

    >>> from lab_utils.inference import read_images
    >>> classify = row_udf(model_dir, make_predict_fn, use_arrow=True)
    >>> scored = read_images(spark, images_dir).select(
    ...     "label", classify("path", "content").alias("r"))
    >>> scored.select("label", "r.prediction", "r.error").orderBy("label", "prediction").show()
    +-----+----------+--------------------+
    |label|prediction|               error|
    +-----+----------+--------------------+
    | dark|      dark|                NULL|
    | dark|      dark|                NULL|
    |light|      NULL|empty file (0 bytes)|
    |light|     light|                NULL|
    |light|     light|                NULL|
    +-----+----------+--------------------+
    """
    from pyspark.sql.functions import udf

    spec, make, key = _resolve(model, make_predict_fn)
    score = _scorer(spec, make, key, 1, fail_fast)

    def predict_row(path, content):
        row = score([path], [content]).iloc[0]
        return (row["prediction"], None if row["confidence"] != row["confidence"]
                else float(row["confidence"]), row["error"])

    return udf(predict_row, RESULT_DDL, useArrow=use_arrow)


def pandas_udf_series(
    model: ModelSpec | Path | str,
    make_predict_fn: MakePredictFn | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fail_fast: bool = False,
) -> Callable[[ColumnOrName, ColumnOrName], Column]:
    """Series -> Series pandas UDF ``f(path, content)``: one call per Arrow batch.

    The model still loads once per worker (cached), instead of loading it in the UDF body,
    which costs one model load per Arrow batch.

    Examples
    --------
    ``model_dir`` (classes ``dark``, ``light``), its ``make_predict_fn`` and ``images_dir`` as
    in :func:`row_udf`; the struct's fields become columns with ``r.*``:

    >>> from lab_utils.inference import read_images
    >>> classify = pandas_udf_series(model_dir, make_predict_fn, batch_size=64)
    >>> scored = read_images(spark, images_dir).withColumn("r", classify("path", "content"))
    >>> scored.select("label", "r.*").where("error IS NULL").orderBy("label", "confidence").show()
    +-----+----------+----------+-----+
    |label|prediction|confidence|error|
    +-----+----------+----------+-----+
    | dark|      dark|       0.8| NULL|
    | dark|      dark|       1.0| NULL|
    |light|     light|       0.8| NULL|
    |light|     light|       1.0| NULL|
    +-----+----------+----------+-----+
    """
    from pyspark.sql.functions import pandas_udf

    spec, make, key = _resolve(model, make_predict_fn)
    score = _scorer(spec, make, key, batch_size, fail_fast)

    # PySpark's stubs have no overload for the type-hint form (SPARK-39142), which the docs
    # recommend over functionType: the decorated function is untyped (Any) to mypy.
    @pandas_udf(RESULT_DDL)  # type: ignore[call-overload]
    def predict_series(paths: pd.Series, contents: pd.Series) -> pd.DataFrame:
        return score(paths, contents)

    return predict_series


def iterator_udf(
    model: ModelSpec | Path | str,
    make_predict_fn: MakePredictFn | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fail_fast: bool = False,
) -> Callable[[ColumnOrName, ColumnOrName], Column]:
    """Iterator pandas UDF ``f(path, content)``: one call per partition, batches streamed.

    Examples
    --------
    ``model_dir`` (classes ``dark``, ``light``), its ``make_predict_fn`` and ``images_dir`` as
    in :func:`row_udf`: four images right, the empty file one row's error.

    >>> from lab_utils.inference import read_images
    >>> classify = iterator_udf(model_dir, make_predict_fn, batch_size=64)
    >>> scored = read_images(spark, images_dir).select(
    ...     "label", classify("path", "content").alias("r"))
    >>> scored.where("r.prediction = label").count(), scored.where("r.error IS NOT NULL").count()
    (4, 1)
    """
    from pyspark.sql.functions import pandas_udf

    spec, make, key = _resolve(model, make_predict_fn)
    score = _scorer(spec, make, key, batch_size, fail_fast)

    # PySpark's stubs have no overload for the type-hint form (SPARK-39142), which the docs
    # recommend over functionType: the decorated function is untyped (Any) to mypy.
    @pandas_udf(RESULT_DDL)  # type: ignore[call-overload]
    def predict_iter(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for paths, contents in batches:
            yield score(paths, contents)

    return predict_iter


def spark_predict_batch_udf(
    model: ModelSpec | Path | str,
    make_predict_fn: MakePredictFn | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fail_fast: bool = False,
) -> Callable[[ColumnOrName, ColumnOrName], Column]:
    """Spark's own ``predict_batch_udf`` around the same decode + predict core.

    Spark caches the predict function per Python worker itself (an LRU of 3 models).

    Examples
    --------
    ``model_dir`` (classes ``dark``, ``light``), its ``make_predict_fn`` and ``images_dir`` as
    in :func:`row_udf`; the column is the same struct as the other styles':

    >>> from lab_utils.inference import read_images
    >>> classify = spark_predict_batch_udf(model_dir, make_predict_fn, batch_size=64)
    >>> scored = read_images(spark, images_dir).select(
    ...     "label", classify("path", "content").alias("r"))
    >>> scored.schema["r"].dataType.simpleString()
    'struct<prediction:string,confidence:float,error:string>'
    >>> scored.where("r.prediction = label").count()
    4
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import _parse_datatype_string

    spec, make, key = _resolve(model, make_predict_fn)
    names, size = spec.class_names, spec.image_size

    def make_predict_fn_for_spark():
        predict = cached_predict_fn(key, make)

        def predict_columns(paths: np.ndarray, contents: np.ndarray) -> dict[str, np.ndarray]:
            frame = score_images(paths, contents, predict, names, size, batch_size=batch_size,
                                 fail_fast=fail_fast)
            return {"prediction": frame["prediction"].to_numpy(),
                    "confidence": frame["confidence"].to_numpy(),
                    "error": frame["error"].to_numpy()}

        return predict_columns

    return_type = _parse_datatype_string(RESULT_DDL)  # a StructType: the DDL is a field list
    return predict_batch_udf(make_predict_fn_for_spark, return_type=return_type,
                             batch_size=batch_size)


def score_arrow(paths: list, contents: list, predict: PredictFn, class_names: tuple[str, ...],
                image_size: tuple[int, int], *, batch_size: int = DEFAULT_BATCH_SIZE,
                fail_fast: bool = False):
    """:func:`~lab_utils.inference.scoring.score_images` with a ``pyarrow.StructArray`` out
    (``prediction``, ``confidence``, ``error``) and no pandas object on the way: what
    :func:`arrow_iterator_udf` yields per Arrow batch. Same decode, same checks on the model's
    output, same per-row errors.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> def png(level):
    ...     buffer = io.BytesIO()
    ...     Image.new("RGB", (8, 8), (level, level, level)).save(buffer, format="PNG")
    ...     return buffer.getvalue()
    >>> def predict(pixels):
    ...     light = pixels.mean(axis=(1, 2, 3)) / 255
    ...     return np.stack([1 - light, light], axis=1)
    >>> out = score_arrow(["a.png", "b.png"], [png(51), b""], predict, ("dark", "light"), (4, 4))
    >>> out.type
    StructType(struct<prediction: string, confidence: float, error: string>)
    >>> out.to_pylist()[1]
    {'prediction': None, 'confidence': None, 'error': 'empty file (0 bytes)'}
    """
    prediction, confidence, error = score_columns(paths, contents, predict, class_names, image_size,
                                                  batch_size=batch_size, fail_fast=fail_fast)
    return pa.StructArray.from_arrays(
        [pa.array(prediction, pa.string()), pa.array(confidence, pa.float32()),
         pa.array(error, pa.string())], names=list(RESULT_FIELDS))


def arrow_iterator_udf(
    model: ModelSpec | Path | str,
    make_predict_fn: MakePredictFn | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fail_fast: bool = False,
) -> Callable[[ColumnOrName, ColumnOrName], Column]:
    """Iterator Arrow UDF ``f(path, content)`` (``arrow_udf``, ``ArrowUDFType.SCALAR_ITER``,
    Spark 4.1): one call per partition, each Arrow batch's ``pyarrow`` arrays decoded and
    scored (:func:`score_arrow`) and a ``pyarrow.StructArray`` returned, with no pandas
    Series or DataFrame built on either side. The model loads once per worker, as in
    :func:`iterator_udf`, whose rows it returns.

    Examples
    --------
    ``model_dir`` (classes ``dark``, ``light``), its ``make_predict_fn`` and ``images_dir`` as
    in :func:`row_udf`:

    >>> from lab_utils.inference import read_images
    >>> classify = arrow_iterator_udf(model_dir, make_predict_fn, batch_size=64)
    >>> scored = read_images(spark, images_dir).select(
    ...     "label", classify("path", "content").alias("r"))
    >>> scored.where("r.prediction = label").count(), scored.where("r.error IS NOT NULL").count()
    (4, 1)
    """
    from pyspark.sql.functions import arrow_udf

    spec, make, key = _resolve(model, make_predict_fn)
    names, size = spec.class_names, spec.image_size

    def predict(batch):  # looked up per model batch, as in _scorer
        return cached_predict_fn(key, make)(batch)

    # The type hints make it an iterator Arrow UDF (ArrowUDFType.SCALAR_ITER), the form PySpark
    # prefers over the functionType argument (it warns on that); untyped to mypy, as above.
    @arrow_udf(RESULT_DDL)  # type: ignore[call-overload]
    def predict_arrow(batches: Iterator[tuple[pa.Array, pa.Array]]) -> Iterator[pa.Array]:
        for paths, contents in batches:
            yield score_arrow(paths.to_pylist(), contents.to_pylist(), predict, names, size,
                              batch_size=batch_size, fail_fast=fail_fast)

    return predict_arrow


def map_in_pandas(
    df: DataFrame,
    model: ModelSpec | Path | str,
    make_predict_fn: MakePredictFn | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fail_fast: bool = False,
    keep: tuple[str, ...] = ("path",),
) -> DataFrame:
    """Score ``df`` (``path``, ``content``) with ``mapInPandas``: whole partitions, no UDF column.

    Returns the ``keep`` columns plus ``prediction``, ``confidence``, ``error``.

    Examples
    --------
    ``model_dir`` (classes ``dark``, ``light``), its ``make_predict_fn`` and ``images_dir`` as
    in :func:`row_udf`; ``keep`` chooses the input columns that come along:

    >>> from lab_utils.inference import read_images
    >>> scored = map_in_pandas(read_images(spark, images_dir), model_dir, make_predict_fn,
    ...                        keep=("label",))
    >>> scored.columns
    ['label', 'prediction', 'confidence', 'error']
    >>> scored.where("prediction = label").count()
    4
    """
    spec, make, key = _resolve(model, make_predict_fn)
    score = _scorer(spec, make, key, batch_size, fail_fast)
    schema = ", ".join(f"{df.schema[c].simpleString().replace(':', ' ', 1)}" for c in keep)
    schema = f"{schema}, {RESULT_DDL}" if schema else RESULT_DDL

    def predict_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            scored = score(frame["path"], frame["content"])
            yield pd.concat([frame[list(keep)].reset_index(drop=True), scored], axis=1)

    return df.select(*dict.fromkeys([*keep, "path", "content"])).mapInPandas(
        predict_partition, schema)
