"""The lab's GPU settings on a real standalone cluster: a private master and one worker that
offers this machine's GPUs through the lab's discovery script, an application with one GPU per
executor, and a model stage whose resource profile gives each task half a GPU.

Checked: every task of the GPU stage got one address the script listed, never more than two
tasks held one GPU at once (0.5 per task), TensorFlow in the task saw only that GPU (as its
``/GPU:0``), and the partition predictor's top-1 classes on the GPU equal the CPU's on the same
images. Needs Java and the lab's TensorFlow (``KERAS_BACKEND=tensorflow``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab_utils.common import net
from lab_utils.common.resources import GPU_DISCOVERY_SCRIPT, gpu_app_conf, gpu_worker_conf

pytestmark = pytest.mark.skipif(shutil.which("java") is None,
                                reason="no java: the GPU profile runs on a standalone cluster")


def _spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def _wait(predicate, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def gpu_cluster(gpu, tmp_path_factory):
    """``(master URL, GPU addresses)``: a master and one worker offering every GPU."""
    if gpu != "tensorflow":
        pytest.skip("the GPU profile test runs the lab's TensorFlow loader: "
                    "KERAS_BACKEND=tensorflow")
    addresses = json.loads(subprocess.run([str(GPU_DISCOVERY_SCRIPT)], capture_output=True,
                                          text=True, check=True, timeout=60).stdout)["addresses"]
    assert addresses, "nvidia-smi lists GPUs, so the discovery script must too"
    logs = tmp_path_factory.mktemp("spark-logs")
    port, ui_port, worker_ui = net.free_ports(3)
    worker_opts = " ".join(f"-D{k}={v}" for k, v in gpu_worker_conf(len(addresses)).items())
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(logs),
           "PYSPARK_PYTHON": sys.executable, "SPARK_WORKER_OPTS": worker_opts}
    master_url = f"spark://127.0.0.1:{port}"
    procs = [subprocess.Popen(
        [str(_spark_class()), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(port), "--webui-port", str(ui_port)],
        env=env, stdout=(logs / "master.out").open("w"), stderr=subprocess.STDOUT)]
    try:
        ui = f"http://127.0.0.1:{ui_port}/json/"
        _wait(lambda: _answers(ui), "the master's UI answers")
        procs.append(subprocess.Popen(
            [str(_spark_class()), "org.apache.spark.deploy.worker.Worker", master_url,
             "--cores", "4", "--memory", "4g", "--webui-port", str(worker_ui)],
            env=env, stdout=(logs / "worker.out").open("w"), stderr=subprocess.STDOUT))
        _wait(lambda: [w for w in net.http_json(ui).get("workers", [])
                       if w.get("state") == "ALIVE"], "the GPU worker registers (see "
              f"{logs}/worker.out: a discovery script listing fewer GPUs stops it)")
        yield master_url, addresses
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def _answers(url: str) -> bool:
    try:
        net.http_json(url)
    except (OSError, ValueError):
        return False
    return True


def run_half_gpu_stage(master: str, model_dir: str, rows: list[dict]):
    """Score ``rows`` on ``master`` in a stage whose profile gives each task 0.5 GPU; one row
    out per row in, with the task's GPU address, what TensorFlow saw and when the task ran."""
    import pandas as pd
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(master).appName("gpu profile test")
             .config("spark.driver.host", "127.0.0.1").config("spark.executor.cores", "2")
             .config("spark.cores.max", "2").config("spark.executor.memory", "2g")
             .config(map=gpu_app_conf(executor_gpus=1, task_gpus=1)).getOrCreate())

    def on_gpu(frames):
        from pyspark import TaskContext

        from lab_utils.common.tensorflow import configure_tensorflow
        from lab_utils.inference import image_partition_predictor, select_device

        configure_tensorflow()  # only the task's GPU visible, before TensorFlow initialises
        import tensorflow as tf

        ctx = TaskContext.get()
        start, index = time.time(), ctx.partitionId()
        records = [r for f in frames for r in f.to_dict("records")]
        scored = list(image_partition_predictor(model_dir)._predict_partition(index, records))
        yield pd.DataFrame({
            "path": [r[0] for r in scored], "prediction": [r[1] for r in scored],
            "confidence": [r[2] for r in scored], "error": [r[3] for r in scored],
            "address": ",".join(ctx.resources()["gpu"].addresses),
            "tf_gpus": len(tf.config.get_visible_devices("GPU")),
            "device": select_device(index), "start": start, "end": time.time()})

    try:
        half = ResourceProfileBuilder().require(
            TaskResourceRequests().cpus(1).resource("gpu", 0.5)).build
        df = spark.createDataFrame(pd.DataFrame(rows)[["path", "content"]]).repartition(4)
        return df.mapInPandas(on_gpu, "path string, prediction string, confidence float, "
                              "error string, address string, tf_gpus int, device string, "
                              "start double, end double", profile=half).toPandas()
    finally:
        spark.stop()


def most_at_once_per_gpu(out) -> int:
    """The most tasks that held one GPU address at the same moment."""
    tasks = out.drop_duplicates(["address", "start"])
    return max(int(((same["start"] < task["end"]) & (same["end"] > task["start"])).sum())
               for _, same in tasks.groupby("address") for _, task in same.iterrows())


def test_a_stage_with_half_a_gpu_per_task_gets_the_task_s_gpu(monkeypatch, gpu_cluster,
                                                             digits_spec, digit_rows, loader):
    from lab_utils import inference
    from tests.utils.gpu import free_models

    # The reference: the same predictor on this machine's CPU, no Spark.
    calls: list[str] = []
    cpu = inference.image_partition_predictor(digits_spec, loader(calls), gpu_count=0)
    cpu_rows = {r[0]: r for r in cpu._predict_partition(0, iter(digit_rows))}
    assert calls == ["/CPU:0"]
    free_models()

    master, addresses = gpu_cluster
    # A Python driver names the executors' interpreter by this variable, not by a setting.
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    out = run_half_gpu_stage(master, str(digits_spec.path), digit_rows)

    assert sorted(out["path"]) == sorted(cpu_rows)
    assert set(out["address"]) <= set(addresses)  # one address each, one the script listed
    assert set(out["tf_gpus"]) == {1} and set(out["device"]) == {"/GPU:0"}
    # 0.5 GPU per task, one GPU per 2-core executor: at most two tasks on one GPU at a time.
    assert 1 <= most_at_once_per_gpu(out) <= 2
    # The GPU's answers are the CPU's: the same errors, the same class wherever the CPU's top
    # probability is clear of TF32's tolerance (1e-2).
    for path, prediction, confidence, error in zip(out["path"], out["prediction"],
                                                   out["confidence"], out["error"], strict=True):
        _, cpu_prediction, cpu_confidence, cpu_error = cpu_rows[path]
        assert (error is None) == (cpu_error is None), path
        if cpu_error is None:
            assert abs(confidence - cpu_confidence) <= 1e-2, path
            if cpu_confidence > 0.51:
                assert prediction == cpu_prediction, path
