"""The native launcher (:mod:`lab_utils.ops.native`): start order, repairs, ports, stop's sweep,
without starting Java."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import pytest

from lab_utils import config
from lab_utils.common import net, process
from lab_utils.ops import native, pids
from lab_utils.ops.services import LaunchError


def make_cfg(tmp_path, **extra):
    env = {"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET": "top-secret", "JUPYTER_TOKEN": "tok",
           "SPARK_CONNECT_AUTHENTICATE_TOKEN": "connect-token"}
    env.update(extra)
    return config.load(env)


@pytest.fixture
def stand_in():
    """A harmless process to stand in for running services in pid files (never this one:
    stopping a service signals its whole process group)."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc.pid
    proc.kill()
    proc.wait()


def test_port_taken_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = make_cfg(tmp_path, LAB_MASTER_PORT=str(port))  # the first port checked
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 \\(master\\) is "
                                                  "already in use.*LAB_MASTER_PORT"):
            native.start(cfg, out=lambda *_: None)
    assert not (tmp_path / ".lab" / "pids" / "master.pid").exists()  # nothing was started


def pretend_running(cfg, pid: int, *names: str) -> None:
    (cfg.state_dir / "pids").mkdir(parents=True, exist_ok=True)
    for name in names:
        (cfg.state_dir / "pids" / f"{name}.pid").write_text(f"{pid} {process.start_time(pid)}\n")


def test_services_without_their_master_are_not_restarted(tmp_path, stand_in):
    cfg = make_cfg(tmp_path, LAB_WORKERS="2")
    pretend_running(cfg, stand_in, "worker-1", "worker-2")
    with pytest.raises(LaunchError, match=r"partly running \(worker-1, worker-2\) without its "
                                           r"master: run `make stop`, then `make lab`"):
        native.start(cfg, jupyter=False, out=lambda *_: None)
    assert pids.running_pid(cfg, "worker-1") == stand_in  # nothing was stopped


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
        pretend_running(cfg, stand_in, "master", "worker-1", "history", "connect",
                        "model-server")
        lines = []
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 \\(worker-2\\) is "
                                               "already in use"):
            native.start(cfg, jupyter=False, out=lines.append)
    assert any("partly running: starting worker-2 (running: master, worker-1, history, "
               "connect, model-server)" in line for line in lines), lines
    assert pids.running_pid(cfg, "master") == stand_in  # the running lab was left alone


def test_a_lost_connect_server_is_started_again_like_a_lost_worker(tmp_path, stand_in):
    """The Connect server is one of the services `make lab` repairs; without it wanted
    (connect=False) it is neither started nor checked."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = make_cfg(tmp_path, LAB_CONNECT_PORT=str(port))
        pretend_running(cfg, stand_in, "master", "worker-1", "worker-2", "history",
                        "model-server")
        lines = []
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 \\(connect\\) is "
                                               "already in use.*LAB_CONNECT_PORT"):
            native.start(cfg, jupyter=False, out=lines.append)
        assert any("partly running: starting connect (running: master, worker-1, worker-2, "
                   "history, model-server)" in line for line in lines), lines
        lines.clear()
        assert native.start(cfg, jupyter=False, connect=False, out=lines.append)
        assert lines[-1] == "The lab is already running.", lines  # no connect wanted: none missing
    assert pids.running_pid(cfg, "master") == stand_in


def test_a_service_that_just_died_gets_time_to_free_its_ports(tmp_path):
    """A killed JVM is a zombie (gone, for its pid file) while its threads still hold its
    sockets: `lab start` gives the ports of a service it ran before a moment to come free,
    and one it never ran none (the tests above: the error comes at once)."""
    import threading

    dead = subprocess.Popen(["true"])
    dead.wait()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = make_cfg(tmp_path, LAB_CONNECT_PORT=str(port))
    (cfg.state_dir / "pids").mkdir(parents=True)
    pids.sessions_file(cfg).write_text(f"connect {dead.pid} 1\n")  # ran before, now gone
    connect = [s for s in native.services(cfg) if s.name == "connect"]
    release = threading.Timer(1.0, taken.close)
    release.start()
    try:
        began = time.monotonic()
        native.Launch(cfg, connect, [], out=lambda *_: None).check_ports()  # no error
        assert 0.5 < time.monotonic() - began < native.PORT_RELEASE_S
    finally:
        release.cancel()
        taken.close()


def test_missing_espeak_is_a_warning_with_the_install_command(monkeypatch):
    monkeypatch.setattr(native.shutil, "which", lambda exe: None if exe == "espeak-ng" else "/x")
    warnings = native.missing_tool_warnings()
    assert len(warnings) == 1 and warnings[0].startswith("warning: espeak-ng not found")
    assert "apt-get install espeak-ng" in warnings[0] and "notebook 07" in warnings[0]
    monkeypatch.setattr(native.shutil, "which", lambda exe: "/usr/bin/" + exe)
    assert native.missing_tool_warnings() == []


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
            pids.record(cfg, name, proc.pid)
        files = ["worker.json", "worker2.json", "jupyter.json", "kernel.json"]
        assert wait_until(lambda: all((tmp_path / f).exists() for f in files), 30, 0.1)
        pid_of = {name: proc.pid for name, proc in procs.items()}
        for f in files:
            pid_of.update(json.loads((tmp_path / f).read_text()))
        # A worker killed earlier: its executor lives on, reparented, in the worker's session.
        procs["worker-2"].kill()
        procs["worker-2"].wait()
        del pid_of["worker-2"]
        assert pids.running_pid(cfg, "worker-2") is None  # its pid file is gone with it
        native.stop(cfg, out=lambda *_: None, grace=5)
        alive = {name for name, pid in pid_of.items() if process.start_time(pid) is not None}
        assert alive == {"terminal-job"}
        assert process.start_time(users_job.pid) is not None
        assert not pids.sessions_file(cfg).exists()
    finally:
        for pid in [users_job.pid, *pid_of.values()] if "pid_of" in locals() else [users_job.pid]:
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

    def spawn(launch, service):
        events.append(f"spawn {service.name}")
        spawned.add(service.name)
        launch.started[service.name] = (stand_in, time.monotonic())
        return stand_in

    def healthy(service, _cfg):
        if f"{service.name} healthy" not in events:
            events.append(f"{service.name} healthy")
        return True

    monkeypatch.setattr(native, "java_version", lambda: None)
    monkeypatch.setattr(native, "port_free", lambda *_: True)
    prepared = []
    monkeypatch.setattr(native, "prepare", lambda c, connect: prepared.append(connect)
                        or c.state_dir.mkdir(parents=True))
    monkeypatch.setattr(native.Launch, "spawn", spawn)
    monkeypatch.setattr(native, "healthy", healthy)
    monkeypatch.setattr(native, "alive_workers",
                        lambda _cfg: len({"worker-1", "worker-2"} & spawned))
    native.start(cfg, out=lambda *_: None)
    master_up = events.index("master healthy")
    for name in ("history", "model-server", "jupyter"):
        assert events.index(f"spawn {name}") < master_up, events
        assert f"{name} healthy" in events, events
    for name in ("worker-1", "worker-2"):
        assert events.index(f"spawn {name}") > master_up, events
    assert events[0] == "spawn master"
    # The Connect server is an application of the master: spawned once the master is healthy,
    # before the workers (its JVM's start overlaps theirs), and awaited like the others.
    assert master_up < events.index("spawn connect") < events.index("spawn worker-1"), events
    assert "connect healthy" in events, events
    assert prepared == [True]  # its properties file is written


def test_urls_name_the_connect_server_by_localhost(tmp_path):
    # A token over a loopback address would make PySpark's client ask for TLS (session.py).
    found = native.urls(make_cfg(tmp_path, LAB_CONNECT_PORT="16002", LAB_CONNECT_UI_PORT="4051"))
    assert found["connect"] == "sc://localhost:16002"
    assert found["connect_ui"] == "http://127.0.0.1:4051"
    assert "connect-token" not in " ".join(found.values())
