"""Read a folder of files into Spark rows without losing the empty ones."""

from __future__ import annotations

from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_utils.errors import LabError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class NoJvmError(LabError, RuntimeError):
    """The session's SparkContext has no JVM (it never started), so Hadoop cannot list the
    files."""


#: Spark's file sources treat names starting with these as hidden and never read them.
HIDDEN_PREFIXES = (".", "_")


def read_binary_files(spark: SparkSession, folder: Path | str, *, glob: str | None = None,
                      partitions: int | None = None) -> DataFrame:
    """Files under ``folder`` (recursively) as ``path``, ``label`` (parent folder), ``content``.

    Spark's ``binaryFile`` source with ``recursiveFileLookup`` (and ``pathGlobFilter`` when
    ``glob`` is given). That source skips zero-byte files; they are added back here, so a
    truncated upload becomes a row the decoder reports as an error instead of a file that
    silently vanishes from the output.
    """
    from pyspark.sql import functions as F

    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    if glob is not None:
        reader = reader.option("pathGlobFilter", glob)
    df = reader.load(str(folder)).select("path", "content")
    empty = [p for p in empty_files(spark, str(folder))
             if glob is None or fnmatch(p.rsplit("/", 1)[-1], glob)]
    if empty:
        df = df.unionByName(spark.createDataFrame([(p, bytearray()) for p in empty],
                                                  "path string, content binary"))
    df = df.select("path", F.element_at(F.split("path", "/"), -2).alias("label"), "content")
    return df.repartition(partitions) if partitions else df


def _local_folder(folder: str) -> str | None:
    """``/a/b`` or ``file:/a/b`` -> ``/a/b``; None for another file system (``s3a://``)."""
    if folder.startswith("file://"):
        return folder[len("file://"):]
    if folder.startswith("file:"):
        return folder[len("file:"):]
    return None if "://" in folder else folder


def _empty_files_on_executor(batches: Iterator[Any], folder: str) -> Iterator[Any]:
    """``mapInPandas`` body: walk ``folder`` where the task runs; one row per empty file."""
    import os

    import pandas as pd

    for _ in batches:  # one input row: walk once
        found = []
        for root, _dirs, names in os.walk(folder):
            for name in names:
                full = os.path.join(root, name)
                if (not name.startswith(HIDDEN_PREFIXES) and os.path.isfile(full)
                        and os.path.getsize(full) == 0):
                    found.append("file:" + os.path.abspath(full))
        yield pd.DataFrame({"path": sorted(found)}, dtype=object)


def _empty_files_connect(spark: SparkSession, folder: str) -> list[str]:
    """Under Spark Connect there is no JVM here: an executor walks the folder, as it sees it
    (the very folder its tasks read the files from)."""
    import functools

    local = _local_folder(folder)
    if local is None:
        from lab_utils.common.connect import ClassicOnlyError

        raise ClassicOnlyError(
            f"listing the empty files of {folder} needs Hadoop's FileSystem, which only a "
            "classic session reaches from Python: under Spark Connect, folders must be local or "
            "on a shared mount (file:/...); or use a classic session")
    walk = functools.partial(_empty_files_on_executor, folder=local)
    rows = spark.range(1, numPartitions=1).mapInPandas(walk, "path string").collect()
    return [row.path for row in rows]


def empty_files(spark: SparkSession, folder: str) -> list[str]:
    """Zero-byte visible files under ``folder``, listed through Hadoop's FileSystem like Spark
    (classic), or by an executor walking the folder (Spark Connect: no JVM in this process)."""
    from lab_utils.common.connect import is_connect

    if is_connect(spark):
        return _empty_files_connect(spark, folder)
    jvm = spark.sparkContext._jvm
    if jvm is None:  # a SparkContext always has one once started; None means it never did
        raise NoJvmError("empty_files needs a started classic SparkSession (with a JVM): "
                         "create one with lab_utils.session.get_spark()")
    root = jvm.org.apache.hadoop.fs.Path(folder)
    fs = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    found, files = [], fs.listFiles(root, True)
    while files.hasNext():
        status = files.next()
        if status.getLen() == 0 and not status.getPath().getName().startswith(HIDDEN_PREFIXES):
            found.append(status.getPath().toString())
    return found
