"""The pure parts of synchronous multi-worker training (lab_utils.training.distributed): TF_CONFIG
from the gathered addresses, the slots check, checkpoints and resuming, the file rendezvous, and
the child process a worker trains in (with a fake model: no TensorFlow, no Spark)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from lab_utils.training import distributed as dist

# --------------------------------------------------------------------------- TF_CONFIG


def test_tf_config_puts_every_gathered_address_in_rank_order():
    addresses = ["10.0.0.5:23456", "10.0.0.6:23457", "10.0.0.5:23458"]
    for rank in range(3):
        assert dist.tf_config(addresses, rank) == {
            "cluster": {"worker": addresses}, "task": {"type": "worker", "index": rank}}
    json.dumps(dist.tf_config(addresses, 0))  # what goes into the environment


@pytest.mark.parametrize(("addresses", "rank", "words"), [
    ([], 0, "no worker addresses"),
    (["10.0.0.5"], 0, "is not host:port"),
    (["10.0.0.5:x"], 0, "is not host:port"),
    (["h:1", "h:1"], 0, "the same address"),
    (["h:1", "h:2"], 2, "rank 2 is outside"),
    (["h:1", "h:2"], -1, "rank -1 is outside"),
])
def test_tf_config_refuses_what_tensorflow_would_hang_on(addresses, rank, words):
    with pytest.raises(dist.WorkerFailedError, match=words):
        dist.tf_config(addresses, rank)


# --------------------------------------------------------------------------- slots


def test_slots_problem_names_workers_slots_and_the_fix():
    assert dist.slots_problem(1, 2) is None and dist.slots_problem(2, 2) is None
    message = dist.slots_problem(3, 2)
    assert message.startswith("3 workers asked for, but this application runs 2 tasks at once")
    assert "ask for at most 2 workers" in message and "LAB_APP_CORES_MAX" in message
    assert "at least 1" in dist.slots_problem(0, 2)


class FakeConf:
    def __init__(self, values):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class FakeSession:
    """What check_slots reads: the conf, as both modes offer it (module name not Connect's)."""

    def __init__(self, **values):
        self.conf = FakeConf({"spark.cores.max": "2", "spark.master": "spark://h:7077",
                              **values})


def test_check_slots_refuses_more_workers_than_slots_before_any_job():
    spark = FakeSession()
    assert dist.check_slots(spark, 2) == 2
    with pytest.raises(dist.NotEnoughSlotsError, match="3 workers asked for.*runs 2 tasks"):
        dist.check_slots(spark, 3)
    # Two cpus per task halve the slots.
    with pytest.raises(dist.NotEnoughSlotsError, match="runs 1 tasks at once"):
        dist.check_slots(FakeSession(**{"spark.task.cpus": "2"}), 2)


def test_barrier_refused_with_dynamic_allocation_on_a_cluster_only():
    dynamic = FakeSession(**{"spark.dynamicAllocation.enabled": "true"})
    assert not dist.barrier_allowed(dynamic)
    with pytest.raises(dist.BarrierUnavailableError, match="barrier=False"):
        dist.check_slots(dynamic, 2)
    assert dist.check_slots(dynamic, 2, barrier=False) == 2
    # local[*] ignores dynamic allocation, as Spark's own check does.
    local = FakeSession(**{"spark.dynamicAllocation.enabled": "true", "spark.master": "local[2]"})
    assert dist.barrier_allowed(local) and dist.barrier_allowed(FakeSession())


# --------------------------------------------------------------------------- checkpoints


def test_checkpoints_keep_the_newest_and_hide_torn_writes(tmp_path):
    ckpt = dist.Checkpoints(tmp_path, every=3, keep=2)
    assert [s for s in range(10) if ckpt.due(s)] == [3, 6, 9]
    assert ckpt.latest() is None
    for step in (3, 6, 9):
        ckpt.save(step, [np.full(2, step, np.float32), np.array(step)])
    assert ckpt.steps() == [6, 9]  # the oldest removed
    (tmp_path / ".ckpt-000012.123-abc.tmp.npz").write_bytes(b"torn")  # a killed writer's file
    step, arrays = ckpt.latest()
    assert step == 9 and arrays[0].tolist() == [9.0, 9.0] and int(arrays[1]) == 9
    with pytest.raises(dist.WorkerFailedError, match="every 0 steps"):
        dist.Checkpoints(tmp_path, every=0)


class FakeVariable:
    def __init__(self, value):
        self.value = np.asarray(value, np.float32)

    def assign(self, value):
        self.value = np.asarray(value, np.float32)

    def __array__(self, dtype=None, copy=None):
        return self.value if dtype is None else self.value.astype(dtype)

    def numpy(self):
        return self.value


class FakeModel:
    name = "fake"

    def __init__(self, values):
        self.weights = [FakeVariable(v) for v in values]


class FakeOptimizer:
    def __init__(self, values):
        self.variables = [FakeVariable(v) for v in values]


def test_a_retried_worker_resumes_from_the_chiefs_last_checkpoint(tmp_path):
    chief = dist.WorkerContext(0, 2, 0, str(tmp_path), checkpoint_every=2)
    other = dist.WorkerContext(1, 2, 0, str(tmp_path), checkpoint_every=2)
    model, opt = FakeModel([[1.0, 2.0]]), FakeOptimizer([[0.5], 7])
    assert chief.restore(model, opt) == 0  # nothing saved yet: a fresh start
    assert not chief.checkpoint(3, model, opt)  # not due
    assert not other.checkpoint(4, model, opt) or not list(tmp_path.rglob("*.npz"))
    assert chief.checkpoint(4, model, opt)  # due: the chief writes it
    model.weights[0].assign([9.0, 9.0])  # training goes on, then the worker is lost
    # The retried stage: fresh variables in every worker, restored from step 4.
    for ctx in (dist.WorkerContext(0, 2, 1, str(tmp_path), 2),
                dist.WorkerContext(1, 2, 1, str(tmp_path), 2)):
        fresh, fresh_opt = FakeModel([[0.0, 0.0]]), FakeOptimizer([[0.0], 0])
        assert ctx.restore(fresh, fresh_opt) == 4
        assert fresh.weights[0].value.tolist() == [1.0, 2.0]
        assert [v.value.tolist() for v in fresh_opt.variables] == [[0.5], 7.0]
    with pytest.raises(dist.WorkerFailedError, match="another model's"):
        chief.restore(FakeModel([[0.0, 0.0], [1.0]]), FakeOptimizer([[0.0], 0]))
    # Without checkpoint_every there are none to read or write.
    plain = dist.WorkerContext(0, 2, 0, str(tmp_path))
    assert plain.restore(model, opt) == 0 and not plain.checkpoint(4, model, opt)


def test_weights_checksum_sees_every_bit_and_the_order():
    a, b = np.arange(4, dtype=np.float32), np.ones(3, np.float32)
    assert dist.weights_checksum([a, b]) == dist.weights_checksum([a.copy(), b.copy()])
    assert dist.weights_checksum([a, b]) != dist.weights_checksum([b, a])
    nudged = a.copy()
    nudged[2] = np.nextafter(nudged[2], np.float32(10))
    assert dist.weights_checksum([nudged, b]) != dist.weights_checksum([a, b])


def test_attempts_are_counted_from_the_run_folders_logs(tmp_path):
    assert dist.previous_attempts(tmp_path, 1) == 0
    (tmp_path / "logs").mkdir()
    for name in ("rank1-attempt0.log", "rank0-attempt0.log", "rank1-attempt1.log"):
        (tmp_path / "logs" / name).touch()
    assert dist.previous_attempts(tmp_path, 1) == 2 and dist.previous_attempts(tmp_path, 0) == 1


def test_results_round_trip_through_spark_rows():
    result = dist.WorkerResult(rank=1, workers=2, attempt=0, start_step=4, steps=4,
                               losses=[2.5, 2.25], checksum="ab", seconds=1.0,
                               train_seconds=0.5, steps_per_s=8.0, extra={"allreduce_s": 0.01})
    row = result.row()
    assert set(row) == {f.split()[0] for f in dist.RESULT_SCHEMA.split(", ")}
    first = dist.WorkerResult(**{**result.__dict__, "rank": 0})
    assert dist.results_from_rows([row, first.row()]) == [first, result]  # sorted by rank


# --------------------------------------------------------------------------- rendezvous


def test_file_rendezvous_gathers_every_address_in_rank_order(tmp_path):
    got: dict[int, list[str]] = {}

    def worker(rank):
        got[rank] = dist.file_rendezvous(tmp_path, rank, 3, f"h:{100 + rank}", timeout=10)

    threads = [threading.Thread(target=worker, args=(r,)) for r in (2, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == dict.fromkeys(range(3), ["h:100", "h:101", "h:102"])


def test_file_rendezvous_says_when_a_worker_never_came(tmp_path):
    with pytest.raises(dist.WorkerFailedError, match="only 1 of 2 workers started"):
        dist.file_rendezvous(tmp_path, 0, 2, "h:1", timeout=0.3)


# --------------------------------------------------------------------------- the child


def fake_train(ctx):
    """A worker's training without TensorFlow: a fake model and the losses of its steps."""
    if ctx.params.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)
    assert json.loads(os.environ["TF_CONFIG"])["task"]["index"] == ctx.rank
    return {"model": FakeModel([[1.0, 2.0]]), "losses": [3.0, 2.0, 1.0],
            "start_step": 2, "seconds": 0.5, "timed_steps": 2, "extra": {"rank": ctx.rank}}


def test_a_worker_trains_in_a_child_and_reports_its_result(tmp_path):
    result = dist.run_worker(fake_train, rank=1, addresses=["h:1", "h:2"], run_dir=tmp_path,
                             params={}, timeout=60)
    assert (result.rank, result.workers, result.attempt) == (1, 2, 0)
    assert (result.start_step, result.steps, result.losses) == (2, 3, [3.0, 2.0, 1.0])
    assert result.steps_per_s == 4.0 and result.extra == {"rank": 1}
    assert result.checksum == dist.weights_checksum([np.array([1.0, 2.0])])
    assert result.saved == "" and result.seconds > 0
    assert (tmp_path / "logs" / "rank1-attempt0.log").is_file()
    assert not list((tmp_path / "spec").iterdir())  # the pickled spec is removed


def test_a_killed_worker_fails_its_task_with_its_log(tmp_path):
    with pytest.raises(dist.WorkerFailedError,
                       match=r"worker 0 \(attempt 0\) was killed by signal 9"):
        dist.run_worker(fake_train, rank=0, addresses=["h:1"], run_dir=tmp_path,
                        params={"die": True}, timeout=60)
    # The next start of that worker in the same run folder is its second attempt.
    assert dist.run_worker(fake_train, rank=0, addresses=["h:1"], run_dir=tmp_path,
                           timeout=60).attempt == 1


def test_importing_the_launcher_needs_no_tensorflow_nor_pyspark():
    import subprocess
    import sys

    code = ("import sys, lab_utils.training.distributed, lab_utils.training.distributed_child;"
            "print(sorted(m for m in ('tensorflow', 'pyspark', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_forked_tasks_get_different_ports():
    # Spark forks its Python workers from one daemon: the same random state in every task.
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        ports = pool.map(dist.task_port, ["127.0.0.1"] * 2)
    assert len(set(ports)) == 2 and all(p > 0 for p in ports)
