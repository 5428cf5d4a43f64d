"""Classic or Spark Connect: what a lab function asks of a session, in the form each mode has.

A Spark Connect session (``pyspark.sql.connect``) has no ``sparkContext``, no RDDs, no
broadcast variables and no accumulators: its client is a gRPC stub, and the driver runs in the
server. The functions here give the answers notebooks need in both modes (how many tasks run at
once, whether a session is a Connect one) and one clear error for a call that has no Connect
form, naming the call and what to use instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lab_utils.errors import LabError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class ClassicOnlyError(LabError, RuntimeError):
    """A lab call needs a classic session (a driver JVM in this process); the message names
    the call and its Connect replacement."""


def is_connect(spark: Any) -> bool:
    """True for a Spark Connect session (or one of its DataFrames), False for a classic one.

    Decided by the object's class, as PySpark's own ``is_remote_only`` checks do: nothing is
    sent to the server.

    Examples
    --------
    >>> class Classic: ...
    >>> is_connect(Classic())
    False
    """
    return type(spark).__module__.startswith("pyspark.sql.connect")


def require_classic(spark: Any, call: str, instead: str) -> None:
    """Raise :class:`ClassicOnlyError` if ``spark`` is a Connect session.

    Examples
    --------
    >>> require_classic(object(), "df.rdd", "mapInPandas")  # a classic stand-in: no error
    """
    if is_connect(spark):
        raise ClassicOnlyError(
            f"{call} needs a classic SparkSession (a driver JVM in this process), and this is "
            f"a Spark Connect session: {instead}. Or start a classic session: unset "
            "LAB_SPARK_API (or set it to classic) and call get_spark() again in a fresh kernel.")


def task_slots(spark: SparkSession) -> int:
    """How many tasks the session's application runs at once, in either mode.

    ``spark.cores.max`` when the application sets it (the lab sets it for every session and
    for its Connect server) divided by ``spark.task.cpus``; otherwise, in classic mode,
    ``sparkContext.defaultParallelism`` (the cores of the executors registered now); otherwise
    ``spark.default.parallelism``. A Connect session on a cluster that sets none of them gets
    a :class:`ClassicOnlyError` saying so rather than a guess.
    """
    conf = spark.conf
    cores = conf.get("spark.cores.max", None)
    if cores:
        per_task = int(conf.get("spark.task.cpus", "1") or 1)
        return max(1, int(cores) // max(per_task, 1))
    if not is_connect(spark):
        return max(1, spark.sparkContext.defaultParallelism)
    parallelism = conf.get("spark.default.parallelism", None)
    if parallelism:
        return max(1, int(parallelism))
    raise ClassicOnlyError(
        "this Spark Connect server's application sets neither spark.cores.max nor "
        "spark.default.parallelism, and its executors' cores are visible only through "
        "sparkContext (classic mode): pass the number of partitions yourself, or ask the "
        "cluster's admin to set spark.cores.max")


def spark_ui_url(spark: SparkSession) -> str | None:
    """The web UI of the application that runs ``spark``'s jobs, or None when it has none.

    Classic: the driver's, ``sparkContext.uiWebUrl``. Connect: the server application's,
    built from its ``spark.driver.host`` and ``spark.ui.port`` (Spark moves to the next port
    when that one is taken, so on a crowded server host the UI may be one port higher).
    """
    if not is_connect(spark):
        return spark.sparkContext.uiWebUrl
    conf = spark.conf
    if (conf.get("spark.ui.enabled", "true") or "true").lower() == "false":
        return None
    host = conf.get("spark.driver.host", None) or "localhost"
    return f"http://{host}:{conf.get('spark.ui.port', '4040') or '4040'}"
