"""Stage-level scheduling, the plumbing: what each stage of a tagged job ran with, read back from
Spark's REST API, and the lab's GPU settings written out as data.

A ``ResourceProfile`` (``pyspark.resource``) given to ``mapInPandas(..., profile=rp)`` changes
what the tasks of that one stage get: ``spark.task.cpus`` for the stage, GPUs per task. Whether
it did is in the driver's UI: each stage's ``resourceProfileId``, the profile's task resources
(``/environment``) and each task's launch and executor time (``/stages/<id>/<attempt>/taskList``),
from which :func:`max_concurrent` counts how many ran at once. :func:`tagged_stage_runs` reads
them for the jobs that carry a tag (``spark.addTag``).

GPUs: :func:`gpu_worker_conf` and :func:`gpu_app_conf` are the settings a GPU cluster needs
(a worker's GPU count and discovery script, an executor's GPUs, a task's share of one), checked
the way Spark checks them, so a wrong amount fails here with the fix instead of in an executor
log; :data:`GPU_DISCOVERY_SCRIPT` is the lab's discovery script.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_utils.common import net
from lab_utils.errors import LabError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

#: The lab's GPU discovery script, shipped in the package beside the launcher: prints
#: ``{"name": "gpu", "addresses": [...]}`` from ``nvidia-smi`` (no addresses without one).
#: The PyPI wheel does not ship Spark's example (``examples/src/main/scripts``).
GPU_DISCOVERY_SCRIPT = Path(__file__).resolve().parents[1] / "ops" / "getGpusResources.sh"


class ResourceSettingError(LabError, ValueError):
    """A GPU amount Spark would refuse (or silently round); the message names it and the fix."""


class StageRunsError(LabError, LookupError):
    """The tagged jobs or their stages could not be found in the application's UI."""


@dataclass(frozen=True)
class StageRun:
    """One stage as the driver's UI recorded it."""

    stage_id: int
    name: str
    tasks: int
    #: The stage's resource profile (0: the application's default).
    profile_id: int
    #: ``cpus`` per task under that profile.
    task_cpus: float
    #: GPUs per task under that profile (0.0 without GPU scheduling).
    task_gpus: float
    #: Most tasks of the stage running at the same moment.
    max_concurrent: int
    #: Distinct executors that ran its tasks.
    executors: int
    #: From the first task's launch to the last task's end, in seconds.
    wall_s: float
    #: The stage's page in the Spark UI.
    url: str
    #: Each task's ``(start, end)`` (:func:`task_span`), in seconds from the first start.
    spans: tuple[tuple[float, float], ...] = ()


def max_concurrent(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals open at one moment.

    An interval that ends exactly when another starts does not overlap it: a slot handed from
    one task to the next is one slot.

    Examples
    --------
    >>> max_concurrent([(0, 2), (0, 2), (2, 4), (2, 4)])
    2
    >>> max_concurrent([(0, 1), (1, 2), (2, 3)])
    1
    >>> max_concurrent([])
    0
    """
    events = sorted([(start, 1) for start, _ in intervals]
                    + [(end, -1) for _, end in intervals])  # at a tie, -1 sorts first
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def ui_time(text: str) -> float:
    """Seconds since the epoch of a Spark UI timestamp (``2026-12-07T17:19:41.403GMT``).

    Examples
    --------
    >>> ui_time("1970-01-01T00:00:01.500GMT")
    1.5
    """
    parsed = datetime.strptime(text.replace("GMT", ""), "%Y-%m-%dT%H:%M:%S.%f")
    return parsed.replace(tzinfo=UTC).timestamp()


def profile_amounts(environment: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Task resources per resource profile id from ``/environment``'s ``resourceProfiles``.

    Examples
    --------
    >>> env = {"resourceProfiles": [
    ...     {"id": 0, "taskResources": {"cpus": {"resourceName": "cpus", "amount": 1.0}}},
    ...     {"id": 1, "taskResources": {"cpus": {"resourceName": "cpus", "amount": 2.0},
    ...                                 "gpu": {"resourceName": "gpu", "amount": 0.5}}}]}
    >>> profile_amounts(env)[1]
    {'cpus': 2.0, 'gpu': 0.5}
    """
    return {int(p["id"]): {name: float(r["amount"]) for name, r in p.get("taskResources",
                                                                       {}).items()}
            for p in environment.get("resourceProfiles", [])}


def task_span(task: dict[str, Any], cpus: float = 1.0) -> tuple[float, float]:
    """When a task held its slot, in seconds: from its launch to the end of its work on the
    executor (deserializing, running, serializing its result).

    Not the task's ``duration``: that ends when the driver has handled the result, a few
    milliseconds after the scheduler gave the slot to the next task (7-15 ms measured on the
    lab), so back-to-back tasks would seem to overlap. And Spark 4.3 reports a task's
    ``executorRunTime`` times its ``cpus``: a 2-cpu task that ran 2.1 s reports 4.2 s
    (measured), so the run time is divided by ``cpus``.

    Examples
    --------
    >>> task = {"launchTime": "1970-01-01T00:00:10.000GMT", "duration": 2010,
    ...         "taskMetrics": {"executorDeserializeTime": 100, "executorRunTime": 1800,
    ...                         "resultSerializationTime": 5}}
    >>> task_span(task)
    (10.0, 11.905)
    >>> task_span({**task, "taskMetrics": {**task["taskMetrics"], "executorRunTime": 3600}},
    ...           cpus=2)
    (10.0, 11.905)
    """
    start = ui_time(task["launchTime"])
    metrics = task.get("taskMetrics")
    if not metrics:
        return start, start + task.get("duration", 0) / 1e3
    busy = (metrics.get("executorDeserializeTime", 0) + metrics.get("resultSerializationTime", 0)
            + metrics.get("executorRunTime", 0) / max(cpus, 1.0))
    return start, start + busy / 1e3


def _tagged_stage_ids(base: str, tag: str) -> list[int]:
    jobs = net.http_json(f"{base}/jobs", timeout=5.0)
    ours = (tag, "_" + tag, "-" + tag)  # classic and Connect prefixes before the user's tag
    tagged = [job for job in jobs if any(t == tag or t.endswith(ours)
                                         for t in job.get("jobTags", []))]
    if any(job.get("status") == "RUNNING" for job in tagged):
        return []
    return sorted({s for job in tagged for s in job.get("stageIds", [])})


def stage_run(base: str, ui_url: str, stage: dict[str, Any],
              amounts: dict[int, dict[str, float]]) -> StageRun:
    """One stage's :class:`StageRun`, its tasks read from ``base`` (the application's API)."""
    sid, attempt = int(stage["stageId"]), int(stage.get("attemptId", 0))
    tasks = net.http_json(f"{base}/stages/{sid}/{attempt}/taskList?offset=0&length=100000",
                          timeout=5.0)
    profile = int(stage.get("resourceProfileId", 0))
    resources = amounts.get(profile, {})
    spans = [task_span(t, resources.get("cpus", 1.0)) for t in tasks if t.get("launchTime")]
    first = min((a for a, _ in spans), default=0.0)
    return StageRun(
        stage_id=sid, name=str(stage.get("name", "")), tasks=len(tasks), profile_id=profile,
        task_cpus=resources.get("cpus", 1.0), task_gpus=resources.get("gpu", 0.0),
        max_concurrent=max_concurrent(spans),
        executors=len({t.get("executorId") for t in tasks}),
        wall_s=round(max(e for _, e in spans) - min(s for s, _ in spans), 3) if spans else 0.0,
        url=f"{ui_url.rstrip('/')}/stages/stage/?id={sid}&attempt={attempt}",
        spans=tuple((round(a - first, 3), round(b - first, 3)) for a, b in sorted(spans))
        if spans else ())


def tagged_stage_runs(ui_url: str | None, app_id: str, tag: str, *, wait_s: float = 15.0,
                      sleep: Callable[[float], None] = time.sleep) -> list[StageRun]:
    """The stages that ran tasks for the jobs tagged ``tag``, in stage order.

    Skipped stages (their shuffle output was reused) ran no task and are left out. The UI
    records a job from Spark's event bus a moment after the action returns: this polls for up
    to ``wait_s`` seconds until the tagged jobs are finished and every stage is complete.
    """
    if not ui_url:
        raise StageRunsError("this application has no Spark UI (spark.ui.enabled=false): its "
                             "stages are only in the event log (history server)")
    base = f"{ui_url.rstrip('/')}/api/v1/applications/{app_id}"
    deadline = time.monotonic() + wait_s
    while True:
        ids = set(_tagged_stage_ids(base, tag))
        stages = [s for s in net.http_json(f"{base}/stages", timeout=5.0)
                  if int(s["stageId"]) in ids] if ids else []
        if stages and all(s.get("status") in {"COMPLETE", "SKIPPED"} for s in stages):
            amounts = profile_amounts(net.http_json(f"{base}/environment", timeout=5.0))
            ran = sorted((s for s in stages if s.get("status") == "COMPLETE"),
                         key=lambda s: int(s["stageId"]))
            return [stage_run(base, ui_url, s, amounts) for s in ran]
        if time.monotonic() > deadline:
            raise StageRunsError(
                f"no finished jobs tagged {tag!r} in {base} after {wait_s:.0f} s: call "
                f"spark.addTag({tag!r}) before the action (and spark.removeTag after)")
        sleep(0.5)


def _check_amount(name: str, amount: float, *, whole: bool) -> None:
    if amount <= 0:
        raise ResourceSettingError(f"{name} = {amount}: it must be positive (leave the "
                                   "setting out to run without GPU scheduling)")
    if whole and amount != int(amount):
        raise ResourceSettingError(f"{name} = {amount}: executors and workers hold whole GPUs; "
                                   f"use {max(int(amount), 1)}")
    if not whole and amount > 0.5 and amount != int(amount):
        raise ResourceSettingError(
            f"{name} = {amount}: Spark takes a whole number of GPUs per task or a share of at "
            "most 0.5 (0.5 = two tasks per GPU, 0.25 = four); use 1 or 0.5")


def gpu_worker_conf(gpus: int, script: str | Path = GPU_DISCOVERY_SCRIPT) -> dict[str, str]:
    """A worker's GPU settings: how many it offers and the script that lists their addresses.

    Examples
    --------
    >>> gpu_worker_conf(2, "/opt/getGpusResources.sh")["spark.worker.resource.gpu.amount"]
    '2'
    """
    _check_amount("spark.worker.resource.gpu.amount", gpus, whole=True)
    return {"spark.worker.resource.gpu.amount": str(int(gpus)),
            "spark.worker.resource.gpu.discoveryScript": str(script)}


def gpu_app_conf(executor_gpus: int = 1, task_gpus: float = 1.0, *,
                 worker_reuse: bool = True) -> dict[str, str]:
    """An application's GPU settings: GPUs per executor and each task's share of one.

    ``task_gpus = 0.5`` runs two tasks on each GPU (the model must fit twice in its memory);
    Spark hands every task the address of the GPU it shares.

    **One GPU per executor is the rule** while Python workers are reused (Spark's default,
    ``spark.python.worker.reuse``): a worker's TensorFlow is restricted to the GPU of its
    first task (:func:`lab_utils.common.tensorflow.restrict_tensorflow_gpus`) and cannot
    change later, so on an executor with two GPUs a reused worker would run a later task on
    a GPU Spark did not assign to it. More GPUs per executor are accepted only with
    ``worker_reuse=False``, which sets ``spark.python.worker.reuse=false``: a new Python
    worker (TensorFlow and the model loaded again) for every task.

    Examples
    --------
    >>> gpu_app_conf(1, 0.5)
    {'spark.executor.resource.gpu.amount': '1', 'spark.task.resource.gpu.amount': '0.5'}
    >>> gpu_app_conf(1, 0.7)
    Traceback (most recent call last):
    ...
    lab_utils.common.resources.ResourceSettingError: spark.task.resource.gpu.amount = 0.7: ...
    >>> gpu_app_conf(2, 1, worker_reuse=False)["spark.python.worker.reuse"]
    'false'
    """
    _check_amount("spark.executor.resource.gpu.amount", executor_gpus, whole=True)
    _check_amount("spark.task.resource.gpu.amount", task_gpus, whole=False)
    if task_gpus > executor_gpus:
        raise ResourceSettingError(
            f"spark.task.resource.gpu.amount = {task_gpus} is more than the executor's "
            f"{executor_gpus} GPU(s): no task could ever start; lower it or raise "
            "spark.executor.resource.gpu.amount")
    if executor_gpus > 1 and worker_reuse:
        raise ResourceSettingError(
            f"spark.executor.resource.gpu.amount = {executor_gpus} with reused Python workers: "
            "a reused worker keeps the GPU TensorFlow was restricted to for its first task, "
            "so a later task would run on a GPU Spark did not assign to it; use one GPU per "
            "executor (executor_gpus=1, more executors), or worker_reuse=False "
            "(spark.python.worker.reuse=false: a new Python worker for every task)")
    conf = {"spark.executor.resource.gpu.amount": str(int(executor_gpus)),
            "spark.task.resource.gpu.amount": f"{task_gpus:g}"}
    if not worker_reuse:
        conf["spark.python.worker.reuse"] = "false"
    return conf
