"""Start and stop private labs: stale pid files, timeouts, and nothing left behind."""

from __future__ import annotations

import os

import pytest

from lab_utils import config as lab_config
from lab_utils.common import net, process
from lab_utils.common.net import free_ports
from lab_utils.ops import native, pids, services
from lab_utils.ops.services import LaunchError
from tests.utils.labs import lab_env

#: A Connect client of the lab (LAB_SPARK_API=connect, the token from the environment as a
#: kernel has it): a Python UDF, so the server's application starts executors and Python workers;
#: prints the sum and the application's id.
CONNECT_CLIENT = """
from pyspark.sql.functions import udf
from lab_utils.session import get_spark

spark = get_spark("lifecycle", quiet=True)
plus_one = udf(lambda x: x + 1, "long")
total = spark.range(0, 100, 1, 2).select(plus_one("id").alias("x")).groupBy().sum("x")
print(total.collect()[0][0], spark.conf.get("spark.app.id"))
"""


def _connect_query(cfg: lab_config.LabConfig) -> str:
    """Run :data:`CONNECT_CLIENT` in a fresh process; the server application's id."""
    import subprocess
    import sys

    env = {**services.service_env(cfg, "jupyter"), "LAB_SPARK_API": "connect"}
    out = subprocess.run([sys.executable, "-c", CONNECT_CLIENT], env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    total, app_id = out.stdout.split()[-2:]
    assert total == str(sum(range(1, 101)))
    return app_id


def _executors(cfg: lab_config.LabConfig, app_id: str) -> list[int]:
    """Pids of the executor JVMs of application ``app_id`` that run now."""
    from pathlib import Path

    found = []
    for pid in pids.lab_processes(cfg):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"org.apache.spark.executor.CoarseGrainedExecutorBackend" in argv and (
                app_id.encode() in argv):
            found.append(pid)
    return found


def test_start_over_stale_pids_then_stop_leaves_nothing(tmp_path):
    """One lab with its Connect server: started over a stale pid file; the Connect server
    answers an authenticated client and its application starts executors; killed (SIGKILL, a
    crash), it is started again by the next `lab start` like a lost worker, the rest left
    running; `lab stop` then leaves no process of the lab, the executors of both of the
    server's applications included."""
    import signal

    cfg = lab_config.load(lab_env(tmp_path, workers=1))
    folder = cfg.state_dir / "pids"
    folder.mkdir(parents=True)
    (folder / "master.pid").write_text("999999 1\n")  # left by a crashed earlier run
    connect = next(s for s in services.services(cfg) if s.role == "connect")
    executors: list[int] = []
    try:
        native.start(cfg, jupyter=False, out=lambda *_: None)
        assert services.alive_workers(cfg) == 1
        assert services.healthy(connect, cfg)
        running = pids.lab_processes(cfg)
        assert len(running) >= 4  # master, worker, history, Connect server (JVMs, launchers)
        first_app = _connect_query(cfg)
        apps = {app["id"]: app["name"] for app in services.master_state(cfg)["activeapps"]}
        assert apps.get(first_app) == "Spark Connect server", apps
        executors += _executors(cfg, first_app)
        assert executors, "the Connect server's application started no executor"

        # A crash of the Connect server: its application ends, `lab start` starts it again.
        lost = pids.running_pid(cfg, "connect")
        assert lost is not None
        others = {name: pids.running_pid(cfg, name)
                  for name in ("master", "worker-1", "history", "model-server")}
        os.kill(lost, signal.SIGKILL)
        assert process.wait_until(lambda: pids.running_pid(cfg, "connect") is None, 30, 0.1)
        lines: list[str] = []
        native.start(cfg, jupyter=False, out=lines.append)
        assert any("partly running: starting connect (running: master, worker-1, history, "
                   "model-server)" in line for line in lines), lines
        assert pids.running_pid(cfg, "connect") not in {None, lost}
        assert {name: pids.running_pid(cfg, name) for name in others} == others  # left alone
        assert services.healthy(connect, cfg)
        second_app = _connect_query(cfg)
        assert second_app != first_app
        executors += _executors(cfg, second_app)
        assert _executors(cfg, second_app), "the new server's application has no executor"
    finally:
        stopped = native.stop(cfg, out=lambda *_: None)
    assert stopped == ["model-server", "connect", "history", "worker-1", "master"]
    assert pids.lab_processes(cfg) == []
    assert [pid for pid in executors if process.start_time(pid) is not None] == []
    assert list(folder.iterdir()) == []
    assert all(net.port_free("127.0.0.1", p) for p in (
        cfg.master_port, cfg.master_ui_port, cfg.model_server_port, cfg.connect_port,
        cfg.connect_ui_port))


def test_worker_that_cannot_register_is_a_clear_error(tmp_path):
    wrong_master = f"spark://127.0.0.1:{free_ports(1)[0]}"
    cfg = lab_config.load(lab_env(tmp_path, workers=1, SPARK_MASTER_URL=wrong_master,
                                  LAB_START_TIMEOUT="8"))
    with pytest.raises(LaunchError, match=r"only 0 of 1 workers registered with the master "
                                           r"within 8s: read the worker logs"):
        native.start(cfg, jupyter=False, out=lambda *_: None)
    assert pids.lab_processes(cfg) == []  # the failed start cleaned up after itself


def test_container_entrypoint_runs_a_service_in_the_foreground(tmp_path):
    """`lab run master` + `lab health` are what each container runs; exercise them natively."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = lab_env(tmp_path, workers=1)
    lab_cli = str(Path(sys.executable).with_name("lab"))
    proc = subprocess.Popen([lab_cli, "run", "master"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def health() -> bool:
            return subprocess.run([lab_cli, "health"], env=env).returncode == 0

        assert process.wait_until(health, timeout=90)
        cfg = lab_config.load(env)
        assert (cfg.state_dir / "role").read_text() == "master"
        assert services.master_state(cfg)["status"] == "ALIVE"
        # exec: the pid that `lab run` got is now the JVM itself, as PID 1 would be in a container.
        assert "java" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert subprocess.run([lab_cli, "health"], env=env).returncode == 1


def test_model_server_container_command_needs_no_spark_secret(tmp_path):
    """`lab run model-server` is the model-server container's command: no secret, no Java."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = lab_env(tmp_path, workers=1)
    del env["SPARK_AUTH_SECRET"], env["JUPYTER_TOKEN"]  # compose gives it neither
    lab_cli = str(Path(sys.executable).with_name("lab"))
    proc = subprocess.Popen([lab_cli, "run", "model-server"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cfg = lab_config.load(env)
    try:
        def health() -> bool:
            return subprocess.run([lab_cli, "health"], env=env).returncode == 0

        assert process.wait_until(health, timeout=60)
        assert (cfg.state_dir / "role").read_text() == "model-server"
        assert net.http_json(f"{cfg.model_server_url}/healthz") == {"status": "ok", "models": []}
        assert not services.spark_conf_path(cfg).exists()
        assert "lab_utils.serving" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert net.port_free("127.0.0.1", cfg.model_server_port)
