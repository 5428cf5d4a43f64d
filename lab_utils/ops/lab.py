"""Run the lab's services: natively as local processes, or one per container.

Native mode (``make lab`` → ``lab start``) starts a Spark master, N workers, the Spark History
Server, the model server (TF Serving REST API, :mod:`lab_utils.serving`) and JupyterLab as
background processes bound to ``LAB_HOST`` (127.0.0.1), waits until
they are healthy and prints their URLs. ``lab status`` and ``lab stop`` manage them through pid
files in ``LAB_STATE_DIR``; logs go to ``LAB_STATE_DIR/logs/<service>.log``.

Docker mode runs ``lab run ROLE`` as each container's command: the very same
:func:`service_command` builds the process, which then replaces the Python process (exec), so
the tests that start the native lab exercise the code containers run.
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
from lab_utils.common.process import wait_until
from lab_utils.ops.services import (  # noqa: F401 (the launcher's API: lab.ROLES, ...)
    ROLE_SECRETS,
    ROLES,
    SHARE_SUBDIRS,
    SPARK_ROLES,
    SPARKMONITOR_KERNEL_CONFIG,
    LaunchError,
    Service,
    alive_workers,
    healthy,
    java_version,
    master_state,
    prepare,
    require_token,
    resolve_host,
    service_command,
    service_env,
    services,
    spark_conf_path,
    spark_home,
    write_spark_conf,
)

# --------------------------------------------------------------------------- pid files


def _start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (clock ticks since boot), or None if it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields counted after the ")" that ends the command name (which may contain spaces):
    # state is field 3, start time field 22. A zombie has exited, it only awaits reaping.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in {"Z", "X"} else fields[19]


def _pid_file(cfg: lab_config.LabConfig, name: str) -> Path:
    return cfg.state_dir / "pids" / f"{name}.pid"


def running_pid(cfg: lab_config.LabConfig, name: str) -> int | None:
    """The pid of a running service, or None; a stale pid file (dead or reused pid) is removed."""
    path = _pid_file(cfg, name)
    try:
        pid_text, started = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    if _start_time(pid) != started:
        path.unlink(missing_ok=True)  # stale: the process died or the pid now belongs to another
        return None
    return pid


def _spawn(service: Service, cfg: lab_config.LabConfig) -> int:
    proc = process.spawn(service_command(service, cfg), log=_log_path(cfg, service.name),
                         env=service_env(cfg, service.role), cwd=cfg.root,
                         header=f"starting {service.name}")
    _record(cfg, service.name, proc.pid)
    return proc.pid


def _sessions_file(cfg: lab_config.LabConfig) -> Path:
    return cfg.state_dir / "pids" / "sessions"


def _record(cfg: lab_config.LabConfig, name: str, pid: int) -> None:
    """Write ``name``'s pid file and remember its session (a service starts one: its pid) until
    ``lab stop``: executors that outlive a killed worker are still in that session."""
    line = f"{pid} {_start_time(pid)}\n"
    _pid_file(cfg, name).write_text(line)
    with open(_sessions_file(cfg), "a") as handle:
        handle.write(f"{name} {line}")


def _recorded_sessions(cfg: lab_config.LabConfig) -> dict[int, str]:
    """``{session id: service name}`` of the services this lab started, still valid: the
    leader still runs, or it is gone (Linux reuses no pid while its session has members)."""
    found: dict[int, str] = {}
    try:
        lines = _sessions_file(cfg).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            name, pid, started = line.split()
        except ValueError:
            continue
        if _start_time(int(pid)) in {started, None}:
            found[int(pid)] = name
    return found


def _log_path(cfg: lab_config.LabConfig, name: str) -> Path:
    return cfg.state_dir / "logs" / f"{name}.log"


def _log_tail(cfg: lab_config.LabConfig, name: str, lines: int = 15) -> str:
    return process.log_tail(_log_path(cfg, name), lines)


# --------------------------------------------------------------------------- commands


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


def start(cfg: lab_config.LabConfig, *, jupyter: bool = True,
          out: Callable[[str], object] = print) -> dict[str, str]:
    """Start the native lab, or the services of it that are missing, and wait until healthy.

    Idempotent: with everything running it only says so; with the master running it starts
    just the missing services (a worker that died, a stopped JupyterLab) and leaves the running
    ones, their applications and notebook kernels alone. That makes ``make lab`` the command
    that brings a lost worker back. Returns the lab's URLs.

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
    wanted = [s for s in services(cfg) if jupyter or s.role != "jupyter"]
    alive = [s.name for s in wanted if running_pid(cfg, s.name)]
    if alive and len(alive) == len(wanted):
        out("The lab is already running.")
        return urls(cfg)
    if alive and "master" not in alive:
        # Workers re-registering with a fresh master is Spark's business, not a restart's.
        raise LaunchError(f"the lab is partly running ({', '.join(alive)}) without its master: "
                       "run `make stop`, then `make lab`")
    missing = [s for s in wanted if s.name not in alive]
    if alive:
        out(f"The lab is partly running: starting {', '.join(s.name for s in missing)} "
            f"(running: {', '.join(alive)}) ...")
    host = resolve_host(cfg.host)
    for service in missing:
        for port, variable in service.ports:
            if not port_free(host, port):
                raise LaunchError(
                    f"port {port} on {host} ({service.name}) is already in use by another process:"
                    f" stop that process, or choose another port with {variable}=... in .env"
                )
    prepare(cfg)
    timeout = cfg.start_timeout
    spawned: list[Service] = []

    def give_up() -> None:
        # A fresh start cleans up everything; a repair stops only what it started, never the
        # master, workers and notebooks that were already running.
        if alive:
            for service in reversed(spawned):
                _stop_service(cfg, service)
        else:
            stop(cfg, out=lambda *_: None)

    started: dict[str, tuple[int, float]] = {}  # name -> (pid, when spawned)

    def spawn(service: Service) -> None:
        started[service.name] = (_spawn(service, cfg), time.monotonic())
        spawned.append(service)

    def await_ready(service: Service, check: Callable[[], bool], what: str) -> None:
        pid, began = started[service.name]
        ok = wait_until(lambda: check() or _start_time(pid) is None,
                        max(1.0, timeout - (time.monotonic() - began)))
        if not ok or _start_time(pid) is None:
            state = "exited" if _start_time(pid) is None else f"not {what} after {timeout}s"
            give_up()
            raise LaunchError(
                f"{service.name} {state}: read {cfg.state_dir / 'logs' / (service.name + '.log')}"
                f" (last lines below), fix the cause, then `make lab` again. A slow machine can "
                f"raise LAB_START_TIMEOUT.\n{_log_tail(cfg, service.name)}"
            )
        out(f"  {service.name} ready in {time.monotonic() - began:.1f}s")

    # What does not depend on another service starts at once: the master, the history server,
    # the model server and JupyterLab (a notebook connects only when its first cell runs). The
    # workers need the master's RPC port, so they start when it is healthy; each service's
    # JVM or Python start-up (seconds each) then overlaps the others'.
    what = {"history": "healthy", "model-server": "answering on /healthz",
            "jupyter": "answering on /api"}
    where = {"history": f"the Spark History Server on {host}:{cfg.history_port}",
             "model-server": f"the model server on {host}:{cfg.model_server_port}",
             "jupyter": f"JupyterLab on {host}:{cfg.jupyter_port}"}
    master = wanted[0]
    if master in missing:
        out(f"Starting the Spark master on {host}:{cfg.master_port} ...")
        spawn(master)
    independent = [s for s in missing if s.role in what]
    for service in independent:
        out(f"Starting {where[service.role]} ...")
        spawn(service)
    if master in missing:
        await_ready(master, lambda: healthy(master, cfg), "healthy")
    all_workers = [s for s in wanted if s.role == "worker"]
    workers = [s for s in missing if s.role == "worker"]
    if workers:
        out(f"Starting {len(workers)} worker{'s' if len(workers) > 1 else ''} "
            f"({cfg.worker_cores} cores, {cfg.worker_memory} each) ...")
        pids = {}
        for worker in workers:
            spawn(worker)
            pids[worker.name] = started[worker.name][0]
        # The master keeps a dead worker listed as DEAD: count the ALIVE ones.
        if not wait_until(lambda: alive_workers(cfg) >= len(all_workers), timeout):
            dead = [name for name, pid in pids.items() if _start_time(pid) is None]
            tails = "\n".join(f"  {name}:\n{_log_tail(cfg, name)}" for name in (dead or pids))
            count = alive_workers(cfg) if healthy(master, cfg) else 0
            give_up()
            raise LaunchError(
                f"only {count} of {len(all_workers)} workers registered with the master within "
                f"{timeout}s: read the worker logs in {cfg.state_dir / 'logs'} (last lines below). "
                "Common causes: not enough memory for LAB_WORKER_MEMORY, a firewall on LAB_HOST, "
                f"a slow machine (raise LAB_START_TIMEOUT).\n{tails}"
            )
    for service in independent:
        await_ready(service, functools.partial(healthy, service, cfg), what[service.role])
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
    }


def _lab_processes(cfg: lab_config.LabConfig, sessions: set[int] | None = None) -> list[int]:
    """Pids of the processes this lab started that still run, and only those.

    A process carrying this lab's ``LAB_INSTANCE`` marker counts if it is in the session of a
    service the lab started (pid files and ``pids/sessions``: a worker's executors, even after
    the worker was killed), in the session of one of its notebook kernels (their connection
    file is in the lab's ``jupyter-runtime`` folder; a kernel's driver JVM shares its session),
    in one of ``sessions`` (those found before ``lab stop`` started stopping), or descends from
    one of those outside JupyterLab's own session (a private model server started by a kernel).
    Processes started from a JupyterLab terminal inherit the marker too, but they are the user's
    own: never swept. Nor is this process's own group (a script that started a driver itself).
    """
    marker = f"LAB_INSTANCE={cfg.state_dir}".encode()
    runtime = f"{cfg.state_dir / 'jupyter-runtime'}{os.sep}".encode()
    own_group = os.getpgrp()
    procs = process.table()
    marked = set()
    wanted = set(sessions or ()) | set(recorded := _recorded_sessions(cfg))
    for pid in procs:
        try:
            if os.getpgid(pid) == own_group:
                continue
            if marker not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        marked.add(pid)
        if runtime in cmdline:  # a notebook kernel of this lab (-f .../kernel-<id>.json)
            wanted.add(procs[pid][1])
    found = {pid for pid in marked if procs[pid][1] in wanted}
    jupyter = {sid for sid, name in recorded.items() if name == "jupyter"}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    todo = [pid for pid in found if procs[pid][1] not in jupyter]  # not via its terminals
    while todo:
        for child in children.get(todo.pop(), []):
            if child in marked and child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def _sessions_of(pids: list[int]) -> set[int]:
    procs = process.table()
    return {procs[pid][1] for pid in pids if pid in procs}


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stop_service(cfg: lab_config.LabConfig, service: Service, grace: float = 15.0) -> int | None:
    """Stop one service (its whole process group); return its pid, or None if not running."""
    pid = running_pid(cfg, service.name)
    if pid is None:
        return None
    process.terminate_group(pid, lambda: _start_time(pid) is None, grace=grace)
    _pid_file(cfg, service.name).unlink(missing_ok=True)
    return pid


def stop(cfg: lab_config.LabConfig, *, out: Callable[[str], object] = print,
         grace: float = 15.0) -> list[str]:
    """Stop every service (JupyterLab first, master last) and sweep up leftover children."""
    # What belongs to the lab is decided before anything stops: a kernel that exits with
    # JupyterLab leaves the processes it started without their parent.
    sessions = _sessions_of(_lab_processes(cfg))
    stopped = []
    for service in reversed(services(cfg)):
        pid = _stop_service(cfg, service, grace)
        if pid is None:
            continue
        stopped.append(service.name)
        out(f"stopped {service.name} (pid {pid})")
    # Kernels run in their own sessions and executors may outlive a killed worker: sweep them.
    leftovers = _lab_processes(cfg, sessions)
    for pid in leftovers:
        _signal(pid, signal.SIGTERM)
    if leftovers and not wait_until(lambda: not _lab_processes(cfg, sessions), grace, 0.2):
        for pid in _lab_processes(cfg, sessions):
            _signal(pid, signal.SIGKILL)
        wait_until(lambda: not _lab_processes(cfg, sessions), 5, 0.1)
    if not _lab_processes(cfg, sessions):
        _sessions_file(cfg).unlink(missing_ok=True)
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
        pid = running_pid(cfg, service.name)
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
    prepare(cfg, spark=role in SPARK_ROLES)
    # `lab health` (the image's HEALTHCHECK) reads which role this container runs.
    (cfg.state_dir / "role").write_text(role)
    service = Service(role, role, index=1)
    argv = service_command(service, cfg)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, service_env(cfg, role))
