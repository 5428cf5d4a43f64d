"""One call to get a SparkSession wired to the lab: ``spark = get_spark("my notebook")``.

Where the session runs, in order:

1. ``master=`` given to :func:`get_spark`;
2. ``SPARK_MASTER_URL`` (set by ``make lab`` and by the compose file for every notebook kernel;
   point it at any Spark cluster to outgrow one machine);
3. the native lab of this checkout, when ``make lab`` has it running;
4. ``local[*]`` in this process, said plainly in the printed summary.

The session always gets the Arrow batch size, event logs in ``share_storages/spark-events`` (so
the history server lists it), the cluster's authentication secret, a per-application core cap,
and, inside Jupyter, sparkmonitor's live job progress.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from lab_utils import config as lab_config
from lab_utils import envfile
from lab_utils.errors import LabError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARKMONITOR_LISTENER = "sparkmonitor.listener.JupyterSparkMonitorListener"


class ClusterUnavailableError(LabError, RuntimeError):
    """The configured Spark master does not answer; the message says how to start it."""


def _native_lab_master(cfg: lab_config.LabConfig) -> str | None:
    """The master URL of this checkout's native lab if its master process is running."""
    from lab_utils.ops import pids  # local import: process management only when needed

    if (cfg.state_dir / "lab.json").is_file() and pids.running_pid(cfg, "master"):
        return cfg.lab_master_url
    return None


def resolve_master(cfg: lab_config.LabConfig, master: str | None = None) -> tuple[str, str]:
    """Pick the master URL and say why: ``(url, description)``."""
    if master:
        return master, "as requested"
    if cfg.master_url:
        return cfg.master_url, "from SPARK_MASTER_URL"
    native = _native_lab_master(cfg)
    if native:
        return native, "the native lab started by `make lab`"
    return "local[*]", "local fallback: no cluster configured (start one with `make lab`)"


def check_master_reachable(url: str, timeout: float = 3.0) -> None:
    """Fail fast, before the JVM starts, when a ``spark://`` master does not accept connections."""
    if not url.startswith("spark://"):
        return
    for hostport in url[len("spark://"):].split(","):  # HA masters: any one is enough
        parsed = urlparse(f"spark://{hostport}")
        try:
            with socket.create_connection((parsed.hostname, parsed.port or 7077), timeout=timeout):
                return
        except OSError:
            continue
    raise ClusterUnavailableError(
        f"The Spark master {url} is not reachable. Start the lab with `make lab` (natively) or "
        "`docker compose up`, check it with `make status`, or unset SPARK_MASTER_URL to run "
        "on local[*] in this process."
    )


def _jupyter_shell() -> Any:
    """The running IPython kernel shell when inside Jupyter, else None."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    return shell


def sparkmonitor_conf(shell: Any) -> dict[str, str]:
    """Conf that attaches sparkmonitor's listener to this kernel's monitor socket."""
    try:
        shell.extension_manager.load_extension("sparkmonitor.kernelextension")  # no-op if loaded
        from sparkmonitor import kernelextension
    except ImportError:
        return {}
    monitor = getattr(kernelextension, "monitor", None)
    if monitor is None or not hasattr(monitor, "comm"):
        # No JupyterLab frontend opened the monitor's channel (e.g. a headless nbclient run):
        # the listener's messages would have nowhere to go.
        return {}
    # The listener, running in the driver JVM started below, reads the port from its environment.
    os.environ["SPARKMONITOR_KERNEL_PORT"] = str(monitor.getPort())
    jar = Path(kernelextension.__file__).with_name("listener_spark4_2.13.jar")
    return {
        "spark.extraListeners": SPARKMONITOR_LISTENER,
        "spark.driver.extraClassPath": str(jar),
        "spark.ui.showConsoleProgress": "false",  # the progress bars live in the notebook instead
    }


def session_conf(cfg: lab_config.LabConfig, master: str) -> dict[str, str]:
    """The Spark settings the lab applies to every session (pure: no side effects)."""
    conf = {
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_batch),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": cfg.events_dir.as_uri(),
        "spark.cores.max": str(cfg.app_cores_max),
        "spark.executor.memory": cfg.executor_memory,
        "spark.sql.session.timeZone": "UTC",
        # Local files without Hadoop's checksum layer: it builds a ".<name>.crc" path for every
        # file read, and a ':' in a file name makes that path invalid and kills the whole job.
        # Names with spaces, unicode, '%', '#', '?', ':' all read; no .crc files litter the
        # shared folder.
        "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
        # The UI has no login and its CSRF token is on the same page: with kill on, any local
        # process could stop this application's jobs. LAB_UI_KILL=1 turns it back on.
        "spark.ui.killEnabled": "true" if cfg.ui_kill else "false",
        # One pool of Python workers per executor for SQL UDFs and RDD functions. Spark keys its
        # worker pools by the environment, and SQL UDFs add SPARK_SIMPLIFIED_TRACEBACK=1
        # (spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled): without it here, a
        # partition predictor after a pandas UDF starts fresh workers that import TensorFlow
        # and load the model again, and each executor holds two sets of models in memory.
        "spark.executorEnv.SPARK_SIMPLIFIED_TRACEBACK": "1",
    }
    if cfg.driver_ui_port:
        conf["spark.ui.port"] = str(cfg.driver_ui_port)
    if cfg.driver_java_options:
        conf["spark.driver.extraJavaOptions"] = cfg.driver_java_options
    if master.startswith("spark://") and cfg.auth_secret:
        conf["spark.authenticate"] = "true"
        conf["spark.authenticate.secret"] = cfg.auth_secret
    if cfg.driver_host:  # containers: executors reach the driver by its service name
        conf["spark.driver.host"] = cfg.driver_host
        conf["spark.driver.bindAddress"] = "0.0.0.0"
    elif _is_loopback(master):
        # The driver's UI and RPC ports would otherwise listen on every interface.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    return conf


def _is_loopback(master: str) -> bool:
    if master.startswith("local"):
        return True
    host = urlparse(master.split(",")[0]).hostname or ""
    return host in {"localhost", "::1"} or host.startswith("127.")


def get_spark(
    app_name: str = "spark-dl-lab",
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    quiet: bool = False,
) -> SparkSession:
    """Create (or return the running) SparkSession connected to the lab.

    Parameters
    ----------
    app_name : str
        Name shown in the master UI and the history server.
    master : str, optional
        Override the master URL (``spark://host:7077``, ``local[2]``...).
    conf : Mapping[str, str], optional
        Extra Spark settings; they win over the lab's defaults.
    env : Mapping[str, str], optional
        Variables to read the lab's configuration from (default ``os.environ`` plus ``.env``).
    quiet : bool
        Do not print the one-line summary.

    Returns
    -------
    pyspark.sql.SparkSession

    Raises
    ------
    ClusterUnavailableError
        The chosen ``spark://`` master does not accept connections.
    """
    if env is None:
        # A script run outside `make lab` still finds the native lab's secret in .env.
        env = {**envfile.read(lab_config.load().root / ".env"), **os.environ}
    cfg = lab_config.load(env)
    url, why = resolve_master(cfg, master)
    check_master_reachable(url)
    if url.startswith("spark://") and not cfg.auth_secret:
        print("warning: SPARK_AUTH_SECRET is not set; a cluster with authentication on "
              "(like the lab's) will refuse this application. Run `make env`.", file=sys.stderr)

    # Executors must run this very interpreter (same Python, same libraries).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if _is_loopback(url) and not cfg.driver_host:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # keep the driver on loopback
    cfg.events_dir.mkdir(parents=True, exist_ok=True)

    from pyspark.sql import SparkSession

    settings = session_conf(cfg, url)
    shell = _jupyter_shell()
    if shell is not None:
        settings.update(sparkmonitor_conf(shell))
    settings.update(conf or {})
    builder = SparkSession.builder.master(url).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if not quiet:
        print(describe(spark, why))
    return spark


def describe(spark: SparkSession, why: str = "") -> str:
    """One line saying where ``spark`` runs, with its UI address."""
    sc = spark.sparkContext
    where = f"{sc.master}" + (f" ({why})" if why else "")  # Optional in PySpark's types, set here
    ui = lab_config.load().links(sc.uiWebUrl).get("Spark UI", sc.uiWebUrl)  # host's address
    return (f"Spark {spark.version} · app '{sc.appName}' ({sc.applicationId}) on {where} · "
            f"UI {ui}")
