"""Batch image inference on Spark: the scoring core, one factory per UDF style, files in and out.

This face lists the subpackage's public names, so notebooks write ``from lab_utils import
inference`` and call ``inference.iterator_udf(...)``. REST scoring against a model server lives
in :mod:`lab_utils.inference.rest_udf` (the client in :mod:`~lab_utils.inference.rest_client`),
ResNet-50 in :mod:`lab_utils.inference.resnet`. TensorFlow's per-task setup
(``configure_tensorflow``, ``graph_predict``) is :mod:`lab_utils.common.tensorflow`.
"""

from lab_utils.inference.files import local_path, place_by_class, read_images
from lab_utils.inference.partition import (
    PartitionPredictor,
    image_partition_predictor,
    select_device,
)
from lab_utils.inference.scoring import (
    CACHE_SIZE,
    DEFAULT_BATCH_SIZE,
    LOAD_COUNTS,
    RESULT_DDL,
    RESULT_FIELDS,
    InferenceError,
    cached_predict_fn,
    keras_predict_fn,
    score_images,
)
from lab_utils.inference.udfs import (
    arrow_iterator_udf,
    iterator_udf,
    map_in_pandas,
    pandas_udf_series,
    row_udf,
    score_arrow,
    spark_predict_batch_udf,
    udf_cache_key,
)

__all__ = [
    "CACHE_SIZE", "DEFAULT_BATCH_SIZE", "LOAD_COUNTS", "RESULT_DDL", "RESULT_FIELDS",
    "InferenceError", "PartitionPredictor", "arrow_iterator_udf", "cached_predict_fn",
    "image_partition_predictor",
    "iterator_udf", "keras_predict_fn", "local_path", "map_in_pandas", "pandas_udf_series",
    "place_by_class", "read_images", "row_udf", "score_arrow", "score_images", "select_device",
    "spark_predict_batch_udf", "udf_cache_key",
]
