"""Is the storage root one folder for this client and for the Spark workers?

The lab writes models and data under its storage root (``LAB_SHARE_DIR``, ``share_storages/``
by default) with plain file I/O in the notebook's process, and Spark tasks open the same paths
on the executors. On the lab's own cluster every process runs on one machine (or mounts one
folder, with Docker), so that holds by construction. On another cluster it holds only when the
folder is mounted at the same path on the client and on every worker. Otherwise the failure
comes late and far from its cause: a model saved a cell earlier is a ``FileNotFoundError`` in a
UDF, a data set is ``PATH_NOT_FOUND`` (or ``FAILED_READ_FILE`` when the driver, in classic
mode, sees the file and the executors do not).

:func:`check_shared_storage` asks the question in one tiny job, in classic and in Spark Connect
mode alike (no ``sparkContext``, no RDD): the client writes a marker file with a random name
and content under the root, tasks on the executors read it back, and the marker is removed.
Anything but "the same content" raises :class:`StorageNotSharedError`, whose message names the
path, says what the workers saw and how to fix it (docs/remote-cluster.md).

The function the executors run imports nothing from ``lab_utils``, so the check also works on a
cluster where the lab's package is not installed yet.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lab_utils import config as lab_config
from lab_utils.common.connect import ClassicOnlyError, task_slots
from lab_utils.errors import LabError

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

#: Marker files start with this (hidden: Spark's file sources, globs and the model server's
#: listing skip them); a random suffix keeps two checks, from two clients, apart.
MARKER_PREFIX = ".lab-shared-check-"

#: What a task reports (``mapInPandas`` output): its host and what it found.
PROBE_SCHEMA = "host string, seen string"

#: ``seen`` of a task that found the marker with the client's content.
SAME = "same"

#: The fix, in every message.
FIX = ("Fix: mount the same folder at the same path on every worker and on this client, and "
       "set LAB_SHARE_DIR to that path (docs/remote-cluster.md); or ship each file the "
       "executors need with spark.addArtifacts(path, file=True) and open it on the worker "
       "with pyspark.SparkFiles.get(name).")

#: Most tasks one check starts, whatever the cluster's size.
MAX_TASKS = 64


class StorageNotSharedError(LabError, OSError):
    """The storage root is not one folder for the client and the executors; the message names
    the path, what the workers saw there, and the fix."""


def marker_probe(root: str, name: str, token: str) -> Callable[
        [Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function each task runs: one row, its host and what it found at ``root/name``.

    ``seen`` is :data:`SAME`, ``"no folder"`` (``root`` does not exist there), ``"no file"``,
    ``"different"`` (a file with other content) or ``"unreadable: <error>"``. Everything it
    needs is imported inside, so cloudpickle ships it by value: the executors need pandas,
    not ``lab_utils``.

    Examples
    --------
    >>> _ = (tmp / "m").write_text("t1\\n")
    >>> probe = marker_probe(str(tmp), "m", "t1")
    >>> next(probe(iter([]))).loc[0, "seen"]
    'same'
    >>> next(marker_probe(str(tmp), "m", "t2")(iter([]))).loc[0, "seen"]
    'different'
    >>> next(marker_probe(str(tmp / "gone"), "m", "t1")(iter([]))).loc[0, "seen"]
    'no folder'
    """

    def probe(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import os
        import socket

        import pandas as pd

        for _ in batches:  # the input is one row per task; only the task itself matters
            pass
        path = os.path.join(root, name)
        try:
            if not os.path.isdir(root):
                seen = "no folder"
            elif not os.path.exists(path):
                seen = "no file"
            else:
                with open(path, encoding="utf-8") as f:
                    seen = "same" if f.read().strip() == token else "different"
        except OSError as e:
            seen = f"unreadable: {type(e).__name__}: {e}"
        yield pd.DataFrame({"host": [socket.gethostname()], "seen": [seen]})

    return probe


def describe_mismatch(root: str | Path, marker: str | Path,
                      seen: Iterable[tuple[str, str]]) -> str:
    """The message of :class:`StorageNotSharedError` for the ``(host, seen)`` of each task.

    Examples
    --------
    >>> print(describe_mismatch("/data/share", "/data/share/.lab-shared-check-1a2b",
    ...                         [("w1", "no file"), ("w1", "no file"), ("w2", "same")]))
    The storage root /data/share is not the same folder for this client and the Spark \
workers: the client wrote /data/share/.lab-shared-check-1a2b, and the tasks found no such \
file on w1 (2 tasks); the same file on w2 (1 task). A model or data file this client writes \
there with plain file I/O is missing on those executors (FileNotFoundError in a UDF, \
PATH_NOT_FOUND or FAILED_READ_FILE from spark.read), and what Spark writes there is missing \
here. Fix: ...
    """
    what = {"no folder": f"no folder {root}", "no file": "no such file",
            "different": "a different file at that path", SAME: "the same file"}
    counts = Counter(seen)
    found = "; ".join(
        f"{what.get(state, state)} on {host} ({n} task{'s' if n > 1 else ''})"
        for (host, state), n in sorted(counts.items(), key=lambda kv: (kv[0][1] == SAME, kv[0])))
    found = found or "nothing: no task reported back"
    return (f"The storage root {root} is not the same folder for this client and the Spark "
            f"workers: the client wrote {marker}, and the tasks found {found}. A model or data "
            "file this client writes there with plain file I/O is missing on those executors "
            "(FileNotFoundError in a UDF, PATH_NOT_FOUND or FAILED_READ_FILE from "
            "spark.read), and what Spark "
            f"writes there is missing here. {FIX}")


def _tasks(spark: SparkSession, tasks: int | None) -> int:
    if tasks is None:
        try:
            tasks = task_slots(spark)
        except ClassicOnlyError:  # a Connect server that says nothing of its cores
            tasks = 2
    return max(1, min(int(tasks), MAX_TASKS))


def check_shared_storage(spark: SparkSession, root: str | Path | None = None, *,
                         tasks: int | None = None) -> tuple[str, ...]:
    """Check that ``root`` is the same folder for this client and the executors, or raise.

    One job of ``tasks`` one-row tasks (default: the application's task slots, at most
    :data:`MAX_TASKS`), each of which reads back a marker file the client wrote under
    ``root``; the marker is removed afterwards. Works with a classic and a Spark Connect
    session. Tasks land where the scheduler puts them: a worker that ran none of them is not
    checked (with dynamic allocation, a cold application may run them all on its first
    executor).

    Parameters
    ----------
    spark : SparkSession
        A classic or Spark Connect session.
    root : str or Path, optional
        The folder to check (default: ``LAB_SHARE_DIR``, the lab's storage root).
    tasks : int, optional
        How many tasks to start.

    Returns
    -------
    tuple of str
        The hosts whose tasks found the client's marker.

    Raises
    ------
    StorageNotSharedError
        The client cannot write under ``root``, or a task found no folder, no marker, a
        different one, or could not read it. The message names the path, what each host saw,
        and the fix.

    Examples
    --------
    >>> check_shared_storage(spark, tmp)  # doctest: +SKIP
    ('worker-1', 'worker-2')
    """
    root = Path(root) if root is not None else lab_config.load().share_dir
    marker = root / f"{MARKER_PREFIX}{secrets.token_hex(8)}"
    token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(16)}"
    try:
        marker.write_text(token + "\n", encoding="utf-8")
        marker.chmod(0o644)  # executors may run as another user
    except OSError as e:
        raise StorageNotSharedError(
            f"This client cannot write under the storage root {root} ({type(e).__name__}: "
            f"{e.strerror or e}), so nothing it saves there can reach the Spark workers. "
            f"{FIX}") from e
    try:
        n = _tasks(spark, tasks)
        rows = (spark.range(n, numPartitions=n)
                .mapInPandas(marker_probe(str(root), marker.name, token), PROBE_SCHEMA)
                .collect())
    finally:
        marker.unlink(missing_ok=True)
    seen: list[tuple[str, str]] = [(row["host"], row["seen"]) for row in rows]
    if not seen or any(state != SAME for _, state in seen):
        raise StorageNotSharedError(describe_mismatch(root, marker, seen))
    return tuple(sorted({host for host, _ in seen}))

