"""Stage-level scheduling plumbing: concurrency from task spans, the stages of tagged jobs read
from the REST API (answered here by a fake in Spark 4.3's JSON shapes), the GPU settings checked
as Spark checks them, and the GPU discovery script with and without nvidia-smi."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from lab_utils.common import resources
from lab_utils.common.resources import (
    GPU_DISCOVERY_SCRIPT,
    ResourceSettingError,
    StageRunsError,
    gpu_app_conf,
    gpu_worker_conf,
    max_concurrent,
    tagged_stage_runs,
)
from tests.utils.doctests import run_examples

APP = "app-20261207171933-0001"
UI = "http://127.0.0.1:4040"


def _task(launch: str, duration_ms: int, executor: str, cpus: int = 1) -> dict:
    # As Spark 4.3 reports a task: the driver's duration ends when it has handled the result,
    # 20 ms after the executor finished (the next task may start in between), and the run
    # time is multiplied by the task's cpus (a 2-cpu task of 2,000 ms reports ~3,970 ms).
    return {"taskId": 0, "launchTime": launch, "duration": duration_ms + 20,
            "executorId": executor,
            "taskMetrics": {"executorDeserializeTime": 10,
                            "executorRunTime": (duration_ms - 15) * cpus,
                            "resultSerializationTime": 5}}


class FakeUi:
    """The driver's REST API for one tagged query: a thin stage of four 1-cpu tasks, two at a
    time on two executors, a shuffle, then a fat stage of two 2-cpu tasks one after the other;
    a skipped stage and an untagged job beside them."""

    def __init__(self, tag: str, running_polls: int = 0):
        self.tag, self.running_polls, self.calls = tag, running_polls, []

    def __call__(self, url: str, timeout: float = 3.0):
        self.calls.append(url)
        base = f"{UI}/api/v1/applications/{APP}"
        assert url.startswith(base), url
        path = url[len(base):]
        if path == "/jobs":
            status = "RUNNING" if self.running_polls > 0 else "SUCCEEDED"
            self.running_polls -= 1
            return [{"jobId": 3, "status": status, "stageIds": [4, 5, 6],
                     "jobTags": ["spark-session-1234", self.tag]},
                    {"jobId": 2, "status": "SUCCEEDED", "stageIds": [3], "jobTags": []}]
        if path == "/stages":
            return [{"stageId": 6, "attemptId": 0, "status": "COMPLETE", "name": "fat",
                     "resourceProfileId": 1},
                    {"stageId": 5, "attemptId": 0, "status": "COMPLETE", "name": "thin",
                     "resourceProfileId": 0},
                    {"stageId": 4, "attemptId": 0, "status": "SKIPPED", "name": "reused",
                     "resourceProfileId": 0},
                    {"stageId": 3, "attemptId": 0, "status": "COMPLETE", "name": "other",
                     "resourceProfileId": 0}]
        if path == "/environment":
            return {"resourceProfiles": [
                {"id": 0, "executorResources": {"cores": {"amount": 2}},
                 "taskResources": {"cpus": {"resourceName": "cpus", "amount": 1.0}}},
                {"id": 1, "executorResources": {},
                 "taskResources": {"cpus": {"resourceName": "cpus", "amount": 2.0}}}]}
        if path.startswith("/stages/5/0/taskList"):
            return [_task("2026-12-07T17:19:40.000GMT", 1000, "0"),
                    _task("2026-12-07T17:19:40.100GMT", 1000, "1"),
                    _task("2026-12-07T17:19:41.000GMT", 1000, "0"),
                    _task("2026-12-07T17:19:41.100GMT", 1000, "1")]
        if path.startswith("/stages/6/0/taskList"):
            return [_task("2026-12-07T17:19:42.500GMT", 2000, "0", cpus=2),
                    _task("2026-12-07T17:19:44.505GMT", 2000, "0", cpus=2)]
        raise AssertionError(f"unexpected request {url}")


def test_the_examples_in_the_docs_run(tmp_path):
    assert run_examples(resources, tmp_path) >= 6


@pytest.mark.parametrize(("spans", "peak"), [
    ([], 0),
    ([(0, 1)], 1),
    ([(0, 1), (1, 2), (2, 3)], 1),  # a slot handed on is one slot
    ([(0, 2), (1, 3), (2, 4)], 2),
    ([(0, 10), (1, 2), (1, 2), (5, 6)], 3),
])
def test_max_concurrent_counts_tasks_running_at_one_moment(spans, peak):
    assert max_concurrent(spans) == peak


@pytest.mark.parametrize("tag", ["04-profile", "04_profile"])
def test_the_stages_of_tagged_jobs_are_read_with_their_profiles(monkeypatch, tag):
    monkeypatch.setattr(resources.net, "http_json", FakeUi(f"prefix_{tag}"))
    thin, fat = tagged_stage_runs(UI, APP, tag, sleep=lambda s: None)
    assert (thin.stage_id, thin.tasks, thin.profile_id, thin.task_cpus) == (5, 4, 0, 1.0)
    assert (thin.max_concurrent, thin.executors, thin.task_gpus) == (2, 2, 0.0)
    assert thin.wall_s == pytest.approx(2.1)  # from the first launch to the last work's end
    assert (fat.stage_id, fat.tasks, fat.profile_id, fat.task_cpus) == (6, 2, 1, 2.0)
    assert (fat.max_concurrent, fat.executors) == (1, 1)
    assert fat.wall_s == pytest.approx(4.005)
    assert fat.url == f"{UI}/stages/stage/?id=6&attempt=0"
    assert fat.spans == ((0.0, 2.0), (2.005, 4.005))


def test_back_to_back_tasks_do_not_overlap_though_the_driver_s_durations_do():
    first = _task("2026-12-07T17:19:42.500GMT", 2000, "0", cpus=2)
    second = _task("2026-12-07T17:19:44.505GMT", 2000, "0", cpus=2)  # as the slot freed
    spans = [resources.task_span(t, cpus=2) for t in (first, second)]
    assert spans[0][1] < spans[1][0] < spans[0][0] + first["duration"] / 1e3
    assert max_concurrent(spans) == 1
    # Without task metrics (a task still running) the driver's duration is all there is.
    bare = {"launchTime": "2026-12-07T17:19:42.500GMT", "duration": 700}
    assert resources.task_span(bare)[1] - resources.task_span(bare)[0] == pytest.approx(0.7)


def test_a_job_still_running_is_polled_until_it_is_finished(monkeypatch):
    ui = FakeUi("t", running_polls=2)
    monkeypatch.setattr(resources.net, "http_json", ui)
    runs = tagged_stage_runs(UI, APP, "t", sleep=lambda s: None)
    assert [r.stage_id for r in runs] == [5, 6]
    assert sum(url.endswith("/jobs") for url in ui.calls) == 3


def test_no_tagged_job_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(resources.net, "http_json", FakeUi("other"))
    with pytest.raises(StageRunsError, match=r"spark.addTag\('mine'\)"):
        tagged_stage_runs(UI, APP, "mine", wait_s=0, sleep=lambda s: None)


def test_an_application_without_a_ui_is_refused():
    with pytest.raises(StageRunsError, match="spark.ui.enabled=false"):
        tagged_stage_runs(None, APP, "t")


def test_gpu_settings_are_spark_s_keys():
    assert gpu_worker_conf(4) == {
        "spark.worker.resource.gpu.amount": "4",
        "spark.worker.resource.gpu.discoveryScript": str(GPU_DISCOVERY_SCRIPT)}
    assert gpu_app_conf() == {"spark.executor.resource.gpu.amount": "1",
                              "spark.task.resource.gpu.amount": "1"}
    assert gpu_app_conf(1, 0.25)["spark.task.resource.gpu.amount"] == "0.25"
    assert "spark.python.worker.reuse" not in gpu_app_conf(1, 0.5)


def test_several_gpus_per_executor_only_without_worker_reuse():
    # A reused Python worker keeps the GPU its TensorFlow was restricted to for its first task:
    # with two GPUs in one executor a later task could run on the GPU Spark gave another task.
    with pytest.raises(ResourceSettingError, match="one GPU per executor") as refused:
        gpu_app_conf(2, 1)
    assert "worker_reuse=False" in str(refused.value)
    assert gpu_app_conf(2, 0.5, worker_reuse=False) == {
        "spark.executor.resource.gpu.amount": "2", "spark.task.resource.gpu.amount": "0.5",
        "spark.python.worker.reuse": "false"}


@pytest.mark.parametrize(("call", "fix"), [
    (lambda: gpu_app_conf(1, 0.75), "use 1 or 0.5"),
    (lambda: gpu_app_conf(1, 0), "must be positive"),
    (lambda: gpu_app_conf(1, 2), "raise spark.executor.resource.gpu.amount"),
    (lambda: gpu_app_conf(1.5, 1), "whole GPUs"),  # type: ignore[arg-type]
    (lambda: gpu_worker_conf(0), "must be positive"),
])
def test_gpu_amounts_spark_would_refuse_are_refused_here(call, fix):
    with pytest.raises(ResourceSettingError, match=fix):
        call()


def _discover(tmp_path, smi: str | None) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\n{smi}\n")
        fake.chmod(0o755)
    # Only the fake's folder and the shell's own: no real nvidia-smi can be found.
    path = f"{bin_dir}:/usr/bin:/bin"
    if smi is None:
        assert subprocess.run(["bash", "-c", "command -v nvidia-smi"], env={"PATH": path},
                              capture_output=True).returncode != 0
    out = subprocess.run([str(GPU_DISCOVERY_SCRIPT)], env={**os.environ, "PATH": path},
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_the_discovery_script_is_executable_and_finds_no_gpu_without_nvidia_smi(tmp_path):
    assert GPU_DISCOVERY_SCRIPT.is_file() and os.access(GPU_DISCOVERY_SCRIPT, os.X_OK)
    assert _discover(tmp_path, None) == {"name": "gpu", "addresses": []}


@pytest.mark.parametrize(("smi", "addresses"), [
    ("printf '0\\n1\\n'", ["0", "1"]),
    ("printf ' 3 \\n'", ["3"]),
    ("echo 'NVIDIA-SMI has failed' >&2; exit 9", []),  # no driver: no GPU
    ("echo 'No devices were found'", []),
])
def test_the_discovery_script_lists_what_nvidia_smi_reports(tmp_path, smi, addresses):
    assert _discover(tmp_path, smi) == {"name": "gpu", "addresses": addresses}
