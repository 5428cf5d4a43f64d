"""Private native labs for the tests: their environment (own folders, ports, secrets) and the
handle the ``lab_cluster`` fixture yields."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from lab_utils import config as lab_config
from lab_utils.common import net
from lab_utils.common.net import free_ports

ROOT = Path(__file__).resolve().parents[2]


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
    ports = free_ports(7 + workers)
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("LAB_") or k in {"SPARK_MASTER_URL", "SPARK_AUTH_SECRET",
                                                 "JUPYTER_TOKEN", "SPARK_LOCAL_IP",
                                                 "SPARK_CONNECT_AUTHENTICATE_TOKEN",
                                                 "SPARK_REMOTE"})}
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
        LAB_CONNECT_PORT=str(ports[5]),
        LAB_CONNECT_UI_PORT=str(ports[6]),
        LAB_WORKER_UI_PORT=str(ports[7]),
        # The Connect server gives idle executors back after a minute (two by default): the
        # classic applications of the next test or notebook get their cores sooner.
        LAB_CONNECT_IDLE_TIMEOUT="60",
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
        SPARK_CONNECT_AUTHENTICATE_TOKEN=secrets.token_urlsafe(24),
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
