"""Which processes belong to the native lab: pid files, the sessions its services started,
and the sweep that finds a lab's leftover processes (kernels, drivers, executors).

A pid file holds the pid and the process's kernel start time, so a pid the kernel reused for
another process is never mistaken for the service (:func:`running_pid`).
"""

from __future__ import annotations

import os
from pathlib import Path

from lab_utils import config as lab_config
from lab_utils.common import process
from lab_utils.common.process import start_time


def pid_file(cfg: lab_config.LabConfig, name: str) -> Path:
    return cfg.state_dir / "pids" / f"{name}.pid"


def running_pid(cfg: lab_config.LabConfig, name: str) -> int | None:
    """The pid of a running service, or None; a stale pid file (dead or reused pid) is removed."""
    path = pid_file(cfg, name)
    try:
        pid_text, started = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    if start_time(pid) != started:
        path.unlink(missing_ok=True)  # stale: the process died or the pid now belongs to another
        return None
    return pid


def sessions_file(cfg: lab_config.LabConfig) -> Path:
    return cfg.state_dir / "pids" / "sessions"


def record(cfg: lab_config.LabConfig, name: str, pid: int) -> None:
    """Write ``name``'s pid file and remember its session (a service starts one: its pid) until
    ``lab stop``: executors that outlive a killed worker are still in that session."""
    line = f"{pid} {start_time(pid)}\n"
    pid_file(cfg, name).write_text(line)
    with open(sessions_file(cfg), "a") as handle:
        handle.write(f"{name} {line}")


def recorded_sessions(cfg: lab_config.LabConfig) -> dict[int, str]:
    """``{session id: service name}`` of the services this lab started, still valid: the
    leader still runs, or it is gone (Linux reuses no pid while its session has members)."""
    found: dict[int, str] = {}
    try:
        lines = sessions_file(cfg).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            name, pid, started = line.split()
        except ValueError:
            continue
        if start_time(int(pid)) in {started, None}:
            found[int(pid)] = name
    return found


def lab_processes(cfg: lab_config.LabConfig, sessions: set[int] | None = None) -> list[int]:
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
    wanted = set(sessions or ()) | set(recorded := recorded_sessions(cfg))
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


def sessions_of(pids: list[int]) -> set[int]:
    procs = process.table()
    return {procs[pid][1] for pid in pids if pid in procs}
