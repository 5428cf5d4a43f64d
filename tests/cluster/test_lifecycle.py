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


def test_start_over_stale_pids_then_stop_leaves_nothing(tmp_path):
    cfg = lab_config.load(lab_env(tmp_path, workers=1))
    folder = cfg.state_dir / "pids"
    folder.mkdir(parents=True)
    (folder / "master.pid").write_text("999999 1\n")  # left by a crashed earlier run
    try:
        native.start(cfg, jupyter=False, out=lambda *_: None)
        assert services.alive_workers(cfg) == 1
        running = pids.lab_processes(cfg)
        assert len(running) >= 3  # master, worker, history (JVMs and their launchers)
    finally:
        stopped = native.stop(cfg, out=lambda *_: None)
    assert stopped == ["model-server", "history", "worker-1", "master"]
    assert pids.lab_processes(cfg) == []
    assert list(folder.iterdir()) == []
    assert all(net.port_free("127.0.0.1", p) for p in (cfg.master_port, cfg.master_ui_port,
                                                       cfg.model_server_port))


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
