"""The SQL tab's Python metrics of one query, read back from Spark's REST API.

Every Python operator of a query (``ArrowEvalPython``, ``BatchEvalPython``, ``MapInPandas``, ...)
carries metrics that split a UDF's time: starting the Python workers, initialising them (reading
the function, the imports its pickle triggers), running the Python code, and the bytes moved each
way. The Spark UI's SQL tab shows them; the driver's REST API serves the same figures as text
(``/api/v1/applications/<app>/sql/<id>?details=true``, e.g. ``"total (min, med, max ...)\\n3.3 s
(1.6 s, ...)"``), which :func:`metric_value` turns into seconds, bytes or counts.

A query is found by a job tag (``spark.addTag``): the tagged jobs, then the SQL execution that ran
them. That works in both modes: classic, the driver's UI (``sparkContext.uiWebUrl``); under Spark
Connect, the Connect server's application, whose UI :func:`~lab_utils.common.connect.spark_ui_url`
gives.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from lab_utils.common import net
from lab_utils.errors import LabError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession


class SqlMetricsError(LabError, LookupError):
    """The query, its Python operators or a metric's value could not be found in the UI."""


#: The Python metrics a notebook reads, by the name the SQL tab shows, and the key they get.
PYTHON_METRICS = {
    "time to start Python workers": "worker_start_s",
    "time to initialize Python workers": "worker_init_s",
    "time to execute Python code": "python_code_s",
    "time to run Python workers": "python_run_s",
    "data sent to Python workers": "bytes_sent",
    "data returned from Python workers": "bytes_returned",
    "number of output rows": "rows",
}

#: Units of Spark's metric text (``Utils.msDurationToString``, ``Utils.bytesToString``).
_UNITS = {"ns": 1e-9, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
          "B": 1.0, "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30, "TiB": 2.0**40,
          "PiB": 2.0**50}
_VALUE = re.compile(r"^\s*(-?[\d,]*\.?\d+)\s*([A-Za-z]+)?\s*$")


def metric_value(text: str) -> float:
    """One metric's total as a number: seconds for times, bytes for sizes, else the count.

    >>> metric_value("total (min, med, max (stageId: taskId))\\n3.3 s (1.6 s, 1.6 s, 1.6 s)")
    3.3
    >>> metric_value("total (min, med, max)\\n54 ms (20 ms, 34 ms, 34 ms)")
    0.054
    >>> metric_value("156.5 KiB (78.3 KiB, 78.3 KiB, 78.3 KiB (stage 2.0: task 2))")
    160256.0
    >>> metric_value("20,000")
    20000.0
    """
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    total = lines[-1].split(" (")[0] if lines else ""
    found = _VALUE.match(total)
    if not found or (found.group(2) and found.group(2) not in _UNITS):
        raise SqlMetricsError(f"metric text {text!r} is not a number with a unit Spark writes "
                              f"({', '.join(_UNITS)}): read it in the Spark UI's SQL tab")
    number = float(found.group(1).replace(",", ""))
    return number * _UNITS[found.group(2)] if found.group(2) else number


def python_metrics(execution: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The Python operators of one SQL execution (the REST API's ``details=true`` JSON) and
    their :data:`PYTHON_METRICS`, by operator name (a second one of a name gets ``#2``)."""
    found: dict[str, dict[str, float]] = {}
    for node in execution.get("nodes", []):
        names = {m["name"] for m in node.get("metrics", [])}
        if not names & set(PYTHON_METRICS) - {"number of output rows"}:
            continue  # not a Python operator
        figures = {PYTHON_METRICS[m["name"]]: metric_value(m["value"])
                   for m in node.get("metrics", []) if m["name"] in PYTHON_METRICS}
        name, n = node["nodeName"], 2
        while name in found:
            name, n = f"{node['nodeName']}#{n}", n + 1
        found[name] = figures
    return found


def _tagged_execution(base: str, tag: str, timeout: float) -> dict[str, Any] | None:
    jobs = net.http_json(f"{base}/jobs", timeout=timeout)
    # Classic session tags and a Connect server's operation tags carry a prefix before ours.
    ours = (tag, "_" + tag, "-" + tag)
    job_ids = {job["jobId"] for job in jobs
               if any(t == tag or t.endswith(ours) for t in job.get("jobTags", []))}
    if not job_ids:
        return None
    executions = net.http_json(f"{base}/sql?details=false&offset=0&length=100000",
                               timeout=timeout)
    for execution in reversed(executions):
        ran = set(execution.get("successJobIds", [])) | set(execution.get("failedJobIds", []))
        if ran & job_ids and execution.get("status") != "RUNNING":
            return net.http_json(f"{base}/sql/{execution['id']}?details=true", timeout=timeout)
    return None


def tagged_query_metrics(ui_url: str | None, app_id: str, tag: str, *, wait_s: float = 15.0,
                         sleep: Callable[[float], None] = time.sleep
                         ) -> dict[str, dict[str, float]]:
    """The Python metrics of the query whose jobs carry ``tag`` (``spark.addTag(tag)`` before
    the action), read from the application's UI at ``ui_url``.

    The UI records a query's metrics from Spark's event bus, a moment after the action returns:
    this polls for up to ``wait_s`` seconds until the query is complete with its Python metrics.
    """
    if not ui_url:
        raise SqlMetricsError("this application has no Spark UI (spark.ui.enabled=false): its "
                              "SQL metrics are only in the event log (history server)")
    base = f"{ui_url.rstrip('/')}/api/v1/applications/{app_id}"
    deadline = time.monotonic() + wait_s
    while True:
        execution = _tagged_execution(base, tag, timeout=5.0)
        metrics = python_metrics(execution) if execution else {}
        if metrics and all(m for m in metrics.values()):
            return metrics
        if time.monotonic() > deadline:
            raise SqlMetricsError(
                f"no finished query with Python operators and jobs tagged {tag!r} in {base} "
                f"after {wait_s:.0f} s: call spark.addTag({tag!r}) before the action (and "
                "spark.removeTag after), and check that the query runs a Python UDF")
        sleep(0.5)


def query_metrics(spark: SparkSession, tag: str, **kwargs: Any) -> dict[str, dict[str, float]]:
    """:func:`tagged_query_metrics` for ``spark``'s application, classic or Spark Connect."""
    from lab_utils.common.connect import spark_ui_url

    return tagged_query_metrics(spark_ui_url(spark), spark.conf.get("spark.app.id") or "", tag,
                                **kwargs)
