"""Lose a worker mid-job and check that the output is still exactly right.

Notebook 00's section 9 (losing a worker) and ``tests/cluster/test_worker_loss.py`` use the
same pieces:

* :func:`keyed_images` builds a long, deterministic job input: image files cycled to any number
  of rows, each row keyed by a unique ``id``, so the output can be checked key by key;
* :func:`executors` and :func:`job_tasks` ask an application's driver where its executors run
  (which lab worker) and how many tasks of a job group run, finished or failed on each;
* :func:`kill_worker` kills a native worker's JVM with SIGKILL, like a crashed machine, and
  :func:`kill_mid_job` does it while a job of yours runs, once every worker is busy with it
  (a classic session: it needs ``sparkContext``; under Spark Connect kill from a terminal);
* :func:`lingering_processes` lists processes still running in a worker's work folder (its
  executors and their Python workers) after that worker is gone;
* :func:`check_output` reads the written Parquet back: rows, duplicate keys, missing keys,
  null predictions, whether the job was committed.

Bring a killed worker back with ``make lab``: it starts only the services that are missing.
"""

from __future__ import annotations

import os
import signal
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from lab_utils import config as lab_config
from lab_utils.common import net, process
from lab_utils.errors import LabError
from lab_utils.ops import pids, services

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: Seconds to wait for a driver's REST API: a busy driver answers slowly, not never.
HTTP_TIMEOUT = 30.0


class NoInputFilesError(LabError, ValueError):
    """The folder a drill's job input is built from holds no files."""


class NoSparkUiError(LabError, RuntimeError):
    """The session has no Spark UI, whose REST API the drill watches the tasks through."""


def keyed_images(spark: SparkSession, folder: Path | str, rows: int, *, partitions: int,
                 distinct: int = 512) -> DataFrame:
    """``rows`` rows ``id, path, content``: the images under ``folder``, cycled, keyed by ``id``.

    ``id`` runs from 0 to ``rows - 1``. At most ``distinct`` files (the first by path) are read
    once on the driver and broadcast; row ``id`` carries file ``id % files``. The rows are a
    pure function of ``rows``, ``partitions`` and the files, so a partition recomputed after an
    executor is lost holds exactly the rows it held before.
    """
    from pyspark.sql import functions as F

    from lab_utils import inference

    files = (inference.read_images(spark, folder).select("path", "content")
             .orderBy("path").limit(distinct).collect())
    if not files:
        raise NoInputFilesError(f"{folder}: no files to score: run the notebook's first cells or "
                                "`make models` to build the image set")
    table = spark.createDataFrame([(k, row.path, row.content) for k, row in enumerate(files)],
                                  "k long, path string, content binary")
    return (spark.range(rows, numPartitions=partitions)
            .join(F.broadcast(table), F.col("id") % len(files) == F.col("k"))
            .select("id", "path", "content"))


def executors(ui_url: str, app_id: str, cfg: lab_config.LabConfig | None = None) -> list[dict]:
    """An application's executors, dead ones included, as its driver's REST API reports them.

    Each has ``id``, ``worker`` (the native lab's service, e.g. ``worker-2``, read from the
    executor's log URL, which points at its worker's web UI; other workers show as the UI's
    ``host:port``), ``alive``, and its ``active``, ``completed`` and ``failed`` task counts.
    """
    cfg = cfg or lab_config.load()
    host = services.resolve_host(cfg.host)
    names = {f"{host}:{cfg.worker_ui_port + i - 1}": f"worker-{i}"
             for i in range(1, cfg.workers + 1)}
    found = net.http_json(f"{ui_url.rstrip('/')}/api/v1/applications/{app_id}/allexecutors",
                          timeout=HTTP_TIMEOUT)
    result = []
    for item in found:
        if item["id"] == "driver":
            continue
        log = urlparse(item.get("executorLogs", {}).get("stdout", ""))
        result.append({"id": item["id"], "worker": names.get(log.netloc, log.netloc),
                       "alive": item["isActive"], "active": item["activeTasks"],
                       "completed": item["completedTasks"], "failed": item["failedTasks"]})
    return result


def _group_tasks(ui_url: str, app_id: str, group: str,
                 cfg: lab_config.LabConfig | None) -> list[tuple[int, str, str]]:
    """``(stage id, worker, status)`` for every task attempt of the jobs in ``group``."""
    base = f"{ui_url.rstrip('/')}/api/v1/applications/{app_id}"
    where = {e["id"]: e["worker"] for e in executors(ui_url, app_id, cfg)}
    found = []
    for job in net.http_json(f"{base}/jobs", timeout=HTTP_TIMEOUT):
        if job.get("jobGroup") != group:
            continue
        for stage_id in job["stageIds"]:
            try:
                attempts = net.http_json(f"{base}/stages/{stage_id}?details=true",
                                         timeout=HTTP_TIMEOUT)
            except urllib.error.HTTPError:
                continue  # a stage the driver has not submitted (or skipped)
            for attempt in attempts:
                found += [(stage_id, where.get(task["executorId"], task["executorId"]),
                           task["status"]) for task in (attempt.get("tasks") or {}).values()]
    return found


def job_tasks(ui_url: str, app_id: str, group: str,
              cfg: lab_config.LabConfig | None = None) -> dict[str, dict[str, int]]:
    """Tasks of the application's jobs in job group ``group``, counted per worker and status.

    ``{"worker-1": {"SUCCESS": 9, "RUNNING": 1}, "worker-2": {"FAILED": 1, ...}}``, every
    attempt of every stage counted (a task lost with its worker is ``FAILED``, its retry
    another entry). Set the group on the driver with ``sc.setJobGroup(group, description)``.
    """
    counts: dict[str, dict[str, int]] = {}
    for _, worker, status in _group_tasks(ui_url, app_id, group, cfg):
        counts.setdefault(worker, {})
        counts[worker][status] = counts[worker].get(status, 0) + 1
    return counts


def busy_workers(ui_url: str, app_id: str, group: str,
                 cfg: lab_config.LabConfig | None = None) -> set[str]:
    """Workers where a stage of job group ``group`` has finished a task and runs another.

    Then the stage is under way there (Python workers started, the model loaded), and
    some of its output is already written: the moment to pull the plug.
    """
    seen: dict[tuple[int, str], set[str]] = {}
    for stage_id, worker, status in _group_tasks(ui_url, app_id, group, cfg):
        seen.setdefault((stage_id, worker), set()).add(status)
    return {worker for (_, worker), statuses in seen.items()
            if {"SUCCESS", "RUNNING"} <= statuses}


def _worker_pid(cfg: lab_config.LabConfig, name: str) -> int:
    pid = pids.running_pid(cfg, name)
    if pid is None:
        raise services.LaunchError(
            f"{name} is not running in the native lab at {cfg.state_dir}: `make status` lists "
            "the workers; in Docker kill a worker container instead "
            "(`docker kill <project>-spark-worker-2`, back with `docker compose up -d`)")
    return pid


def kill_worker(cfg: lab_config.LabConfig, name: str = "worker-2") -> int:
    """Kill a native worker's JVM with SIGKILL (no shutdown hooks: a crashed machine).

    Returns its pid. In a terminal it is ``make status`` (the pids) and ``kill -9 PID``.
    """
    pid = _worker_pid(cfg, name)
    os.kill(pid, signal.SIGKILL)
    return pid


def kill_mid_job(spark: SparkSession, action: Callable[[], object],
                 cfg: lab_config.LabConfig | None = None, *, worker: str = "worker-2",
                 group: str = "lose-a-worker", timeout: float = 600.0) -> int | None:
    """Run ``action`` (code that runs a Spark job) and kill ``worker`` in the middle of it.

    ``action`` runs in a thread, its jobs in job group ``group``. Once a stage of it has
    finished a task and is running another on every worker of the lab, ``worker`` is killed
    with SIGKILL. Waits for ``action`` to finish (raising its error, if any) and returns the
    pid killed, or None when the job ended before every worker was busy (make it longer).

    Classic sessions only: it sets a job group and reads the driver's UI address through
    ``sparkContext``; under Spark Connect it raises
    :class:`~lab_utils.common.connect.ClassicOnlyError` before any job starts.
    """
    import threading

    from lab_utils.common.connect import require_classic

    require_classic(spark, "resilience.kill_mid_job (job groups and sparkContext.uiWebUrl)",
                    "run the job and kill the worker from a terminal (`make status`, then "
                    "`kill -9 PID`); the server application's REST API, "
                    "common.connect.spark_ui_url(spark) and spark.conf.get('spark.app.id'), "
                    "still answers resilience.executors")
    cfg = cfg or lab_config.load()
    _worker_pid(cfg, worker)  # not the native lab: say so before any job starts
    sc = spark.sparkContext
    ui_url = sc.uiWebUrl
    if ui_url is None:  # before the job starts: its thread would run on after the error
        raise NoSparkUiError("kill_mid_job watches the tasks through the Spark UI's REST API, "
                             "and this session has no UI: start it without "
                             "spark.ui.enabled=false")
    failure: list[BaseException] = []

    def run() -> None:
        # Job groups are per thread (PySpark's pinned thread mode): set it in this one.
        sc.setJobGroup(group, f"{worker} is killed during this job")
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"kill-{worker}-mid-job", daemon=True)
    thread.start()
    everyone = {f"worker-{i}" for i in range(1, cfg.workers + 1)}
    process.wait_until(lambda: not thread.is_alive()
                   or busy_workers(ui_url, sc.applicationId, group, cfg) >= everyone,
                   timeout, 0.2)
    pid = kill_worker(cfg, worker) if thread.is_alive() else None
    thread.join()
    if failure:
        raise failure[0]
    return pid


def lingering_processes(cfg: lab_config.LabConfig, name: str) -> list[int]:
    """Pids of processes running inside worker ``name``'s work folder.

    Executors run in ``<state>/work/<worker>/<app>/<executor>`` and their Python workers
    inherit that folder, so after a worker is killed this lists what it left behind.
    """
    work = (cfg.state_dir / "work" / name).resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == work or work in cwd.parents:
            found.append(int(entry.name))
    return found


def check_output(path: Path | str, rows: int, *, key: str = "id",
                 value: str = "prediction") -> dict:
    """Read a job's Parquet output back and count what a lost task could have broken.

    Returns ``rows_expected``, ``rows_written``, ``duplicates`` (rows beyond one per key),
    ``missing`` (keys in ``0..rows-1`` absent), ``unexpected`` (keys outside it),
    ``null_values`` (rows whose ``value`` is null), ``committed`` (the job's ``_SUCCESS``
    marker exists) and ``temporary_left`` (an uncommitted ``_temporary`` folder remains).
    """
    import numpy as np
    import pyarrow.parquet as pq

    path = Path(path)
    table = pq.read_table(path, columns=[key, value])
    keys = table.column(key).to_numpy()
    distinct = np.unique(keys)
    in_range = distinct[(distinct >= 0) & (distinct < rows)]
    return {
        "rows_expected": rows,
        "rows_written": int(len(keys)),
        "duplicates": int(len(keys) - len(distinct)),
        "missing": int(rows - len(in_range)),
        "unexpected": int(len(distinct) - len(in_range)),
        "null_values": int(table.column(value).null_count),
        "committed": (path / "_SUCCESS").is_file(),
        "temporary_left": (path / "_temporary").exists(),
    }
