"""lab_utils.common.shared: the storage root checked for client and executors, without Spark.

A stand-in session runs the check's tasks in this process, after a hook that plays the worker's
side (the marker gone, rewritten, the folder absent); the real cluster, classic and Connect, with
a client that sees another folder, is ``tests/cluster/test_remote_storage.py``.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab_utils.common import shared
from lab_utils.errors import LabError
from tests.utils.doctests import run_examples


class _Job:
    def __init__(self, spark: FakeSpark, n: int):
        self.spark, self.n = spark, n

    def mapInPandas(self, fn: Callable, schema: str) -> _Job:  # noqa: N802 (Spark's name)
        assert schema == shared.PROBE_SCHEMA
        self.fn = fn
        return self

    def collect(self) -> list[dict[str, Any]]:
        rows = []
        for task in range(self.n):
            self.spark.before_task(task)
            for frame in self.fn(iter([])):
                rows.extend(frame.to_dict("records"))
        return rows


class FakeSpark:
    """Runs each task in this process after ``before_task(task)``; records the job's size."""

    def __init__(self, before_task: Callable[[int], None] = lambda task: None):
        self.before_task = before_task
        self.partitions: list[int] = []
        self.conf = self

    def get(self, key: str, default: str | None = None) -> str | None:
        return {"spark.cores.max": "3"}.get(key, default)

    def range(self, n: int, numPartitions: int) -> _Job:  # noqa: N803 (Spark's name)
        assert n == numPartitions
        self.partitions.append(n)
        return _Job(self, n)


def markers(root: Path) -> list[Path]:
    return sorted(root.glob(f"{shared.MARKER_PREFIX}*"))


def test_examples_in_the_docs_run(tmp_path):
    assert run_examples(shared, tmp_path) >= 3


def test_one_folder_passes_names_the_hosts_and_leaves_no_marker(tmp_path):
    spark = FakeSpark()
    hosts = shared.check_shared_storage(spark, tmp_path)  # type: ignore[arg-type]
    import socket
    assert hosts == (socket.gethostname(),)
    assert spark.partitions == [3]  # spark.cores.max / spark.task.cpus: one task per slot
    assert markers(tmp_path) == []


def test_tasks_are_bounded(tmp_path):
    spark = FakeSpark()
    shared.check_shared_storage(spark, tmp_path, tasks=1000)  # type: ignore[arg-type]
    shared.check_shared_storage(spark, tmp_path, tasks=0)  # type: ignore[arg-type]
    assert spark.partitions == [shared.MAX_TASKS, 1]


def test_the_default_root_is_lab_share_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SHARE_DIR", str(tmp_path))
    seen = []
    spark: Any = FakeSpark(lambda task: seen.extend(markers(tmp_path)))
    shared.check_shared_storage(spark, tasks=1)
    assert len(seen) == 1 and seen[0].parent == tmp_path


@pytest.mark.parametrize(("worker_side", "what"), [
    ("remove", "no such file"),
    ("rewrite", "a different file at that path"),
    ("no folder", "no folder"),
])
def test_a_worker_that_sees_another_folder_gets_the_clear_error(tmp_path, worker_side, what):
    root = tmp_path / "share"
    root.mkdir()

    def worker(task: int) -> None:
        if task == 0:  # the first task still sees the client's folder; the second does not
            return
        (marker,) = markers(root)
        if worker_side == "remove":
            marker.unlink()
        elif worker_side == "rewrite":
            marker.write_text("someone else's\n")
        else:
            marker.unlink()
            root.rename(tmp_path / "elsewhere")

    with pytest.raises(shared.StorageNotSharedError) as caught:
        shared.check_shared_storage(FakeSpark(worker), root, tasks=2)  # type: ignore[arg-type]
    message = str(caught.value)
    assert isinstance(caught.value, LabError) and isinstance(caught.value, OSError)
    assert f"The storage root {root} is not the same folder" in message
    assert f"the client wrote {root}/{shared.MARKER_PREFIX}" in message
    assert f"{what}" in message and "(1 task)" in message
    assert "the same file on" in message  # the task that did see it is named too
    assert "FileNotFoundError" in message and "PATH_NOT_FOUND" in message
    assert "set LAB_SHARE_DIR to that path" in message
    assert "spark.addArtifacts(path, file=True)" in message
    if worker_side != "no folder":
        assert markers(root) == []


def test_an_unreadable_marker_is_reported_with_its_error(tmp_path, monkeypatch):
    import builtins
    real_open = builtins.open

    def deny(path, *args, **kwargs):
        if shared.MARKER_PREFIX in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(shared.StorageNotSharedError, match="unreadable: PermissionError"):
        shared.check_shared_storage(FakeSpark(), tmp_path, tasks=1)  # type: ignore[arg-type]


def test_a_client_without_the_folder_is_told_so(tmp_path):
    root = tmp_path / "not-mounted"
    with pytest.raises(shared.StorageNotSharedError,
                       match=f"This client cannot write under the storage root {root} "):
        shared.check_shared_storage(FakeSpark(), root)  # type: ignore[arg-type]


def test_no_rows_back_is_not_a_pass(tmp_path):
    class Silent(FakeSpark):
        def range(self, n, numPartitions):  # noqa: N803
            job = super().range(n, numPartitions)
            job.collect = lambda: []  # type: ignore[method-assign]
            return job

    with pytest.raises(shared.StorageNotSharedError, match="no task reported back"):
        shared.check_shared_storage(Silent(), tmp_path)  # type: ignore[arg-type]


def test_the_probe_runs_where_lab_utils_is_not_installed(tmp_path):
    """The executors of another cluster may lack the lab's package: the probe ships by value."""
    from pyspark import cloudpickle

    (tmp_path / "m").write_text("tok\n")
    payload = cloudpickle.dumps(shared.marker_probe(str(tmp_path), "m", "tok"))
    worker = ("import pickle, sys\n"
              "sys.modules['lab_utils'] = None  # import lab_utils fails, as on a bare worker\n"
              "probe = pickle.loads(sys.stdin.buffer.read())\n"
              "print(next(probe(iter([]))).loc[0, 'seen'])\n")
    done = subprocess.run([sys.executable, "-c", worker], input=payload, capture_output=True,
                          cwd=tmp_path, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == shared.SAME
    assert pickle.loads(payload)  # and it loads here too
