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

With ``LAB_SPARK_API=connect`` (or ``remote="sc://..."``) the session is a Spark Connect client
instead: no JVM in this process, the driver is the lab's Connect server (``make lab`` starts it
on ``sc://localhost:15002``) or the endpoint in ``LAB_SPARK_REMOTE``, with the token from
``SPARK_CONNECT_AUTHENTICATE_TOKEN``. The lab's settings that a session may change (the Arrow
batch size, the time zone) are set on it; the others belong to the server's application, and
one asked for in ``conf=`` is named in a printed warning rather than silently dropped.
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
from lab_utils.common.connect import is_connect
from lab_utils.common.spark_conf import is_loopback, session_conf
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


def _accepts(host: str | None, port: int, timeout: float) -> bool:
    """True if ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_master_reachable(url: str, timeout: float = 3.0) -> None:
    """Fail fast, before the JVM starts, when a ``spark://`` master does not accept connections."""
    if not url.startswith("spark://"):
        return
    for hostport in url[len("spark://"):].split(","):  # HA masters: any one is enough
        parsed = urlparse(f"spark://{hostport}")
        if _accepts(parsed.hostname, parsed.port or 7077, timeout):
            return
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


class ConnectUrlError(LabError, ValueError):
    """A Spark Connect URL the client would mishandle; the message says how to write it."""


def check_connect_url(url: str, token: str | None) -> None:
    """Refuse, before any connection, a URL PySpark's client would hang on.

    With a token and no ``use_ssl``, the client asks for TLS unless the host is spelled
    ``localhost`` (``pyspark/sql/connect/client/core.py``); a server without TLS on 127.0.0.1
    then never completes a handshake and the first query waits for ever.

    Examples
    --------
    >>> check_connect_url("sc://localhost:15002", token="t")
    >>> check_connect_url("sc://127.0.0.1:15002", token="t")
    Traceback (most recent call last):
    lab_utils.session.ConnectUrlError: sc://127.0.0.1:15002 with a token: PySpark's Connect ...
    """
    parsed = urlparse(url.split("/;", 1)[0].replace("sc://", "http://", 1))
    if not url.startswith("sc://") or not parsed.hostname:
        shown = url.split(";", 1)[0]  # parameters (a token among them) are never repeated
        raise ConnectUrlError(f"{shown!r} is not a Spark Connect URL: write sc://host:port")
    loopback = parsed.hostname in {"::1", "ip6-localhost"} or parsed.hostname.startswith("127.")
    with_token = token or ";token=" in url
    if with_token and loopback and "use_ssl=true" not in url.lower():
        raise ConnectUrlError(
            f"{url.split('/;', 1)[0]} with a token: PySpark's Connect client uses TLS for a "
            "token unless the host is spelled 'localhost', and this server has no TLS, so the "
            f"session would hang. Write sc://localhost:{parsed.port or 15002} instead.")


def _connect_reachable(url: str, timeout: float = 3.0) -> None:
    parsed = urlparse(url.split("/;", 1)[0].replace("sc://", "http://", 1))
    if _accepts(parsed.hostname, parsed.port or 15002, timeout):
        return
    raise ClusterUnavailableError(
        f"No Spark Connect server answers at {url.split('/;', 1)[0]}. The lab's starts with "
        "`make lab` (check it with `make status`); another cluster's URL goes in "
        "LAB_SPARK_REMOTE. Or unset LAB_SPARK_API for a classic session.")


#: The lab's settings a Connect session sets on itself (runtime SQL settings); the rest of
#: :func:`session_conf` is the server application's, written into its properties file.
CONNECT_SESSION_KEYS = ("spark.sql.execution.arrow.maxRecordsPerBatch",
                        "spark.sql.execution.arrow.pyspark.enabled",
                        "spark.sql.session.timeZone")


def _connect_session(cfg: lab_config.LabConfig, url: str, conf: Mapping[str, str]) -> tuple[
        SparkSession, list[str]]:
    """A Spark Connect session on ``url`` with the lab's session settings and ``conf``;
    returns it and a line for each setting of ``conf`` a Connect client cannot set."""
    if cfg.connect_token:
        # PySpark's client reads the token from here; it stays out of the URL (and so out of
        # every message that prints one).
        os.environ.setdefault("SPARK_CONNECT_AUTHENTICATE_TOKEN", cfg.connect_token)
    check_connect_url(url, os.environ.get("SPARK_CONNECT_AUTHENTICATE_TOKEN"))
    _connect_reachable(url)
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).getOrCreate()
    lab = session_conf(cfg, "sc://")
    wanted = {key: lab[key] for key in CONNECT_SESSION_KEYS} | dict(conf)
    refused = []
    for key, value in wanted.items():
        if spark.conf.isModifiable(key):
            spark.conf.set(key, value)
            continue
        current = spark.conf.get(key, None)
        if key in conf and current != value:
            refused.append(f"{key}={value} (the server's application has "
                           f"{'no value' if current is None else current})")
    return spark, refused


def get_spark(
    app_name: str = "spark-dl-lab",
    *,
    master: str | None = None,
    remote: str | None = None,
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
    remote : str, optional
        A Spark Connect URL (``sc://localhost:15002``): return a Connect session on it, whatever
        ``LAB_SPARK_API`` says. Its token comes from ``SPARK_CONNECT_AUTHENTICATE_TOKEN``.
    conf : Mapping[str, str], optional
        Extra Spark settings; they win over the lab's defaults.
    env : Mapping[str, str], optional
        Variables to read the lab's configuration from (default ``os.environ`` plus ``.env``).
    quiet : bool
        Do not print the one-line summary.

    Returns
    -------
    pyspark.sql.SparkSession
        A classic session, or with ``LAB_SPARK_API=connect`` or ``remote=`` a Spark Connect one
        (``pyspark.sql.connect.session.SparkSession``: no ``sparkContext``, no RDDs).

    Raises
    ------
    ClusterUnavailableError
        The chosen ``spark://`` master, or Connect server, does not accept connections.
    ConnectUrlError
        A Connect URL PySpark's client would hang on (a token to ``127.0.0.1``).
    """
    if env is None:
        # A script run outside `make lab` still finds the native lab's secret in .env.
        env = {**envfile.read(lab_config.load().root / ".env"), **os.environ}
    cfg = lab_config.load(env)
    if remote or cfg.spark_api == "connect":
        url = remote or cfg.connect_url
        why = ("as requested" if remote else "LAB_SPARK_REMOTE" if cfg.spark_remote
               else "LAB_SPARK_API=connect: the lab's Connect server")
        spark, refused = _connect_session(cfg, url, conf or {})
        if refused:
            print("warning: a Spark Connect session cannot set these; they belong to the "
                  "server's application and are fixed when it starts (the lab's server takes "
                  "them from .env, another cluster's from its admin):\n  "
                  + "\n  ".join(refused), file=sys.stderr)
        register_data_sources(spark)
        if not quiet:
            print(describe(spark, why, cfg=cfg, url=url))
        return spark
    url, why = resolve_master(cfg, master)
    check_master_reachable(url)
    if url.startswith("spark://") and not cfg.auth_secret:
        print("warning: SPARK_AUTH_SECRET is not set; a cluster with authentication on "
              "(like the lab's) will refuse this application. Run `make env`.", file=sys.stderr)

    # Executors must run this very interpreter (same Python, same libraries).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if is_loopback(url) and not cfg.driver_host:
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
    register_data_sources(spark)
    if not quiet:
        print(describe(spark, why, cfg=cfg))
    return spark


def register_data_sources(spark: SparkSession) -> None:
    """Register the lab's Python data sources on ``spark``: ``format("tfrecord")``
    (:mod:`lab_utils.data.tfrecords.datasource`).

    ``spark.dataSource.register`` works on a classic session and through Spark Connect (the
    client sends the pickled class to the server); registration belongs to the session, so
    every session :func:`get_spark` returns gets it (registering again replaces it).
    """
    from lab_utils.data.tfrecords.datasource import TFRecordDataSource

    spark.dataSource.register(TFRecordDataSource)


def describe(spark: SparkSession, why: str = "", *,
             cfg: lab_config.LabConfig | None = None, url: str | None = None) -> str:
    """One line saying where ``spark`` runs, in which mode, with its UI address (``url``: the
    Connect URL the session was made with, default the configured one)."""
    cfg = cfg or lab_config.load()
    if is_connect(spark):
        app_id = spark.conf.get("spark.app.id", None) or "?"
        url = (url or cfg.connect_url).split("/;", 1)[0]  # its parameters may hold a token
        lab_server = url == f"sc://localhost:{cfg.connect_port}"
        server_ui = (cfg.links(f"http://{cfg.host}:{cfg.connect_ui_port}")["Spark UI"]
                     if lab_server else "the server's own Spark UI")
        return (f"Spark {spark.version} · Spark Connect session on {url}"
                + (f" ({why})" if why else "")
                + f" · server application {app_id} · UI {server_ui}")
    sc = spark.sparkContext
    where = f"{sc.master}" + (f" ({why})" if why else "")  # Optional in PySpark's types, set here
    ui = cfg.links(sc.uiWebUrl).get("Spark UI", sc.uiWebUrl)  # host's address
    return (f"Spark {spark.version} · classic · app '{sc.appName}' ({sc.applicationId}) on "
            f"{where} · UI {ui}")
