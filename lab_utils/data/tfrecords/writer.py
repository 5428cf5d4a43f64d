"""TFRecords from Spark: ``mapInPandas`` with ``tf.io.TFRecordWriter``, one file per partition,
each written under a temporary name and renamed when complete; ``schema.json`` last."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: mapInPandas functions are resolved with it

from lab_utils.common.atomic import atomic_write_text
from lab_utils.common.task import partition_id

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
from lab_utils.data.tfrecords.schema import (
    _SUFFIX,
    PART_PREFIX,
    SCHEMA_FILE,
    STATS_DDL,
    TFRecordSchema,
    encode_records,
    write_file,
)


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
