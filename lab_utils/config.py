"""The lab's configuration: every environment variable the lab reads, read in one place.

``load()`` returns a frozen :class:`LabConfig` built from ``os.environ`` (or a mapping given
for tests). Importing this module has no side effects: no directories are created, no ``.env``
file is read and no logging is configured. The native launcher (``lab_utils.ops.native``) is what
loads ``.env`` into the environment before it starts services.

Defaults match the native lab started by ``make lab``; the Docker images set the same
variables to the paths they mount.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lab_utils.errors import LabError

#: The daemons (master, workers, history server) do bookkeeping, not data work: the C1 JIT alone
#: and one GC thread halve the CPU their start costs (about 18 of 33 CPU-seconds of `make lab` on
#: 2 cores), which is most of the lab's start time where cores are few.
DEFAULT_DAEMON_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

#: Environment variables and what they mean; the README's configuration table mirrors this.
VARIABLES: dict[str, str] = {
    "SPARK_MASTER_URL": "Spark master to connect to (spark://host:port); unset: the native lab "
    "if it is running, else local[*]",
    "SPARK_AUTH_SECRET": "shared secret for spark.authenticate (generated into .env)",
    "SPARK_AUTH_SECRET_FILE": "file holding that secret, read when SPARK_AUTH_SECRET is unset "
    "(containers: a compose secret, so `docker inspect` never shows it)",
    "SPARK_CONNECT_AUTHENTICATE_TOKEN": "token of the lab's Spark Connect server (generated into "
    ".env; Spark's own variable, so a plain PySpark client in a lab kernel finds it too)",
    "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE": "file holding that token, read when "
    "SPARK_CONNECT_AUTHENTICATE_TOKEN is unset (containers)",
    "LAB_SPARK_API": "'classic' (default: a driver JVM in the notebook's process) or 'connect' "
    "(get_spark returns a Spark Connect session on the lab's Connect server, or LAB_SPARK_REMOTE)",
    "LAB_SPARK_REMOTE": "Spark Connect endpoint (sc://host:port) for get_spark in connect mode "
    "(default: the lab's server, sc://localhost:LAB_CONNECT_PORT); its token from "
    "SPARK_CONNECT_AUTHENTICATE_TOKEN",
    "LAB_CONNECT_PORT": "the lab's Spark Connect server's gRPC port (15002)",
    "LAB_CONNECT_UI_PORT": "the Spark UI port of the Connect server's application (4050)",
    "LAB_CONNECT_IDLE_TIMEOUT": "seconds the Connect server's application keeps an idle executor "
    "(dynamic allocation; 120): it frees the cores for classic sessions between queries",
    "JUPYTER_TOKEN": "JupyterLab token (generated into .env)",
    "JUPYTER_TOKEN_FILE": "file holding the token, read when JUPYTER_TOKEN is unset (containers)",
    "LAB_UID": "uid the Docker lab's services run as (`make env`: the checkout's owner, or 1000 "
    "when that is root); files they write in share_storages/ belong to it",
    "LAB_GID": "gid the Docker lab's services run as (like LAB_UID)",
    # Read on the host by compose and `make docker-*` (lab_utils.ops.docker) only, never by a
    # service: the Docker lab's images, mounts, published ports and limits.
    "LAB_IMAGE_TAG": "tag of the two images the Docker lab builds and runs, spark-dl-lab/spark "
    "and spark-dl-lab/jupyterlab (latest)",
    "LAB_SHARE_HOST_DIR": "host folder the Docker lab mounts as /lab/share_storages in every "
    "container (default: share_storages/ in the checkout; `make docker-up` creates its folders)",
    "LAB_NOTEBOOKS_HOST_DIR": "host folder the Docker lab's JupyterLab mounts as /lab/notebooks "
    "(default: notebooks/ in the checkout)",
    "LAB_SECRETS_DIR": "host folder of the secret files compose mounts (default: .lab/secrets in "
    "the checkout; `make env` and `make docker-up` write them from .env, mode 0600)",
    "LAB_DRIVER_UI_PORT_LAST": "last port of the block of driver Spark UI ports the Docker lab "
    "publishes, from LAB_DRIVER_UI_PORT (4043: four notebooks at once); set both together",
    "LAB_WORKER_MEM_LIMIT": "memory limit of each Docker worker container (compose mem_limit, "
    "6g): its JVM, executors and Python workers with TensorFlow, which lives outside the "
    "executor heap, so keep it above LAB_WORKER_MEMORY",
    "LAB_ROOT": "project root (default: the checkout that holds lab_utils, else the cwd)",
    "LAB_SHARE_DIR": "shared storage folder (default: <root>/share_storages)",
    "LAB_STATE_DIR": "pid files, logs and generated Spark conf of the native lab "
    "(default: <root>/.lab)",
    "LAB_NOTEBOOKS_DIR": "folder JupyterLab opens and saves notebooks in (default: "
    "<root>/notebooks; the browser test points it at a copy)",
    "LAB_HOST": "address services bind and advertise (default 127.0.0.1; 'auto' = this "
    "host's IP, used by containers)",
    "LAB_MASTER_PORT": "Spark master RPC port (7077)",
    "LAB_MASTER_UI_PORT": "Spark master web UI port (8080)",
    "LAB_WORKERS": "number of native workers (2)",
    "LAB_WORKER_CORES": "cores each worker offers (default: this machine's cores)",
    "LAB_WORKER_MEMORY": "memory each worker offers (4g)",
    "LAB_WORKER_UI_PORT": "first worker web UI port, the next workers count up (8081)",
    "LAB_HISTORY_PORT": "Spark History Server port (18080)",
    "LAB_JUPYTER_PORT": "JupyterLab port (8888)",
    "LAB_MODEL_SERVER_PORT": "the lab's model server (TF Serving REST API) port (8501)",
    "LAB_MODEL_SERVER_URL": "model server as notebooks and executors reach it (default http://"
    "LAB_HOST:LAB_MODEL_SERVER_PORT; containers: http://model-server:8501)",
    "LAB_APP_CORES_MAX": "spark.cores.max per application (default: this machine's cores)",
    "LAB_EXECUTOR_MEMORY": "spark.executor.memory per application (1g)",
    "LAB_ARROW_BATCH": "spark.sql.execution.arrow.maxRecordsPerBatch (1024)",
    "LAB_DRIVER_JAVA_OPTIONS": "spark.driver.extraJavaOptions for every session (default: none; "
    "the tests use -XX:TieredStopAtLevel=1 for faster session starts on 2 cores)",
    "LAB_DAEMON_JAVA_OPTIONS": "JVM options of the master, workers and history server "
    f"(SPARK_DAEMON_JAVA_OPTS; default {DEFAULT_DAEMON_JAVA_OPTIONS!r}: control-plane JVMs "
    "start on half the CPU; executors are not affected; empty = the JVM's defaults)",
    "LAB_MASTER_UI_URL": "master web UI as this process reaches it (default http://LAB_HOST:"
    "LAB_MASTER_UI_PORT; containers: http://spark-master:8080)",
    "LAB_HISTORY_URL": "history server as this process reaches it (default http://LAB_HOST:"
    "LAB_HISTORY_PORT)",
    "LAB_DRIVER_HOST": "address executors use to reach the driver (containers: jupyterlab)",
    "LAB_DRIVER_UI_PORT": "first port a driver's Spark UI tries (Spark counts up from it; "
    "default 4040); containers publish it and the next three as they are",
    "LAB_UI_KILL": "1 = the Spark UIs offer 'kill' for jobs, stages and applications (off by "
    "default: the UIs have no login, so any local process could post a kill)",
    "LAB_PUBLIC_HOST": "host a browser uses for the driver's Spark UI, whose port is published "
    "as is (containers: 127.0.0.1; default: the UI's own address)",
    "LAB_PUBLIC_JUPYTER_URL": "JupyterLab as a browser on the host opens it (containers: the "
    "published port; default: the URL this process uses)",
    "LAB_PUBLIC_MASTER_UI_URL": "master web UI as a browser opens it (like LAB_PUBLIC_JUPYTER_URL)",
    "LAB_PUBLIC_HISTORY_URL": "history server as a browser opens it (like LAB_PUBLIC_JUPYTER_URL)",
    "LAB_PUBLIC_MODEL_SERVER_URL": "model server as a browser or host tool opens it (like "
    "LAB_PUBLIC_JUPYTER_URL)",
    "LAB_START_TIMEOUT": "seconds `make lab` waits for each service to become healthy (120)",
    "LAB_SMOKE": "1 = notebooks use smoke-sized data (CI)",
    "LAB_QUICK": "1 = notebooks use their quick size (a few minutes each; every notebook's "
    "intro gives its measured times)",
    "LAB_IMAGENET_DOWNLOAD": "1 = notebook 03 may download ResNet-50's ImageNet weights and "
    "class index into share_storages/models/resnet50/ when they are not there (needs a "
    "network; the lab downloads nothing by default)",
    "LAB_INSTANCE": "set by the native launcher, never by you: this lab's state dir, on every "
    "process it starts (services, kernels, drivers, executors), so `make stop` can tell them "
    "from your own",
    "LAB_TF_THREADS": "executor-side override of TensorFlow's intra-op threads per Python "
    "worker (default: the task's cores, spark.task.cpus); 'tf' leaves TensorFlow's own "
    "machine-sized pools (the oversubscribed setup the benchmark compares against)",
}


#: The two ways a notebook talks to Spark (LAB_SPARK_API).
SPARK_APIS = ("classic", "connect")


class ConfigError(LabError, ValueError):
    """A variable of the environment (or ``.env``) has a value the lab cannot use; the message
    names the variable and how to fix it."""


def _root_default() -> Path:
    # Editable install (the native venv): the package sits in the checkout, next to pyproject.
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "lab_utils").is_dir():
        return here
    return Path.cwd()


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not an integer: fix it in .env or the environment"
        ) from None


def _secret(env: Mapping[str, str], name: str) -> tuple[str | None, Path | None]:
    """``(value, file)`` of a secret given as ``NAME`` or as a file named by ``NAME_FILE``.

    The ``_FILE`` form is the convention of official Docker images: compose mounts the secret
    under ``/run/secrets/``, so it never appears in the container's environment.
    """
    value = env.get(name) or None
    raw_file = env.get(f"{name}_FILE") or None
    if value or not raw_file:
        return value, None
    path = Path(raw_file)
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{name}_FILE={raw_file} cannot be read ({exc.strerror}): run `make env`, which "
            f"writes the secret files, or set {name} instead"
        ) from None
    if not value:
        raise ConfigError(f"{name}_FILE={raw_file} is empty: run `make env` to regenerate it")
    return value, path


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _public(url: str | None, fallback: str) -> str:
    return (url or fallback).rstrip("/")


@dataclass(frozen=True)
class LabConfig:
    """Settings of one lab, resolved from the environment."""

    root: Path
    share_dir: Path
    state_dir: Path
    notebooks_dir: Path
    master_url: str | None
    auth_secret: str | None
    jupyter_token: str | None
    host: str
    master_port: int
    master_ui_port: int
    workers: int
    worker_cores: int
    worker_memory: str
    worker_ui_port: int
    history_port: int
    jupyter_port: int
    model_server_port: int
    app_cores_max: int
    executor_memory: str
    arrow_batch: int
    driver_java_options: str
    daemon_java_options: str
    driver_host: str | None
    master_ui_url_override: str | None
    history_url_override: str | None
    model_server_url_override: str | None
    start_timeout: int
    smoke: bool
    quick: bool
    driver_ui_port: int | None = None
    ui_kill: bool = False
    imagenet_download: bool = False
    auth_secret_file: Path | None = None
    jupyter_token_file: Path | None = None
    public_host: str | None = None
    public_jupyter_url_override: str | None = None
    public_master_ui_url_override: str | None = None
    public_history_url_override: str | None = None
    public_model_server_url_override: str | None = None
    connect_token: str | None = None
    connect_token_file: Path | None = None
    spark_api: str = "classic"
    spark_remote: str | None = None
    connect_port: int = 15002
    connect_ui_port: int = 4050
    connect_idle_timeout: int = 120

    @property
    def connect_url(self) -> str:
        """The Spark Connect endpoint a client of this lab uses (its token not included).

        The lab's own server is reached as ``localhost``: with a token, PySpark's client asks
        for TLS unless the host is spelled exactly ``localhost`` (then it uses gRPC's local
        credentials), and the lab's server, on loopback, has no TLS.
        """
        return self.spark_remote or f"sc://localhost:{self.connect_port}"

    @property
    def events_dir(self) -> Path:
        """Where drivers write event logs and the history server reads them."""
        return self.share_dir / "spark-events"

    @property
    def lab_master_url(self) -> str:
        """The master URL of the lab this config describes (native or compose)."""
        return f"spark://{self.host}:{self.master_port}"

    @property
    def master_ui_url(self) -> str:
        return self.master_ui_url_override or f"http://{self.host}:{self.master_ui_port}"

    @property
    def history_url(self) -> str:
        return self.history_url_override or f"http://{self.host}:{self.history_port}"

    @property
    def model_server_url(self) -> str:
        """The lab's model server (TF Serving REST API) as this process reaches it."""
        return (self.model_server_url_override
                or f"http://{self.host}:{self.model_server_port}").rstrip("/")

    @property
    def jupyter_url(self) -> str:
        return f"http://{self.host}:{self.jupyter_port}/lab"

    def links(self, spark_ui: str | None = None) -> dict[str, str]:
        """The lab's web pages as a browser on the user's machine opens them.

        Natively these are the URLs above. In containers, service names such as
        ``spark-master`` mean nothing to the host's browser: compose sets the ``LAB_PUBLIC_*``
        variables to 127.0.0.1 and the published ports. ``spark_ui`` is a driver's
        ``sparkContext.uiWebUrl``; its port is published as is, so only the host changes.
        """
        found = {
            "JupyterLab": _public(self.public_jupyter_url_override, self.jupyter_url),
            "Master UI": _public(self.public_master_ui_url_override, self.master_ui_url),
            "History server": _public(self.public_history_url_override, self.history_url),
            "Model server": _public(self.public_model_server_url_override,
                                    self.model_server_url),
        }
        if spark_ui:
            parts = urlsplit(spark_ui)
            if self.public_host and parts.port:
                parts = parts._replace(netloc=f"{self.public_host}:{parts.port}")
            found = {"Spark UI": urlunsplit(parts), **found}
        return found


def load(env: Mapping[str, str] | None = None) -> LabConfig:
    """Build the lab's configuration from ``env`` (default ``os.environ``).

    Parameters
    ----------
    env : Mapping[str, str], optional
        Variables to read; tests pass a dict, everything else the process environment.

    Returns
    -------
    LabConfig
    """
    env = os.environ if env is None else env
    cores = os.cpu_count() or 1
    root = Path(env.get("LAB_ROOT") or _root_default()).resolve()
    share = Path(env.get("LAB_SHARE_DIR") or root / "share_storages").resolve()
    state = Path(env.get("LAB_STATE_DIR") or root / ".lab").resolve()
    notebooks = Path(env.get("LAB_NOTEBOOKS_DIR") or root / "notebooks").resolve()
    workers = _int(env, "LAB_WORKERS", 2)
    if workers < 1:
        raise ConfigError(f"LAB_WORKERS={workers} must be at least 1: fix it in .env or the "
                          "environment")
    secret, secret_file = _secret(env, "SPARK_AUTH_SECRET")
    token, token_file = _secret(env, "JUPYTER_TOKEN")
    connect_token, connect_token_file = _secret(env, "SPARK_CONNECT_AUTHENTICATE_TOKEN")
    api = (env.get("LAB_SPARK_API") or "classic").strip().lower()
    if api not in SPARK_APIS:
        raise ConfigError(f"LAB_SPARK_API={api!r} is not one of {', '.join(SPARK_APIS)}: fix it "
                          "in .env or the environment (unset means classic)")
    remote = env.get("LAB_SPARK_REMOTE") or None
    if remote and not remote.startswith("sc://"):
        raise ConfigError(f"LAB_SPARK_REMOTE={remote!r} is not a Spark Connect URL: write it as "
                          "sc://host:port (the token goes in SPARK_CONNECT_AUTHENTICATE_TOKEN)")
    return LabConfig(
        root=root,
        share_dir=share,
        state_dir=state,
        notebooks_dir=notebooks,
        master_url=env.get("SPARK_MASTER_URL") or None,
        auth_secret=secret,
        jupyter_token=token,
        host=env.get("LAB_HOST") or "127.0.0.1",
        master_port=_int(env, "LAB_MASTER_PORT", 7077),
        master_ui_port=_int(env, "LAB_MASTER_UI_PORT", 8080),
        workers=workers,
        worker_cores=_int(env, "LAB_WORKER_CORES", cores),
        worker_memory=env.get("LAB_WORKER_MEMORY") or "4g",
        worker_ui_port=_int(env, "LAB_WORKER_UI_PORT", 8081),
        history_port=_int(env, "LAB_HISTORY_PORT", 18080),
        jupyter_port=_int(env, "LAB_JUPYTER_PORT", 8888),
        model_server_port=_int(env, "LAB_MODEL_SERVER_PORT", 8501),
        app_cores_max=_int(env, "LAB_APP_CORES_MAX", cores),
        executor_memory=env.get("LAB_EXECUTOR_MEMORY") or "1g",
        arrow_batch=_int(env, "LAB_ARROW_BATCH", 1024),
        driver_java_options=env.get("LAB_DRIVER_JAVA_OPTIONS", "").strip(),
        daemon_java_options=env.get("LAB_DAEMON_JAVA_OPTIONS",
                                    DEFAULT_DAEMON_JAVA_OPTIONS).strip(),
        driver_host=env.get("LAB_DRIVER_HOST") or None,
        master_ui_url_override=env.get("LAB_MASTER_UI_URL") or None,
        history_url_override=env.get("LAB_HISTORY_URL") or None,
        model_server_url_override=env.get("LAB_MODEL_SERVER_URL") or None,
        start_timeout=_int(env, "LAB_START_TIMEOUT", 120),
        smoke=_flag(env, "LAB_SMOKE"),
        quick=_flag(env, "LAB_QUICK"),
        driver_ui_port=_int(env, "LAB_DRIVER_UI_PORT", 0) or None,
        ui_kill=_flag(env, "LAB_UI_KILL"),
        imagenet_download=_flag(env, "LAB_IMAGENET_DOWNLOAD"),
        auth_secret_file=secret_file,
        jupyter_token_file=token_file,
        public_host=env.get("LAB_PUBLIC_HOST") or None,
        public_jupyter_url_override=env.get("LAB_PUBLIC_JUPYTER_URL") or None,
        public_master_ui_url_override=env.get("LAB_PUBLIC_MASTER_UI_URL") or None,
        public_history_url_override=env.get("LAB_PUBLIC_HISTORY_URL") or None,
        public_model_server_url_override=env.get("LAB_PUBLIC_MODEL_SERVER_URL") or None,
        connect_token=connect_token,
        connect_token_file=connect_token_file,
        spark_api=api,
        spark_remote=remote,
        connect_port=_int(env, "LAB_CONNECT_PORT", 15002),
        connect_ui_port=_int(env, "LAB_CONNECT_UI_PORT", 4050),
        connect_idle_timeout=_int(env, "LAB_CONNECT_IDLE_TIMEOUT", 120),
    )


def to_env(cfg: LabConfig) -> dict[str, str]:
    """The variables that reproduce ``cfg`` (``load(to_env(cfg)) == cfg``).

    The native launcher hands them to the services (each role only the secrets it needs:
    :func:`lab_utils.ops.services.service_env`), so notebook kernels started by JupyterLab see
    the very lab that started them. A secret read from a file is handed on as that file's name,
    never as its value.
    """
    values = {
        "LAB_ROOT": str(cfg.root),
        "LAB_SHARE_DIR": str(cfg.share_dir),
        "LAB_STATE_DIR": str(cfg.state_dir),
        "LAB_NOTEBOOKS_DIR": str(cfg.notebooks_dir),
        "SPARK_MASTER_URL": cfg.master_url,
        "SPARK_AUTH_SECRET": None if cfg.auth_secret_file else cfg.auth_secret,
        "SPARK_AUTH_SECRET_FILE": cfg.auth_secret_file,
        "JUPYTER_TOKEN": None if cfg.jupyter_token_file else cfg.jupyter_token,
        "JUPYTER_TOKEN_FILE": cfg.jupyter_token_file,
        "SPARK_CONNECT_AUTHENTICATE_TOKEN": None if cfg.connect_token_file else cfg.connect_token,
        "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE": cfg.connect_token_file,
        "LAB_SPARK_API": cfg.spark_api,
        "LAB_SPARK_REMOTE": cfg.spark_remote,
        "LAB_CONNECT_PORT": cfg.connect_port,
        "LAB_CONNECT_UI_PORT": cfg.connect_ui_port,
        "LAB_CONNECT_IDLE_TIMEOUT": cfg.connect_idle_timeout,
        "LAB_HOST": cfg.host,
        "LAB_MASTER_PORT": cfg.master_port,
        "LAB_MASTER_UI_PORT": cfg.master_ui_port,
        "LAB_WORKERS": cfg.workers,
        "LAB_WORKER_CORES": cfg.worker_cores,
        "LAB_WORKER_MEMORY": cfg.worker_memory,
        "LAB_WORKER_UI_PORT": cfg.worker_ui_port,
        "LAB_HISTORY_PORT": cfg.history_port,
        "LAB_JUPYTER_PORT": cfg.jupyter_port,
        "LAB_MODEL_SERVER_PORT": cfg.model_server_port,
        "LAB_APP_CORES_MAX": cfg.app_cores_max,
        "LAB_EXECUTOR_MEMORY": cfg.executor_memory,
        "LAB_ARROW_BATCH": cfg.arrow_batch,
        "LAB_DRIVER_JAVA_OPTIONS": cfg.driver_java_options,
        "LAB_DRIVER_HOST": cfg.driver_host,
        "LAB_MASTER_UI_URL": cfg.master_ui_url_override,
        "LAB_HISTORY_URL": cfg.history_url_override,
        "LAB_MODEL_SERVER_URL": cfg.model_server_url_override,
        "LAB_START_TIMEOUT": cfg.start_timeout,
        "LAB_SMOKE": "1" if cfg.smoke else "",
        "LAB_QUICK": "1" if cfg.quick else "",
        "LAB_DRIVER_UI_PORT": cfg.driver_ui_port,
        "LAB_UI_KILL": "1" if cfg.ui_kill else "",
        "LAB_IMAGENET_DOWNLOAD": "1" if cfg.imagenet_download else "",
        "LAB_PUBLIC_HOST": cfg.public_host,
        "LAB_PUBLIC_JUPYTER_URL": cfg.public_jupyter_url_override,
        "LAB_PUBLIC_MASTER_UI_URL": cfg.public_master_ui_url_override,
        "LAB_PUBLIC_HISTORY_URL": cfg.public_history_url_override,
        "LAB_PUBLIC_MODEL_SERVER_URL": cfg.public_model_server_url_override,
    }
    out = {key: str(value) for key, value in values.items() if value not in (None, "")}
    # Empty is a choice here (the JVM's own defaults), not "unset": hand it on as it is.
    out["LAB_DAEMON_JAVA_OPTIONS"] = cfg.daemon_java_options
    return out
