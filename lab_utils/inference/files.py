"""Files in and out of inference: images read as ``binaryFile`` rows (empty files kept),
``file:`` URIs back to local paths, and images placed into one folder per predicted class."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.common.atomic import atomic_write

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def read_images(spark, folder: Path | str, *, partitions: int | None = None) -> DataFrame:
    """All files under ``folder`` (recursively) as ``path``, ``label``, ``content`` rows.

    Every file is read, not only ``*.png``/``*.jpg``: a stray non-image becomes a row with an
    error rather than a silently skipped file, and so does an empty file. ``label`` is the
    parent folder's name (the true class in the lab's layout).
    """
    from lab_utils.common.files import read_binary_files

    return read_binary_files(spark, folder, partitions=partitions)


def local_path(uri: str) -> str:
    """``file:/a/b c.png`` -> ``/a/b c.png`` (placing files needs a shared POSIX folder).

    Spark's file sources give Hadoop path strings, which are *not* percent-encoded: a file
    named ``50%25 off.png`` or ``a#b?.png`` is written as is, so the prefix is cut, nothing is
    decoded.
    """
    for prefix in ("file://", "file:"):
        if uri.startswith(prefix):
            return uri[len(prefix):]
    scheme = uri.split(":", 1)[0] if ":" in uri.split("/", 1)[0] else ""
    if scheme:
        raise ValueError(f"{uri}: only local or shared (NFS) folders can be sorted into class "
                         "folders; copy from other file systems with their own tools")
    return uri


def place_by_class(predictions: DataFrame, dest: Path | str, *, link: bool = False) -> DataFrame:
    """Copy every scored file into ``dest/<prediction>/`` (errors into ``dest/_errors/``).

    The copies run on the executors, in parallel, like the classification itself. Each file is
    written under a temporary name and renamed, so a retried task never leaves a torn file.
    ``link=True`` makes hard links instead of copies (same file system only).
    Returns ``path``, ``placed`` (the new path) and ``placed_error`` for each input row.
    """
    import shutil

    dest = str(dest)

    def place(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            placed, problems = [], []
            for path, label, error in zip(frame["path"], frame["prediction"], frame["error"],
                                          strict=True):
                folder = Path(dest) / ("_errors" if error is not None or label is None
                                       else str(label))
                try:
                    source = local_path(path)
                    folder.mkdir(parents=True, exist_ok=True)
                    target = folder / Path(source).name
                    atomic_write(target, (lambda tmp, s=source: os.link(s, tmp)) if link
                                 else (lambda tmp, s=source: shutil.copyfile(s, tmp)))
                    placed.append(str(target))
                    problems.append(None)
                except (OSError, ValueError) as exc:
                    placed.append(None)
                    problems.append(f"{type(exc).__name__}: {exc}")
            yield pd.DataFrame({"path": frame["path"], "placed": placed,
                                "placed_error": problems})

    return predictions.select("path", "prediction", "error").mapInPandas(
        place, "path string, placed string, placed_error string")
