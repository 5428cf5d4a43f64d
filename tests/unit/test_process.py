"""common.process: children in their own session, logs appended, groups stopped for good."""

import os
import subprocess
import sys
import time

from lab_utils.common import process


def test_spawn_appends_to_the_log_after_a_header(tmp_path):
    log = tmp_path / "logs" / "svc.log"
    for word in ("one", "two"):
        proc = process.spawn([sys.executable, "-c", f"print('{word}')"], log=log,
                             header=f"starting {word}")
        assert proc.wait(30) == 0
    text = log.read_text()
    assert text.index("starting one") < text.index("one\n") < text.index("starting two")
    assert process.log_tail(log, 1) == "    two"
    assert process.log_tail(tmp_path / "missing.log") == ""


def test_terminate_group_stops_children_and_kills_what_ignores_sigterm(tmp_path):
    # A parent that ignores SIGTERM, with a child: both are in the group and both must go.
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
            "print(child.pid, flush=True); time.sleep(120)")
    log = tmp_path / "stubborn.log"
    proc = process.spawn([sys.executable, "-c", code], log=log)
    assert process.wait_until(lambda: log.read_text().strip(), 30, 0.1)
    child = int(log.read_text().split()[0])
    killed = process.terminate_group(proc.pid, lambda: proc.poll() is not None, grace=1.0)
    assert killed is True and proc.returncode == -9
    assert process.wait_until(lambda: not _alive(child), 10, 0.1)

    polite = process.spawn([sys.executable, "-c", "import time; time.sleep(120)"], log=None)
    assert process.terminate_group(polite.pid, lambda: polite.poll() is not None) is False
    assert polite.returncode == -15


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_wait_until_stops_at_once_when_abort_is_true():
    checks = []
    began = time.monotonic()
    assert not process.wait_until(lambda: checks.append(1) and False, 30, 0.05,
                                  abort=lambda: len(checks) >= 3)
    assert len(checks) == 3
    assert time.monotonic() - began < 5  # not the 30 s timeout


def test_read_stat_names_this_process_and_nothing_for_a_gone_one():
    me = process.read_stat(os.getpid())
    assert me is not None and me.running
    assert me.ppid == os.getppid() and me.session == os.getsid(0) and me.pgrp == os.getpgrp()
    assert me.cpu_seconds > 0
    assert process.start_time(os.getpid()) == me.start_time
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert process.read_stat(gone.pid) is None
    assert process.start_time(gone.pid) is None


def test_start_time_is_none_for_a_zombie():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert process.wait_until(lambda: process.read_stat(child.pid).state == "Z", 30, 0.05)
    assert process.read_stat(child.pid) is not None  # still listed, not yet reaped
    assert process.start_time(child.pid) is None
    child.wait()
