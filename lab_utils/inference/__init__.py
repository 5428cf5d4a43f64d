"""Batch image inference on Spark: the scoring core, one factory per UDF style, files in and out.

The public names are re-exported here, so notebooks write ``from lab_utils import inference``
and call ``inference.iterator_udf(...)``. REST scoring against a model server lives in
:mod:`lab_utils.inference.rest_scoring`.
"""

from lab_utils.inference.core import (
    CACHE_SIZE,
    DEFAULT_BATCH_SIZE,
    LOAD_COUNTS,
    RESULT_DDL,
    RESULT_FIELDS,
    InferenceError,
    MakePredictFn,
    PredictFn,
    cached_predict_fn,
    configure_tensorflow,
    graph_predict,
    keras_predict_fn,
    restrict_tensorflow_gpus,
    score_images,
    task_cpus,
    visible_gpus,
)
from lab_utils.inference.files import local_path, place_by_class, read_images
from lab_utils.inference.partition import (
    PartitionPredictor,
    image_partition_predictor,
    select_device,
)
from lab_utils.inference.udfs import (
    iterator_udf,
    map_in_pandas,
    pandas_udf_series,
    row_udf,
    spark_predict_batch_udf,
    udf_cache_key,
)

__all__ = [
    "CACHE_SIZE", "DEFAULT_BATCH_SIZE", "LOAD_COUNTS", "RESULT_DDL", "RESULT_FIELDS",
    "InferenceError", "MakePredictFn", "PartitionPredictor", "PredictFn", "cached_predict_fn",
    "configure_tensorflow", "graph_predict", "image_partition_predictor", "iterator_udf",
    "keras_predict_fn", "local_path", "map_in_pandas", "pandas_udf_series", "place_by_class",
    "read_images", "restrict_tensorflow_gpus", "row_udf", "score_images", "select_device",
    "spark_predict_batch_udf", "task_cpus", "udf_cache_key", "visible_gpus",
]
