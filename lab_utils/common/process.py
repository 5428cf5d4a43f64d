"""Child processes the lab starts, watches and stops: the native services
(:mod:`lab_utils.ops.native`) and private model servers (:mod:`lab_utils.serving.process`);
polling with a deadline (:func:`wait_until`) and reading ``/proc`` (:func:`read_stat`).

Every process starts in a session of its own (``start_new_session``), so that stopping it
stops what it started too (a worker's executors, a server's reloader): signals go to the whole
process group. Output is appended to a log file, never to the caller's terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, NamedTuple


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5, *,
               abort: Callable[[], bool] | None = None) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value.

    ``abort`` (optional) is polled after each false ``predicate``: when it is true the wait
    ends at once, false (a service process that exited will never become healthy). A
    predicate that raises OSError or ValueError (a service not answering yet) counts as false.

    Examples
    --------
    >>> wait_until(lambda: True, timeout=1)
    True
    >>> wait_until(lambda: False, timeout=60, abort=lambda: True)  # returns at once
    False
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline or (abort is not None and abort()):
            return False
        time.sleep(interval)


#: The children :func:`spawn` started that may still run, by pid. They outlive the call that
#: started them (services are tracked by pid files), so their ``Popen`` objects are kept here:
#: dropping one while its child runs is a ``ResourceWarning``, and a child that exits is reaped
#: by the next :func:`reap` instead of staying a zombie for as long as this process lives.
_CHILDREN: dict[int, subprocess.Popen] = {}


def reap() -> list[int]:
    """Collect the exit status of every spawned child that has ended; return their pids."""
    ended = [pid for pid, proc in _CHILDREN.items() if proc.poll() is not None]
    for pid in ended:
        del _CHILDREN[pid]
    return ended


def spawn(argv: Sequence[str], *, log: Path | None, env: dict[str, str] | None = None,
          cwd: Path | None = None, header: str | None = None) -> subprocess.Popen:
    """Start ``argv`` in a new session, stdin closed, stdout and stderr appended to ``log``
    (discarded when ``log`` is None), after a ``header`` line if given. The child is kept in
    :data:`_CHILDREN` until :func:`reap` sees it end."""
    reap()
    sink: contextlib.AbstractContextManager[int | IO[bytes]]
    if log is None:
        sink = contextlib.nullcontext(subprocess.DEVNULL)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        sink = open(log, "ab")  # noqa: SIM115 (closed below; the child keeps its own copy)
    with sink as handle:
        if header and not isinstance(handle, int):  # an int is DEVNULL: no log to write to
            handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n".encode())
            handle.flush()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=handle,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``'s process group (to ``pid`` alone if the group is gone)."""
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def terminate_group(pid: int, gone: Callable[[], bool], *, grace: float = 15.0) -> bool:
    """SIGTERM ``pid``'s group, and SIGKILL it if ``gone()`` is not true within ``grace``
    seconds. Returns whether it had to be killed."""
    signal_group(pid, signal.SIGTERM)
    if wait_until(gone, grace, 0.2):
        return False
    signal_group(pid, signal.SIGKILL)
    wait_until(gone, 5, 0.1)
    return True


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` the lab reads (proc(5) numbers them from 1)."""

    state: str  # field 3: R, S, D, Z (zombie: exited, awaiting reaping), X (dead), ...
    ppid: int  # field 4
    pgrp: int  # field 5
    session: int  # field 6
    utime: int  # field 14, clock ticks in user mode
    stime: int  # field 15, clock ticks in kernel mode
    start_time: str  # field 22, clock ticks after boot: with the pid, it names one process

    @property
    def running(self) -> bool:
        return self.state not in {"Z", "X"}

    @property
    def cpu_seconds(self) -> float:
        return (self.utime + self.stime) / os.sysconf("SC_CLK_TCK")


def read_stat(pid: int | str) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or None when there is no such process (or it is not
    readable). The one place the lab parses it: fields are counted after the ``)`` that ends
    the command name, which may itself contain spaces and parentheses."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return ProcStat(fields[0], int(fields[1]), int(fields[2]), int(fields[3]),
                        int(fields[11]), int(fields[12]), fields[19])
    except (OSError, IndexError, ValueError):
        return None


def start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (clock ticks after boot), or None if it is not running
    (gone, or a zombie: it has exited and only awaits reaping). A pid file holds it beside the
    pid, so a reused pid is not mistaken for the process it once named."""
    stat = read_stat(pid)
    return stat.start_time if stat is not None and stat.running else None


def table() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, session id)}`` of every process, read from ``/proc``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := read_stat(entry.name)) is not None:
            found[int(entry.name)] = (stat.ppid, stat.session)
    return found


def log_tail(path: Path, lines: int = 15, indent: str = "    ") -> str:
    """The last ``lines`` of a log file, indented for an error message ("" if unreadable)."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(indent + line for line in text)
