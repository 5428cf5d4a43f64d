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
* :func:`map_in_pandas` - ``DataFrame.mapInPandas`` over whole partitions;
* :class:`PartitionPredictor` - the seed's ``mapPartitionsWithIndex`` design with a pluggable
  model loader, row pre/post-processors, batch size and GPU placement.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.common.atomic import atomic_write
from lab_utils.common.cache import WorkerCache
from lab_utils.common.task import task_cpus, task_resources
from lab_utils.data import images
from lab_utils.errors import LabError
from lab_utils.training.cnn import ModelSpec, load_spec

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

PredictFn = Callable[[np.ndarray], np.ndarray]
MakePredictFn = Callable[[], PredictFn]

RESULT_DDL = "prediction string, confidence float, error string"
RESULT_FIELDS = ("prediction", "confidence", "error")
DEFAULT_BATCH_SIZE = 256


class InferenceError(LabError, RuntimeError):
    """Raised with ``fail_fast=True``: names the file that could not be scored."""


# --------------------------------------------------------------------------- per-worker state

#: Models kept per Python worker, least recently used dropped first (predict_batch_udf keeps 3).
CACHE_SIZE = 3
_CACHE: WorkerCache[PredictFn] = WorkerCache(CACHE_SIZE)
#: How many times each key was loaded in this process (tests read it to prove "once per worker").
LOAD_COUNTS: dict[Any, int] = _CACHE.loads


def cached_predict_fn(key: Any, make_predict_fn: MakePredictFn) -> PredictFn:
    """Return this Python worker's predict function for ``key``, creating it on first use.

    Python workers are reused across tasks (``spark.python.worker.reuse``, on by default), so a
    model is loaded once per worker process, not per task or per batch. At most
    :data:`CACHE_SIZE` models stay cached; the least recently used is dropped.
    """
    return _CACHE.get(key, make_predict_fn)


_TF_CONFIGURED = False


def configure_tensorflow(threads: int | None = None) -> None:
    """Size TensorFlow's thread pools to the task's cores, once, before TF runs any op.

    TensorFlow ignores ``OMP_NUM_THREADS``; left alone, every Python worker starts pools as
    large as the machine, and several tasks per machine oversubscribe the cores.
    ``LAB_TF_THREADS`` (an executor environment variable) overrides it for experiments: a
    number, or ``tf`` to leave TensorFlow's own machine-sized pools (the oversubscribed setup).
    """
    global _TF_CONFIGURED
    if _TF_CONFIGURED:
        return
    override = os.environ.get("LAB_TF_THREADS", "").strip().lower()
    if override == "tf" and threads is None:
        _TF_CONFIGURED = True
        return
    import tensorflow as tf

    n = threads or (int(override) if override.isdigit() else 0) or task_cpus()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TF already ran an op in this process: its pools are fixed, keep them
    _TF_CONFIGURED = True


def graph_predict(model, preprocess: Callable | None = None) -> PredictFn:
    """``predict(pixels) -> outputs`` running ``model`` (and ``preprocess``) as one TF graph.

    Keras 3 calls a functional model eagerly, and an eager call keeps every intermediate
    activation of the batch alive until it returns: ResNet-50 at batch 16 peaks at ~3.3 GB of
    resident memory that way. Traced once by ``tf.function`` for any batch size, the graph
    runtime frees each activation after its last use (~1.2 GB) and skips per-op dispatch. It
    also skips ``model.predict``'s per-call dataset setup and progress bar.
    """
    import tensorflow as tf

    shape = tuple(model.inputs[0].shape)[1:]

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    def call(x):
        return model(preprocess(x) if preprocess else x, training=False)

    def predict(pixels: np.ndarray) -> np.ndarray:
        return call(np.asarray(pixels, dtype=np.float32)).numpy()

    predict.graph = call  # type: ignore[attr-defined] - tests read its tracing count
    return predict


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
    """
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
        best = probabilities.argmax(axis=1)
        for row, k, p in zip(rows, best, probabilities[np.arange(len(rows)), best], strict=True):
            prediction[row] = class_names[int(k)]
            confidence[row] = float(p)
    return pd.DataFrame({"prediction": pd.Series(prediction, dtype=object),
                         "confidence": pd.Series(confidence, dtype="float32"),
                         "error": pd.Series(error, dtype=object)})


# --------------------------------------------------------------------------- factories


def _resolve(model: ModelSpec | Path | str, make_predict_fn: MakePredictFn | None):
    """Check the model on the driver (before any job) and pick the predict function maker."""
    spec = model if isinstance(model, ModelSpec) else load_spec(model)
    make = make_predict_fn or keras_predict_fn(spec.model_file)
    # One cache entry per model file version (a retrained model is loaded afresh) and per
    # custom predict function.
    key = (str(spec.model_file), spec.model_file.stat().st_mtime_ns,
           _maker_key(make_predict_fn) if make_predict_fn else 0)
    return spec, make, key


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

    def score(paths, contents) -> pd.DataFrame:
        predict = cached_predict_fn(key, make)
        return score_images(paths, contents, predict, names, size, batch_size=batch_size,
                            fail_fast=fail_fast)

    return score


def row_udf(
    model: ModelSpec | Path | str,
    make_predict_fn: MakePredictFn | None = None,
    *,
    use_arrow: bool,
    fail_fast: bool = False,
) -> Callable[[Column, Column], Column]:
    """Row-at-a-time Python UDF ``f(path, content)``: one Python call and one model call per row.

    Kept for comparison: ``use_arrow=False`` is the classic pickled UDF, ``use_arrow=True`` the
    Arrow-optimised one (Spark's default since 4.2). Both are the slow way.
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
) -> Callable[[Column, Column], Column]:
    """Series -> Series pandas UDF ``f(path, content)``: one call per Arrow batch.

    The model still loads once per worker (cached), unlike the field's version that loads it
    in the UDF body on every batch.
    """
    from pyspark.sql.functions import pandas_udf

    spec, make, key = _resolve(model, make_predict_fn)
    score = _scorer(spec, make, key, batch_size, fail_fast)

    @pandas_udf(RESULT_DDL)
    def predict_series(paths: pd.Series, contents: pd.Series) -> pd.DataFrame:
        return score(paths, contents)

    return predict_series


def iterator_udf(
    model: ModelSpec | Path | str,
    make_predict_fn: MakePredictFn | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fail_fast: bool = False,
) -> Callable[[Column, Column], Column]:
    """Iterator pandas UDF ``f(path, content)``: one call per partition, batches streamed."""
    from pyspark.sql.functions import pandas_udf

    spec, make, key = _resolve(model, make_predict_fn)
    score = _scorer(spec, make, key, batch_size, fail_fast)

    @pandas_udf(RESULT_DDL)
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
) -> Callable[[Column, Column], Column]:
    """Spark's own ``predict_batch_udf`` around the same decode + predict core.

    Spark caches the predict function per Python worker itself (an LRU of 3 models).
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import StructType, _parse_datatype_string

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

    return_type: StructType = _parse_datatype_string(RESULT_DDL)
    return predict_batch_udf(make_predict_fn_for_spark, return_type=return_type,
                             batch_size=batch_size)


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


# --------------------------------------------------------------------------- partition predictor


def select_device(partition_index: int, gpu_count: int | None = None) -> str:
    """Where a partition runs: Spark's GPU assignment, else index mod GPUs, else the CPU.

    1. When Spark schedules GPUs (``spark.task.resource.gpu.amount``), the task's own
       ``TaskContext.resources()["gpu"]`` address: Spark guarantees no two tasks share it.
    2. Otherwise, with ``gpu_count`` GPUs visible, ``partition_index % gpu_count`` (the seed's
       rule: fine for one executor per machine, racy when several share the GPUs).
    3. Otherwise the CPU.
    Returns a TensorFlow device string: ``/GPU:<n>`` or ``/CPU:0``.
    """
    resources = task_resources()
    if "gpu" in resources and resources["gpu"].addresses:
        return f"/GPU:{int(resources['gpu'].addresses[0])}"
    if gpu_count is None:
        import tensorflow as tf

        gpu_count = len(tf.config.list_physical_devices("GPU"))
    if gpu_count > 0:
        return f"/GPU:{partition_index % gpu_count}"
    return "/CPU:0"


class PartitionPredictor:
    """The seed's partition-level predictor, on ``mapPartitionsWithIndex``.

    Parameters
    ----------
    model_loader : Callable[[str], PredictFn]
        Given a device string (``/GPU:0``, ``/CPU:0``), returns ``predict(batch) -> outputs``.
        Called once per Python worker and device (cached).
    preprocess : Callable[[Row], np.ndarray]
        Row -> model input for that row; raise to mark the row as an error.
    postprocess : Callable[[Row, np.ndarray | None, str | None], dict]
        (row, model output or None, error or None) -> output fields matching ``schema``.
    schema : str
        DDL of the output rows.
    batch_size : int
    gpu_count : int, optional
        Visible GPUs for the modulo rule; default: ask TensorFlow.
    """

    def __init__(self, model_loader: Callable[[str], PredictFn],
                 preprocess: Callable[[Any], np.ndarray],
                 postprocess: Callable[[Any, np.ndarray | None, str | None], dict],
                 schema: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 gpu_count: int | None = None):
        self.model_loader = model_loader
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.schema = schema
        self.batch_size = batch_size
        self.gpu_count = gpu_count
        # Made on the driver and pickled with the predictor: every task unpickles a new copy
        # of ``model_loader``, so its id() would differ per task and reload the model each time.
        self._cache_key = ("partition", uuid.uuid4().hex)

    def _predict_partition(self, index: int, rows: Iterator[Any]) -> Iterator[tuple]:
        device = select_device(index, self.gpu_count)
        predict = cached_predict_fn((*self._cache_key, device),
                                    lambda: self.model_loader(device))
        fields = [f.strip().split(" ")[0] for f in self.schema.split(",")]
        # Rows leave in the order they came: a bad row waits in the batch with its error.
        pending: list[tuple[Any, str | None]] = []
        inputs: list[np.ndarray] = []

        def flush() -> Iterator[tuple]:
            outputs = iter(predict(np.stack(inputs)) if inputs else ())
            for row, error in pending:
                out = None if error is not None else next(outputs)
                record = self.postprocess(row, out, error)
                yield tuple(record[f] for f in fields)
            pending.clear()
            inputs.clear()

        for row in rows:
            try:
                inputs.append(self.preprocess(row))
                pending.append((row, None))
            except Exception as exc:  # noqa: BLE001 - any bad row becomes that row's error
                pending.append((row, f"{type(exc).__name__}: {exc}"))
            if len(inputs) >= self.batch_size:
                yield from flush()
        yield from flush()

    def transform(self, df: DataFrame) -> DataFrame:
        """Score every row of ``df``; the result has ``schema``."""
        rdd = df.rdd.mapPartitionsWithIndex(self._predict_partition)
        return df.sparkSession.createDataFrame(rdd, self.schema)


def image_partition_predictor(
    model: ModelSpec | Path | str,
    model_loader: Callable[[str], PredictFn] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    gpu_count: int | None = None,
) -> PartitionPredictor:
    """A :class:`PartitionPredictor` for ``binaryFile`` image rows and a saved Keras model."""
    spec = model if isinstance(model, ModelSpec) else load_spec(model)
    names, size, model_file = spec.class_names, spec.image_size, str(spec.model_file)

    def keras_on_device(device: str) -> PredictFn:
        configure_tensorflow()
        import keras
        import tensorflow as tf

        with tf.device(device):
            net = keras.saving.load_model(model_file, compile=False)
            call = graph_predict(net)

        def predict(pixels: np.ndarray) -> np.ndarray:
            with tf.device(device):
                return call(pixels)

        return predict

    def preprocess(row) -> np.ndarray:
        return images.decode_image(row["content"], size)

    def postprocess(row, output, error) -> dict:
        if error is not None:
            return {"path": row["path"], "prediction": None, "confidence": None, "error": error}
        k = int(np.argmax(output))
        return {"path": row["path"], "prediction": names[k], "confidence": float(output[k]),
                "error": None}

    return PartitionPredictor(model_loader or keras_on_device, preprocess, postprocess,
                              f"path string, {RESULT_DDL}", batch_size=batch_size,
                              gpu_count=gpu_count)


# --------------------------------------------------------------------------- Spark helpers


def read_images(spark, folder: Path | str, *, partitions: int | None = None) -> DataFrame:
    """All files under ``folder`` (recursively) as ``path``, ``label``, ``content`` rows.

    Every file is read, not only ``*.png``/``*.jpg``: a stray non-image becomes a row with an
    error rather than a silently skipped file, and so does an empty file. ``label`` is the
    parent folder's name (the true class in the lab's layout).
    """
    from lab_utils.common.files import read_binary_files

    return read_binary_files(spark, folder, partitions=partitions)


def local_path(uri: str) -> str:
    """``file:/a/b c.png`` -> ``/a/b c.png`` (placing files needs a shared POSIX folder).

    Spark's file sources give Hadoop path strings, which are *not* percent-encoded: a file
    named ``50%25 off.png`` or ``a#b?.png`` is written as is, so the prefix is cut, nothing is
    decoded.
    """
    for prefix in ("file://", "file:"):
        if uri.startswith(prefix):
            return uri[len(prefix):]
    scheme = uri.split(":", 1)[0] if ":" in uri.split("/", 1)[0] else ""
    if scheme:
        raise ValueError(f"{uri}: only local or shared (NFS) folders can be sorted into class "
                         "folders; copy from other file systems with their own tools")
    return uri


def place_by_class(predictions: DataFrame, dest: Path | str, *, link: bool = False) -> DataFrame:
    """Copy every scored file into ``dest/<prediction>/`` (errors into ``dest/_errors/``).

    The copies run on the executors, in parallel, like the classification itself. Each file is
    written under a temporary name and renamed, so a retried task never leaves a torn file.
    ``link=True`` makes hard links instead of copies (same file system only).
    Returns ``path``, ``placed`` (the new path) and ``placed_error`` for each input row.
    """
    import shutil

    dest = str(dest)

    def place(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            placed, problems = [], []
            for path, label, error in zip(frame["path"], frame["prediction"], frame["error"],
                                          strict=True):
                folder = Path(dest) / ("_errors" if error is not None or label is None
                                       else str(label))
                try:
                    source = local_path(path)
                    folder.mkdir(parents=True, exist_ok=True)
                    target = folder / Path(source).name
                    atomic_write(target, (lambda tmp, s=source: os.link(s, tmp)) if link
                                 else (lambda tmp, s=source: shutil.copyfile(s, tmp)))
                    placed.append(str(target))
                    problems.append(None)
                except (OSError, ValueError) as exc:
                    placed.append(None)
                    problems.append(f"{type(exc).__name__}: {exc}")
            yield pd.DataFrame({"path": frame["path"], "placed": placed,
                                "placed_error": problems})

    return predictions.select("path", "prediction", "error").mapInPandas(
        place, "path string, placed string, placed_error string")
