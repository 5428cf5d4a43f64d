"""The native lab: its services as local processes (``make lab`` → ``lab start``), or one of
them in the foreground as a container's command (``lab run ROLE``).

Native mode starts a Spark master, N workers, the Spark History Server, the Spark Connect server
(one application on the lab's master, token required), the model server (TF Serving REST API,
:mod:`lab_utils.serving`) and JupyterLab as background processes bound to ``LAB_HOST``
(127.0.0.1), waits until they are healthy and prints their URLs. ``lab status``
and ``lab stop`` manage them through pid files in ``LAB_STATE_DIR``
(:mod:`lab_utils.ops.pids`); logs go to ``LAB_STATE_DIR/logs/<service>.log``. What each
service runs, with which environment, and how it is probed is :mod:`lab_utils.ops.services`.

Docker mode runs ``lab run ROLE`` as each container's command: the very same
:func:`~lab_utils.ops.services.service_command` builds the process, which then replaces the
Python process (exec), so the tests that start the native lab exercise the code containers run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lab_utils import config as lab_config
from lab_utils.common import process
from lab_utils.common.atomic import atomic_write_text
from lab_utils.common.net import port_free
from lab_utils.common.process import start_time, wait_until
from lab_utils.ops import pids
from lab_utils.ops.services import (
    ROLES,
    SPARK_ROLES,
    LaunchError,
    Service,
    alive_workers,
    healthy,
    java_version,
    prepare,
    require_token,
    resolve_host,
    service_command,
    service_env,
    services,
)


def _log_path(cfg: lab_config.LabConfig, name: str) -> Path:
    return cfg.state_dir / "logs" / f"{name}.log"


def _log_tail(cfg: lab_config.LabConfig, name: str, lines: int = 15) -> str:
    return process.log_tail(_log_path(cfg, name), lines)


#: System tools that notebooks need besides Java: (executable, what needs it, how to install).
SYSTEM_TOOLS = (
    ("espeak-ng", "notebook 07 synthesizes its speech clips with it",
     "apt-get install espeak-ng (Debian/Ubuntu), brew install espeak-ng (macOS)"),
)


def missing_tool_warnings() -> list[str]:
    """One warning line per missing system tool; the lab starts anyway (only some notebooks
    need them)."""
    return [f"warning: {exe} not found on PATH: {why}; install it: {how}"
            for exe, why, how in SYSTEM_TOOLS if shutil.which(exe) is None]


#: What each service's readiness is called in messages, for those that start at once.
_READY = {"history": "healthy", "model-server": "answering on /healthz",
          "jupyter": "answering on /api"}
#: Services that wait for the master before they start, and how their readiness is called.
_AFTER_MASTER = {"connect": "accepting sessions"}
#: Seconds a service this lab ran before gets for its ports to come free: a killed JVM's
#: sockets close only once its last thread has exited, after it is already reported gone.
PORT_RELEASE_S = 15.0


class Launch:
    """One ``lab start``: the services to start, started in dependency order, each awaited.

    The shape of honcho's ``Manager``: it holds what it started (pid and start time per
    service), so a failure stops exactly that and names the log to read. A fresh start that
    fails cleans up everything; a repair (some services already running) stops only what it
    started, never the master, workers and notebooks that were already running.
    """

    def __init__(self, cfg: lab_config.LabConfig, wanted: list[Service], alive: list[str],
                 out: Callable[[str], object]) -> None:
        self.cfg = cfg
        self.out = out
        self.wanted = wanted
        self.alive = alive
        self.missing = [s for s in wanted if s.name not in alive]
        self.host = resolve_host(cfg.host)
        self.timeout = cfg.start_timeout
        self.started: dict[str, tuple[int, float]] = {}  # name -> (pid, when spawned)

    def check_ports(self) -> None:
        """:class:`LaunchError` naming the port, the service and the setting if one is taken.

        A service this lab ran before (its session is on record) may have just died: a JVM
        killed with SIGKILL is reported gone (a zombie) while its other threads still tear
        down and hold its sockets, so its own ports get :data:`PORT_RELEASE_S` to come free.
        """
        earlier = set(pids.recorded_sessions(self.cfg).values())
        for service in self.missing:
            grace = PORT_RELEASE_S if service.name in earlier else 0.0
            for port, variable in service.ports:
                if not wait_until(functools.partial(port_free, self.host, port), grace, 0.1):
                    raise LaunchError(
                        f"port {port} on {self.host} ({service.name}) is already in use by "
                        f"another process: stop that process, or choose another port with "
                        f"{variable}=... in .env")

    def spawn(self, service: Service) -> int:
        proc = process.spawn(service_command(service, self.cfg),
                             log=_log_path(self.cfg, service.name),
                             env=service_env(self.cfg, service.role), cwd=self.cfg.root,
                             header=f"starting {service.name}")
        pids.record(self.cfg, service.name, proc.pid)
        self.started[service.name] = (proc.pid, time.monotonic())
        return proc.pid

    def give_up(self) -> None:
        if self.alive:
            for name in reversed(self.started):
                _stop_service(self.cfg, next(s for s in self.wanted if s.name == name))
        else:
            stop(self.cfg, out=lambda *_: None)

    def await_ready(self, service: Service, check: Callable[[], bool], what: str) -> None:
        """Wait for ``check()`` within what is left of the start timeout; if the process
        exits first or time runs out, stop what this launch started and raise."""
        pid, began = self.started[service.name]
        exited = lambda: start_time(pid) is None  # noqa: E731 (a predicate, used twice)
        left = max(1.0, self.timeout - (time.monotonic() - began))
        if not wait_until(check, left, abort=exited):
            state = "exited" if exited() else f"not {what} after {self.timeout}s"
            self.give_up()
            raise LaunchError(
                f"{service.name} {state}: read {_log_path(self.cfg, service.name)} (last lines "
                f"below), fix the cause, then `make lab` again. A slow machine can raise "
                f"LAB_START_TIMEOUT.\n{_log_tail(self.cfg, service.name)}")
        self.out(f"  {service.name} ready in {time.monotonic() - began:.1f}s")

    def start_workers(self) -> None:
        """Start the missing workers and wait until the master counts every wanted one ALIVE
        (it keeps a dead worker listed as DEAD)."""
        workers = [s for s in self.missing if s.role == "worker"]
        if not workers:
            return
        cfg, total = self.cfg, sum(s.role == "worker" for s in self.wanted)
        self.out(f"Starting {len(workers)} worker{'s' if len(workers) > 1 else ''} "
                 f"({cfg.worker_cores} cores, {cfg.worker_memory} each) ...")
        spawned = {worker.name: self.spawn(worker) for worker in workers}
        if wait_until(lambda: alive_workers(cfg) >= total, self.timeout):
            return
        dead = [name for name, pid in spawned.items() if start_time(pid) is None]
        tails = "\n".join(f"  {name}:\n{_log_tail(cfg, name)}" for name in (dead or spawned))
        count = alive_workers(cfg) if healthy(self.wanted[0], cfg) else 0
        self.give_up()
        raise LaunchError(
            f"only {count} of {total} workers registered with the master within "
            f"{self.timeout}s: read the worker logs in {cfg.state_dir / 'logs'} (last lines "
            "below). Common causes: not enough memory for LAB_WORKER_MEMORY, a firewall on "
            f"LAB_HOST, a slow machine (raise LAB_START_TIMEOUT).\n{tails}")

    def run(self) -> None:
        """Start what is missing. What does not depend on another service starts at once: the
        master, the history server, the model server and JupyterLab (a notebook connects only
        when its first cell runs). The workers and the Connect server (an application of the
        master) need the master's RPC port, so they start when it is healthy; each service's
        JVM or Python start-up (seconds each) then overlaps the others'."""
        cfg, host, master = self.cfg, self.host, self.wanted[0]
        where = {"history": f"the Spark History Server on {host}:{cfg.history_port}",
                 "model-server": f"the model server on {host}:{cfg.model_server_port}",
                 "jupyter": f"JupyterLab on {host}:{cfg.jupyter_port}",
                 "connect": f"the Spark Connect server on {host}:{cfg.connect_port}"}
        if master in self.missing:
            self.out(f"Starting the Spark master on {host}:{cfg.master_port} ...")
            self.spawn(master)
        independent = [s for s in self.missing if s.role in _READY]
        for service in independent:
            self.out(f"Starting {where[service.role]} ...")
            self.spawn(service)
        if master in self.missing:
            self.await_ready(master, lambda: healthy(master, cfg), "healthy")
        # The Connect server is an application of the master: it starts once the master
        # answers, and its JVM's start overlaps the workers'.
        dependent = [s for s in self.missing if s.role in _AFTER_MASTER]
        for service in dependent:
            self.out(f"Starting {where[service.role]} ...")
            self.spawn(service)
        self.start_workers()
        for service in independent + dependent:
            self.await_ready(service, functools.partial(healthy, service, cfg),
                             {**_READY, **_AFTER_MASTER}[service.role])


def start(cfg: lab_config.LabConfig, *, jupyter: bool = True, connect: bool = True,
          out: Callable[[str], object] = print) -> dict[str, str]:
    """Start the native lab, or the services of it that are missing, and wait until healthy.

    Idempotent: with everything running it only says so; with the master running it starts
    just the missing services (a worker or the Connect server that died, a stopped JupyterLab)
    and leaves the running ones, their applications and notebook kernels alone. That makes
    ``make lab`` the command that brings a lost worker back. ``jupyter=False`` and
    ``connect=False`` leave those services out (neither started nor counted missing). Returns
    the lab's URLs.

    Raises
    ------
    LaunchError
        Java missing or too old, a port taken, services running without their master, or a
        service that did not become healthy in time (the message names the log to read and
        what to change).
    """
    java_version()
    if jupyter:
        require_token(cfg)
    for warning in missing_tool_warnings():
        out(warning)
    left_out = {role for role, wanted in (("jupyter", jupyter), ("connect", connect)) if not wanted}
    wanted = [s for s in services(cfg) if s.role not in left_out]
    alive = [s.name for s in wanted if pids.running_pid(cfg, s.name)]
    if alive and len(alive) == len(wanted):
        out("The lab is already running.")
        return urls(cfg)
    if alive and "master" not in alive:
        # Workers re-registering with a fresh master is Spark's business, not a restart's.
        raise LaunchError(f"the lab is partly running ({', '.join(alive)}) without its master: "
                          "run `make stop`, then `make lab`")
    launch = Launch(cfg, wanted, alive, out)
    if alive:
        out(f"The lab is partly running: starting {', '.join(s.name for s in launch.missing)} "
            f"(running: {', '.join(alive)}) ...")
    launch.check_ports()
    prepare(cfg, connect=connect)
    launch.run()
    found = urls(cfg)
    atomic_write_text(cfg.state_dir / "lab.json",
                      json.dumps({k: v for k, v in found.items() if k != "jupyter"}, indent=2))
    return found


def urls(cfg: lab_config.LabConfig) -> dict[str, str]:
    host = resolve_host(cfg.host)
    return {
        "jupyter": f"http://{host}:{cfg.jupyter_port}/lab?token={cfg.jupyter_token}",
        "master": f"spark://{host}:{cfg.master_port}",
        "master_ui": f"http://{host}:{cfg.master_ui_port}",
        "history": f"http://{host}:{cfg.history_port}",
        "model_server": f"http://{host}:{cfg.model_server_port}",
        "connect": f"sc://localhost:{cfg.connect_port}" if host.startswith("127.")
        else f"sc://{host}:{cfg.connect_port}",
        "connect_ui": f"http://{host}:{cfg.connect_ui_port}",
    }


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stop_service(cfg: lab_config.LabConfig, service: Service, grace: float = 15.0) -> int | None:
    """Stop one service (its whole process group); return its pid, or None if not running."""
    pid = pids.running_pid(cfg, service.name)
    if pid is None:
        return None
    process.terminate_group(pid, lambda: start_time(pid) is None, grace=grace)
    pids.pid_file(cfg, service.name).unlink(missing_ok=True)
    return pid


def stop(cfg: lab_config.LabConfig, *, out: Callable[[str], object] = print,
         grace: float = 15.0) -> list[str]:
    """Stop every service (JupyterLab first, master last) and sweep up leftover children."""
    # What belongs to the lab is decided before anything stops: a kernel that exits with
    # JupyterLab leaves the processes it started without their parent.
    sessions = pids.sessions_of(pids.lab_processes(cfg))
    stopped = []
    for service in reversed(services(cfg)):
        pid = _stop_service(cfg, service, grace)
        if pid is None:
            continue
        stopped.append(service.name)
        out(f"stopped {service.name} (pid {pid})")
    # Kernels run in their own sessions and executors may outlive a killed worker: sweep them.
    leftovers = pids.lab_processes(cfg, sessions)
    for pid in leftovers:
        _signal(pid, signal.SIGTERM)
    if leftovers and not wait_until(lambda: not pids.lab_processes(cfg, sessions), grace, 0.2):
        for pid in pids.lab_processes(cfg, sessions):
            _signal(pid, signal.SIGKILL)
        wait_until(lambda: not pids.lab_processes(cfg, sessions), 5, 0.1)
    if not pids.lab_processes(cfg, sessions):
        pids.sessions_file(cfg).unlink(missing_ok=True)
    process.reap()  # services this process started itself: collect their exit status
    if leftovers:
        out(f"stopped {len(leftovers)} leftover lab processes (kernels, drivers, executors)")
    if not stopped and not leftovers:
        out("The lab is not running.")
    return stopped


def status(cfg: lab_config.LabConfig) -> dict[str, dict]:
    """State of each service: pid (or None) and whether it answers its health probe."""
    report = {}
    for service in services(cfg):
        pid = pids.running_pid(cfg, service.name)
        report[service.name] = {"pid": pid, "healthy": bool(pid) and healthy(service, cfg)}
    return report


def run(role: str, cfg: lab_config.LabConfig) -> None:
    """Replace this process with one service in the foreground (a container's command)."""
    if role not in ROLES:
        raise LaunchError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    if role == "jupyter":
        require_token(cfg)
    elif role in SPARK_ROLES:
        java_version()
    prepare(cfg, spark=role in SPARK_ROLES, connect=role == "connect")
    # `lab health` (the image's HEALTHCHECK) reads which role this container runs.
    (cfg.state_dir / "role").write_text(role)
    service = Service(role, role, index=1)
    argv = service_command(service, cfg)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, service_env(cfg, role))
