"""Look at the cluster: its workers, and whether executors run the driver's environment."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from lab_utils import config as lab_config
from lab_utils.common.net import http_json

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

#: Libraries whose versions must agree between the driver and every executor (import names; each
#: is also the name of its distribution on PyPI).
PARITY_MODULES = ("pyspark", "pandas", "pyarrow", "numpy", "tensorflow", "keras")


def library_versions(modules: tuple[str, ...] = PARITY_MODULES, *,
                     load: bool = False) -> dict[str, str]:
    """Python's and each library's version.

    By default the versions come from the installed distributions' metadata, which is what
    ``pip list`` shows and takes milliseconds. ``load=True`` imports each module instead and reads
    its ``__version__``: slower (TensorFlow takes seconds), and it also proves the module loads.
    """
    versions = {"python": platform.python_version()}
    for name in modules:
        try:
            if load:
                versions[name] = str(importlib.import_module(name).__version__)
            else:
                versions[name] = importlib.metadata.version(name)
        except ImportError as exc:
            versions[name] = f"missing ({exc.name or name})"
        except importlib.metadata.PackageNotFoundError:
            versions[name] = f"missing ({name})"
    return versions


#: Seconds each task of :func:`executor_versions` holds its slot when the application scales
#: with dynamic allocation (the lab's Connect server): long enough for the executors it asks
#: for to register before one of them has run every task.
DYNAMIC_ALLOCATION_HOLD = 2.0

#: At most this many runs of :func:`executor_versions`' job under dynamic allocation: the
#: executors a run asked for are up for the next one.
DYNAMIC_ALLOCATION_ROUNDS = 3


def _partition_report(modules: tuple[str, ...], load: bool, hold: float
                      ) -> Callable[[Iterable[Any]], Iterator[pd.DataFrame]]:
    def report(frames: Iterable[Any]) -> Iterator[pd.DataFrame]:
        import time

        import pandas as pd

        from lab_utils.common.task import partition_id

        for _ in frames:
            pass
        time.sleep(hold)
        # A Python worker's cwd is its executor's work dir (.../app-id/executor-id): it tells
        # which worker and executor answered, in standalone mode.
        yield pd.DataFrame([{"partition": partition_id(),
                             "host": socket.gethostname(), "pid": os.getpid(),
                             "executor_dir": os.getcwd(),
                             **library_versions(modules, load=load)}])
    return report


def executor_versions(
    spark: SparkSession, partitions: int | None = None, modules: tuple[str, ...] = PARITY_MODULES,
    *, load: bool = False, hold: float | None = None,
) -> pd.DataFrame:
    """Ask the executors for their library versions, one row per partition.

    ``partitions`` defaults to twice the session's task slots
    (:func:`lab_utils.common.connect.task_slots`) so every executor gets a task; ``load`` is
    :func:`library_versions`'s. A ``mapInPandas`` job, so it runs in classic and Spark Connect
    sessions alike.

    ``hold``: seconds each task keeps its slot after answering. By default 0, or
    :data:`DYNAMIC_ALLOCATION_HOLD` when the application uses dynamic allocation (the lab's
    Connect server holds no executor while idle): its executors start one by one as this job
    asks for them, and without a pause the first one up would run every task alone. Even so a
    slow start (a loaded machine, containers) can leave one executor answering for all, so under
    dynamic allocation the job runs again, up to :data:`DYNAMIC_ALLOCATION_ROUNDS` times, while
    each run finds more executors than the last and fewer than the application's task slots
    hold (``spark.executor.cores`` each); the last run is returned.
    """
    from lab_utils.common.connect import task_slots

    slots = task_slots(spark)
    n = partitions or max(2 * slots, 2)
    conf = spark.conf
    dynamic = (conf.get("spark.dynamicAllocation.enabled", "false") or "false").lower() == "true"
    if hold is None:
        hold = DYNAMIC_ALLOCATION_HOLD if dynamic else 0.0
    columns = ["python", *modules]
    schema = ("partition int, host string, pid long, executor_dir string, "
              + ", ".join(f"`{name}` string" for name in columns))
    report = _partition_report(modules, load, hold)
    per_task = int(conf.get("spark.task.cpus", "1") or 1)
    executor_cores = int(conf.get("spark.executor.cores", "0") or 0)
    wanted = max(1, slots * per_task // executor_cores) if executor_cores else None
    seen = 0
    for _ in range(DYNAMIC_ALLOCATION_ROUNDS if dynamic else 1):
        found = cast("pd.DataFrame", spark.range(n, numPartitions=n)
                     .mapInPandas(report, schema).toPandas())
        before, seen = seen, int(found["executor_dir"].nunique())
        if seen <= before or (wanted is not None and seen >= min(wanted, n)):
            break
    return found.sort_values("partition").reset_index(drop=True)


def version_mismatches(driver: dict[str, str], executors: pd.DataFrame) -> list[str]:
    """Human-readable differences between the driver's versions and any executor's."""
    problems = []
    for key, expected in driver.items():
        if key not in executors:
            problems.append(f"{key}: executors did not report it")
            continue
        for found in sorted(set(executors[key]) - {expected}):
            problems.append(f"{key}: driver has {expected}, an executor has {found}")
    return problems


def master_json(cfg: lab_config.LabConfig | None = None, url: str | None = None) -> dict:
    """The standalone master's JSON status (``/json/`` on its web UI)."""
    cfg = cfg or lab_config.load()
    url = url or cfg.master_ui_url
    return http_json(f"{url.rstrip('/')}/json/", timeout=5)


def workers_table(state: dict) -> pd.DataFrame:
    """The master's workers as a table: id, host, state, cores (used) and memory (MiB)."""
    import pandas as pd

    columns = ["id", "host", "state", "cores", "coresused", "memory", "memoryused"]
    return pd.DataFrame([{c: w.get(c) for c in columns} for w in state.get("workers", [])],
                        columns=columns)
