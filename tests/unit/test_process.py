"""common.process: children in their own session, logs appended, groups stopped for good."""

import sys

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
