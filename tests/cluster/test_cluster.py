"""The native lab as `make lab` runs it: a master, two workers, history server and JupyterLab."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from lab_utils.common import net, process
from lab_utils.ops import cluster, native, services


def test_two_workers_alive_with_their_cores(lab_cluster):
    state = services.master_state(lab_cluster.cfg)
    assert state["status"] == "ALIVE"
    assert state["aliveworkers"] == 2
    assert state["cores"] == 2 * lab_cluster.cfg.worker_cores
    assert {w["host"] for w in state["workers"]} == {"127.0.0.1"}


def test_status_reports_every_service_healthy(lab_cluster):
    report = native.status(lab_cluster.cfg)
    assert list(report) == ["master", "worker-1", "worker-2", "history", "connect",
                            "model-server", "jupyter"]
    assert all(item["healthy"] and item["pid"] for item in report.values()), report


def test_executors_run_the_drivers_versions(spark):
    # load=True imports every library in every Python worker: the versions load, not only
    # their metadata (notebook 00 reads the metadata, which takes milliseconds).
    driver = cluster.library_versions(load=True)
    assert driver["tensorflow"].startswith("2.21.") and driver["pyspark"].startswith("4.3.")
    assert driver == cluster.library_versions()  # metadata and modules agree
    executors = cluster.executor_versions(spark, partitions=8, load=True)
    assert len(executors) == 8
    # Each Python worker runs in its executor's work dir: two workers, two executors.
    assert executors["executor_dir"].str.contains("/work/worker-").all()
    assert executors["executor_dir"].nunique() == 2
    assert cluster.version_mismatches(driver, executors) == []


def test_session_uses_lab_settings(spark, lab_cluster):
    conf = spark.sparkContext.getConf()
    assert spark.sparkContext.master == lab_cluster.cfg.lab_master_url
    assert conf.get("spark.authenticate") == "true"
    assert conf.get("spark.cores.max") == str(lab_cluster.cfg.app_cores_max)
    assert conf.get("spark.eventLog.dir") == lab_cluster.cfg.events_dir.as_uri()
    assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "1024"
    assert spark.range(1000).selectExpr("sum(id)").first()[0] == 499500


INTRUDERS = {"intruder-no-auth": "", "intruder-wrong-secret": "guess"}
INTRUDER = textwrap.dedent("""
    import sys
    from pyspark.sql import SparkSession
    builder = SparkSession.builder.master(sys.argv[1]).appName(sys.argv[2])
    if sys.argv[3]:
        builder = builder.config("spark.authenticate", "true")
        builder = builder.config("spark.authenticate.secret", sys.argv[3])
    try:
        spark = builder.getOrCreate()
        print("RESULT", spark.range(10).selectExpr("sum(id)").first()[0], flush=True)
    except Exception as exc:
        print("REFUSED", type(exc).__name__, flush=True)
""")


@pytest.fixture(scope="module", autouse=True)
def intruders(lab_cluster, tmp_path_factory):
    """Applications without / with a wrong secret, started when this module starts.

    Spark's standalone client gives up only after 3 registration attempts of 20 s each, so
    they run in the background while the other tests of this module run; the last test of
    the module collects their outcome.
    """
    cwd = tmp_path_factory.mktemp("intruders")
    procs = {name: subprocess.Popen(
        [sys.executable, "-c", INTRUDER, lab_cluster.cfg.lab_master_url, name, secret],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd)
        for name, secret in INTRUDERS.items()}
    yield procs
    for proc in procs.values():
        proc.kill()
        proc.wait()


def test_jupyter_refuses_requests_without_the_token(lab_cluster):
    base = f"http://127.0.0.1:{lab_cluster.cfg.jupyter_port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/api/contents", timeout=10)
    assert refused.value.code == 403
    request = urllib.request.Request(
        f"{base}/api/contents", headers={"Authorization": f"token {lab_cluster.cfg.jupyter_token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        names = {item["name"] for item in __import__("json").loads(response.read())["content"]}
    assert "00_getting_started.ipynb" in names
    # The browser path: without the token the lab page redirects to the login form.
    with urllib.request.urlopen(f"{base}/lab", timeout=10) as response:
        assert "/login" in response.url


def test_history_server_lists_a_finished_application(lab_cluster, tmp_path):
    code = textwrap.dedent("""
        from lab_utils.session import get_spark
        spark = get_spark("history-check", quiet=True)
        assert spark.range(100).count() == 100
        spark.stop()
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"{lab_cluster.cfg.history_url}/api/v1/applications"
    assert process.wait_until(
        lambda: any(app["name"] == "history-check" and app["attempts"][0]["completed"]
                    for app in net.http_json(url)), timeout=60)


def test_applications_without_the_secret_cannot_run_a_job(lab_cluster, intruders):
    # Last in this module: the attempts started with it (see the `intruders` fixture).
    outputs = {name: proc.communicate(timeout=180)[0] for name, proc in intruders.items()}
    for name, out in outputs.items():
        assert "RESULT" not in out, f"{name} ran a job on the secured cluster: {out}"
        assert "REFUSED" in out, f"{name}: {out}"
    state = services.master_state(lab_cluster.cfg)
    names = {app["name"] for app in state["activeapps"] + state["completedapps"]}
    assert not names & set(INTRUDERS)
