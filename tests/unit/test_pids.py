"""Pid files that name one process, even after its pid is reused (:mod:`lab_utils.ops.pids`)."""

import os
import subprocess
import sys

from lab_utils import config
from lab_utils.common import process
from lab_utils.ops import pids


def make_cfg(tmp_path, **extra):
    env = {"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET": "top-secret", "JUPYTER_TOKEN": "tok"}
    env.update(extra)
    return config.load(env)


def test_stale_pid_files_are_removed(tmp_path):
    cfg = make_cfg(tmp_path)
    folder = cfg.state_dir / "pids"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / "master.pid").write_text(f"{dead.pid} 12345\n")   # process gone
    (folder / "history.pid").write_text("garbage\n")             # unreadable
    (folder / "jupyter.pid").write_text(f"{os.getpid()} 1\n")    # pid reused by another process
    for name in ("master", "history", "jupyter"):
        assert pids.running_pid(cfg, name) is None
        assert not (folder / f"{name}.pid").exists()


def test_live_pid_file_is_recognised(tmp_path):
    cfg = make_cfg(tmp_path)
    (cfg.state_dir / "pids").mkdir(parents=True)
    (cfg.state_dir / "pids" / "master.pid").write_text(
        f"{os.getpid()} {process.start_time(os.getpid())}\n")
    assert pids.running_pid(cfg, "master") == os.getpid()
