"""A worker killed with SIGKILL in the middle of an inference job, on a private native lab.

The lab is the tests' private one (``private_lab``: its own state, ports and secret in a tmp
folder), so killing a worker cannot disturb the session's cluster; the test leaves it as it
found it, both workers ALIVE. The job is the lab's real inference path: the
iterator UDF with the lab's CNN over image rows keyed by a unique ``id``, written to Parquet
in ``share_storages/output``. A short pause per model batch stands in for a bigger model, so
the job lasts long enough to be hit on a fast machine too.

worker-2 is killed (``resilience.kill_mid_job``, what notebook 00 section 9 does) once both workers
have finished a task of the job and are running another. What Spark must do: the master marks
the worker DEAD, the executor on it exits with it (no process of it lingers), the task that
was running there fails (ExecutorLostFailure) and runs again elsewhere, and the output
committer keeps exactly one attempt per partition. (The master also starts a replacement
executor on worker-1, which has a free core; whether it joins before the job ends depends on
the machine, so it is not asserted.) What the lab must do: ``lab start``
(``make lab``) brings the lost worker back, and a new application runs on both workers (the
running one keeps the executors it has).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from urllib.parse import urlparse

from lab_utils.common import process
from lab_utils.data import images
from lab_utils.ops import native, pids, resilience, services
from lab_utils.ops.services import LaunchError
from lab_utils.training import cnn
from tests.utils.phases import Phases, assert_lab_ready

ROWS = 2400
PARTITIONS = 24  # 100 rows per task, 4 model batches of 25
BATCH = 25
PAUSE = 0.1  # seconds per model batch: at least 0.4 s per task

DRIVER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path

    from lab_utils import config, inference
    from lab_utils.training import cnn
    from lab_utils.ops import resilience
    from lab_utils.session import get_spark

    ctl, rows, partitions, batch, pause = (Path(sys.argv[1]), int(sys.argv[2]),
                                           int(sys.argv[3]), int(sys.argv[4]),
                                           float(sys.argv[5]))
    cfg = config.load()
    spec = cnn.ensure_model(cfg)  # the lab's CNN on the smoke image set (LAB_SMOKE=1)
    keras_make = inference.keras_predict_fn(spec.model_file)

    def make_predict_fn():
        predict = keras_make()

        def predict_slowly(pixels):
            time.sleep(pause)  # stands in for a bigger model
            return predict(pixels)

        return predict_slowly

    spark = get_spark("worker-loss", quiet=True)
    sc = spark.sparkContext
    udf = inference.iterator_udf(spec, make_predict_fn, batch_size=batch)
    job = (resilience.keyed_images(spark, cfg.share_dir / "data" / "images", rows,
                                   partitions=partitions)
           .select("id", udf("path", "content").alias("r")).select("id", "r.*"))

    def write():
        job.write.mode("overwrite").parquet(str(cfg.share_dir / "output" / "worker-loss"))

    # What notebook 00 (section 9) does with KILL_A_WORKER = True.
    killed = resilience.kill_mid_job(spark, write, cfg, worker="worker-2", group="worker-loss")
    (ctl / "report.json").write_text(json.dumps({
        "killed": killed, "tasks": resilience.job_tasks(sc.uiWebUrl, sc.applicationId,
                                                        "worker-loss", cfg)}))
    spark.stop()
""")

# A new application after the restart: where do its tasks run?
AFTER = textwrap.dedent("""
    import json, os, time
    from lab_utils.common.process import wait_until
    from lab_utils.session import get_spark

    spark = get_spark("after-worker-loss", quiet=True)
    sc = spark.sparkContext
    # The driver and two executors, well within the 300 s the test gives this script.
    assert wait_until(lambda: sc._jsc.sc().getExecutorMemoryStatus().size() >= 3, 180, 0.2), \
        "two executors did not register within 180 s"
    dirs = sc.parallelize(range(8), 8).map(lambda _: (time.sleep(0.5), os.getcwd())[1]).collect()
    print(json.dumps(sorted({d.split("/work/")[1].split("/")[0] for d in dirs})))
    spark.stop()
""")


def worker_states(cfg, name: str) -> list[str]:
    """States the master lists for the lab worker ``name`` (its UI port tells it apart)."""
    port = cfg.worker_ui_port + int(name.split("-")[1]) - 1
    return [w["state"] for w in services.master_state(cfg, timeout=30)["workers"]
            if urlparse(w["webuiaddress"]).port == port]


def test_worker_killed_mid_job_loses_no_row_and_comes_back(tmp_path, lab_cluster, private_lab):
    cfg = private_lab
    assert_lab_ready(cfg)
    # The session's CNN (trained once per test session), copied: this lab need not train it.
    # The images are this lab's own, built as `ensure_model` builds them at smoke size.
    trained = cnn.ensure_model(lab_cluster.cfg)
    shutil.copytree(trained.path, cfg.share_dir / "models" / trained.path.name,
                    dirs_exist_ok=True)
    images.build_image_dataset(cfg.share_dir / "data" / "images", per_class=30)
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    log = tmp_path / "driver.log"
    phase = Phases()

    try:
        victim = pids.running_pid(cfg, "worker-2")
        with open(log, "wb") as out:
            driver = subprocess.run(
                [sys.executable, "-c", DRIVER, str(ctl), str(ROWS), str(PARTITIONS), str(BATCH),
                 str(PAUSE)], env=services.service_env(cfg, "jupyter"), cwd=tmp_path, stdout=out,
                stderr=subprocess.STDOUT, timeout=600)
        phase("model, job, kill, job completes")

        # 1. The job completed without worker-2, with every row exactly once.
        assert driver.returncode == 0, log.read_text()[-3000:]
        report = json.loads((ctl / "report.json").read_text())
        assert report["killed"] == victim, "the job ended before both workers were busy"
        check = resilience.check_output(cfg.share_dir / "output" / "worker-loss", ROWS)
        assert check == {"rows_expected": ROWS, "rows_written": ROWS, "duplicates": 0,
                         "missing": 0, "unexpected": 0, "null_values": 0, "committed": True,
                         "temporary_left": False}
        # The kill hit a running task: it failed on worker-2 and ran again on worker-1.
        tasks = report["tasks"]
        assert tasks["worker-2"].get("FAILED", 0) >= 1 and tasks["worker-2"]["SUCCESS"] >= 1, tasks
        assert tasks["worker-1"]["SUCCESS"] >= 1, tasks
        assert not any(t.get("RUNNING") for t in tasks.values()), tasks

        # 2. The master marks worker-2 DEAD; its executor and Python workers did not outlive it.
        assert worker_states(cfg, "worker-2") == ["DEAD"]
        assert pids.running_pid(cfg, "worker-2") is None
        gone = lambda: not resilience.lingering_processes(cfg, "worker-2")  # noqa: E731
        assert process.wait_until(gone, 60), (
            f"processes of the killed worker (pid {victim}) still running: "
            f"{resilience.lingering_processes(cfg, 'worker-2')}")

        # 3. `make lab` (lab start) brings worker-2 back; the old entry stays listed as DEAD.
        lines: list[str] = []
        native.start(cfg, jupyter=False, connect=False, out=lines.append)
        assert any("starting worker-2 (running: master, worker-1, history, model-server)" in line
                   for line in lines), lines
        assert services.master_state(cfg, timeout=30)["aliveworkers"] == 2
        assert sorted(worker_states(cfg, "worker-2")) == ["ALIVE", "DEAD"]
        phase("worker restarted")

        # 4. A new application runs tasks on both workers again.
        env = services.service_env(cfg, "jupyter")
        after = subprocess.run([sys.executable, "-c", AFTER], env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert after.returncode == 0, after.stderr[-3000:]
        assert json.loads(after.stdout.splitlines()[-1]) == ["worker-1", "worker-2"]
        phase("new app on both workers")
    finally:
        # Leave the private lab as the next test expects it: both workers running. A failed
        # restart must not hide this test's own failure; the next test's readiness check
        # reports the state of the lab.
        try:
            native.start(cfg, jupyter=False, connect=False, out=lambda *_: None)
        except LaunchError as exc:
            print(f"could not restart the private lab's missing services: {exc}")
        print(phase)
