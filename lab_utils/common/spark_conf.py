"""The Spark settings the lab gives every application: a notebook's classic session
(:func:`lab_utils.session.get_spark`) and the lab's Spark Connect server, whose application
serves every Connect session (:mod:`lab_utils.ops.services` writes them into its properties file).
Pure functions of the configuration: no Spark, no side effects.
"""

from __future__ import annotations

from urllib.parse import urlparse

from lab_utils import config as lab_config


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
    elif is_loopback(master):
        # The driver's UI and RPC ports would otherwise listen on every interface.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    return conf


def is_loopback(master: str) -> bool:
    if master.startswith("local"):
        return True
    host = urlparse(master.split(",")[0]).hostname or ""
    return host in {"localhost", "::1"} or host.startswith("127.")


#: The name of the Connect server's application in the master UI and the history server.
CONNECT_SERVER_APP = "Spark Connect server"


def connect_server_conf(cfg: lab_config.LabConfig, master: str) -> dict[str, str]:
    """The properties of the lab's Spark Connect server: one Spark application that serves
    every Connect session, with the lab's session settings, its own ports and its token.

    The application holds no executor while no query runs: dynamic allocation (shuffle tracking,
    so no external shuffle service) gives one-core executors back after
    ``LAB_CONNECT_IDLE_TIMEOUT`` seconds, so a classic notebook beside it still gets the cores
    its ``spark.cores.max`` allows. Executors holding cached data or shuffle files are given back
    on the same clock (Spark's defaults keep them for ever).
    """
    conf = session_conf(cfg, master)
    idle = f"{cfg.connect_idle_timeout}s"
    conf.update({
        "spark.master": master,
        "spark.app.name": CONNECT_SERVER_APP,
        "spark.ui.port": str(cfg.connect_ui_port),
        "spark.connect.grpc.binding.port": str(cfg.connect_port),
        "spark.executor.cores": "1",
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.minExecutors": "0",
        "spark.dynamicAllocation.maxExecutors": str(cfg.app_cores_max),
        "spark.dynamicAllocation.executorIdleTimeout": idle,
        "spark.dynamicAllocation.cachedExecutorIdleTimeout": idle,
        "spark.dynamicAllocation.shuffleTracking.timeout": idle,
    })
    if cfg.connect_token:
        conf["spark.connect.authenticate.token"] = cfg.connect_token
    return conf
