"""A per-process cache of loaded models, shared by every task a Python worker runs.

Spark reuses Python workers across tasks (``spark.python.worker.reuse``, on by default), so a
model kept in a module-level cache is loaded once per worker, not once per task or batch. A
long-lived worker may see many models (every run of a notebook, every group of a training
run), so the cache is bounded and drops the least recently used entry first. The lock is held
while a model loads: two threads of one worker asking for the same model load it once. It is
reentrant: a loader may itself ask the cache (a partition predictor's loader that returns the
model a UDF cached), which with a plain lock would wait on itself forever.

A cache made with ``freeze=True`` (the inference cache) takes the model out of the garbage
collector's reach once it is loaded in a Spark task (:func:`freeze_heap`). PySpark's daemon runs
a full ``gc.collect()`` in a reused Python worker after every task; with TensorFlow and a model
loaded that pass walks about 425,000 objects, 0.2 s per task on a 2-vCPU machine, taken from the
other tasks' CPU, and the worker's next task waits for it.

A model loaded from a file is cached under :func:`file_key`, never under its path alone: a
worker outlives a notebook run, and a model retrained under the same path must be loaded again.
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

from lab_utils.common.task import task_context
from lab_utils.errors import LabError

V = TypeVar("V")


class CacheSizeError(LabError, ValueError):
    """A :class:`WorkerCache` was asked to hold fewer than one value."""


def file_key(path: Path | str) -> tuple[str, int, int, int]:
    """``(path, mtime_ns, size, inode)``: the cache key of a model file's current version.

    Each part catches a retrain the others can miss: the size alone misses two pickles of the
    same estimator (byte-for-byte the same length), the modification time alone a retrain
    within the file system's timestamp granularity (1 s on some NFS servers); a retrain written
    with :mod:`lab_utils.common.atomic` is also a new inode. Raises ``FileNotFoundError`` for a
    missing file.
    """
    stat = os.stat(path)
    return str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data``: how the lab records and checks a model file's content."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path | str) -> str:
    """The sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def freeze_heap() -> None:
    """Collect garbage, then move every object alive now to the permanent generation.

    ``gc.freeze()``: later collections skip those objects (the imported libraries, a loaded
    model), so the collection PySpark runs after every task takes under a millisecond instead
    of 0.2 s with TensorFlow loaded. Frozen objects are still freed by reference counting; only
    reference cycles among them wait for ``gc.unfreeze()``.
    """
    gc.collect()
    gc.freeze()


_FROZEN_ONCE = False


def freeze_heap_once() -> None:
    """:func:`freeze_heap`, the first time this is called in a Spark task of this process.

    For workers that load many small models (one per group) rather than one big one: called
    after the first fit or load, it freezes the libraries that fit imported (scikit-learn,
    pandas, pyarrow: about 150,000 objects, 0.06 s per collection) and nothing after.
    """
    global _FROZEN_ONCE
    if not _FROZEN_ONCE and _in_spark_task():
        _FROZEN_ONCE = True
        freeze_heap()


def _in_spark_task() -> bool:
    return task_context() is not None


class WorkerCache(Generic[V]):
    """A thread-safe LRU of at most ``size`` values; ``loads`` counts the loads per key.

    ``freeze=True``: after each load in a Spark task, :func:`freeze_heap`; a value dropped to
    make room is unfrozen first, so that its reference cycles (a Keras model has many) are
    collected. Outside a task (the driver, a unit test) nothing is frozen.
    """

    def __init__(self, size: int, *, freeze: bool = False):
        if size < 1:
            raise CacheSizeError(f"a WorkerCache holds at least one value, not {size}: pass "
                                 "size=1 or more")
        self.size = size
        self.freeze = freeze
        self.loads: dict[Hashable, int] = {}
        self._values: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The value for ``key``, calling ``load()`` on first use (or after it was dropped)."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            value = load()
            self._values[key] = value
            self.loads[key] = self.loads.get(key, 0) + 1
            dropped = False
            while len(self._values) > self.size:
                self._values.popitem(last=False)
                dropped = True
            if self.freeze and _in_spark_task():
                if dropped:
                    gc.unfreeze()  # the dropped value's cycles become collectable again
                freeze_heap()
            return value

    def __getitem__(self, key: Hashable) -> V:
        with self._lock:
            return self._values[key]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._values

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def clear(self) -> None:
        """Drop every value (the load counts stay)."""
        with self._lock:
            self._values.clear()
