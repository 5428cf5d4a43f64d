"""``common.task``: what a running task knows about itself, and the answers outside a task."""

from __future__ import annotations

import os

from lab_utils.common import task


def test_inside_a_task(local_spark):
    def probe(index, rows):
        yield (index, task.partition_id(), task.task_cpus(), sorted(task.task_resources()))

    answers = local_spark.sparkContext.parallelize(range(6), 3).mapPartitionsWithIndex(
        probe).collect()
    assert [(i, pid) for i, pid, _, _ in answers] == [(0, 0), (1, 1), (2, 2)]
    assert {cpus for _, _, cpus, _ in answers} == {1}  # spark.task.cpus defaults to 1
    assert {tuple(res) for _, _, _, res in answers} == {()}  # no GPUs scheduled


def test_outside_a_task(monkeypatch):
    assert task.task_context() is None
    assert task.partition_id() == -1 and task.partition_id(default=0) == 0
    assert task.task_resources() == {}
    assert task.task_cpus(default=3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert task.task_cpus() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert task.task_cpus() == (os.cpu_count() or 1)
