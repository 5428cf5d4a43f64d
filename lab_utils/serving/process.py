"""A model server in a child process: for the tests, notebook 08 and ``make bench``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from lab_utils.common import process
from lab_utils.common.net import free_port, http_json
from lab_utils.errors import LabError
from lab_utils.serving.faults import Faults


class ModelServerStartError(LabError, RuntimeError):
    """The model server's child process exited, or did not answer ``/healthz`` in time; the
    message ends with its log's last lines."""


def server_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when a lab model server answers ``/healthz`` at ``url``."""
    try:
        return http_json(f"{url.rstrip('/')}/healthz", timeout).get("status") == "ok"
    except (OSError, ValueError, AttributeError):
        return False


class ServerProcess:
    """A model server in a child process (tests, notebook 08, ``make bench``).

    Use :func:`launch` to start one; ``stop()`` (or ``with``) ends it, ``kill()`` simulates a
    crash and ``restart()`` starts it again on the same port with the same options.
    """

    def __init__(self, argv: list[str], url: str, log_file: Path | None, env: dict[str, str]):
        self.argv, self.url, self.log_file, self.env = argv, url, log_file, env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> ServerProcess:
        proc = self.proc = process.spawn(self.argv, log=self.log_file, env=self.env)
        exited = lambda: proc.poll() is not None  # noqa: E731 (a predicate, used twice)
        if not process.wait_until(lambda: server_healthy(self.url, timeout=1.0), timeout, 0.2,
                                  abort=exited):
            state = "exited" if exited() else f"not healthy in {timeout}s"
            self.stop()
            tail = process.log_tail(self.log_file, indent="") if self.log_file else ""
            raise ModelServerStartError(f"model server {self.url} {state}: "
                                        f"{' '.join(self.argv)}\n{tail}")
        return self

    def _live(self) -> subprocess.Popen | None:
        """The child while it runs, else None."""
        proc = self.proc
        return proc if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._live() is not None

    def stats(self) -> dict:
        return http_json(f"{self.url}/stats")

    def kill(self) -> None:
        """SIGKILL, like a crash: in-flight requests get their connections reset."""
        proc = self._live()
        if proc is not None:
            process.signal_group(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self, grace: float = 10.0) -> None:
        proc = self._live()
        if proc is None:
            return
        process.terminate_group(proc.pid, lambda: proc.poll() is not None, grace=grace)

    def restart(self, timeout: float = 90.0) -> ServerProcess:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch(models_dir: Path | str | None = None, *, port: int | None = None,
           host: str | None = None, advertise: str | None = None, faults: Faults | None = None,
           log_file: Path | str | None = None, timeout: float = 90.0,
           concurrency: int | None = None, queue: int | None = None,
           parse_in: str | None = None) -> ServerProcess:
    """Start a model server in a child process and wait until it answers.

    Parameters
    ----------
    models_dir : Path or str, optional
        Default: the lab's ``share_storages/models``.
    port : int, optional
        Default: a free port.
    host : str, optional
        Address to bind; default the lab's ``LAB_HOST`` (127.0.0.1 natively; 0.0.0.0 in the
        JupyterLab container, so executors in other containers can reach it).
    advertise : str, optional
        Host name executors use in the URL; default ``LAB_DRIVER_HOST`` if set (containers),
        else the bound address.
    faults : Faults, optional
        Faults to inject (default none).
    log_file : Path or str, optional
        Where the server's output goes (default: discarded).
    concurrency, queue : int, optional
        Predicts parsed and run at once, and waiting beyond those (the server's
        ``--concurrency`` and ``--queue``; default: its own, the cores and 16).
    parse_in : str, optional
        The server's ``--parse-in``: ``processes`` (its default) or ``threads``.
    """
    from lab_utils import config as lab_config

    cfg = lab_config.load()
    models_dir = Path(models_dir) if models_dir else cfg.share_dir / "models"
    host = host or cfg.host
    port = port or free_port("127.0.0.1" if host in {"0.0.0.0", "::"} else host)
    where = advertise or cfg.driver_host or ("127.0.0.1" if host in {"0.0.0.0", "::"} else host)
    faults = faults or Faults()
    argv = [sys.executable, "-m", "lab_utils.serving", "--host", host, "--port", str(port),
            "--models-dir", str(models_dir), "--fail-rate", str(faults.fail_rate),
            "--delay", str(faults.delay), "--delay-rate", str(faults.delay_rate),
            "--seed", str(faults.seed)]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    if queue is not None:
        argv += ["--queue", str(queue)]
    if parse_in is not None:
        argv += ["--parse-in", parse_in]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return ServerProcess(argv, f"http://{where}:{port}", Path(log_file) if log_file else None,
                         env).start(timeout)
