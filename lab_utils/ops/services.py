"""The lab's services as data: which roles exist, the command and environment each runs with,
the generated Spark configuration (with the cluster's secret), the checks before anything
starts (Java, Spark, the Jupyter token) and the health probe of each role.

:mod:`lab_utils.ops.native` starts, stops and watches them; a container runs one of them with
``lab run ROLE`` through the same :func:`service_command`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_utils import config as lab_config
from lab_utils.common.atomic import atomic_write_text
from lab_utils.common.net import http_json
from lab_utils.common.spark_conf import CONNECT_SERVER_APP, connect_server_conf
from lab_utils.errors import LabError

ROLES = ("master", "worker", "history", "connect", "model-server", "jupyter")
#: Roles that run a Spark JVM (they need Java and the generated Spark conf with the secret).
SPARK_ROLES = ("master", "worker", "history", "connect")
#: The Spark Connect server's main class (``sbin/start-connect-server.sh`` runs the same, as a
#: daemon; the lab runs it in the foreground, like its other services).
#: The Spark daemons proper: bookkeeping JVMs that get LAB_DAEMON_JAVA_OPTIONS.
DAEMON_ROLES = ("master", "worker", "history")
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
SHARE_SUBDIRS = ("data", "models", "output", "spark-events")
SPARKMONITOR_KERNEL_CONFIG = (
    "c.InteractiveShellApp.extensions.append('sparkmonitor.kernelextension')\n"
)


class LaunchError(LabError, RuntimeError):
    """The native lab cannot start, stop or run a role as asked; the message says how to fix it."""


# --------------------------------------------------------------------------- environment checks


def spark_home() -> Path:
    """The Spark runtime shipped inside the pyspark wheel (``bin/spark-class`` and the jars)."""
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise LaunchError(
            "pyspark is not installed in this Python: run `make venv` (or `make lab`)")
    home = Path(spec.origin).parent
    if not (home / "bin" / "spark-class").is_file():
        raise LaunchError(f"{home} has no bin/spark-class: reinstall pyspark with `make venv`")
    return home


def java_version(java: str | None = None) -> tuple[int, str]:
    """(major version, path) of the Java that Spark will use; LaunchError if it is unusable."""
    if java is None:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise LaunchError(
            "Java not found: Spark needs Java 17 or newer. Install it "
            "(Debian/Ubuntu: `sudo apt-get install openjdk-17-jre-headless`, macOS: "
            "`brew install openjdk@17`) or set JAVA_HOME to a JDK 17+."
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    text = out.stderr + out.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise LaunchError(
            f"could not read the Java version from `{java} -version`: {text.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_292" style
        major = int(match.group(2))
    if major < 17:
        raise LaunchError(
            f"Java {major} found at {java}, but Spark 4 needs Java 17 or newer: install "
            "openjdk-17-jre-headless (or newer) and put it first on PATH, or set JAVA_HOME to it."
        )
    return major, java


def resolve_host(host: str) -> str:
    """``auto`` means this machine's own address (containers advertise their IP)."""
    if host == "auto":
        return socket.gethostbyname(socket.gethostname())
    return host


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Service:
    name: str  # master, worker-1, ..., history, model-server, jupyter
    role: str
    index: int = 0
    ports: tuple[tuple[int, str], ...] = ()


def services(cfg: lab_config.LabConfig) -> list[Service]:
    """The native lab's services in start order."""
    items = [Service("master", "master", ports=((cfg.master_port, "LAB_MASTER_PORT"),
                                               (cfg.master_ui_port, "LAB_MASTER_UI_PORT")))]
    for i in range(1, cfg.workers + 1):
        ui_port = cfg.worker_ui_port + i - 1
        items.append(Service(f"worker-{i}", "worker", i, ((ui_port, "LAB_WORKER_UI_PORT"),)))
    items.append(Service("history", "history", ports=((cfg.history_port, "LAB_HISTORY_PORT"),)))
    items.append(Service("connect", "connect",
                         ports=((cfg.connect_port, "LAB_CONNECT_PORT"),
                                (cfg.connect_ui_port, "LAB_CONNECT_UI_PORT"))))
    items.append(Service("model-server", "model-server",
                         ports=((cfg.model_server_port, "LAB_MODEL_SERVER_PORT"),)))
    items.append(Service("jupyter", "jupyter", ports=((cfg.jupyter_port, "LAB_JUPYTER_PORT"),)))
    return items


def spark_conf_path(cfg: lab_config.LabConfig) -> Path:
    return cfg.state_dir / "conf" / "spark-defaults.conf"


def connect_conf_path(cfg: lab_config.LabConfig) -> Path:
    return cfg.state_dir / "conf" / "spark-connect.conf"


def _write_properties(path: Path, lines: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "# Generated by lab_utils.ops.services on every start: edit .env, not this file.\n"
    body += "".join(f"{key} {value}\n" for key, value in lines.items())
    return atomic_write_text(path, body, mode=0o600)  # it holds the cluster's secret


def write_connect_conf(cfg: lab_config.LabConfig) -> Path:
    """Write the Spark Connect server's properties file (0600: the cluster's secret and the
    server's token are in it, so neither is on a command line nor in a log).

    The server is one Spark application on the lab's master with the lab's session settings
    (:func:`lab_utils.common.spark_conf.connect_server_conf`), listening on ``LAB_HOST``.
    """
    if not cfg.connect_token:
        raise LaunchError("SPARK_CONNECT_AUTHENTICATE_TOKEN is not set: run `make env` (or "
                          "`make lab`) to add it to .env; the lab never runs a Connect server "
                          "without a token")
    host = resolve_host(cfg.host)
    master = cfg.master_url or f"spark://{host}:{cfg.master_port}"
    lines = connect_server_conf(cfg, master)
    lines["spark.connect.grpc.binding.address"] = host
    if host in {"0.0.0.0", "::"} and not cfg.driver_host:
        lines.pop("spark.driver.host", None)
    return _write_properties(connect_conf_path(cfg), lines)


def write_spark_conf(cfg: lab_config.LabConfig) -> Path:
    """Write the daemons' properties file (0600: it holds the authentication secret).

    Passing the secret in a file keeps it off command lines (``ps``) and out of launch logs.
    """
    if not cfg.auth_secret:
        raise LaunchError(
            "SPARK_AUTH_SECRET is not set: run `make env` (or `make lab`) to generate .env"
        )
    events = cfg.events_dir.as_uri()
    lines = {
        "spark.authenticate": "true",
        "spark.authenticate.secret": cfg.auth_secret,
        # The REST submission server has no authentication; Spark refuses it with a secret set.
        "spark.master.rest.enabled": "false",
        # Apps that do not set spark.cores.max (e.g. a bare spark-submit) get the lab's cap too.
        "spark.deploy.defaultCores": str(cfg.app_cores_max),
        "spark.worker.cleanup.enabled": "true",
        # The master's and workers' UIs have no login; with kill on, any local process could
        # post /app/kill/ (the CSRF token is on the same page). LAB_UI_KILL=1 turns it back on.
        "spark.ui.killEnabled": "true" if cfg.ui_kill else "false",
        "spark.history.fs.logDirectory": events,
        "spark.history.fs.update.interval": "5s",
        "spark.history.ui.port": str(cfg.history_port),
    }
    return _write_properties(spark_conf_path(cfg), lines)


#: The secrets a role's environment may carry, as a value or as a ``NAME_FILE`` file name.
#: JupyterLab gets both: its kernels are Spark drivers. The Spark daemons read the cluster's
#: secret from their properties file (:func:`write_spark_conf`), and a worker hands it to its
#: executors itself; every Spark task inherits a worker's environment, so a token there would
#: let any task drive JupyterLab's terminals. The model server needs neither. The Connect
#: server reads its secret and its token from its own properties file (:func:`write_connect_conf`):
#: Python it starts on the driver (a data source's planning, a UDTF's analysis) sees neither.
#: Kernels get the Connect token: they are the Connect server's clients.
ROLE_SECRETS: dict[str, tuple[str, ...]] = {
    "master": (), "worker": (), "history": (), "connect": (), "model-server": (),
    "jupyter": ("SPARK_AUTH_SECRET", "JUPYTER_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN"),
}
SECRETS = ("SPARK_AUTH_SECRET", "JUPYTER_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN")


def service_env(cfg: lab_config.LabConfig, role: str) -> dict[str, str]:
    """Environment of one role's service and, for ``jupyter``, of every notebook kernel.

    Every role gets the lab's settings; each gets only the secrets :data:`ROLE_SECRETS` names.
    Tests and scripts that run a driver of their own ask for ``jupyter``'s, as a kernel has.
    """
    if role not in ROLE_SECRETS:
        raise LaunchError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    # The lab's own variables come from cfg alone, never half from a stale environment.
    env = {k: v for k, v in os.environ.items() if k not in lab_config.VARIABLES}
    env.update(lab_config.to_env(cfg))
    for name in SECRETS:
        if name not in ROLE_SECRETS[role]:
            env.pop(name, None)
            env.pop(f"{name}_FILE", None)
    host = resolve_host(cfg.host)
    env.update(
        SPARK_HOME=str(spark_home()),
        # Driver and executors run the very same interpreter (and so the same libraries).
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_MASTER_URL=cfg.master_url or f"spark://{host}:{cfg.master_port}",
        # Marks every process of this lab (inherited by executors and kernels) for `lab stop`.
        LAB_INSTANCE=str(cfg.state_dir),
        IPYTHONDIR=str(cfg.state_dir / "ipython"),
        JUPYTER_RUNTIME_DIR=str(cfg.state_dir / "jupyter-runtime"),
    )
    if role in DAEMON_ROLES and cfg.daemon_java_options:
        # Spark's launcher gives SPARK_DAEMON_JAVA_OPTS to these daemons only (not executors);
        # the user's own setting comes first and the lab's options are added after it. Not to
        # the Connect server (the launcher would pass them on): it is a driver that plans every
        # query and converts every result, so it runs with LAB_DRIVER_JAVA_OPTIONS, as a classic
        # session's driver does (spark.driver.extraJavaOptions in its properties file).
        own = env.get("SPARK_DAEMON_JAVA_OPTS", "").strip()
        env["SPARK_DAEMON_JAVA_OPTS"] = f"{own} {cfg.daemon_java_options}".strip()
    # TensorFlow's INFO lines (oneDNN, CUDA probing) flood executor logs and notebook output.
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if host not in {"0.0.0.0", "::"}:
        # Web UIs bind to all interfaces unless told otherwise; keep them on LAB_HOST.
        env["SPARK_LOCAL_IP"] = host
    return env


def service_command(service: Service, cfg: lab_config.LabConfig) -> list[str]:
    """The argv that runs ``service``; native mode and containers both use it."""
    host = resolve_host(cfg.host)
    spark_class = str(spark_home() / "bin" / "spark-class")
    props = ["--properties-file", str(spark_conf_path(cfg))]
    if service.role == "master":
        return [spark_class, "org.apache.spark.deploy.master.Master", "--host", host,
                "--port", str(cfg.master_port), "--webui-port", str(cfg.master_ui_port), *props]
    if service.role == "worker":
        ui_port = cfg.worker_ui_port + max(service.index, 1) - 1
        work_dir = cfg.state_dir / "work" / service.name
        master = cfg.master_url or f"spark://{host}:{cfg.master_port}"
        return [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", host,
                "--cores", str(cfg.worker_cores), "--memory", cfg.worker_memory,
                "--webui-port", str(ui_port), "--work-dir", str(work_dir), *props]
    if service.role == "history":
        return [spark_class, "org.apache.spark.deploy.history.HistoryServer", *props]
    if service.role == "connect":
        # A Spark application in the foreground (spark-submit with no jar: SparkSubmit knows
        # this class), configured by its own properties file only.
        return [str(spark_home() / "bin" / "spark-submit"), "--class", CONNECT_SERVER_CLASS,
                "--name", CONNECT_SERVER_APP, "--properties-file", str(connect_conf_path(cfg))]
    if service.role == "model-server":
        # Serves share_storages/models/<name>/ over TF Serving's REST API; no fault injection.
        return [sys.executable, "-m", "lab_utils.serving", "--host", host,
                "--port", str(cfg.model_server_port), "--models-dir",
                str(cfg.share_dir / "models")]
    if service.role == "jupyter":
        # The token comes from JUPYTER_TOKEN in the environment, never from the command line;
        # and it is written to no file others may read (_load_jupyter_server_extension).
        argv = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ip={host}",
                f"--port={cfg.jupyter_port}", f"--ServerApp.root_dir={cfg.notebooks_dir}",
                "--ServerApp.port_retries=0",
                f"--ServerApp.jpserver_extensions={JUPYTER_EXTENSION}=True"]
        if host in {"0.0.0.0", "::"}:
            argv.append("--ServerApp.allow_remote_access=True")  # container: reached via Docker
        if os.geteuid() == 0:
            # CI and some native setups run as root; the images never do (they run as `lab`).
            argv.append("--allow-root")
        return argv
    raise LaunchError(f"unknown role {service.role!r}: expected one of {', '.join(ROLES)}")


#: This module, loaded by JupyterLab as a server extension (:func:`service_command`).
JUPYTER_EXTENSION = __name__


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Jupyter Server calls this at start-up (``--ServerApp.jpserver_extensions``): write no
    ``jpserver-<pid>-open.html``.

    That file, for a browser the server would open itself (``--no-browser`` opens none), holds
    the URL with the token, written mode 0644 whatever the umask of the lab's other files; only
    its 0700 runtime folder keeps other users out. ``no_browser_open_file`` is the server's own
    switch for it, but not a configurable one, so it is set here. ``use_redirect_file=False``
    only changes the URL given to that browser: the file is written all the same.
    """
    serverapp.no_browser_open_file = True


def require_token(cfg: lab_config.LabConfig) -> None:
    """JupyterLab never starts without a token."""
    if not cfg.jupyter_token:
        raise LaunchError(
            "JUPYTER_TOKEN is not set: run `make env` (or `make lab`) to generate .env")


def prepare(cfg: lab_config.LabConfig, *, spark: bool = True, connect: bool = False) -> None:
    """Create the folders and generated files every service expects (idempotent).

    ``spark=False`` (the model server's container) skips the Spark conf, which needs the secret
    that service neither has nor needs; ``connect=True`` also writes the Connect server's
    properties (it needs the Connect token as well).
    """
    for sub in SHARE_SUBDIRS:
        (cfg.share_dir / sub).mkdir(parents=True, exist_ok=True)
    (cfg.state_dir / "logs").mkdir(parents=True, exist_ok=True)
    (cfg.state_dir / "pids").mkdir(parents=True, exist_ok=True)
    if spark:
        write_spark_conf(cfg)
    if connect:
        write_connect_conf(cfg)
    # Load sparkmonitor's kernel extension in every kernel, so its live job view is ready
    # before the first cell runs; lab_utils.session then attaches the listener.
    profile = cfg.state_dir / "ipython" / "profile_default"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "ipython_kernel_config.py").write_text(SPARKMONITOR_KERNEL_CONFIG)


# --------------------------------------------------------------------------- health probes


def master_state(cfg: lab_config.LabConfig, timeout: float = 3.0) -> dict:
    """The master's JSON status page (workers, cores, running applications)."""
    return http_json(f"http://{resolve_host(cfg.host)}:{cfg.master_ui_port}/json/",
                     timeout=timeout)


def alive_workers(cfg: lab_config.LabConfig) -> int:
    state = master_state(cfg)
    return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")


def healthy(service: Service, cfg: lab_config.LabConfig) -> bool:
    """True when ``service`` answers on its port the way a ready service does."""
    host = resolve_host(cfg.host)
    probe = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    try:
        if service.role == "master":
            return master_state(cfg).get("status") == "ALIVE"
        if service.role == "worker":
            port = cfg.worker_ui_port + max(service.index, 1) - 1
            worker = http_json(f"http://{probe}:{port}/json/")
            return bool(worker.get("masterurl")) and worker.get("cores", 0) > 0
        if service.role == "history":
            http_json(f"http://{probe}:{cfg.history_port}/api/v1/applications")
            return True
        if service.role == "connect":
            # The gRPC port opens once the server's SparkContext is up: ready for sessions.
            # Its application's UI answering as well tells it from another process's port.
            with socket.create_connection((probe, cfg.connect_port), timeout=3):
                pass
            http_json(f"http://{probe}:{cfg.connect_ui_port}/api/v1/applications")
            return True
        if service.role == "model-server":
            found = http_json(f"http://{probe}:{cfg.model_server_port}/healthz")
            return found.get("status") == "ok"
        if service.role == "jupyter":
            return "version" in http_json(f"http://{probe}:{cfg.jupyter_port}/api")
    except (OSError, ValueError):
        return False
    return False
