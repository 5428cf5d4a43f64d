"""One ``local[2]`` SparkSession for the Spark functions that need no cluster.

This tier sits between ``unit/`` (no JVM) and ``cluster/`` (the real standalone lab): the same
Spark code paths, two threads of one JVM, started once (about 10 s) and shared by every test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def local_spark(tmp_path_factory) -> Iterator:
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    work = tmp_path_factory.mktemp("local-spark")
    spark = (SparkSession.builder.master("local[2]").appName("lab-tests-local")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4")
             .config("spark.local.dir", str(work))
             .config("spark.sql.warehouse.dir", str(work / "warehouse"))
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()
