"""TFRecord files from Spark, and ``tf.data`` back from them, driven by one schema.

No JVM TFRecord connector has a Spark 4 release, so the files are written from Python:
``mapInPandas`` with ``tf.io.TFRecordWriter``, one file per partition. Each task writes under a
hidden temporary name (:mod:`lab_utils.common.atomic`, never read by Spark or by
:func:`read_tfrecords`) and renames it
to ``part-NNNNN.tfrecord`` only when the whole partition is written, so a failed or retried task
never leaves a torn file behind. The whole output is staged in a hidden sibling of the
destination and swapped in when complete, so a failed job leaves the previous output as it was;
a folder that is not a previous output (no lab ``schema.json``, or other files) is never
replaced. Next to the files, ``schema.json`` describes every feature
(name, dtype, shape) with the file list and record counts; :func:`read_tfrecords` builds the
``tf.data`` parser from it, so the reader never re-types what the writer knew.

Feature dtypes: ``int64``, ``float32``, ``bytes`` and ``string`` (UTF-8 text; ``tf.string`` in
TensorFlow, decoded to ``str`` by :func:`decode_strings`). Shapes: ``()`` for a scalar, a fixed
shape such as ``(14, 5)`` (stored flattened, row-major; read back in that shape), or ``None``
for a variable-length 1-D list.

TensorFlow is imported inside the functions that need it: ``import lab_utils.data.tfrecords`` does
not load it.

The package by side: :mod:`.schema` (features, checks, encoding), :mod:`.writer` (Spark),
:mod:`.reader` (``tf.data``), :mod:`.datasource` (``spark.read.format("tfrecord")`` and
``df.write.format("tfrecord")``, the same folders through Spark 4's Python Data Source API;
registered by :func:`lab_utils.session.get_spark`, not re-exported here so that this import
stays free of ``pyspark.sql``). Notebooks use the names re-exported here.
"""

from lab_utils.data.tfrecords.reader import (
    decode_strings,
    feature_description,
    read_tfrecords,
    tfrecord_files,
)
from lab_utils.data.tfrecords.schema import (
    DTYPES,
    PART_PREFIX,
    SCHEMA_FILE,
    STATS_DDL,
    Feature,
    TFRecordDestinationError,
    TFRecordFeatureError,
    TFRecordLocationError,
    TFRecordMissingError,
    TFRecordSchema,
    TFRecordSchemaError,
    TFRecordWriteError,
    check_value,
    encode_records,
    load_schema,
    write_file,
)
from lab_utils.data.tfrecords.writer import write_tfrecords, write_tfrecords_local

__all__ = [
    "DTYPES", "PART_PREFIX", "SCHEMA_FILE", "STATS_DDL", "Feature", "TFRecordDestinationError",
    "TFRecordFeatureError", "TFRecordLocationError", "TFRecordMissingError", "TFRecordSchema",
    "TFRecordSchemaError", "TFRecordWriteError", "check_value", "decode_strings", "encode_records",
    "feature_description", "load_schema", "read_tfrecords", "tfrecord_files", "write_file",
    "write_tfrecords", "write_tfrecords_local",
]
