"""TFRecords from Spark: ``mapInPandas`` with ``tf.io.TFRecordWriter``, one file per partition,
each written under a temporary name and renamed when complete; ``schema.json`` last.

The whole output is written into a hidden staging folder beside ``dest`` (on the same shared
storage, so executors see it and the final rename is atomic), then swapped in: a failed job
leaves the previous output as it was. ``dest`` is replaced only when it is missing, empty or a
previous output of these writers (a lab ``schema.json`` and ``part-*`` files, nothing else):
given ``share_storages/`` by mistake, they refuse instead of deleting models and event logs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: mapInPandas functions are resolved with it

from lab_utils.common.atomic import MARK, PREFIX, atomic_write_text, replace_folder
from lab_utils.common.task import partition_id

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
from lab_utils.data.tfrecords.schema import (
    _SUFFIX,
    FORMAT,
    PART_PREFIX,
    SCHEMA_FILE,
    STATS_DDL,
    TFRecordDestinationError,
    TFRecordLocationError,
    TFRecordSchema,
    TFRecordSchemaError,
    TFRecordWriteError,
    encode_records,
    write_file,
)


def _local(folder: Path | str) -> Path:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(str(folder))
    if parsed.scheme not in {"", "file"}:
        raise TFRecordLocationError(
            f"{folder}: TFRecords are written with Python file I/O, so the folder must be local "
            "or on storage every executor mounts at the same path (share_storages/); copy the "
            "files to object storage afterwards")
    return Path(unquote(parsed.path) if parsed.scheme else str(folder))


def _is_lab_schema(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_destination(folder: Path) -> None:
    """Raise :class:`TFRecordDestinationError` unless ``folder`` may be replaced: it is missing,
    empty, or a previous output (a lab ``schema.json``, ``part-*`` files and the hidden
    temporaries of :mod:`lab_utils.common.atomic`, nothing else, no subfolder)."""
    if not folder.exists():
        return
    fix = (f"choose an empty or new folder (e.g. {folder / 'tfrecords'}), or, if nothing in it "
           "is needed, delete it yourself")
    if not folder.is_dir():
        raise TFRecordDestinationError(f"{folder} is a file, not a TFRecord output of the lab, "
                                       f"so it is not replaced: {fix}")
    entries = sorted(folder.iterdir())
    if not entries:
        return
    others = [p.name for p in entries if p.is_symlink() or not p.is_file()
              or not (p.name == SCHEMA_FILE or p.name.startswith(PART_PREFIX)
                      or (p.name.startswith(PREFIX) and MARK in p.name))]
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5
                                         else "")
        reason = f"it holds {shown}"
    elif not _is_lab_schema(folder / SCHEMA_FILE):
        reason = f"it has no {SCHEMA_FILE} written by write_tfrecords"
    else:
        return
    raise TFRecordDestinationError(f"{folder} is not a TFRecord output of the lab ({reason}), "
                                   f"so write_tfrecords does not replace it: {fix}")


def _staged(dest: Path | str) -> contextlib.AbstractContextManager[Path]:
    """A staging folder beside ``dest`` that becomes ``dest`` on success
    (:func:`~lab_utils.common.atomic.replace_folder`), checked by :func:`_check_destination`
    before the job and again just before the swap."""
    return replace_folder(_local(dest), check=_check_destination)


def _partition_writer(dest: str, schema: TFRecordSchema):
    def write(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from lab_utils.common.tensorflow import configure_tensorflow

        configure_tensorflow()  # one TF thread per task core, before TF runs an op
        partition = partition_id(default=0)
        name = f"{PART_PREFIX}{partition:05d}{_SUFFIX[schema.compression]}"
        path = Path(dest) / name

        def records() -> Iterator[bytes]:
            first = 0  # row numbers in errors count through the file, not one Arrow batch
            for frame in frames:
                try:
                    yield from encode_records(frame, schema, first_row=first)
                except TFRecordSchemaError as exc:  # the task fails: the job, then the write
                    raise TFRecordSchemaError(f"{name}: {exc}") from None
                first += len(frame)

        count = write_file(path, records(), schema.compression)
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
        Folder on storage every executor sees at the same path (``share_storages/``). It must
        be missing, empty or a previous output of :func:`write_tfrecords`, which is replaced
        once the new output is complete; anything else is refused, never deleted. The files
        are staged in a hidden sibling folder (``.<name>.staging-<uuid>``), so its parent must
        be on that storage too.
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
        A row does not match the schema: the message names the file, the row (its place in
        the file and its scalar int64 and string features), the feature and what is wrong (the
        expected and actual shape or dtype, or a NaN or inf in a feature that does not allow
        them). The task fails, so the job does (Spark wraps the error in its own exception,
        whose message holds this one); ``dest`` is left as it was, the staging folder removed.
        There is no per-row error channel here: a TFRecord file is training data, and a
        silently skipped row would be a data set other than the one asked for.
    TFRecordDestinationError
        ``dest`` holds something that is not a previous output (nothing is written or deleted).

    Examples
    --------
    Six rows in two files, each sorted by ``id``; ``schema.json`` lists them:

    >>> from lab_utils.data.tfrecords import Feature
    >>> schema = TFRecordSchema((Feature("id", "int64"), Feature("x", "float32", (2,))))
    >>> df = spark.createDataFrame([(i, [i / 2, 1.0]) for i in range(6)],
    ...                            "id long, x array<double>")
    >>> summary = write_tfrecords(df, tmp / "train", schema, partitions=2, sort_within=["id"])
    >>> summary["records"], sorted(p.name for p in (tmp / "train").iterdir())
    (6, ['part-00000.tfrecord', 'part-00001.tfrecord', 'schema.json'])
    >>> sum(f["records"] for f in summary["files"])
    6
    """
    frame = df.select(*schema.names)
    if partitions:
        frame = frame.repartition(partitions)
    if sort_within:
        frame = frame.sortWithinPartitions(*sort_within)
    with _staged(dest) as folder:
        # Named pd.DataFrame: mypy leaves PySpark's own name for toPandas()'s type unresolved.
        reports: pd.DataFrame = (frame.mapInPandas(_partition_writer(str(folder), schema),
                                                   STATS_DDL).toPandas())
        stats = reports.sort_values("partition").reset_index(drop=True)
        written = sorted(p.name for p in folder.glob(f"{PART_PREFIX}*"))
        if written != sorted(stats["file"]):
            raise TFRecordWriteError(f"{folder}: the files on disk {written} differ from the "
                                     f"tasks' report {sorted(stats['file'])}; is "
                                     f"{folder.parent} shared by every executor at the same "
                                     "path? Write under share_storages/")
        summary = _finish(folder, schema, stats)
    return summary


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
    ``schema.json``, the same rules for ``dest``: staged beside it, swapped in when complete,
    a folder that is not a previous output refused): for data that fits one machine, and for
    tests."""
    with _staged(dest) as folder:
        rows = []
        for index, chunk in enumerate(np.array_split(np.arange(len(frame)), max(files, 1))):
            name = f"{PART_PREFIX}{index:05d}{_SUFFIX[schema.compression]}"
            count = write_file(folder / name, encode_records(
                frame.iloc[chunk], schema, first_row=int(chunk[0]) if len(chunk) else 0),
                               schema.compression)
            rows.append((index, name, count, (folder / name).stat().st_size))
        summary = _finish(folder, schema, pd.DataFrame(
            rows, columns=["partition", "file", "records", "bytes"]))
    return summary
