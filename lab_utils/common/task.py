"""What the running Spark task knows about itself, asked from inside a UDF or ``mapIn*``
function; every answer has a sensible value outside a task (on the driver, in a unit test)."""

from __future__ import annotations

import os
from typing import Any


def task_context() -> Any | None:
    """``pyspark.TaskContext.get()``: ``None`` outside a task or without PySpark."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    return TaskContext.get()


def partition_id(default: int = -1) -> int:
    """The task's partition index; ``default`` outside a task."""
    ctx = task_context()
    return ctx.partitionId() if ctx is not None else default


def task_cpus(default: int | None = None) -> int:
    """Cores Spark gave the running task (``spark.task.cpus``); outside a task: ``default``,
    else ``OMP_NUM_THREADS``, else the machine's cores."""
    ctx = task_context()
    if ctx is not None:
        return max(int(ctx.cpus()), 1)
    return default or int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1)


def task_resources() -> dict[str, Any]:
    """The task's resources (``{"gpu": ResourceInformation}`` when GPUs are scheduled)."""
    ctx = task_context()
    return ctx.resources() if ctx is not None else {}


def task_gpu_addresses() -> list[str]:
    """GPU addresses Spark assigned to the running task (``spark.task.resource.gpu.amount``);
    ``[]`` without GPU scheduling or outside a task."""
    gpu = task_resources().get("gpu")
    return [str(a) for a in gpu.addresses] if gpu is not None and gpu.addresses else []
