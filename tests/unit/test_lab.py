"""The native launcher's logic, without starting Java."""

import contextlib
import dataclasses
import os
import socket
import stat
import subprocess
import sys

import pytest

from lab_utils import config
from lab_utils.common import net
from lab_utils.ops import lab


def fake_java(tmp_path, version_line: str) -> str:
    path = tmp_path / "java"
    path.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    path.chmod(0o755)
    return str(path)


def test_java_17_and_newer_accepted(tmp_path):
    assert lab.java_version(fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15'))[0] == 17
    assert lab.java_version(fake_java(tmp_path, 'openjdk version "21" 2023-09-19'))[0] == 21


@pytest.mark.parametrize("line, found", [('openjdk version "11.0.2" 2019-01-15', "Java 11"),
                                         ('java version "1.8.0_292"', "Java 8")])
def test_old_java_names_the_fix(tmp_path, line, found):
    with pytest.raises(lab.LaunchError, match=f"{found} found .* needs Java 17 or newer: install"):
        lab.java_version(fake_java(tmp_path, line))


def test_missing_java_names_the_fix(tmp_path):
    with pytest.raises(lab.LaunchError, match="Java not found.*openjdk-17-jre-headless"):
        lab.java_version(str(tmp_path / "no-java"))


def make_cfg(tmp_path, **extra):
    env = {"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET": "top-secret", "JUPYTER_TOKEN": "tok"}
    env.update(extra)
    return config.load(env)


def test_port_taken_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = make_cfg(tmp_path, LAB_MASTER_PORT=str(port))  # the first port checked
        with pytest.raises(lab.LaunchError, match=f"port {port} on 127.0.0.1 \\(master\\) is "
                                                  "already in use.*LAB_MASTER_PORT"):
            lab.start(cfg, out=lambda *_: None)
    assert not (tmp_path / ".lab" / "pids" / "master.pid").exists()  # nothing was started


def test_spark_conf_is_private_and_complete(tmp_path):
    cfg = make_cfg(tmp_path, LAB_APP_CORES_MAX="3")
    path = lab.write_spark_conf(cfg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    props = dict(line.split(" ", 1) for line in path.read_text().splitlines()
                 if line and not line.startswith("#"))
    assert props["spark.authenticate"] == "true"
    assert props["spark.authenticate.secret"] == "top-secret"
    assert props["spark.master.rest.enabled"] == "false"
    assert props["spark.deploy.defaultCores"] == "3"
    assert props["spark.history.fs.logDirectory"] == cfg.events_dir.as_uri()


def _props(path):
    return dict(line.split(" ", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


@pytest.mark.parametrize("old_mode", [0o644, 0o666])
def test_spark_conf_is_private_whatever_was_there(tmp_path, old_mode):
    # A conf file, and a temporary file under the name earlier versions wrote through, left
    # readable by others (by a user, an old lab or an attacker): the new file is 0600 anyway.
    cfg = make_cfg(tmp_path)
    path = lab.spark_conf_path(cfg)
    path.parent.mkdir(parents=True)
    for stale in (path, path.with_suffix(".tmp")):
        stale.write_text("stale\n")
        stale.chmod(old_mode)
    lab.write_spark_conf(cfg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "top-secret" in path.read_text()
    assert "top-secret" not in path.with_suffix(".tmp").read_text()  # never written through


def test_daemon_uis_offer_no_kill_unless_asked_for(tmp_path):
    # The master's and workers' UIs have no login: with kill on, any local process could post
    # /app/kill/. The daemons read this file (--properties-file) for their UI settings.
    assert _props(lab.write_spark_conf(make_cfg(tmp_path)))["spark.ui.killEnabled"] == "false"
    conf = lab.write_spark_conf(make_cfg(tmp_path, LAB_UI_KILL="1"))
    assert _props(conf)["spark.ui.killEnabled"] == "true"
    for service in lab.services(make_cfg(tmp_path)):
        if service.role in lab.SPARK_ROLES:
            argv = lab.service_command(service, make_cfg(tmp_path))
            assert argv[argv.index("--properties-file") + 1] == str(conf)


def test_secret_never_on_a_command_line(tmp_path):
    cfg = make_cfg(tmp_path)
    for service in lab.services(cfg):
        argv = " ".join(lab.service_command(service, cfg))
        assert "top-secret" not in argv and "tok" not in argv.split("=")[-1]


def test_service_commands(tmp_path):
    cfg = make_cfg(tmp_path, LAB_WORKERS="3", LAB_WORKER_CORES="2", LAB_WORKER_UI_PORT="9001")
    named = {s.name: lab.service_command(s, cfg) for s in lab.services(cfg)}
    assert list(named) == ["master", "worker-1", "worker-2", "worker-3", "history",
                           "model-server", "jupyter"]
    master = named["master"]
    assert master[1] == "org.apache.spark.deploy.master.Master"
    assert master[master.index("--host") + 1] == "127.0.0.1"
    worker3 = named["worker-3"]
    assert worker3[2] == "spark://127.0.0.1:7077"
    assert worker3[worker3.index("--webui-port") + 1] == "9003"
    assert worker3[worker3.index("--cores") + 1] == "2"
    assert "--ip=127.0.0.1" in named["jupyter"]
    server = named["model-server"]
    assert server[1:3] == ["-m", "lab_utils.serving"]
    assert server[server.index("--host") + 1] == "127.0.0.1"
    assert server[server.index("--port") + 1] == "8501"
    assert server[server.index("--models-dir") + 1] == str(cfg.share_dir / "models")
    assert "--fail-rate" not in server  # fault injection only when asked for
    assert f"--ServerApp.root_dir={tmp_path.resolve() / 'notebooks'}" in named["jupyter"]


def test_stale_pid_files_are_removed(tmp_path):
    cfg = make_cfg(tmp_path)
    pids = cfg.state_dir / "pids"
    pids.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (pids / "master.pid").write_text(f"{dead.pid} 12345\n")   # process gone
    (pids / "history.pid").write_text("garbage\n")             # unreadable
    (pids / "jupyter.pid").write_text(f"{os.getpid()} 1\n")    # pid reused by another process
    for name in ("master", "history", "jupyter"):
        assert lab.running_pid(cfg, name) is None
        assert not (pids / f"{name}.pid").exists()


def test_live_pid_file_is_recognised(tmp_path):
    cfg = make_cfg(tmp_path)
    (cfg.state_dir / "pids").mkdir(parents=True)
    (cfg.state_dir / "pids" / "master.pid").write_text(
        f"{os.getpid()} {lab._start_time(os.getpid())}\n")
    assert lab.running_pid(cfg, "master") == os.getpid()


@pytest.fixture
def stand_in():
    """A harmless process to stand in for running services in pid files (never this one:
    stopping a service signals its whole process group)."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc.pid
    proc.kill()
    proc.wait()


def pretend_running(cfg, pid: int, *names: str) -> None:
    (cfg.state_dir / "pids").mkdir(parents=True, exist_ok=True)
    for name in names:
        (cfg.state_dir / "pids" / f"{name}.pid").write_text(f"{pid} {lab._start_time(pid)}\n")


def test_services_without_their_master_are_not_restarted(tmp_path, stand_in):
    cfg = make_cfg(tmp_path, LAB_WORKERS="2")
    pretend_running(cfg, stand_in, "worker-1", "worker-2")
    with pytest.raises(lab.LaunchError, match=r"partly running \(worker-1, worker-2\) without its "
                                           r"master: run `make stop`, then `make lab`"):
        lab.start(cfg, jupyter=False, out=lambda *_: None)
    assert lab.running_pid(cfg, "worker-1") == stand_in  # nothing was stopped


def test_restart_checks_only_the_missing_services(tmp_path, stand_in):
    """With the master up, `lab start` starts what is missing (here worker-2) and no more:
    the ports of the running services are theirs, only the missing worker's port is checked."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # worker-2's UI port is the one taken; the master's port is taken too, by the "master".
        cfg = make_cfg(tmp_path, LAB_WORKERS="2", LAB_WORKER_UI_PORT=str(port - 1),
                       LAB_MASTER_PORT=str(port))
        pretend_running(cfg, stand_in, "master", "worker-1", "history", "model-server")
        lines = []
        with pytest.raises(lab.LaunchError, match=f"port {port} on 127.0.0.1 \\(worker-2\\) is "
                                               "already in use"):
            lab.start(cfg, jupyter=False, out=lines.append)
    assert any("partly running: starting worker-2 (running: master, worker-1, history, "
               "model-server)" in line for line in lines), lines
    assert lab.running_pid(cfg, "master") == stand_in  # the running lab was left alone


def test_service_env_shares_one_interpreter(tmp_path):
    cfg = make_cfg(tmp_path)
    env = lab.service_env(cfg, "jupyter")
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == sys.executable
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["SPARK_MASTER_URL"] == "spark://127.0.0.1:7077"
    assert env["LAB_INSTANCE"] == str(cfg.state_dir)
    # Kernels see the lab that started them, with its master URL made explicit.
    assert config.load(env) == dataclasses.replace(cfg, master_url=cfg.lab_master_url)


def test_daemon_java_options_reach_the_spark_daemons_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_DAEMON_JAVA_OPTS", "-Dmine=1")
    cfg = make_cfg(tmp_path)
    assert cfg.daemon_java_options == config.DEFAULT_DAEMON_JAVA_OPTIONS
    for role in ("master", "worker", "history"):
        # The user's own options stay, first; the lab's come after them.
        assert lab.service_env(cfg, role)["SPARK_DAEMON_JAVA_OPTS"] == (
            "-Dmine=1 -XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    monkeypatch.delenv("SPARK_DAEMON_JAVA_OPTS")
    for role in ("model-server", "jupyter"):  # kernels' drivers and executors keep their JITs
        assert "SPARK_DAEMON_JAVA_OPTS" not in lab.service_env(cfg, role)
    # Empty means the JVM's defaults, and survives the hand-over to the services' environment.
    plain = dataclasses.replace(cfg, daemon_java_options="")
    assert config.load(config.to_env(plain)).daemon_java_options == ""
    assert "SPARK_DAEMON_JAVA_OPTS" not in lab.service_env(plain, "master")


def test_jupyter_never_starts_without_a_token(tmp_path):
    cfg = config.load({"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET": "s"})
    with pytest.raises(lab.LaunchError, match="JUPYTER_TOKEN is not set: run `make env`"):
        lab.run("jupyter", cfg)
    # Spark roles do not need it (the compose file gives it to JupyterLab only).
    lab.prepare(cfg)
    assert (cfg.state_dir / "conf" / "spark-defaults.conf").is_file()


def test_service_env_ignores_stale_lab_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SMOKE", "1")
    monkeypatch.setenv("SPARK_AUTH_SECRET", "from-another-lab")
    cfg = make_cfg(tmp_path)  # its own secret, no smoke
    env = lab.service_env(cfg, "jupyter")
    assert env["SPARK_AUTH_SECRET"] == "top-secret"
    assert "LAB_SMOKE" not in env


def test_missing_espeak_is_a_warning_with_the_install_command(monkeypatch):
    monkeypatch.setattr(lab.shutil, "which", lambda exe: None if exe == "espeak-ng" else "/x")
    warnings = lab.missing_tool_warnings()
    assert len(warnings) == 1 and warnings[0].startswith("warning: espeak-ng not found")
    assert "apt-get install espeak-ng" in warnings[0] and "notebook 07" in warnings[0]
    monkeypatch.setattr(lab.shutil, "which", lambda exe: "/usr/bin/" + exe)
    assert lab.missing_tool_warnings() == []


def test_model_server_role_needs_neither_java_nor_the_spark_secret(tmp_path):
    cfg = config.load({"LAB_ROOT": str(tmp_path), "LAB_MODEL_SERVER_PORT": "9501"})
    assert cfg.auth_secret is None
    lab.prepare(cfg, spark=False)  # what `lab run model-server` does in its container
    assert (cfg.share_dir / "models").is_dir()
    assert not lab.spark_conf_path(cfg).exists()
    assert "model-server" in lab.ROLES and "model-server" not in lab.SPARK_ROLES
    assert lab.urls(cfg)["model_server"] == cfg.model_server_url == "http://127.0.0.1:9501"
    with pytest.raises(lab.LaunchError, match="SPARK_AUTH_SECRET is not set"):
        lab.prepare(cfg)  # the Spark roles still refuse to start without it


def test_test_lab_ports_are_free_and_outside_the_ephemeral_range():
    # A port inside the ephemeral range may be given to any socket bound to port 0 (a worker's
    # RPC port) before the test lab's service binds it.
    ports = net.free_ports(12)
    low, high = net.ephemeral_range()
    assert len(set(ports)) == 12
    assert all(not low <= port <= high for port in ports), (ports, (low, high))
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("as_files", [False, True])
def test_each_role_gets_only_its_secrets(tmp_path, as_files):
    if as_files:  # the containers' form: file names, never values, in the environment
        (tmp_path / "secret").write_text("top-secret\n")
        (tmp_path / "token").write_text("tok-value\n")
        cfg = config.load({"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET_FILE":
                           str(tmp_path / "secret"), "JUPYTER_TOKEN_FILE": str(tmp_path / "token")})
    else:
        cfg = make_cfg(tmp_path, JUPYTER_TOKEN="tok-value")
    names = ("SPARK_AUTH_SECRET", "SPARK_AUTH_SECRET_FILE", "JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE")
    found = {}
    for role in lab.ROLES:
        env = lab.service_env(cfg, role)
        found[role] = sorted(name for name in names if name in env)
        # Nor under another name: no value of a secret anywhere in a role that lacks it.
        values = " ".join(env.values())
        for value in ("tok-value", "top-secret"):
            assert (value in values) == (role == "jupyter" and not as_files), (role, value)
    given = ["SPARK_AUTH_SECRET_FILE", "JUPYTER_TOKEN_FILE"] if as_files else [
        "JUPYTER_TOKEN", "SPARK_AUTH_SECRET"]
    # Spark daemons read the secret from their 0600 properties file; workers pass it to their
    # executors themselves, which inherit the rest of a worker's environment.
    assert found == {"master": [], "worker": [], "history": [], "model-server": [],
                     "jupyter": sorted(given)}


def test_no_secret_from_the_callers_environment_reaches_a_role(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_TOKEN", "stale-token")
    monkeypatch.setenv("JUPYTER_TOKEN_FILE", "/stale/file")
    cfg = make_cfg(tmp_path)
    for role in ("master", "worker", "history", "model-server"):
        env = lab.service_env(cfg, role)
        assert not {"JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "SPARK_AUTH_SECRET"} & env.keys()
    assert lab.service_env(cfg, "jupyter")["JUPYTER_TOKEN"] == "tok"
    with pytest.raises(lab.LaunchError, match="unknown role 'driver'"):
        lab.service_env(cfg, "driver")


#: A stand-in process: writes {name: pid} of the children it starts (argv[2], JSON: name ->
#: [new session?, argv]) to argv[1], then waits to be stopped.
TREE = """
import json, subprocess, sys, time
kids = {name: subprocess.Popen(argv, start_new_session=new).pid
        for name, (new, argv) in json.loads(sys.argv[2]).items()}
open(sys.argv[1] + ".tmp", "w").write(json.dumps(kids))
import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


def _tree(out, kids: dict, *extra: str) -> list[str]:
    import json

    return [sys.executable, "-c", TREE, str(out), json.dumps(kids), *extra]


def test_stop_sweeps_what_the_lab_started_and_nothing_else(tmp_path):
    import json

    from lab_utils.common import process
    from lab_utils.common.process import wait_until

    cfg = make_cfg(tmp_path)
    (cfg.state_dir / "pids").mkdir(parents=True)
    runtime = cfg.state_dir / "jupyter-runtime"
    env = {**os.environ, "LAB_INSTANCE": str(cfg.state_dir)}  # what every lab process carries
    sleep = ["sleep", "300"]
    # A worker with an executor (same session), a kernel with its driver and a private model
    # server (own session), a terminal's job (JupyterLab's child, own session), and the user's
    # own job started elsewhere with the same environment.
    kernel = _tree(tmp_path / "kernel.json", {"driver": [False, sleep],
                                              "private-server": [True, sleep]},
                   "-f", str(runtime / "kernel-1.json"))
    procs = {
        "worker-1": process.spawn(_tree(tmp_path / "worker.json",
                                        {"executor": [False, sleep]}), log=None, env=env),
        "worker-2": process.spawn(_tree(tmp_path / "worker2.json",
                                        {"orphan-executor": [False, sleep]}), log=None, env=env),
        "jupyter": process.spawn(_tree(tmp_path / "jupyter.json", {
            "kernel": [True, kernel], "terminal-job": [True, sleep]}), log=None, env=env),
    }
    users_job = process.spawn(sleep, log=None, env=env)
    try:
        for name, proc in procs.items():
            lab._record(cfg, name, proc.pid)
        files = ["worker.json", "worker2.json", "jupyter.json", "kernel.json"]
        assert wait_until(lambda: all((tmp_path / f).exists() for f in files), 30, 0.1)
        pids = {name: proc.pid for name, proc in procs.items()}
        for f in files:
            pids.update(json.loads((tmp_path / f).read_text()))
        # A worker killed earlier: its executor lives on, reparented, in the worker's session.
        procs["worker-2"].kill()
        procs["worker-2"].wait()
        del pids["worker-2"]
        assert lab.running_pid(cfg, "worker-2") is None  # its pid file is gone with it
        lab.stop(cfg, out=lambda *_: None, grace=5)
        alive = {name for name, pid in pids.items() if lab._start_time(pid) is not None}
        assert alive == {"terminal-job"}
        assert lab._start_time(users_job.pid) is not None
        assert not lab._sessions_file(cfg).exists()
    finally:
        for pid in [users_job.pid, *pids.values()] if "pids" in locals() else [users_job.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for proc in [*procs.values(), users_job]:
            proc.kill()
            proc.wait()


def test_independent_services_start_before_the_master_is_healthy_and_workers_after(
        tmp_path, stand_in, monkeypatch):
    """History server, model server and JupyterLab do not wait for the master; the workers do
    (they need its RPC port). Spawns and health checks are recorded in the order they happen."""
    cfg = make_cfg(tmp_path, LAB_WORKERS="2")
    events: list[str] = []
    spawned: set[str] = set()

    def spawn(service, _cfg):
        events.append(f"spawn {service.name}")
        spawned.add(service.name)
        return stand_in

    def healthy(service, _cfg):
        if f"{service.name} healthy" not in events:
            events.append(f"{service.name} healthy")
        return True

    monkeypatch.setattr(lab, "java_version", lambda: None)
    monkeypatch.setattr(lab, "port_free", lambda *_: True)
    monkeypatch.setattr(lab, "prepare", lambda c: c.state_dir.mkdir(parents=True))
    monkeypatch.setattr(lab, "_spawn", spawn)
    monkeypatch.setattr(lab, "healthy", healthy)
    monkeypatch.setattr(lab, "alive_workers",
                        lambda _cfg: len({"worker-1", "worker-2"} & spawned))
    lab.start(cfg, out=lambda *_: None)
    master_up = events.index("master healthy")
    for name in ("history", "model-server", "jupyter"):
        assert events.index(f"spawn {name}") < master_up, events
        assert f"{name} healthy" in events, events
    for name in ("worker-1", "worker-2"):
        assert events.index(f"spawn {name}") > master_up, events
    assert events[0] == "spawn master"
