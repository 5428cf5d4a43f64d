"""``spark.read.format("tfrecord")`` and ``df.write.format("tfrecord")``: a Spark 4 Python
data source over the same folders, ``schema.json`` and :class:`TFRecordSchema` as
:func:`~lab_utils.data.tfrecords.write_tfrecords` and :func:`read_tfrecords`.

:func:`lab_utils.session.get_spark` registers it (classic and Spark Connect sessions alike);
any other session takes it with ``spark.dataSource.register(TFRecordDataSource)``.

Reading (``spark.read.format("tfrecord").load(folder)``): a folder the lab wrote needs no
option, its ``schema.json`` gives the Spark schema and the file list; one input partition per
part file, each task parsing its file with ``tf.io.parse_example``. A folder of TFRecord files
from elsewhere is read with option ``schema`` (the schema as JSON, or the path of a
``schema.json``). ``spark.read.schema(...)`` with a subset of the columns reads only those.

Writing (``df.write.format("tfrecord").mode("overwrite").save(folder)``): the schema comes from
option ``schema`` or is derived from the DataFrame (``long``/``int``/``short``/``byte``/
``boolean`` -> ``int64``, ``double``/``float`` -> ``float32``, ``binary`` -> ``bytes``,
``string`` -> ``string``; an array is variable-length unless option ``shape.<column>`` gives
its fixed shape, e.g. ``"14,5"``, which a nested array needs); option ``compression``
(``none``, ``gzip``, ``zlib``). Every task writes its part file into a hidden staging folder
beside the destination; the driver's ``commit`` swaps the complete output in with
:func:`~lab_utils.common.atomic.replace_folder`, ``abort`` removes the staging folder. Modes:
``overwrite`` replaces a previous output of the lab; ``append`` adds part files to one (same
schema) or creates the folder. Spark itself refuses ``error``/``errorifexists`` (the default)
and ``ignore`` for every Python data source (``UNSUPPORTED_DATA_SOURCE_SAVE_MODE``). A folder
that is not a previous output is never replaced or appended to.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    ByteType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructField,
    StructType,
)

from lab_utils.common.atomic import PREFIX, replace_folder
from lab_utils.common.task import partition_id
from lab_utils.data.tfrecords.reader import tfrecord_files
from lab_utils.data.tfrecords.schema import (
    _SUFFIX,
    PART_PREFIX,
    SCHEMA_FILE,
    Feature,
    TFRecordDestinationError,
    TFRecordMissingError,
    TFRecordSchema,
    TFRecordSchemaError,
    TFRecordWriteError,
    load_schema,
)
from lab_utils.data.tfrecords.writer import _check_destination, _is_lab_schema, _local

if TYPE_CHECKING:
    import pyarrow as pa

#: The name given to ``format(...)``.
FORMAT_NAME = "tfrecord"
#: Records parsed per ``tf.io.parse_example`` call by a reading task.
READ_BATCH = 512

_SPARK_TYPE: dict[str, DataType] = {"int64": LongType(), "float32": FloatType(),
                                    "bytes": BinaryType(), "string": StringType()}
_KIND: dict[type[DataType], str] = {
    LongType: "int64", IntegerType: "int64", ShortType: "int64", ByteType: "int64",
    BooleanType: "int64", DoubleType: "float32", FloatType: "float32", BinaryType: "bytes",
    StringType: "string"}
_COMPRESSION = {"": None, "none": None, "gzip": "GZIP", "zlib": "ZLIB"}


# --------------------------------------------------------------------------- schemas


def spark_type(feature: Feature) -> DataType:
    """The Spark type a ``feature`` is read as: the scalar type, an array for a
    variable-length or 1-D feature, nested arrays for a fixed shape of more dimensions.

    Examples
    --------
    >>> spark_type(Feature("window", "float32", (14, 5))).simpleString()
    'array<array<float>>'
    >>> spark_type(Feature("tokens", "string", None)).simpleString()
    'array<string>'
    """
    result = _SPARK_TYPE[feature.dtype]
    for _ in range(1 if feature.shape is None else len(feature.shape)):
        result = ArrayType(result)
    return result


def spark_schema(schema: TFRecordSchema) -> StructType:
    """The Spark schema of ``spark.read.format("tfrecord")`` for a folder of ``schema``."""
    return StructType([StructField(f.name, spark_type(f)) for f in schema.features])


def _depth_and_kind(name: str, data_type: DataType) -> tuple[int, str]:
    depth = 0
    while isinstance(data_type, ArrayType):
        depth, data_type = depth + 1, data_type.elementType
    kind = _KIND.get(type(data_type))
    if kind is None:
        raise TFRecordSchemaError(
            f"column {name!r} is {data_type.simpleString()}, which a TFRecord feature cannot "
            "hold (int64, float32, bytes, string and arrays of them): cast it, or drop it "
            "from the DataFrame (option 'schema' writes only the features it names)")
    return depth, kind


def parse_shape(name: str, text: str) -> tuple[int, ...]:
    """Option ``shape.<name>``: ``"14,5"`` -> ``(14, 5)``; ``""`` or ``"()"`` a scalar.

    >>> parse_shape("window", "14, 5")
    (14, 5)
    >>> parse_shape("x", "14x5")
    Traceback (most recent call last):
    lab_utils.data.tfrecords.schema.TFRecordSchemaError: option shape.x='14x5': write the ...
    """
    cleaned = text.strip().strip("()[]").replace(" ", "")
    try:
        return tuple(int(d) for d in cleaned.split(",") if d) if cleaned else ()
    except ValueError:
        raise TFRecordSchemaError(f"option shape.{name}={text!r}: write the fixed shape as "
                                  "comma-separated sizes, e.g. '14,5'") from None


def derive_schema(struct: StructType, options: Mapping[str, str]) -> TFRecordSchema:
    """The :class:`TFRecordSchema` a DataFrame of ``struct`` is written with.

    Option ``schema`` (JSON or the path of a ``schema.json``) gives it whole: its features
    must be columns of matching kind and nesting (other columns are not written). Otherwise
    every column becomes a feature (see the module's type table), an array variable-length
    unless ``shape.<column>`` fixes its shape. ``compression`` sets or overrides the codec.

    Examples
    --------
    >>> struct = StructType([StructField("id", LongType()),
    ...                      StructField("window", ArrayType(ArrayType(DoubleType())))])
    >>> derive_schema(struct, {"shape.window": "14,5", "compression": "gzip"}).to_dict()[
    ...     "features"][1]
    {'name': 'window', 'dtype': 'float32', 'shape': [14, 5], 'description': '', ...}
    >>> derive_schema(struct, {})
    Traceback (most recent call last):
    lab_utils.data.tfrecords.schema.TFRecordSchemaError: column 'window' is a nested array ...
    """
    options = {k.lower(): v for k, v in options.items()}
    given = _schema_option(options)
    columns = {f.name: _depth_and_kind(f.name, f.dataType) for f in struct.fields}
    if given is not None:
        for feature in given.features:
            if feature.name not in columns:
                raise TFRecordSchemaError(
                    f"feature {feature.name!r} of option 'schema' is not a column of the "
                    f"DataFrame (it has {', '.join(columns)}): rename or add the column")
            depth, kind = columns[feature.name]
            depths = ({0} if feature.shape == () else {1} if feature.shape is None
                      else {1, len(feature.shape)})
            kinds = {"int64": {"int64"}, "float32": {"float32", "int64"}, "bytes":
                     {"bytes", "string"}, "string": {"string"}}[feature.dtype]
            if depth not in depths or kind not in kinds:
                raise TFRecordSchemaError(
                    f"feature {feature.name!r}: the schema says {feature.dtype} of shape "
                    f"{feature.shape}, the column holds {kind} nested {depth} deep: cast the "
                    "column or fix the schema")
        features = given.features
        compression = given.compression
    else:
        built = []
        for name, (depth, kind) in columns.items():
            shape_text = options.get(f"shape.{name.lower()}")
            if shape_text is not None:
                shape: tuple[int, ...] | None = parse_shape(name, shape_text)
                if depth not in ({0} if shape == () else {1, len(shape or ())}):
                    raise TFRecordSchemaError(
                        f"option shape.{name}={shape_text!r}: column {name!r} is nested {depth}"
                        f" deep, which that shape does not fit: give a shape with {depth} sizes")
            elif depth == 0:
                shape = ()
            elif depth == 1:
                shape = None
            else:
                raise TFRecordSchemaError(
                    f"column {name!r} is a nested array ({depth} levels), which only a fixed "
                    f"shape stores: give option shape.{name}, e.g. "
                    f"'{','.join(['N'] * depth)}', or pass option 'schema'")
            built.append(Feature(name, kind, shape))
        features = tuple(built)
        compression = None
    if "compression" in options:
        codec = options["compression"].strip().lower()
        if codec not in _COMPRESSION:
            raise TFRecordSchemaError(f"option compression={options['compression']!r}: use "
                                      "none, gzip or zlib")
        compression = _COMPRESSION[codec]
    return TFRecordSchema(features, compression,
                          given.metadata if given is not None else {})


def _schema_option(options: Mapping[str, str]) -> TFRecordSchema | None:
    """Option ``schema``: JSON text, or the path of a ``schema.json`` (or its folder)."""
    text = options.get("schema")
    if not text:
        return None
    if not text.lstrip().startswith("{"):
        path = Path(text)
        path = path / SCHEMA_FILE if path.is_dir() else path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TFRecordSchemaError(f"option schema={options['schema']!r}: {exc.strerror}; "
                                      "give the schema as JSON (TFRecordSchema.to_json()) or "
                                      "the path of a schema.json") from None
    try:
        return TFRecordSchema.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise TFRecordSchemaError(f"option schema is not a TFRecord schema ({exc}): give "
                                  "TFRecordSchema.to_json() or a schema.json written by the "
                                  "lab") from None


# --------------------------------------------------------------------------- data source


class TFRecordDataSource(DataSource):
    """``format("tfrecord")``: see :mod:`lab_utils.data.tfrecords.datasource`."""

    @classmethod
    def name(cls) -> str:
        return FORMAT_NAME

    def _folder(self) -> Path:
        path = self.options.get("path")
        if not path:
            raise TFRecordMissingError("no folder given: spark.read.format('tfrecord')"
                                       ".load(folder) / df.write.format('tfrecord').save(folder)")
        # Absolute here, on the driver: executors run in their own working folders. (Under
        # Spark Connect the driver is the server, so a relative path is relative to its folder.)
        return _local(path).absolute()

    def _read_plan(self) -> tuple[TFRecordSchema, list[str]]:
        folder = self._folder()
        given = _schema_option(self.options)
        if (folder / SCHEMA_FILE).is_file() and given is None:
            schema, _ = load_schema(folder)
            return schema, tfrecord_files(folder)
        if given is None:
            load_schema(folder)  # raises the "not written by the lab" error, with its fix
        assert given is not None
        codec = str(self.options.get("compression", "")).strip().lower()
        if codec:
            if codec not in _COMPRESSION:
                raise TFRecordSchemaError(f"option compression={codec!r}: use none, gzip or "
                                          "zlib")
            given = TFRecordSchema(given.features, _COMPRESSION[codec], given.metadata)
        if folder.is_file():
            return given, [str(folder)]
        files = sorted(str(p) for p in folder.iterdir() if p.is_file()
                       and not p.name.startswith((PREFIX, "_")) and p.name != SCHEMA_FILE)
        if not files:
            raise TFRecordMissingError(f"{folder} holds no TFRecord files")
        return given, files

    def schema(self) -> StructType:
        return spark_schema(self._read_plan()[0])

    def reader(self, schema: StructType) -> TFRecordReader:
        tf_schema, files = self._read_plan()
        wanted = []
        for field in schema.fields:
            feature = tf_schema[field.name]  # TFRecordFeatureError lists the names it has
            if field.dataType != spark_type(feature):
                raise TFRecordSchemaError(
                    f"column {field.name!r} asked as {field.dataType.simpleString()}, but "
                    f"feature {feature.name!r} reads as {spark_type(feature).simpleString()}: "
                    "leave the type to the data source (no .schema()) or ask for that type")
            wanted.append(feature)
        return TFRecordReader(TFRecordSchema(tuple(wanted), tf_schema.compression), files)

    def writer(self, schema: StructType, overwrite: bool) -> TFRecordWriter:
        return TFRecordWriter(self._folder(), derive_schema(schema, self.options), overwrite)


# --------------------------------------------------------------------------- reading


class TFRecordReader(DataSourceReader):
    """One input partition per file; each task parses its file in batches."""

    def __init__(self, schema: TFRecordSchema, files: Sequence[str]) -> None:
        self.tf_schema = schema
        self.files = list(files)

    def partitions(self) -> list[InputPartition]:
        return [InputPartition(path) for path in self.files]

    def read(self, partition: InputPartition) -> Iterator[tuple[Any, ...]]:
        yield from read_file_rows(partition.value, self.tf_schema)


def _python(values: Any, dtype: str) -> Any:
    """Nested numpy values as Python lists, ``string`` bytes decoded to ``str``."""
    listed = values.tolist() if hasattr(values, "tolist") else values
    if dtype != "string":
        return listed

    def decode(item: Any) -> Any:
        return item.decode("utf-8") if isinstance(item, bytes) else [decode(i) for i in item]

    return decode(listed)


def read_file_rows(path: str, schema: TFRecordSchema, *, batch: int = READ_BATCH,
                   ) -> Iterator[tuple[Any, ...]]:
    """The rows of one TFRecord file as tuples in ``schema``'s order (imports TensorFlow).

    A record that does not match the schema raises :class:`TFRecordSchemaError` naming the
    file, the record and the feature (:func:`mismatch`).
    """
    import tensorflow as tf

    from lab_utils.common.tensorflow import configure_tensorflow
    from lab_utils.data.tfrecords.reader import feature_description

    configure_tensorflow()  # one TF thread per task core, before TF runs an op
    spec = feature_description(schema)
    dataset = tf.data.TFRecordDataset(path, compression_type=schema.compression or "")
    first = 0
    for records in dataset.batch(batch):
        try:
            parsed = tf.io.parse_example(records, spec)
        except tf.errors.InvalidArgumentError:
            raise TFRecordSchemaError(_mismatch_message(path, schema, records.numpy(),
                                                        first)) from None
        columns = []
        for feature in schema.features:
            value = parsed[feature.name]
            if feature.shape is None:
                value = tf.RaggedTensor.from_sparse(value).to_list()
            else:
                value = value.numpy()
            columns.append(_python(value, feature.dtype))
        yield from zip(*columns, strict=True)
        first += int(records.shape[0])


def mismatch(record: bytes, schema: TFRecordSchema) -> str | None:
    """What in one serialized ``tf.train.Example`` does not fit ``schema`` (None: it fits).

    Examples
    --------
    >>> import tensorflow as tf
    >>> example = tf.train.Example(features=tf.train.Features(feature={
    ...     "x": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0, 2.0, 3.0]))}))
    >>> schema = TFRecordSchema((Feature("x", "float32", (2,)),))
    >>> mismatch(example.SerializeToString(), schema)
    "feature 'x' holds 3 values where the schema's shape (2,) needs 2"
    >>> mismatch(example.SerializeToString(), TFRecordSchema((Feature("y", "int64"),)))
    "feature 'y' is missing (the record has x)"
    """
    import tensorflow as tf

    features = tf.train.Example.FromString(record).features.feature
    lists = {"int64": "int64_list", "float32": "float_list", "bytes": "bytes_list",
             "string": "bytes_list"}
    for feature in schema.features:
        if feature.name not in features:
            return (f"feature {feature.name!r} is missing (the record has "
                    f"{', '.join(sorted(features)) or 'no features'})")
        held = features[feature.name]
        kind = held.WhichOneof("kind")
        if kind != lists[feature.dtype]:
            return (f"feature {feature.name!r} holds a {kind or 'empty feature'} where the "
                    f"schema says {feature.dtype}")
        count = len(getattr(held, kind).value)
        if feature.size is not None and count != feature.size:
            return (f"feature {feature.name!r} holds {count} values where the schema's shape "
                    f"{feature.shape} needs {feature.size}")
        if feature.dtype == "string":
            try:
                [bytes(v).decode("utf-8") for v in held.bytes_list.value]
            except UnicodeDecodeError:
                return (f"feature {feature.name!r} holds bytes that are not UTF-8 where the "
                        "schema says string (declare it bytes)")
    return None


def _mismatch_message(path: str, schema: TFRecordSchema, records: Sequence[bytes],
                      first: int) -> str:
    for index, record in enumerate(records):
        problem = mismatch(record, schema)
        if problem is not None:
            return (f"{path}, record {first + index}: {problem}. Read the file with the schema "
                    f"it was written with (its folder's {SCHEMA_FILE}, or option 'schema'), or "
                    "rewrite it")
    return (f"{path}, records {first}-{first + len(records) - 1}: tf.io.parse_example refused "
            "them; read the file with the schema it was written with")


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class PartWritten(WriterCommitMessage):
    """What one task wrote into the staging folder (``file`` None: an empty partition)."""

    partition: int
    file: str | None
    records: int
    bytes: int


class TFRecordWriter(DataSourceArrowWriter):
    """Tasks write ``part-NNNNN`` into a hidden staging folder beside ``dest``; ``commit``
    swaps the whole output in, ``abort`` removes the staging folder.

    Made once on the driver and pickled to every task and to ``commit``/``abort``, so the
    staging folder's name (chosen here) is the same everywhere.
    """

    def __init__(self, dest: Path, schema: TFRecordSchema, overwrite: bool) -> None:
        self.dest = dest.resolve() if dest.is_symlink() else dest
        self.tf_schema = schema
        self.overwrite = overwrite
        _check_destination(self.dest)  # before any task runs: a user's folder is refused
        if not overwrite and _is_lab_schema(self.dest / SCHEMA_FILE):
            _check_same_schema(self.dest, schema)
        self.staging = self.dest.with_name(
            f"{PREFIX}{self.dest.name}.staging-{uuid.uuid4().hex}")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir()

    def write(self, iterator: Iterator[pa.RecordBatch]) -> PartWritten:
        from lab_utils.common.tensorflow import configure_tensorflow
        from lab_utils.data.tfrecords.schema import encode_records, write_file

        configure_tensorflow()
        partition = partition_id(default=0)
        name = f"{PART_PREFIX}{partition:05d}{_SUFFIX[self.tf_schema.compression]}"
        path = self.staging / name
        if not self.staging.is_dir():
            raise TFRecordWriteError(
                f"{self.staging} is not visible to this task: the destination must be on "
                "storage every executor mounts at the same path (share_storages/)")

        def records() -> Iterator[bytes]:
            first = 0  # row numbers in errors count through the file, not one Arrow batch
            for batch in iterator:
                try:
                    yield from encode_records(batch.to_pandas(), self.tf_schema,
                                              first_row=first)
                except TFRecordSchemaError as exc:
                    raise TFRecordSchemaError(f"{name} of {self.dest}: {exc}") from None
                first += batch.num_rows

        count = write_file(path, records(), self.tf_schema.compression)
        if count == 0:  # no empty files: a shuffle's 200 partitions are mostly empty
            path.unlink()
            return PartWritten(partition, None, 0, 0)
        return PartWritten(partition, name, count, path.stat().st_size)

    def commit(self, messages: Sequence[WriterCommitMessage | None]) -> None:
        import pandas as pd

        from lab_utils.data.tfrecords.writer import _finish

        parts = sorted((m for m in messages if isinstance(m, PartWritten) and m.file),
                       key=lambda m: m.partition)
        try:
            missing = [m.file for m in parts if not (self.staging / str(m.file)).is_file()]
            if missing:
                raise TFRecordWriteError(
                    f"{self.staging}: the tasks wrote {missing} but the driver does not see "
                    f"them; is {self.dest.parent} shared by every executor at the same path? "
                    "Write under share_storages/")
            with replace_folder(self.dest, check=_check_destination) as folder:
                rows: list[tuple[int, str, int, int]] = []
                if not self.overwrite and _is_lab_schema(self.dest / SCHEMA_FILE):
                    _check_same_schema(self.dest, self.tf_schema)
                    _, previous = load_schema(self.dest)
                    for entry in previous["files"]:  # the old files stay, under their names
                        _link(self.dest / entry["name"], folder / entry["name"])
                        rows.append((len(rows), entry["name"], entry["records"],
                                     entry["bytes"]))
                for part in parts:
                    name = (f"{PART_PREFIX}{len(rows):05d}"
                            f"{_SUFFIX[self.tf_schema.compression]}")
                    os.rename(self.staging / str(part.file), folder / name)
                    rows.append((len(rows), name, part.records, part.bytes))
                _finish(folder, self.tf_schema,
                        pd.DataFrame(rows, columns=["partition", "file", "records", "bytes"]))
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self, messages: Sequence[WriterCommitMessage | None]) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _link(source: Path, target: Path) -> None:
    """Hard-link (same file system: instant, no copy); copy where links are refused."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _check_same_schema(dest: Path, schema: TFRecordSchema) -> None:
    previous, _ = load_schema(dest)
    if previous.to_dict()["features"] != schema.to_dict()["features"] \
            or previous.compression != schema.compression:
        raise TFRecordDestinationError(
            f"mode append: {dest} holds TFRecords of another schema "
            f"({_describe(previous)}) than this DataFrame's ({_describe(schema)}): append "
            "with the same features, shapes and compression (option 'schema' = its "
            f"{SCHEMA_FILE}), or write a new folder, or mode('overwrite') to replace it")


def _describe(schema: TFRecordSchema) -> str:
    return ", ".join(f"{f.name} {f.dtype}{'[]' if f.shape is None else list(f.shape) or ''}"
                     for f in schema.features) + f"; compression {schema.compression}"
