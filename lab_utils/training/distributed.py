"""One model trained on several Spark workers at once, synchronously, from a barrier stage.

The plumbing around TensorFlow's ``MultiWorkerMirroredStrategy`` when Spark places the workers:

* :func:`check_slots`: a clear error *before* a job when the application cannot run every
  worker at once (Spark itself retries a too-wide barrier stage for about ten minutes, then
  fails with ``BarrierJobSlotsNumberCheckFailed``), or when dynamic allocation is on (Spark
  refuses barrier stages then: ``BarrierJobRunWithDynamicAllocationException``);
* :func:`tf_config`: the ``TF_CONFIG`` of one worker from the ``host:port`` list that
  ``BarrierTaskContext.allGather`` returned (pure);
* :func:`run_worker`: one worker's training in a **fresh child process**
  (:mod:`lab_utils.training.distributed_child`). TensorFlow configures its collective ops once
  per process, so a reused Python worker would refuse a second run ("Collective ops are
  already configured"); the child also dies with its task when Spark kills it;
* :class:`Checkpoints` and :class:`WorkerContext`: checkpoints every few steps on shared
  storage, so a retried stage resumes from the last one instead of step 0;
* :func:`train_distributed`: all of it as one call (the barrier stage written out is in
  notebook 11).

Neither TensorFlow nor PySpark is imported at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lab_utils.common.atomic import atomic_write, atomic_write_text
from lab_utils.common.connect import task_slots
from lab_utils.common.process import log_tail
from lab_utils.errors import LabError

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

#: The rows a barrier task yields: one per worker (the losses and checksum as JSON text).
RESULT_SCHEMA = ("rank int, workers int, attempt int, start_step int, steps int, "
                 "losses string, checksum string, seconds double, train_seconds double, "
                 "steps_per_s double, saved string, extra string")
CHECKPOINT_PREFIX = "ckpt-"


class NotEnoughSlotsError(LabError, RuntimeError):
    """The application cannot run as many tasks at once as workers were asked for."""


class BarrierUnavailableError(LabError, RuntimeError):
    """The application has dynamic allocation on, and Spark refuses barrier stages then."""


class WorkerFailedError(LabError, RuntimeError):
    """A worker's training child process failed or was killed; the message holds its log."""


# --------------------------------------------------------------------------- pure parts


def tf_config(addresses: Sequence[str], rank: int) -> dict[str, Any]:
    """``TF_CONFIG`` for worker ``rank`` of the cluster whose workers listen at ``addresses``.

    ``addresses`` is what ``BarrierTaskContext.allGather`` returned, one ``host:port`` per
    task in partition order, so task ``i`` is worker ``i`` and worker 0 is the chief.

    Examples
    --------
    >>> tf_config(["10.0.0.5:23456", "10.0.0.6:23457"], 1)["task"]
    {'type': 'worker', 'index': 1}
    """
    addresses = list(addresses)
    if not addresses:
        raise WorkerFailedError("no worker addresses were gathered: a barrier stage's "
                                "allGather returns one per task, so the stage had no tasks")
    for address in addresses:
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise WorkerFailedError(f"worker address {address!r} is not host:port: each task "
                                    "must allGather f'{host}:{port}'")
    if len(set(addresses)) != len(addresses):
        raise WorkerFailedError(f"two workers gathered the same address ({addresses}): each "
                                "task must pick its own free port")
    if not 0 <= rank < len(addresses):
        raise WorkerFailedError(f"rank {rank} is outside the {len(addresses)} gathered "
                                "addresses: use BarrierTaskContext.partitionId() as the rank")
    return {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": rank}}


def slots_problem(workers: int, slots: int) -> str | None:
    """Why ``workers`` barrier tasks cannot all run on ``slots`` task slots, or None.

    Examples
    --------
    >>> slots_problem(2, 2) is None
    True
    >>> print(slots_problem(3, 2)[:57])
    3 workers asked for, but this application runs 2 tasks at
    """
    if workers < 1:
        return f"{workers} workers asked for: ask for at least 1"
    if workers <= slots:
        return None
    return (f"{workers} workers asked for, but this application runs {slots} tasks at once "
            f"(spark.cores.max / spark.task.cpus): a barrier stage starts all its tasks "
            f"together, so ask for at most {slots} workers, or give the application more "
            "cores (LAB_APP_CORES_MAX, or spark.cores.max in a new session)")


def task_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, from the operating system (a bind to port 0).

    Not :func:`lab_utils.common.net.free_port`: Spark forks its Python workers from one
    daemon, so every task starts with the same ``random`` state and would draw the same
    "random" port. Ports from the OS's ephemeral range can be handed to another socket before
    TensorFlow binds this one; the window is the seconds until the workers start.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def weights_checksum(arrays: Sequence[np.ndarray]) -> str:
    """A short SHA-256 of the weights as float32 bytes, in order: equal weights, equal sums.

    Examples
    --------
    >>> weights_checksum([np.zeros(2)]) == weights_checksum([np.zeros(2, dtype=np.float32)])
    True
    """
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


class Checkpoints:
    """Numbered checkpoints of a run's state (weights, optimizer variables) in one folder.

    Each is one ``ckpt-<step>.npz`` written atomically, so a reader never sees a torn one; the
    newest is the one with the highest step. Only the chief writes them (the workers' states
    are equal after every synchronous step); every worker of a retried stage reads the same.

    Examples
    --------
    >>> import tempfile
    >>> ckpt = Checkpoints(Path(tempfile.mkdtemp()), every=2)
    >>> ckpt.latest() is None, ckpt.due(3), ckpt.due(4)
    (True, False, True)
    >>> _ = ckpt.save(4, [np.ones(2)])
    >>> step, arrays = ckpt.latest(); step, arrays[0].tolist()
    (4, [1.0, 1.0])
    """

    def __init__(self, folder: Path | str, every: int, keep: int = 2) -> None:
        if every < 1:
            raise WorkerFailedError(f"checkpoint every {every} steps: use 1 or more")
        self.folder = Path(folder)
        self.every = every
        self.keep = keep

    def due(self, step: int) -> bool:
        """Whether the state after ``step`` steps is to be saved."""
        return step > 0 and step % self.every == 0

    def steps(self) -> list[int]:
        """The steps saved, oldest first (temporary files of a killed writer are hidden)."""
        found = []
        for path in self.folder.glob(f"{CHECKPOINT_PREFIX}*.npz"):
            number = path.stem[len(CHECKPOINT_PREFIX):]
            if number.isdigit():
                found.append(int(number))
        return sorted(found)

    def path(self, step: int) -> Path:
        return self.folder / f"{CHECKPOINT_PREFIX}{step:06d}.npz"

    def save(self, step: int, arrays: Sequence[np.ndarray]) -> Path:
        """Write the state after ``step`` steps atomically; keep the newest ``keep``."""
        self.folder.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, *[np.asarray(a) for a in arrays])

        path = atomic_write(self.path(step), write)
        for old in self.steps()[:-self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path

    def latest(self) -> tuple[int, list[np.ndarray]] | None:
        """The newest checkpoint's (step, arrays), or None when there is none."""
        steps = self.steps()
        if not steps:
            return None
        with np.load(self.path(steps[-1])) as data:
            return steps[-1], [data[f"arr_{i}"] for i in range(len(data.files))]


def previous_attempts(run_dir: Path | str, rank: int) -> int:
    """How many times worker ``rank`` has started in ``run_dir`` before (its log files).

    PySpark's ``BarrierTaskContext`` has no stage attempt number, and a retried barrier stage
    starts its tasks at attempt 0 again, so the run folder keeps count.
    """
    return len(list((Path(run_dir) / "logs").glob(f"rank{rank}-attempt*.log")))


# ------------------------------------------------------------------ what a worker gets


@dataclass
class WorkerContext:
    """What one worker's training function gets, in its child process.

    ``TF_CONFIG`` is already in the environment, so ``MultiWorkerMirroredStrategy()`` finds
    the cluster. ``params`` are the caller's (step counts, paths, seeds); ``attempt`` counts
    this rank's earlier runs in ``run_dir`` (0, then 1 after a retried stage).
    """

    rank: int
    workers: int
    attempt: int
    run_dir: str
    checkpoint_every: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoints(self) -> Checkpoints | None:
        if self.checkpoint_every < 1:
            return None
        return Checkpoints(Path(self.run_dir) / "checkpoints", self.checkpoint_every)

    def restore(self, model: Any, optimizer: Any) -> int:
        """Load the newest checkpoint into ``model`` and ``optimizer`` (built in the
        strategy's scope); return its step, or 0 when there is none (a fresh start)."""
        ckpt = self.checkpoints
        found = ckpt.latest() if ckpt is not None else None
        if found is None:
            return 0
        step, arrays = found
        variables = _state_variables(model, optimizer)
        if len(arrays) != len(variables):
            raise WorkerFailedError(
                f"checkpoint {ckpt.path(step) if ckpt else ''} holds {len(arrays)} arrays but "
                f"the model and optimizer have {len(variables)} variables: it is another "
                "model's; use a fresh run_dir")
        for variable, value in zip(variables, arrays, strict=True):
            variable.assign(value)
        return step

    def checkpoint(self, step: int, model: Any, optimizer: Any) -> bool:
        """Save the state after ``step`` steps when one is due (the chief writes it)."""
        ckpt = self.checkpoints
        if ckpt is None or not ckpt.due(step):
            return False
        if self.rank == 0:
            ckpt.save(step, [np.asarray(v) for v in _state_variables(model, optimizer)])
        return True


def _state_variables(model: Any, optimizer: Any) -> list[Any]:
    """The variables a checkpoint holds: the model's weights, then the optimizer's."""
    return [*model.weights, *optimizer.variables]


@dataclass
class WorkerResult:
    """What one worker reports: its loss curve, its weights' checksum, its speed."""

    rank: int
    workers: int
    attempt: int
    start_step: int
    steps: int
    losses: list[float]
    checksum: str
    seconds: float
    train_seconds: float
    steps_per_s: float
    saved: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["losses"] = json.dumps(self.losses)
        out["extra"] = json.dumps(self.extra)
        return out


# ------------------------------------------------------------------ the child process

#: A worker's training function: it returns a dict with ``model`` (trained), ``losses`` (one
#: per step it ran), and optionally ``start_step`` (the checkpoint it resumed from) and
#: ``seconds`` (its training loop's time, for steps/s without TensorFlow's start-up) with
#: ``timed_steps`` (the steps inside ``seconds``; default: all) and
#: ``extra`` (a JSON-able dict handed back as it is).
TrainFn = Callable[[WorkerContext], dict[str, Any]]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL the child when the Spark task's Python worker dies (Spark kills
    the workers of a failed barrier stage; their TensorFlow children must not stay behind,
    blocked in an all-reduce)."""
    import ctypes

    with contextlib.suppress(OSError):  # not Linux: the child may outlive a killed task
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_worker(train_fn: TrainFn, *, rank: int, addresses: Sequence[str],
               run_dir: Path | str, params: dict[str, Any] | None = None,
               checkpoint_every: int = 0, model_dir: Path | str | None = None,
               model_meta: dict[str, Any] | None = None, timeout: float = 600) -> WorkerResult:
    """Run worker ``rank``'s training in a fresh Python process and return its result.

    Called inside a barrier task after ``allGather``. ``train_fn`` is pickled by value
    (cloudpickle, as Spark ships functions), ``TF_CONFIG`` set from ``addresses``, and the
    child's output kept in ``run_dir/logs/``. Rank 0 saves the trained model to ``model_dir``
    in the lab's saved-model format, atomically. Raises :class:`WorkerFailedError` with the
    log's tail when the child fails or is killed (the task fails, and Spark retries the stage).
    """
    from pyspark import cloudpickle

    run_dir = Path(run_dir)
    attempt = previous_attempts(run_dir, rank)
    ctx = WorkerContext(rank, len(addresses), attempt, str(run_dir), checkpoint_every,
                        dict(params or {}))
    spec_dir = run_dir / "spec"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = spec_dir / f"rank{rank}-attempt{attempt}-{uuid.uuid4().hex[:8]}.pkl"
    out = spec.with_suffix(".json")
    spec.write_bytes(cloudpickle.dumps({
        "train_fn": train_fn, "ctx": ctx, "out": str(out),
        "model_dir": None if model_dir is None else str(model_dir),
        "model_meta": model_meta or {}}))
    log = run_dir / "logs" / f"rank{rank}-attempt{attempt}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config(addresses, rank)),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    with open(log, "ab") as sink:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "lab_utils.training.distributed_child", str(spec)],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_die_with_parent)  # noqa: PLW1509 - a prctl, no locks taken
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
    spec.unlink(missing_ok=True)
    if code != 0 or not out.is_file():
        how = ("ran past its timeout" if code is None else
               f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
        raise WorkerFailedError(f"worker {rank} (attempt {attempt}) {how}; its log {log} "
                                f"ends:\n{log_tail(log)}")
    result = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return WorkerResult(**result)


# ------------------------------------------------------------------ the driver side


def barrier_allowed(spark: SparkSession) -> bool:
    """Whether Spark runs barrier stages for this application: not when
    ``spark.dynamicAllocation.enabled`` is true on a cluster master (Spark then refuses them
    with ``BarrierJobRunWithDynamicAllocationException``). Read from the conf: both modes."""
    dynamic = (spark.conf.get("spark.dynamicAllocation.enabled", "false") or "false").lower()
    master = spark.conf.get("spark.master", "") or ""
    return not (dynamic == "true" and not master.startswith("local"))


def check_slots(spark: SparkSession, workers: int, *, barrier: bool = True) -> int:
    """Refuse, before any job, a stage of ``workers`` tasks this application cannot run all
    at once; return its task slots.

    Works in both modes (:func:`~lab_utils.common.connect.task_slots` reads the conf). Raises
    :class:`NotEnoughSlotsError` when there are fewer slots than workers, and, with
    ``barrier``, :class:`BarrierUnavailableError` when Spark would refuse the barrier stage
    (:func:`barrier_allowed`).
    """
    slots = task_slots(spark)
    problem = slots_problem(workers, slots)
    if problem:
        raise NotEnoughSlotsError(problem)
    if barrier and not barrier_allowed(spark):
        raise BarrierUnavailableError(
            "this application has spark.dynamicAllocation.enabled=true, and Spark refuses "
            "barrier stages then (BarrierJobRunWithDynamicAllocationException): pass "
            "barrier=False (the workers find each other through files on shared storage), use "
            "a classic session (LAB_SPARK_API=classic), or a Spark Connect server started "
            "without dynamic allocation")
    return slots


def file_rendezvous(folder: Path | str, rank: int, workers: int, address: str, *,
                    timeout: float = 300) -> list[str]:
    """``allGather`` without a barrier stage: each worker writes its address into ``folder``
    (fresh for each launch, on shared storage) and waits for the others'; the addresses come
    back in rank order.

    Without a barrier Spark does not promise to start the tasks together, and it retries a
    failed task alone while its peers wait in an all-reduce: use it only where barrier stages
    are refused (dynamic allocation), and expect no resume after a lost worker.
    """
    from lab_utils.common.process import wait_until

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"rank{rank}", address)
    paths = [folder / f"rank{r}" for r in range(workers)]
    if not wait_until(lambda: all(p.is_file() for p in paths), timeout, 0.2):
        seen = sum(p.is_file() for p in paths)
        raise WorkerFailedError(
            f"only {seen} of {workers} workers started within {timeout:.0f} s ({folder}): the "
            "application ran fewer of these tasks at once than workers (other jobs held its "
            "task slots); run again when it is idle, or ask for fewer workers")
    return [p.read_text().strip() for p in paths]


def wait_for_slots(spark: SparkSession, workers: int, timeout: float = 60) -> bool:
    """Classic mode: wait until executors with ``workers`` free cores have registered (a
    barrier job submitted before they have is retried by Spark every 15 s); True at once
    under Connect, where the scheduler is not visible."""
    from lab_utils.common.connect import is_connect
    from lab_utils.common.process import wait_until

    if is_connect(spark):
        return True
    from lab_utils.common.net import http_json

    sc = spark.sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/executors"

    def cores_registered() -> bool:
        executors = http_json(url)
        return sum(e["totalCores"] for e in executors if e["id"] != "driver") >= workers

    if (sc.master or "").startswith("local") or not sc.uiWebUrl:  # no executors, or no UI
        return True
    return wait_until(cores_registered, timeout, 0.5)


def barrier_worker_fn(train_fn: TrainFn, run_dir: Path | str, *,
                      params: dict[str, Any] | None = None, checkpoint_every: int = 0,
                      model_dir: Path | str | None = None,
                      model_meta: dict[str, Any] | None = None, barrier: bool = True,
                      workers: int = 0, timeout: float = 600) -> Callable[
                          [Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function a barrier ``mapInPandas`` runs, one task per worker (the same steps
    notebook 11 writes out on the page). With ``barrier=False`` (``workers`` then required)
    the addresses are gathered through :func:`file_rendezvous`."""
    token = uuid.uuid4().hex[:12]

    def worker(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd
        from pyspark import BarrierTaskContext, TaskContext

        if barrier:
            ctx = BarrierTaskContext.get()
            rank = ctx.partitionId()
            host = ctx.getTaskInfos()[rank].address.rsplit(":", 1)[0]  # this task's executor
            addresses = ctx.allGather(f"{host}:{task_port(host)}")
        else:
            task = TaskContext.get()
            rank = task.partitionId() if task is not None else 0
            host = "127.0.0.1" if task is None else _executor_host()
            addresses = file_rendezvous(Path(run_dir) / "rendezvous" / token, rank, workers,
                                        f"{host}:{task_port(host)}", timeout=timeout)
        for _ in batches:  # one row per task (its rank): nothing to read
            pass
        result = run_worker(train_fn, rank=rank, addresses=addresses,
                            run_dir=run_dir, params=params,
                            checkpoint_every=checkpoint_every, model_dir=model_dir,
                            model_meta=model_meta, timeout=timeout)
        yield pd.DataFrame([result.row()])

    return worker


def _executor_host() -> str:
    """This machine's address as its host name resolves (127.0.0.1 when it does not): where
    the other workers can reach this task without a barrier stage's task infos."""
    import socket

    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def train_distributed(spark: SparkSession, train_fn: TrainFn, *, workers: int,
                      run_dir: Path | str, params: dict[str, Any] | None = None,
                      checkpoint_every: int = 0, model_dir: Path | str | None = None,
                      model_meta: dict[str, Any] | None = None, barrier: bool | None = None,
                      timeout: float = 600) -> list[WorkerResult]:
    """Train one model on ``workers`` Spark tasks at once; return each worker's result.

    ``train_fn(ctx)`` runs once per worker in a fresh child process with ``TF_CONFIG`` set
    and returns ``{"model", "losses", ...}`` (:data:`TrainFn`); it builds
    ``MultiWorkerMirroredStrategy()`` itself and may call ``ctx.restore`` /
    ``ctx.checkpoint``. ``run_dir`` is on shared storage (logs, checkpoints). ``barrier``
    (default: whenever Spark allows one, :func:`barrier_allowed`) runs a barrier stage; the
    slots are checked first (:func:`check_slots`). A failed worker fails its task; Spark then
    retries the whole barrier stage (``spark.stage.maxConsecutiveAttempts``, 4 by default) and
    each worker resumes from the last checkpoint.
    """
    barrier = barrier_allowed(spark) if barrier is None else barrier
    check_slots(spark, workers, barrier=barrier)
    wait_for_slots(spark, workers)
    fn = barrier_worker_fn(train_fn, run_dir, params=params,
                           checkpoint_every=checkpoint_every, model_dir=model_dir,
                           model_meta=model_meta, barrier=barrier, workers=workers,
                           timeout=timeout)
    ranks = spark.range(0, workers, 1, numPartitions=workers)
    # The shuffle makes the barrier stage a ShuffleMapStage: Spark retries a failed one, but
    # aborts the job when a barrier *result* stage fails ("Could not recover from a failed
    # barrier ResultStage").
    trained = ranks.mapInPandas(fn, RESULT_SCHEMA, barrier=barrier).repartition(1)
    rows = trained.collect()
    return results_from_rows([row.asDict() for row in rows])


def results_from_rows(rows: Sequence[dict[str, Any]]) -> list[WorkerResult]:
    """:class:`WorkerResult` objects from the rows of :data:`RESULT_SCHEMA`, by rank."""
    out = []
    for row in sorted(rows, key=lambda r: int(r["rank"])):
        values = dict(row)
        values["losses"] = json.loads(values["losses"])
        values["extra"] = json.loads(values.get("extra") or "{}")
        out.append(WorkerResult(**values))
    return out


def write_json(path: Path | str, payload: Any) -> Path:
    """A small JSON file written atomically (the child's result)."""
    return atomic_write_text(path, json.dumps(payload))
