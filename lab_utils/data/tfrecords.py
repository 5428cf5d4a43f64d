"""TFRecord files from Spark, and ``tf.data`` back from them, driven by one schema.

No JVM TFRecord connector has a Spark 4 release, so the files are written from Python:
``mapInPandas`` with ``tf.io.TFRecordWriter``, one file per partition. Each task writes under a
hidden temporary name (:mod:`lab_utils.common.atomic`, never read by Spark or by
:func:`read_tfrecords`) and renames it
to ``part-NNNNN.tfrecord`` only when the whole partition is written, so a failed or retried task
never leaves a torn file behind. Next to the files, ``schema.json`` describes every feature
(name, dtype, shape) with the file list and record counts; :func:`read_tfrecords` builds the
``tf.data`` parser from it, so the reader never re-types what the writer knew.

Feature dtypes: ``int64``, ``float32``, ``bytes`` and ``string`` (UTF-8 text; ``tf.string`` in
TensorFlow, decoded to ``str`` by :func:`decode_strings`). Shapes: ``()`` for a scalar, a fixed
shape such as ``(14, 5)`` (stored flattened, row-major; read back in that shape), or ``None``
for a variable-length 1-D list.

TensorFlow is imported inside the functions that need it: ``import lab_utils.data.tfrecords`` does
not load it.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: mapInPandas functions are resolved with it

from lab_utils.common.atomic import atomic_write, atomic_write_text
from lab_utils.common.task import partition_id
from lab_utils.errors import LabError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

DTYPES = ("int64", "float32", "bytes", "string")
SCHEMA_FILE = "schema.json"
PART_PREFIX = "part-"
STATS_DDL = "partition int, file string, records long, bytes long"
_SUFFIX = {None: ".tfrecord", "GZIP": ".tfrecord.gz", "ZLIB": ".tfrecord.zz"}


class TFRecordSchemaError(LabError, ValueError):
    """A value does not match its feature's declared dtype or shape; the message names both."""


@dataclass(frozen=True)
class Feature:
    """One feature of a TFRecord ``Example``.

    Parameters
    ----------
    name : str
        Column name in the DataFrame and key in the ``Example``.
    dtype : {"int64", "float32", "bytes", "string"}
    shape : tuple of int or None
        ``()`` scalar; a fixed shape (every record holds ``prod(shape)`` values); ``None`` a
        variable-length 1-D list.
    description : str
        What it means, for the humans reading ``schema.json``.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] | None = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise TFRecordSchemaError(f"feature {self.name!r}: dtype {self.dtype!r} is not one "
                                      f"of {', '.join(DTYPES)}")
        if self.shape is not None:
            shape = tuple(int(d) for d in self.shape)
            if any(d < 1 for d in shape):
                raise TFRecordSchemaError(f"feature {self.name!r}: shape {shape} must have "
                                          "positive sizes (use shape=None for variable length)")
            object.__setattr__(self, "shape", shape)

    @property
    def size(self) -> int | None:
        """Values per record, or None for variable length."""
        return None if self.shape is None else math.prod(self.shape)


@dataclass(frozen=True)
class TFRecordSchema:
    """The features of a TFRecord data set, and what ``schema.json`` records about it."""

    features: tuple[Feature, ...]
    compression: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise TFRecordSchemaError(f"duplicate feature names in {names}")
        if self.compression not in _SUFFIX:
            raise TFRecordSchemaError(f"compression {self.compression!r}: use None, 'GZIP' or "
                                      "'ZLIB'")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature {name!r} in the schema (features: {', '.join(self.names)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "tfrecord/tf.train.Example",
            "compression": self.compression,
            "features": [{"name": f.name, "dtype": f.dtype,
                          "shape": None if f.shape is None else list(f.shape),
                          "description": f.description} for f in self.features],
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TFRecordSchema:
        features = tuple(Feature(f["name"], f["dtype"],
                                 None if f.get("shape") is None else tuple(f["shape"]),
                                 f.get("description", ""))
                         for f in data["features"])
        return cls(features, data.get("compression"), dict(data.get("metadata", {})))


def load_schema(folder: Path | str) -> tuple[TFRecordSchema, dict[str, Any]]:
    """``(schema, the whole schema.json)`` of a folder written by :func:`write_tfrecords`."""
    path = Path(folder) / SCHEMA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} was not written by "
                                "lab_utils.data.tfrecords.write_tfrecords (or the write did not"
                                " finish; run it again)")
    data = json.loads(path.read_text())
    return TFRecordSchema.from_dict(data), data


# --------------------------------------------------------------------------- values


def _nested_to_array(value: Any) -> np.ndarray:
    """Arrow hands nested lists to pandas as object arrays of arrays: stack them."""
    array = np.asarray(value)
    if array.dtype != object or array.ndim == 0:
        return array
    items = [_nested_to_array(item) for item in array.reshape(-1)]
    if not items:
        return np.zeros(array.shape, dtype=np.float64)
    if len({item.shape for item in items}) != 1:
        shapes = sorted({item.shape for item in items})
        raise TFRecordSchemaError(f"ragged nested values (shapes {shapes}): pad them to one "
                                  "shape or declare a variable-length feature")
    return np.stack(items).reshape(array.shape + items[0].shape)


def check_value(feature: Feature, value: Any) -> np.ndarray | list[bytes]:
    """The flat values one record stores for ``feature``; raises :class:`TFRecordSchemaError`.

    Numbers come back as a 1-D ``int64``/``float32`` array, bytes and strings as a list of bytes.
    """
    if value is None:
        raise TFRecordSchemaError(f"feature {feature.name!r} is null: filter or fill nulls "
                                  "before writing (TFRecords have no null)")
    if feature.dtype in {"bytes", "string"}:
        items = [value] if feature.shape == () else list(value)
        out = []
        for item in items:
            if isinstance(item, str):
                out.append(item.encode("utf-8"))
            elif isinstance(item, (bytes, bytearray, memoryview)):
                if feature.dtype == "string":
                    try:
                        bytes(item).decode("utf-8")
                    except UnicodeDecodeError:
                        raise TFRecordSchemaError(
                            f"feature {feature.name!r}: declared 'string' but holds bytes that "
                            "are not UTF-8; declare it 'bytes'") from None
                out.append(bytes(item))
            else:
                raise TFRecordSchemaError(f"feature {feature.name!r}: expected {feature.dtype}, "
                                          f"got {type(item).__name__}")
        if feature.size is not None and len(out) != feature.size:
            raise TFRecordSchemaError(f"feature {feature.name!r}: expected {feature.size} values"
                                      f" (shape {feature.shape}), got {len(out)}")
        return out
    array = _nested_to_array(value)
    if feature.shape is None:
        if array.ndim != 1:
            raise TFRecordSchemaError(f"feature {feature.name!r}: variable-length features are "
                                      f"1-D, got shape {array.shape}")
    elif array.shape != feature.shape and not (array.ndim == 1 and array.size == feature.size):
        # A flat array of the right size is accepted: it is stored flat anyway.
        raise TFRecordSchemaError(f"feature {feature.name!r}: expected shape {feature.shape}, "
                                  f"got {array.shape}")
    if feature.dtype == "int64":
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise TFRecordSchemaError(f"feature {feature.name!r}: int64 feature holds "
                                          "non-integer values")
        elif array.dtype.kind not in "iub":
            raise TFRecordSchemaError(f"feature {feature.name!r}: expected integers, got "
                                      f"{array.dtype}")
        return array.astype(np.int64).ravel()
    if array.dtype.kind not in "iubf":
        raise TFRecordSchemaError(f"feature {feature.name!r}: expected numbers, got {array.dtype}")
    return array.astype(np.float32).ravel()


def encode_records(frame: pd.DataFrame, schema: TFRecordSchema) -> Iterator[bytes]:
    """Serialized ``tf.train.Example`` bytes for every row of ``frame`` (imports TensorFlow)."""
    import tensorflow as tf

    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise TFRecordSchemaError(f"columns {missing} of the schema are not in the DataFrame "
                                  f"(it has {list(frame.columns)})")
    columns = [frame[f.name].to_numpy() for f in schema.features]
    for row in range(len(frame)):
        features = {}
        for feature, column in zip(schema.features, columns, strict=True):
            try:
                values = check_value(feature, column[row])
            except TFRecordSchemaError as exc:
                raise TFRecordSchemaError(f"row {row}: {exc}") from None
            if feature.dtype == "int64":
                features[feature.name] = tf.train.Feature(
                    int64_list=tf.train.Int64List(value=values))
            elif feature.dtype == "float32":
                features[feature.name] = tf.train.Feature(
                    float_list=tf.train.FloatList(value=values))
            else:
                features[feature.name] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=values))
        yield tf.train.Example(
            features=tf.train.Features(feature=features)).SerializeToString()


def write_file(path: Path | str, records: Iterable[bytes], compression: str | None = None) -> int:
    """Write ``records`` to ``path`` under a temporary name, renamed when complete; count them."""
    import tensorflow as tf

    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with tf.io.TFRecordWriter(str(tmp), options=compression) as writer:
            for record in records:
                writer.write(record)
                count += 1

    atomic_write(path, write)  # readers see the whole file or none
    return count


# --------------------------------------------------------------------------- Spark writer


def _local(folder: Path | str) -> Path:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(str(folder))
    if parsed.scheme not in {"", "file"}:
        raise ValueError(f"{folder}: TFRecords are written with Python file I/O, so the folder "
                         "must be local or on storage every executor mounts at the same path "
                         "(share_storages/); copy the files to object storage afterwards")
    return Path(unquote(parsed.path) if parsed.scheme else str(folder))


def _partition_writer(dest: str, schema: TFRecordSchema):
    def write(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from lab_utils.inference import configure_tensorflow

        configure_tensorflow()  # one TF thread per task core, before TF runs an op
        partition = partition_id(default=0)
        name = f"{PART_PREFIX}{partition:05d}{_SUFFIX[schema.compression]}"
        path = Path(dest) / name
        count = write_file(path, (record for frame in frames
                                  for record in encode_records(frame, schema)),
                           schema.compression)
        yield pd.DataFrame({"partition": [partition], "file": [name], "records": [count],
                            "bytes": [path.stat().st_size]})

    return write


def write_tfrecords(
    df: DataFrame,
    dest: Path | str,
    schema: TFRecordSchema,
    *,
    partitions: int | None = None,
    sort_within: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``df`` as TFRecord files, one per partition, with ``schema.json`` beside them.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Must hold every column of ``schema`` (others are ignored). Array columns may be flat or
        nested; fixed shapes are checked per row.
    dest : Path or str
        Folder on storage every executor sees at the same path (``share_storages/``). Its old
        contents are replaced.
    schema : TFRecordSchema
    partitions : int, optional
        ``repartition(partitions)`` first: this is the number of files. Choose it for the reader
        (files of 100-200 MB let ``tf.data`` interleave them), not for the previous stage.
        None keeps ``df``'s partitioning.
    sort_within : sequence of str
        Sort each partition by these columns, so a file's order is deterministic.

    Returns
    -------
    dict
        What ``schema.json`` holds: the schema, ``files`` (name, records, bytes) and
        ``records``.

    Raises
    ------
    TFRecordSchemaError
        A row does not match the schema (the message names the feature, the expected and the
        actual shape or dtype). Nothing is left in ``dest`` but the files already complete.
    """
    folder = _local(dest)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    frame = df.select(*schema.names)
    if partitions:
        frame = frame.repartition(partitions)
    if sort_within:
        frame = frame.sortWithinPartitions(*sort_within)
    stats = (frame.mapInPandas(_partition_writer(str(folder), schema), STATS_DDL)
             .toPandas().sort_values("partition").reset_index(drop=True))
    written = sorted(p.name for p in folder.glob(f"{PART_PREFIX}*"))
    if written != sorted(stats["file"]):
        raise RuntimeError(f"{folder}: the files on disk {written} differ from the tasks' report "
                           f"{sorted(stats['file'])}; is {folder} shared by every executor?")
    return _finish(folder, schema, stats)


def _finish(folder: Path, schema: TFRecordSchema, stats: pd.DataFrame) -> dict[str, Any]:
    summary = {
        **schema.to_dict(),
        "records": int(stats["records"].sum()),
        "files": [{"name": r.file, "records": int(r.records), "bytes": int(r.bytes)}
                  for r in stats.itertuples()],
    }
    # schema.json last: its presence means "complete"
    atomic_write_text(folder / SCHEMA_FILE, json.dumps(summary, indent=2))
    return summary


def write_tfrecords_local(
    frame: pd.DataFrame, dest: Path | str, schema: TFRecordSchema, *, files: int = 1
) -> dict[str, Any]:
    """:func:`write_tfrecords` for a pandas DataFrame in this process (same layout, same
    ``schema.json``): for data that fits one machine, and for tests."""
    folder = _local(dest)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows = []
    for index, chunk in enumerate(np.array_split(np.arange(len(frame)), max(files, 1))):
        name = f"{PART_PREFIX}{index:05d}{_SUFFIX[schema.compression]}"
        count = write_file(folder / name, encode_records(frame.iloc[chunk], schema),
                           schema.compression)
        rows.append((index, name, count, (folder / name).stat().st_size))
    return _finish(folder, schema, pd.DataFrame(rows, columns=["partition", "file", "records",
                                                               "bytes"]))


# --------------------------------------------------------------------------- tf.data reader


def feature_description(schema: TFRecordSchema) -> dict[str, Any]:
    """The ``tf.io.parse_example`` spec for ``schema`` (imports TensorFlow)."""
    import tensorflow as tf

    kinds = {"int64": tf.int64, "float32": tf.float32, "bytes": tf.string, "string": tf.string}
    return {f.name: (tf.io.VarLenFeature(kinds[f.dtype]) if f.shape is None
                     else tf.io.FixedLenFeature(f.shape, kinds[f.dtype]))
            for f in schema.features}


def tfrecord_files(folder: Path | str) -> list[str]:
    """The complete part files of ``folder`` in order (temporary files are not listed)."""
    _, data = load_schema(folder)
    files = [str(Path(folder) / f["name"]) for f in data["files"]]
    absent = [f for f in files if not Path(f).is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} files listed in {Path(folder) / SCHEMA_FILE} are"
                                f" missing (first: {absent[0]}): rewrite the data set")
    return files


def read_tfrecords(
    folder: Path | str,
    *,
    label: str | None = None,
    features: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    shuffle_buffer: int = 0,
    seed: int = 0,
    files: Sequence[str] | None = None,
):
    """A ``tf.data.Dataset`` over a folder written by :func:`write_tfrecords`.

    Parameters
    ----------
    folder : Path or str
        Holds ``schema.json`` and the part files.
    label : str, optional
        Yield ``(features, label)`` pairs, as ``Model.fit`` takes them.
    features : str or sequence of str, optional
        Keep only these features; a single name yields that tensor instead of a dict.
    batch_size : int, optional
        Batch (and parse whole batches at once, which is faster); None yields single records.
    shuffle_buffer : int
        Shuffle records with this buffer (0: file order, deterministic).
    seed : int
        Seed of the shuffle.
    files : sequence of str, optional
        A subset of the part files (default: all, in order).

    Returns
    -------
    tf.data.Dataset
    """
    import tensorflow as tf

    schema, _ = load_schema(folder)
    paths = list(files) if files is not None else tfrecord_files(folder)
    spec = feature_description(schema)
    wanted = ([features] if isinstance(features, str) else list(features)) if features \
        else [n for n in schema.names if n != label]
    keep = [*wanted, *([label] if label else [])]
    spec = {name: spec[name] for name in keep}
    variable = [name for name in keep if schema[name].shape is None]

    def parse(records):
        parsed = (tf.io.parse_example(records, spec) if batch_size
                  else tf.io.parse_single_example(records, spec))
        for name in variable:
            parsed[name] = tf.sparse.to_dense(parsed[name])
        x = parsed[wanted[0]] if isinstance(features, str) else {n: parsed[n] for n in wanted}
        return (x, parsed[label]) if label else x

    ds = tf.data.TFRecordDataset(paths, compression_type=schema.compression or "")
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if batch_size:
        ds = ds.batch(batch_size)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE)


def decode_strings(values: Any) -> Any:
    """``tf.string`` values as numpy gives them (bytes) back to ``str``, for ``string`` features."""
    if isinstance(values, bytes):
        return values.decode("utf-8")
    return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(values)
