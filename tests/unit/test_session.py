import socket

import pytest

from lab_utils import config, session
from lab_utils.common import spark_conf


def cfg_for(tmp_path, **extra):
    return config.load({"LAB_ROOT": str(tmp_path), **extra})


def test_master_resolution_order(tmp_path):
    assert session.resolve_master(cfg_for(tmp_path), "local[2]")[0] == "local[2]"
    cfg = cfg_for(tmp_path, SPARK_MASTER_URL="spark://elsewhere:7077")
    assert session.resolve_master(cfg) == ("spark://elsewhere:7077", "from SPARK_MASTER_URL")
    url, why = session.resolve_master(cfg_for(tmp_path))  # no lab running in tmp_path
    assert url == "local[*]" and "make lab" in why


def test_session_conf_for_the_lab(tmp_path):
    cfg = cfg_for(tmp_path, SPARK_AUTH_SECRET="s3", LAB_APP_CORES_MAX="2", LAB_ARROW_BATCH="256")
    conf = spark_conf.session_conf(cfg, "spark://127.0.0.1:7077")
    assert conf["spark.authenticate"] == "true" and conf["spark.authenticate.secret"] == "s3"
    assert conf["spark.cores.max"] == "2"
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "256"
    assert conf["spark.eventLog.enabled"] == "true"
    events = tmp_path.resolve() / "share_storages" / "spark-events"
    assert conf["spark.eventLog.dir"] == events.as_uri()
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"


def test_driver_java_options_only_when_set(tmp_path):
    assert "spark.driver.extraJavaOptions" not in spark_conf.session_conf(
        cfg_for(tmp_path), "spark://127.0.0.1:7077")  # the JVM's defaults unless asked
    cfg = cfg_for(tmp_path, LAB_DRIVER_JAVA_OPTIONS=" -XX:TieredStopAtLevel=1 ")
    conf = spark_conf.session_conf(cfg, "spark://127.0.0.1:7077")
    assert conf["spark.driver.extraJavaOptions"] == "-XX:TieredStopAtLevel=1"
    assert config.load(config.to_env(cfg)).driver_java_options == "-XX:TieredStopAtLevel=1"


def test_session_conf_in_a_container(tmp_path):
    cfg = cfg_for(tmp_path, SPARK_AUTH_SECRET="s3", LAB_DRIVER_HOST="jupyterlab")
    conf = spark_conf.session_conf(cfg, "spark://spark-master:7077")
    assert conf["spark.driver.host"] == "jupyterlab"
    assert conf["spark.driver.bindAddress"] == "0.0.0.0"


def test_local_mode_has_no_secret(tmp_path):
    conf = spark_conf.session_conf(cfg_for(tmp_path, SPARK_AUTH_SECRET="s3"), "local[*]")
    assert "spark.authenticate.secret" not in conf


def test_unreachable_master_names_make_lab():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(session.ClusterUnavailableError, match="not reachable. Start the lab with "
                                                              "`make lab`"):
        session.check_master_reachable(f"spark://127.0.0.1:{port}", timeout=1)


def test_get_spark_fails_before_starting_a_jvm(tmp_path, monkeypatch):
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delitem(sys.modules, "pyspark.sql", raising=False)
    with pytest.raises(session.ClusterUnavailableError, match="make lab"):
        session.get_spark(env={"LAB_ROOT": str(tmp_path),
                               "SPARK_MASTER_URL": f"spark://127.0.0.1:{port}"})
    assert "pyspark.sql" not in sys.modules


def test_ui_kill_is_off_unless_asked_for(tmp_path):
    # The driver's UI has no login: with kill on, any local process may stop this app's jobs.
    for master in ("spark://127.0.0.1:7077", "local[*]"):
        assert spark_conf.session_conf(cfg_for(tmp_path), master)["spark.ui.killEnabled"] == "false"
        conf = spark_conf.session_conf(cfg_for(tmp_path, LAB_UI_KILL="1"), master)
        assert conf["spark.ui.killEnabled"] == "true"
