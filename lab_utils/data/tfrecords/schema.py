"""The schema that drives both sides (features: name, dtype, shape), the checks a value must
pass, and the encoding of rows into ``tf.train.Example`` records written to one file."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: mapInPandas functions are resolved with it

from lab_utils.common.atomic import atomic_write
from lab_utils.errors import LabError

if TYPE_CHECKING:
    pass


DTYPES = ("int64", "float32", "bytes", "string")
SCHEMA_FILE = "schema.json"
#: ``schema.json``'s ``format``: how a folder written by the lab is told from any other.
FORMAT = "tfrecord/tf.train.Example"
PART_PREFIX = "part-"
STATS_DDL = "partition int, file string, records long, bytes long"
_SUFFIX = {None: ".tfrecord", "GZIP": ".tfrecord.gz", "ZLIB": ".tfrecord.zz"}


class TFRecordSchemaError(LabError, ValueError):
    """A value does not match its feature's declared dtype or shape, or is a non-finite float
    the feature does not allow; the message names the feature, the value and the fix."""


class TFRecordDestinationError(LabError, FileExistsError):
    """The folder given to write TFRecords into holds something that is not a previous TFRecord
    output of the lab, so it is not replaced; the message names the folder and what is in it."""


class TFRecordLocationError(LabError, ValueError):
    """The folder given to write TFRecords into is on another file system (``s3a://``,
    ``hdfs://``): the tasks write with Python file I/O, which reaches only mounted folders."""


class TFRecordWriteError(LabError, RuntimeError):
    """The part files on disk are not the ones the tasks reported writing (the folder is not
    shared by every executor at the same path)."""


class TFRecordMissingError(LabError, FileNotFoundError):
    """A folder is not a finished TFRecord output of the lab (no ``schema.json``), or files its
    ``schema.json`` lists are gone."""


class TFRecordFeatureError(LabError, KeyError):
    """A feature name the schema does not have; the message lists the names it has."""


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
    allow_non_finite : bool
        ``float32`` only: let NaN and +-inf through. Off by default, because a non-finite
        input poisons training without an error (one NaN makes the loss NaN): opt in only
        where such a value means something to the reader (a masked step, say). A
        ``schema.json`` written before the flag existed loads as not allowed.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] | None = ()
    description: str = ""
    allow_non_finite: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise TFRecordSchemaError(f"feature {self.name!r}: dtype {self.dtype!r} is not one "
                                      f"of {', '.join(DTYPES)}")
        if self.allow_non_finite and self.dtype != "float32":
            raise TFRecordSchemaError(f"feature {self.name!r}: allow_non_finite is for float32 "
                                      f"features; a {self.dtype} value cannot be NaN or inf")
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
        raise TFRecordFeatureError(f"no feature {name!r} in the schema (features: "
                                   f"{', '.join(self.names)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "compression": self.compression,
            "features": [{"name": f.name, "dtype": f.dtype,
                          "shape": None if f.shape is None else list(f.shape),
                          "description": f.description,
                          # float32 only: says to the reader whether NaN/inf may be inside.
                          **({"allow_non_finite": f.allow_non_finite}
                             if f.dtype == "float32" else {})}
                         for f in self.features],
            "metadata": dict(self.metadata),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text: option ``schema`` of ``format("tfrecord")``."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TFRecordSchema:
        features = tuple(Feature(f["name"], f["dtype"],
                                 None if f.get("shape") is None else tuple(f["shape"]),
                                 f.get("description", ""),
                                 bool(f.get("allow_non_finite", False)))  # absent in old files
                         for f in data["features"])
        return cls(features, data.get("compression"), dict(data.get("metadata", {})))


def load_schema(folder: Path | str) -> tuple[TFRecordSchema, dict[str, Any]]:
    """``(schema, the whole schema.json)`` of a folder written by :func:`write_tfrecords`."""
    path = Path(folder) / SCHEMA_FILE
    if not path.is_file():
        raise TFRecordMissingError(f"{path} not found: {folder} was not written by "
                                   "lab_utils.data.tfrecords.write_tfrecords (or the write did "
                                   "not finish; run it again)")
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
    with np.errstate(over="ignore"):  # a float64 beyond float32's range is refused just below
        stored = array.astype(np.float32).ravel()
    if not feature.allow_non_finite:
        _check_finite(feature, array.ravel(), stored)
    return stored


def _check_finite(feature: Feature, given: np.ndarray, stored: np.ndarray) -> None:
    """Refuse NaN and +-inf in ``stored`` (float32), naming the first one as it was given."""
    bad = np.flatnonzero(~np.isfinite(stored))
    if not len(bad):
        return
    first = int(bad[0])
    where = "" if feature.shape == () else f" at flat index {first}"
    value = float(given[first])
    what = (f"{value!r} overflows float32 to {float(stored[first])!r}"
            if math.isfinite(value) else repr(value))
    more = f" ({len(bad)} non-finite values in all)" if len(bad) > 1 else ""
    raise TFRecordSchemaError(
        f"feature {feature.name!r}: non-finite value {what}{where}{more}; drop or repair the "
        "row before writing (a NaN or inf trains a model on garbage without an error), or "
        "declare the feature with allow_non_finite=True if such values are meant to be there")


def _row_key(schema: TFRecordSchema, columns: list[np.ndarray], row: int) -> str:
    """The row's scalar int64 and string features (at most three), to find it by in a message."""
    shown: list[str] = []
    for feature, column in zip(schema.features, columns, strict=True):
        if feature.shape == () and feature.dtype in {"int64", "string"} and len(shown) < 3:
            value = column[row]
            value = value.item() if isinstance(value, np.generic) else value
            shown.append(f"{feature.name}={value!r:.40}")
    return f" (the row's {', '.join(shown)})" if shown else ""


def encode_records(frame: pd.DataFrame, schema: TFRecordSchema, *, first_row: int = 0,
                   ) -> Iterator[bytes]:
    """Serialized ``tf.train.Example`` bytes for every row of ``frame`` (imports TensorFlow).

    A row that does not fit the schema raises :class:`TFRecordSchemaError` naming the row
    (counted from ``first_row``: :func:`write_tfrecords` passes the row's place in its file,
    :func:`write_tfrecords_local` its place in the frame) with its scalar int64 and string
    features, the feature and the value.

    Examples
    --------
    >>> import tensorflow as tf
    >>> schema = TFRecordSchema((Feature("id", "int64"), Feature("x", "float32", (2,))))
    >>> frame = pd.DataFrame({"id": [1, 2], "x": [[0.5, 1.0], [2.0, 3.0]]})
    >>> records = list(encode_records(frame, schema))
    >>> example = tf.train.Example.FromString(records[1]).features.feature
    >>> len(records), example["id"].int64_list.value[:], example["x"].float_list.value[:]
    (2, [2], [2.0, 3.0])
    >>> list(encode_records(pd.DataFrame({"id": [3], "x": [[1.0]]}), schema))
    Traceback (most recent call last):
    lab_utils.data.tfrecords.schema.TFRecordSchemaError: row 0: feature 'x': expected shape (2,)...

    A NaN or an inf float is refused unless the feature allows it (``allow_non_finite=True``):

    >>> list(encode_records(pd.DataFrame({"id": [4], "x": [[1.0, float("nan")]]}), schema))
    Traceback (most recent call last):
    lab_utils.data.tfrecords.schema.TFRecordSchemaError: row 0: feature 'x': non-finite value nan...
    """
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
                raise TFRecordSchemaError(f"row {first_row + row}: {exc}"
                                          f"{_row_key(schema, columns, row)}") from None
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
