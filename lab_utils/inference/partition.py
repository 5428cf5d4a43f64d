"""The partition predictor: scoring whole partitions, one model per Python worker, a pluggable
model loader, row pre/post-processors, a batch size and GPU placement (by the task's scheduled GPU
when Spark assigns one, else partition index modulo the visible GPUs).

Two forms run the same partition function: ``df.rdd.mapPartitionsWithIndex`` (the seed's, classic
sessions only: Spark Connect has no RDDs) and ``df.mapInPandas`` (both modes; the partition's
index from ``common.task.partition_id``, its rows rebuilt as ``Row`` objects). They give the same
rows; :meth:`PartitionPredictor.transform` picks the RDD form in classic mode and ``mapInPandas``
under Connect unless told which.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lab_utils.common.connect import is_connect, require_classic
from lab_utils.common.saved_model import ModelSpec, load_spec
from lab_utils.common.task import partition_id, task_gpu_addresses
from lab_utils.common.tensorflow import (
    PredictFn,
    configure_tensorflow,
    graph_predict,
    restrict_tensorflow_gpus,
    visible_gpus,
)
from lab_utils.data import images
from lab_utils.errors import LabError
from lab_utils.inference import checks
from lab_utils.inference.scoring import DEFAULT_BATCH_SIZE, RESULT_DDL, cached_predict_fn

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

_LOG = logging.getLogger(__name__)
_WARNED_OTHER_GPU = False
#: The forms :meth:`PartitionPredictor.transform` can run.
FORMS = ("rdd", "map_in_pandas")


def select_device(partition_index: int, gpu_count: int | None = None) -> str:
    """Where a partition runs: Spark's GPU assignment, else index mod GPUs, else the CPU.

    1. When Spark schedules GPUs (``spark.task.resource.gpu.amount``), the task's own
       ``TaskContext.resources()["gpu"]`` address: Spark guarantees no two tasks share it.
    2. Otherwise, with ``gpu_count`` GPUs visible, ``partition_index % gpu_count`` (a common
       rule: fine for one executor per machine; executors sharing a machine's GPUs do not know
       each other's partition indices, so two tasks can pick the same GPU).
    3. Otherwise the CPU.
    Returns a TensorFlow device string: ``/GPU:<n>`` or ``/CPU:0``. For rule 1, ``n`` is the
    GPU's index among those TensorFlow sees: ``/GPU:0`` once :func:`restrict_tensorflow_gpus`
    limited this worker's TensorFlow to the task's GPU, else the physical address.

    Examples
    --------
    Outside a task with GPUs scheduled by Spark (here, on the driver), the modulo rule:

    >>> [select_device(index, gpu_count=2) for index in range(3)]
    ['/GPU:0', '/GPU:1', '/GPU:0']
    >>> select_device(3, gpu_count=0)
    '/CPU:0'
    """
    global _WARNED_OTHER_GPU
    addresses = task_gpu_addresses()
    if addresses:
        visible = visible_gpus()
        if visible is None:  # TensorFlow sees every GPU: logical index = physical address
            return f"/GPU:{int(addresses[0])}"
        if addresses[0] in visible:
            return f"/GPU:{visible.index(addresses[0])}"
        if not _WARNED_OTHER_GPU:  # a reused Python worker, restricted for an earlier task
            _WARNED_OTHER_GPU = True
            _LOG.warning("Spark gave this task GPU %s, but this Python worker's TensorFlow "
                         "sees only GPU(s) %s (set for an earlier task): using /GPU:0",
                         addresses[0], visible)
        return "/GPU:0"
    if gpu_count is None:
        import tensorflow as tf

        gpu_count = len(tf.config.list_physical_devices("GPU"))
    if gpu_count > 0:
        return f"/GPU:{partition_index % gpu_count}"
    return "/CPU:0"


def frames_to_rows(frames: Iterable[pd.DataFrame]) -> Iterator[Any]:
    """``mapInPandas``'s pandas batches as the ``Row`` objects ``mapPartitionsWithIndex`` would
    give, one at a time: the same ``row["field"]`` for a row function written for either form.
    A null is ``None`` in both (pandas would give ``NaN`` for a number column).

    Examples
    --------
    >>> import pandas as pd
    >>> list(frames_to_rows([pd.DataFrame({"x": [1.0, None], "name": ["a", None]})]))
    [Row(x=1.0, name='a'), Row(x=None, name=None)]
    """
    from pyspark.sql import Row

    for frame in frames:
        columns = list(frame.columns)
        clean = frame.astype(object).where(frame.notna(), None)
        for values in clean.itertuples(index=False, name=None):
            yield Row(**dict(zip(columns, values, strict=True)))


def ddl_fields(schema: str) -> list[str]:
    """The field names of a DDL schema string, in order (top-level fields only).

    Examples
    --------
    >>> ddl_fields("path string, top array<string>, scores map<string, float>, error string")
    ['path', 'top', 'scores', 'error']
    """
    fields, depth, start = [], 0, 0
    for i, char in enumerate(schema + ","):
        if char in "<(":
            depth += 1
        elif char in ">)":
            depth -= 1
        elif char == "," and depth == 0:
            fields.append(schema[start:i].strip().split(" ")[0].split(":")[0])
            start = i + 1
    return fields


class PredictorFormError(LabError, ValueError):
    """``PartitionPredictor.transform(form=...)`` named no known form."""


class PartitionPredictor:
    """A partition-level predictor: one model per Python worker and device, rows pre-processed,
    batched, predicted and post-processed by functions you give it. It runs on
    ``mapPartitionsWithIndex`` (classic sessions) or ``mapInPandas`` (either mode):
    :meth:`transform`.

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
    restrict_gpus : bool
        When Spark assigned the task GPUs, limit TensorFlow to them before the model loads
        (:func:`restrict_tensorflow_gpus`); ``False`` for a loader that does not use TensorFlow.

    Examples
    --------
    A "model" that takes square roots, one number per row; a row its ``preprocess`` refuses is
    that row's error, not a failed job (``gpu_count=0``: the CPU, without asking TensorFlow):

    >>> import numpy as np
    >>> def preprocess(row):
    ...     if row["x"] < 0:
    ...         raise ValueError(f"{row['x']} is negative")
    ...     return np.array([row["x"]], dtype=float)
    >>> def postprocess(row, output, error):
    ...     return {"x": row["x"], "root": None if error else float(output[0]), "error": error}
    >>> predictor = PartitionPredictor(lambda device: np.sqrt, preprocess, postprocess,
    ...                                "x long, root double, error string", gpu_count=0)
    >>> df = spark.createDataFrame([(4,), (-1,), (9,)], "x long")
    >>> predictor.transform(df).orderBy("x").show()
    +---+----+--------------------+
    |  x|root|               error|
    +---+----+--------------------+
    | -1|NULL|ValueError: -1 is...|
    |  4| 2.0|                NULL|
    |  9| 3.0|                NULL|
    +---+----+--------------------+

    The same rows through ``mapInPandas``, the form a Spark Connect session runs:

    >>> (predictor.transform(df, form="map_in_pandas").orderBy("x").collect()
    ...  == predictor.transform(df, form="rdd").orderBy("x").collect())
    True
    """

    def __init__(self, model_loader: Callable[[str], PredictFn],
                 preprocess: Callable[[Any], np.ndarray],
                 postprocess: Callable[[Any, np.ndarray | None, str | None], dict],
                 schema: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 gpu_count: int | None = None, restrict_gpus: bool = True):
        self.model_loader = model_loader
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.schema = schema
        self.batch_size = batch_size
        self.gpu_count = gpu_count
        self.restrict_gpus = restrict_gpus
        # Made on the driver and pickled with the predictor: every task unpickles a new copy
        # of ``model_loader``, so its id() would differ per task and reload the model each time.
        self._cache_key = ("partition", uuid.uuid4().hex)

    def _predict_partition(self, index: int, rows: Iterable[Any]) -> Iterator[tuple]:
        if self.restrict_gpus and task_gpu_addresses():
            # Before the device string is chosen: after it, the task's GPU is /GPU:0.
            restrict_tensorflow_gpus()
        device = select_device(index, self.gpu_count)
        predict = cached_predict_fn((*self._cache_key, device),
                                    lambda: self.model_loader(device))
        fields = ddl_fields(self.schema)
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

    def _predict_frames(self, frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """The ``mapInPandas`` form: the same partition function, its rows from pandas batches
        and its output rows sent back as pandas frames of at most ``batch_size`` rows."""
        import pandas as pd

        fields = ddl_fields(self.schema)
        out: list[tuple] = []
        for record in self._predict_partition(partition_id(default=0), frames_to_rows(frames)):
            out.append(record)
            if len(out) >= self.batch_size:
                yield pd.DataFrame.from_records(out, columns=fields)
                out = []
        if out:
            yield pd.DataFrame.from_records(out, columns=fields)

    def transform(self, df: DataFrame, form: str | None = None) -> DataFrame:
        """Score every row of ``df``; the result has ``schema``.

        ``form``: ``"rdd"`` (``df.rdd.mapPartitionsWithIndex``, classic sessions only) or
        ``"map_in_pandas"`` (``df.mapInPandas``, classic or Spark Connect). Default: the RDD form
        in a classic session, ``mapInPandas`` under Connect. Both give the same rows; the RDD
        form moves rows as pickled ``Row`` objects and its plan shows only ``Scan ExistingRDD``,
        ``mapInPandas`` moves Arrow batches and shows ``MapInPandas``.
        """
        if form is None:
            form = "map_in_pandas" if is_connect(df) else "rdd"
        if form == "map_in_pandas":
            return df.mapInPandas(self._predict_frames, self.schema)
        if form != "rdd":
            raise PredictorFormError(f"form must be one of {FORMS}, not {form!r}: pass "
                                     "'map_in_pandas' (either API) or 'rdd' (classic only)")
        require_classic(df, "PartitionPredictor.transform(df, form='rdd') (df.rdd)",
                        "use form='map_in_pandas' (the default under Connect)")
        rdd = df.rdd.mapPartitionsWithIndex(self._predict_partition)
        return df.sparkSession.createDataFrame(rdd, self.schema)


def image_partition_predictor(
    model: ModelSpec | Path | str,
    model_loader: Callable[[str], PredictFn] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    gpu_count: int | None = None,
) -> PartitionPredictor:
    """A :class:`PartitionPredictor` for ``binaryFile`` image rows and a saved Keras model.

    An image whose output is not one probability per class (NaN, inf, outside ``[0, 1]``:
    :func:`~lab_utils.inference.checks.output_problem`) is its row's error, with prediction
    and confidence null.

    Examples
    --------
    ``model_dir`` holds a two-class model (``dark``, ``light``) and ``make_predict_fn`` loads it;
    ``model_loader`` gets the device (without it, Keras loads ``model.keras`` there).
    ``images_dir`` has four images in ``dark/`` and ``light/`` and an empty file:

    >>> from lab_utils.inference import read_images
    >>> predictor = image_partition_predictor(model_dir, lambda device: make_predict_fn(),
    ...                                       gpu_count=0)
    >>> scored = predictor.transform(read_images(spark, images_dir))
    >>> scored.columns
    ['path', 'prediction', 'confidence', 'error']
    >>> scored.groupBy("prediction").count().orderBy("prediction").collect()
    [Row(prediction=None, count=1), Row(prediction='dark', count=2),
     Row(prediction='light', count=2)]
    """
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
        if error is None:  # NaN, inf or -3 would give a confident-looking class
            error = checks.output_problem(output, names)
        if error is not None:
            return {"path": row["path"], "prediction": None, "confidence": None, "error": error}
        k = int(np.argmax(output))
        return {"path": row["path"], "prediction": names[k], "confidence": float(output[k]),
                "error": None}

    return PartitionPredictor(model_loader or keras_on_device, preprocess, postprocess,
                              f"path string, {RESULT_DDL}", batch_size=batch_size,
                              gpu_count=gpu_count)
