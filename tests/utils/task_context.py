"""A stand-in for ``pyspark.TaskContext``, so device placement is tested without Spark.

``lab_utils.common.task`` asks ``from pyspark import TaskContext`` at call time: putting a module
in ``sys.modules["pyspark"]`` (through ``monkeypatch``, undone after the test) decides what a
task sees: no PySpark at all, no running task, or a task with Spark-scheduled GPUs.
"""

from __future__ import annotations

import sys
import types


def gpu_resources(*addresses: str) -> dict[str, types.SimpleNamespace]:
    """``TaskContext.resources()`` of a task that Spark gave these GPU addresses (shaped like
    ``pyspark.resource.ResourceInformation``)."""
    return {"gpu": types.SimpleNamespace(name="gpu", addresses=list(addresses))}


def fake_task_context(monkeypatch, resources: dict | None = None, *, in_task: bool = True,
                      cpus: int = 1, partition: int = 0) -> None:
    """Make ``pyspark.TaskContext.get()`` return a task with ``resources`` (or ``None`` when
    ``in_task`` is false, as on the driver)."""

    class _Context:
        def resources(self):
            return dict(resources or {})

        def cpus(self):
            return cpus

        def partitionId(self):  # PySpark's spelling
            return partition

    class TaskContext:
        @staticmethod
        def get():
            return _Context() if in_task else None

    module = types.ModuleType("pyspark")
    module.TaskContext = TaskContext
    monkeypatch.setitem(sys.modules, "pyspark", module)


def without_pyspark(monkeypatch) -> None:
    """Make ``from pyspark import TaskContext`` raise ImportError, as on a machine without
    Spark (a ``None`` entry in ``sys.modules`` blocks the import)."""
    monkeypatch.setitem(sys.modules, "pyspark", None)


def summing_predictor(devices: list[str], **kw):
    """A ``PartitionPredictor`` over rows ``{"id", "x"}`` giving ``y = x + 1``, whose loader
    records the device string it was given in ``devices``."""
    import numpy as np

    from lab_utils import inference

    def loader(device: str):
        devices.append(device)
        return lambda batch: batch.sum(axis=1, keepdims=True)

    return inference.PartitionPredictor(
        loader, lambda row: np.array([row["x"], 1.0]),
        lambda row, out, err: {"id": row["id"], "y": float(out[0]), "error": err},
        "id int, y double, error string", **kw)
