"""The worker-loss helpers without a cluster: output checks, REST parsing, process scans."""

from __future__ import annotations

import subprocess
import urllib.error
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lab_utils import config
from lab_utils.common import net
from lab_utils.ops import resilience, services


def write_output(folder, ids, predictions=None, *, success=True):
    folder.mkdir(parents=True)
    predictions = predictions or ["3"] * len(ids)
    half = len(ids) // 2  # two part files, like two tasks
    for i, (a, b) in enumerate([(0, half), (half, len(ids))]):
        pq.write_table(pa.table({"id": pa.array(ids[a:b], pa.int64()),
                                 "prediction": pa.array(predictions[a:b], pa.string())}),
                       folder / f"part-0000{i}.parquet")
    if success:
        (folder / "_SUCCESS").touch()
    return folder


def test_check_output_of_a_clean_job(tmp_path):
    out = write_output(tmp_path / "out", list(range(10)))
    assert resilience.check_output(out, 10) == {
        "rows_expected": 10, "rows_written": 10, "duplicates": 0, "missing": 0,
        "unexpected": 0, "null_values": 0, "committed": True, "temporary_left": False}


def test_check_output_counts_what_a_lost_task_could_break(tmp_path):
    ids = [0, 1, 1, 2, 2, 2, 5, 11]  # 3 and 4 missing, 11 outside 0..5, 1 and 2 repeated
    out = write_output(tmp_path / "out", ids, ["a", None, "b", "c", None, "d", "e", "f"],
                       success=False)
    (out / "_temporary" / "0").mkdir(parents=True)
    found = resilience.check_output(out, 6)
    assert found == {"rows_expected": 6, "rows_written": 8, "duplicates": 3, "missing": 2,
                     "unexpected": 1, "null_values": 2, "committed": False,
                     "temporary_left": True}


def lab_cfg(tmp_path, **extra):
    return config.load({"LAB_ROOT": str(tmp_path), "LAB_WORKER_UI_PORT": "8081",
                        "LAB_WORKERS": "2", **extra})


EXECUTORS = [
    {"id": "driver", "isActive": True, "activeTasks": 0, "completedTasks": 0,
     "failedTasks": 0, "executorLogs": {}},
    {"id": "0", "isActive": False, "activeTasks": 0, "completedTasks": 3, "failedTasks": 1,
     "executorLogs": {"stdout": "http://127.0.0.1:8082/logPage/?appId=a&executorId=0&logType=stdout"}},
    {"id": "1", "isActive": True, "activeTasks": 1, "completedTasks": 9, "failedTasks": 0,
     "executorLogs": {"stdout": "http://127.0.0.1:8081/logPage/?appId=a&executorId=1&logType=stdout"}},
    {"id": "2", "isActive": True, "activeTasks": 1, "completedTasks": 0, "failedTasks": 0,
     "executorLogs": {"stdout": "http://10.0.0.7:8081/logPage/?appId=a&executorId=2&logType=stdout"}},
]


def fake_rest(monkeypatch, stages):
    """A driver's REST API: the executors above, one job in group "g" and one outside it."""
    answers = {
        "/allexecutors": EXECUTORS,
        "/jobs": [{"jobGroup": "g", "stageIds": [4, 5, 6]}, {"jobGroup": None, "stageIds": [3]}],
        **{f"/stages/{sid}?details=true": attempts for sid, attempts in stages.items()},
    }

    def http_json(url, timeout=3.0, headers=None):
        for suffix, answer in answers.items():
            if url.endswith(suffix):
                return answer
        raise urllib.error.HTTPError(url, 404, "no such stage", {}, None)

    monkeypatch.setattr(net, "http_json", http_json)


def tasks(*pairs):
    return {str(i): {"executorId": e, "status": s} for i, (e, s) in enumerate(pairs)}


def test_executors_are_placed_on_their_workers(tmp_path, monkeypatch):
    fake_rest(monkeypatch, {})
    found = resilience.executors("http://127.0.0.1:4040", "a", lab_cfg(tmp_path))
    assert found == [
        {"id": "0", "worker": "worker-2", "alive": False, "active": 0, "completed": 3,
         "failed": 1},
        {"id": "1", "worker": "worker-1", "alive": True, "active": 1, "completed": 9,
         "failed": 0},
        # On another cluster (or in Docker) the worker is named by its web UI address.
        {"id": "2", "worker": "10.0.0.7:8081", "alive": True, "active": 1, "completed": 0,
         "failed": 0},
    ]


def test_job_tasks_and_busy_workers(tmp_path, monkeypatch):
    cfg = lab_cfg(tmp_path)
    fake_rest(monkeypatch, {
        # A broadcast stage: one task finished on each worker, nothing running.
        4: [{"tasks": tasks(("0", "SUCCESS"), ("1", "SUCCESS"))}],
        # The inference stage: worker-1 finished one task and runs another; worker-2 only runs.
        5: [{"tasks": tasks(("1", "SUCCESS"), ("1", "RUNNING"), ("0", "RUNNING"))}],
        # stage 6 not submitted yet: 404
    })
    assert resilience.job_tasks("http://x:4040", "a", "g", cfg) == {
        "worker-1": {"SUCCESS": 2, "RUNNING": 1}, "worker-2": {"SUCCESS": 1, "RUNNING": 1}}
    # worker-2's finished task belongs to another stage: it is not yet under way there.
    assert resilience.busy_workers("http://x:4040", "a", "g", cfg) == {"worker-1"}
    assert resilience.job_tasks("http://x:4040", "a", "other", cfg) == {}


def test_kill_worker_names_the_way_when_not_native(tmp_path):
    with pytest.raises(services.LaunchError, match="worker-2 is not running in the native lab .*"
                                           "`make status`.*docker kill"):
        resilience.kill_worker(lab_cfg(tmp_path), "worker-2")


def test_kill_mid_job_needs_the_spark_ui_before_any_job_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(resilience, "_worker_pid", lambda cfg, name: 4242)
    ran = []
    spark = SimpleNamespace(sparkContext=SimpleNamespace(uiWebUrl=None, applicationId="a"))
    with pytest.raises(RuntimeError, match="no UI: start it without spark.ui.enabled=false"):
        resilience.kill_mid_job(spark, lambda: ran.append(1), lab_cfg(tmp_path))
    assert ran == []


def test_lingering_processes_are_found_by_their_work_folder(tmp_path):
    cfg = lab_cfg(tmp_path)
    executor_dir = cfg.state_dir / "work" / "worker-2" / "app-1" / "0"
    executor_dir.mkdir(parents=True)
    (cfg.state_dir / "work" / "worker-1").mkdir()
    proc = subprocess.Popen(["sleep", "60"], cwd=executor_dir)
    try:
        assert resilience.lingering_processes(cfg, "worker-2") == [proc.pid]
        assert resilience.lingering_processes(cfg, "worker-1") == []
    finally:
        proc.kill()
        proc.wait()
    assert resilience.lingering_processes(cfg, "worker-2") == []


def test_kill_mid_job_under_connect_is_a_classic_only_error_before_any_job(tmp_path):
    from lab_utils.common.connect import ClassicOnlyError

    class ConnectSession:  # a stand-in: is_connect reads the class's module
        __module__ = "pyspark.sql.connect.session"

    ran = []
    with pytest.raises(ClassicOnlyError, match=r"kill_mid_job .*Spark Connect session.*"
                                               r"kill -9 PID"):
        resilience.kill_mid_job(ConnectSession(), lambda: ran.append(1), lab_cfg(tmp_path))
    assert ran == []
