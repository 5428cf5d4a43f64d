"""One ``local[2]`` SparkSession for the Spark functions that need no cluster.

This tier sits between ``unit/`` (no JVM) and ``cluster/`` (the real standalone lab): the same
Spark code paths, two threads of one JVM, started once (about 10 s) and shared by every test of
this folder. It is package-scoped and takes its JVM down with it: PySpark keeps one gateway per
Python process, and a ``local[2]`` session left behind would be returned by ``getOrCreate`` to the
cluster tests that follow (and a gateway launched for it would keep its driver settings).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package")
def local_spark(tmp_path_factory) -> Iterator:
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is not None:  # pragma: no cover - a leak elsewhere
        pytest.fail("a SparkContext is already running; the local tier needs its own")
    saved = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    work = tmp_path_factory.mktemp("local-spark")
    spark = (SparkSession.builder.master("local[2]").appName("lab-tests-local")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4")
             .config("spark.local.dir", str(work))
             .config("spark.sql.warehouse.dir", str(work / "warehouse"))
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()
        _shut_down_gateway(SparkContext)
        if saved is None:
            os.environ.pop("PYSPARK_PYTHON", None)
        else:
            os.environ["PYSPARK_PYTHON"] = saved


def _shut_down_gateway(context_class) -> None:
    """End the py4j gateway and its JVM, so that the next session launches a fresh one."""
    gateway = context_class._gateway
    context_class._gateway = None
    context_class._jvm = None
    if gateway is None:
        return
    gateway.shutdown()
    proc = getattr(gateway, "proc", None)
    if proc is not None:
        if proc.stdin is not None:
            proc.stdin.close()  # the JVM of spark-submit exits when its stdin closes
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
            proc.wait(timeout=30)
