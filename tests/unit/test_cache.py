"""common.cache.WorkerCache: load once, bounded, least recently used dropped first."""

import threading
import time

import pytest

from lab_utils.common.cache import WorkerCache


def test_loads_once_and_drops_the_least_recently_used():
    cache = WorkerCache(2)
    calls = []

    def loader(key):
        return lambda: calls.append(key) or key.upper()

    assert cache.get("a", loader("a")) == "A"
    assert cache.get("b", loader("b")) == "B"
    assert cache.get("a", loader("a")) == "A"  # a is now the most recently used
    assert cache.get("c", loader("c")) == "C"  # drops b, not a
    assert "a" in cache and "b" not in cache and len(cache) == 2
    assert cache.get("b", loader("b")) == "B"  # loaded again
    assert calls == ["a", "b", "c", "b"]
    assert cache.loads == {"a": 1, "b": 2, "c": 1}


def test_threads_asking_for_one_key_load_it_once():
    cache = WorkerCache(3)
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.05)
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("m", slow)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(v) for v in got}) == 1


def test_a_loader_may_ask_the_cache_itself():
    # A partition predictor's loader returning the model a UDF cached: get() inside get().
    # With a plain lock this waits on itself forever (a Spark task hung that way); run it in
    # a thread so that a regression fails here instead of hanging the suite.
    cache = WorkerCache(3)
    result = []

    def nested():
        result.append(cache.get("outer", lambda: ("via", cache.get("inner", lambda: "model"))))

    worker = threading.Thread(target=nested, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "get() called from a loader deadlocked"
    assert result == [("via", "model")] and cache.loads == {"inner": 1, "outer": 1}
    assert cache.get("inner", lambda: "reloaded") == "model"


def test_a_failed_load_caches_nothing():
    cache = WorkerCache(1)

    def broken():
        raise OSError("model file missing")

    with pytest.raises(OSError):
        cache.get("m", broken)
    assert "m" not in cache and cache.loads == {}
    with pytest.raises(ValueError, match="at least one"):
        WorkerCache(0)


def test_file_key_changes_when_the_file_is_replaced_under_the_same_path(tmp_path):
    from lab_utils.common.atomic import atomic_write_bytes
    from lab_utils.common.cache import file_key

    path = tmp_path / "model.bin"
    atomic_write_bytes(path, b"one")
    first = file_key(path)
    assert first == file_key(str(path)) and first[0] == str(path)
    atomic_write_bytes(path, b"two")  # same size, maybe the same mtime: a new inode
    assert file_key(path) != first
    atomic_write_bytes(path, b"three")
    assert file_key(path)[2] == 5
    with pytest.raises(FileNotFoundError):
        file_key(tmp_path / "gone.bin")


def test_a_freezing_cache_freezes_after_a_load_in_a_task_and_frees_what_it_drops(monkeypatch):
    import gc
    import weakref

    from lab_utils.common import cache as cache_module

    class Model:  # a reference cycle, as a Keras model has many
        def __init__(self):
            self.me = self

    cache = WorkerCache(1, freeze=True)
    cache.get("outside", Model)  # on the driver or in a test: nothing frozen
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(cache_module, "_in_spark_task", lambda: True)
    try:
        first = weakref.ref(cache.get("a", Model))
        assert gc.get_freeze_count() > 0  # the model and everything loaded before it
        gc.collect()
        assert first() is not None
        cache.get("b", Model)  # drops "a": unfrozen, its cycle collected, the rest refrozen
        assert first() is None and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_freeze_heap_once_freezes_once_per_worker_and_only_in_a_task(monkeypatch):
    from lab_utils.common import cache as cache_module

    calls = []
    monkeypatch.setattr(cache_module, "freeze_heap", lambda: calls.append(1))
    monkeypatch.setattr(cache_module, "_FROZEN_ONCE", False)
    cache_module.freeze_heap_once()  # not in a task: nothing
    assert calls == []
    monkeypatch.setattr(cache_module, "_in_spark_task", lambda: True)
    for _ in range(3):  # every group's fit calls it; the first one freezes
        cache_module.freeze_heap_once()
    assert calls == [1]
