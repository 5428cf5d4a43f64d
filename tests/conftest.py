"""Shared fixtures. The layout says what each test needs:

* ``unit/``       pure Python, no cluster, no JVM;
* ``spark/``      Spark functions on one ``local[2]`` session (no cluster, one JVM);
* ``cluster/``    a real native standalone cluster (master + 2 workers + history + JupyterLab,
                  authentication on), started once per session by ``lab_cluster``;
* ``browser/``    the lab as a user sees it: Debian's chromium driven by Playwright runs
                  notebook 01 in JupyterLab and reads the Spark UIs;
* ``notebooks/``  every notebook executed against that cluster at smoke size;
* ``packaging/``  the compose file and the Dockerfiles, checked statically.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab_utils import config as lab_config
from lab_utils.common import net
from lab_utils.common.net import free_ports
from lab_utils.ops import lab

ROOT = Path(__file__).resolve().parent.parent

_DIR_MARKERS = {"unit": "unit", "spark": "spark", "cluster": "cluster", "browser": "browser",
                "notebooks": "notebooks", "packaging": "packaging"}


OUTPUT = ROOT / "test-output"
_SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter):
    # Screenshots and other artefacts the tests wrote this run, listed even when every test
    # passes, so a CI log shows where to look (test-output/ is kept, never committed).
    if not OUTPUT.is_dir():
        return
    files = sorted(p for p in OUTPUT.rglob("*") if p.is_file())
    fresh = [p for p in files if p.stat().st_mtime >= _SESSION_START]
    if not fresh:
        return
    terminalreporter.section(f"files written under {OUTPUT.relative_to(ROOT)}/ by this run")
    for path in fresh:
        terminalreporter.write_line(f"{path.relative_to(ROOT)}  {path.stat().st_size:,} bytes")
    if len(files) > len(fresh):
        older = len(files) - len(fresh)
        terminalreporter.write_line(f"(and {older} older files from earlier runs)")


def pytest_collection_modifyitems(items):
    # The folder decides the marker, so `-m unit` and friends select exactly one layer.
    for item in items:
        layer = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if layer in _DIR_MARKERS:
            item.add_marker(getattr(pytest.mark, _DIR_MARKERS[layer]))


def lab_env(tmp: Path, workers: int = 2, **extra: str) -> dict[str, str]:
    """Environment for a private native lab: own state, own share folder, own ports and secrets.

    It never touches a lab the developer may have running with `make lab`, nor the tracked
    notebooks: its JupyterLab serves a copy of them (a browser run may save outputs there),
    with its own JupyterLab settings, workspaces and Jupyter data folder instead of the
    developer's.
    """
    notebooks = tmp / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = tmp / "jupyterlab" / "settings"
    # No "get Jupyter news?" prompt over the browser tests' screenshots (it would fetch nothing).
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text('{"fetchNews": "false"}\n')
    ports = free_ports(5 + workers)
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("LAB_") or k in {"SPARK_MASTER_URL", "SPARK_AUTH_SECRET",
                                                 "JUPYTER_TOKEN", "SPARK_LOCAL_IP"})}
    env.update(
        LAB_ROOT=str(ROOT),
        LAB_STATE_DIR=str(tmp / "state"),
        LAB_SHARE_DIR=str(tmp / "share_storages"),
        LAB_NOTEBOOKS_DIR=str(notebooks),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "jupyterlab" / "workspaces"),
        # Jupyter's per-user data (the notebook signature database a save writes) stays in the
        # test folder too, not in the home directory of whoever runs the tests.
        JUPYTER_DATA_DIR=str(tmp / "jupyter-data"),
        LAB_MASTER_PORT=str(ports[0]),
        LAB_MASTER_UI_PORT=str(ports[1]),
        LAB_HISTORY_PORT=str(ports[2]),
        LAB_JUPYTER_PORT=str(ports[3]),
        LAB_MODEL_SERVER_PORT=str(ports[4]),
        LAB_WORKER_UI_PORT=str(ports[5]),
        LAB_WORKERS=str(workers),
        LAB_WORKER_MEMORY="2g",
        LAB_START_TIMEOUT="120",
        LAB_SMOKE="1",
        # Every test session's driver JVM compiles with C1 only: on 2 cores C2's compiler thread
        # competes with everything while a session starts (get_spark: ~9 s instead of ~15 s,
        # measured side by side; driver-side Arrow conversions of 1M rows ~35% slower, which
        # no test times). Executors and the lab's services keep the JVM's defaults.
        LAB_DRIVER_JAVA_OPTIONS="-XX:TieredStopAtLevel=1",
        SPARK_AUTH_SECRET=secrets.token_urlsafe(24),
        JUPYTER_TOKEN=secrets.token_urlsafe(24),
    )
    env.update(extra)
    if workers > 1:
        # Worker UI ports count up from LAB_WORKER_UI_PORT: make sure the next ones are free too.
        base = int(env["LAB_WORKER_UI_PORT"])
        if not all(net.port_free("127.0.0.1", base + i) for i in range(workers)):
            env["LAB_WORKER_UI_PORT"] = str(free_ports(1)[0])
    return env


class LabCluster:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.cfg = lab_config.load(env)
        self.urls: dict[str, str] = {}


@pytest.fixture(scope="session")
def lab_cluster(tmp_path_factory) -> Iterator[LabCluster]:
    """The real native lab (as `make lab` starts it), private to this test session.

    The process environment points at it while tests run, like a notebook kernel's does.
    """
    env = lab_env(tmp_path_factory.mktemp("lab"))
    cluster = LabCluster(env)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        cluster.urls = lab.start(cluster.cfg, out=lambda *_: None)
        os.environ.update(lab.service_env(cluster.cfg))
        yield cluster
    finally:
        lab.stop(cluster.cfg, out=lambda *_: None)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def spark(lab_cluster):
    """A SparkSession on the test cluster, made by the lab's own session helper."""
    from lab_utils.session import get_spark

    session = get_spark("pytest", quiet=True)
    yield session
    session.stop()
