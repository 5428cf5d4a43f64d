"""Look at the cluster: its workers, and whether executors run the driver's environment."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

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


def _partition_report(modules: tuple[str, ...], load: bool
                      ) -> Callable[[int, Iterable[Any]], Iterator[dict[str, Any]]]:
    def report(index: int, rows: Iterable[Any]) -> Iterator[dict[str, Any]]:
        for _ in rows:
            pass
        # A Python worker's cwd is its executor's work dir (.../app-id/executor-id): it tells
        # which worker and executor answered, in standalone mode.
        yield {"partition": index, "host": socket.gethostname(), "pid": os.getpid(),
               "executor_dir": os.getcwd(), **library_versions(modules, load=load)}
    return report


def executor_versions(
    spark: SparkSession, partitions: int | None = None, modules: tuple[str, ...] = PARITY_MODULES,
    *, load: bool = False,
) -> pd.DataFrame:
    """Ask the executors for their library versions, one row per partition.

    ``partitions`` defaults to twice the default parallelism so every executor gets a task;
    ``load`` is :func:`library_versions`'s.
    """
    import pandas as pd

    sc = spark.sparkContext
    n = partitions or max(2 * sc.defaultParallelism, 2)
    report = _partition_report(modules, load)
    rows = sc.parallelize(range(n), n).mapPartitionsWithIndex(report).collect()
    return pd.DataFrame(rows)


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
