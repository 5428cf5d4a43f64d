"""executor_versions without a cluster: a stand-in session runs its mapInPandas job here."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from lab_utils.ops import cluster


class StandInSession:
    """Just enough of a SparkSession (classic or Connect) for executor_versions: its conf and
    ``range(n, numPartitions=n).mapInPandas(f, schema).toPandas()``, each partition's rows
    handed to ``f`` as one frame, in this process."""

    def __init__(self, conf: dict[str, str]):
        self.conf = SimpleNamespace(get=lambda key, default=None: conf.get(key, default))
        self.schema = ""

    def range(self, n, numPartitions):
        assert n == numPartitions
        session = self

        class Frame:
            def mapInPandas(self, fn, schema):
                session.schema = schema
                return SimpleNamespace(toPandas=lambda: pd.concat(
                    [out for _ in range(n) for out in fn(iter([pd.DataFrame({"id": [0]})]))],
                    ignore_index=True))
        return Frame()


@pytest.fixture()
def sleeps(monkeypatch):
    import time

    found: list[float] = []
    monkeypatch.setattr(time, "sleep", found.append)
    return found


def test_one_row_per_partition_with_every_column_the_schema_names(sleeps):
    spark = StandInSession({"spark.cores.max": "2"})
    found = cluster.executor_versions(spark, modules=("pandas",))
    assert len(found) == 4  # twice the task slots
    names = [part.split()[0].strip("`") for part in spark.schema.split(", ")]
    assert list(found.columns) == names == ["partition", "host", "pid", "executor_dir",
                                            "python", "pandas"]
    assert found["pandas"].eq(pd.__version__).all()
    assert sleeps == [0.0] * 4  # no dynamic allocation: no pause


def test_tasks_hold_their_slot_under_dynamic_allocation(sleeps):
    spark = StandInSession({"spark.cores.max": "2", "spark.dynamicAllocation.enabled": "true"})
    cluster.executor_versions(spark, 3, modules=())
    # One executor (this process) answered; the second run found no more, so it stopped.
    assert sleeps == [cluster.DYNAMIC_ALLOCATION_HOLD] * 3 * 2
    sleeps.clear()
    cluster.executor_versions(spark, 2, modules=(), hold=0.5)
    assert sleeps == [0.5] * 2 * 2  # the hold given, the same two runs


def test_executors_that_start_late_are_asked_again(sleeps, monkeypatch):
    """Dynamic allocation on a slow machine: the first executor up ran every task of the first
    run; the second run finds both of the application's one-core executors and is the answer."""
    answers = iter(["app/0"] * 4 + ["app/0", "app/1"] * 2 + ["app/2"] * 4)
    monkeypatch.setattr(cluster.os, "getcwd", lambda: next(answers))
    spark = StandInSession({"spark.cores.max": "2", "spark.executor.cores": "1",
                            "spark.dynamicAllocation.enabled": "true"})
    found = cluster.executor_versions(spark, modules=())
    assert sorted(found["executor_dir"].unique()) == ["app/0", "app/1"]
    assert len(sleeps) == 8  # two runs of four tasks: the third was not needed


def test_without_dynamic_allocation_the_job_runs_once(sleeps, monkeypatch):
    answers = iter(["app/0"] * 4 + ["app/1"] * 4)
    monkeypatch.setattr(cluster.os, "getcwd", lambda: next(answers))
    found = cluster.executor_versions(StandInSession({"spark.cores.max": "2"}), modules=())
    assert list(found["executor_dir"].unique()) == ["app/0"]
