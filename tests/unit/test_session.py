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


def test_connect_server_conf_is_the_lab_session_plus_its_server(tmp_path):
    cfg = cfg_for(tmp_path, SPARK_AUTH_SECRET="s3", LAB_APP_CORES_MAX="3", LAB_ARROW_BATCH="256",
                  SPARK_CONNECT_AUTHENTICATE_TOKEN="tok", LAB_CONNECT_PORT="16002",
                  LAB_CONNECT_UI_PORT="4051", LAB_CONNECT_IDLE_TIMEOUT="30")
    conf = spark_conf.connect_server_conf(cfg, "spark://127.0.0.1:7077")
    # Every setting of a lab session, for the one application that serves every Connect session.
    session_settings = spark_conf.session_conf(cfg, "spark://127.0.0.1:7077")
    assert {k: conf[k] for k in session_settings if k != "spark.ui.port"} == {
        k: v for k, v in session_settings.items() if k != "spark.ui.port"}
    assert conf["spark.authenticate.secret"] == "s3" and conf["spark.cores.max"] == "3"
    assert conf["spark.master"] == "spark://127.0.0.1:7077"
    assert conf["spark.app.name"] == spark_conf.CONNECT_SERVER_APP == "Spark Connect server"
    assert conf["spark.ui.port"] == "4051"  # its own UI port, apart from the notebooks' 4040+
    assert conf["spark.connect.grpc.binding.port"] == "16002"
    assert conf["spark.connect.authenticate.token"] == "tok"
    # No core held while idle: one-core executors, none kept, each given back after the timeout
    # (cached data and shuffle files included), at most the lab's per-application cap.
    assert conf["spark.executor.cores"] == "1"
    assert conf["spark.dynamicAllocation.enabled"] == "true"
    assert conf["spark.dynamicAllocation.shuffleTracking.enabled"] == "true"
    assert conf["spark.dynamicAllocation.minExecutors"] == "0"
    assert conf["spark.dynamicAllocation.maxExecutors"] == "3"
    for key in ("executorIdleTimeout", "cachedExecutorIdleTimeout", "shuffleTracking.timeout"):
        assert conf[f"spark.dynamicAllocation.{key}"] == "30s", key
    assert "spark.dynamicAllocation.initialExecutors" not in conf  # Spark's default: min, 0


def test_connect_server_conf_without_a_token_or_a_secret(tmp_path):
    conf = spark_conf.connect_server_conf(cfg_for(tmp_path), "local[2]")
    assert "spark.connect.authenticate.token" not in conf  # the launcher refuses to start it
    assert "spark.authenticate.secret" not in conf
    assert conf["spark.dynamicAllocation.executorIdleTimeout"] == "120s"  # the default
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"


def test_connect_session_keys_are_lab_session_settings(tmp_path):
    lab = spark_conf.session_conf(cfg_for(tmp_path), "sc://")
    assert set(session.CONNECT_SESSION_KEYS) <= set(lab)
    assert all(key.startswith("spark.sql.") for key in session.CONNECT_SESSION_KEYS)


@pytest.mark.parametrize("url, token", [
    ("sc://localhost:15002", "t"),
    ("sc://localhost:15002/;token=t", None),
    ("sc://127.0.0.1:15002", None),  # no token: plain gRPC, no TLS asked for
    ("sc://127.0.0.1:15002/;use_ssl=true", "t"),  # TLS asked for: a server with TLS answers
    ("sc://big-cluster:443", "t"),
])
def test_connect_urls_the_client_can_use(url, token):
    session.check_connect_url(url, token)


@pytest.mark.parametrize("url, token, port", [
    ("sc://127.0.0.1:15002", "t", 15002),
    ("sc://127.0.0.1:16002/;token=secret-in-url", None, 16002),
    ("sc://127.0.0.2", "t", 15002),
    ("sc://[::1]:15002", "t", 15002),
])
def test_a_token_to_a_loopback_address_is_refused_with_the_fix(url, token, port):
    with pytest.raises(session.ConnectUrlError, match="PySpark's Connect client uses TLS") as err:
        session.check_connect_url(url, token)
    assert f"Write sc://localhost:{port} instead" in str(err.value)
    assert "secret-in-url" not in str(err.value)  # the URL's token is never repeated
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("url", ["localhost:15002", "http://localhost:15002", "sc://", "sc:///x"])
def test_not_a_connect_url(url):
    with pytest.raises(session.ConnectUrlError, match="is not a Spark Connect URL: write "
                                                      "sc://host:port"):
        session.check_connect_url(url, None)


def test_get_spark_in_connect_mode_fails_before_connecting(tmp_path, monkeypatch):
    import sys

    # get_spark hands the token to PySpark's client through the environment: restored after.
    monkeypatch.setenv("SPARK_CONNECT_AUTHENTICATE_TOKEN", "x")
    monkeypatch.delenv("SPARK_CONNECT_AUTHENTICATE_TOKEN")
    monkeypatch.delitem(sys.modules, "pyspark.sql", raising=False)
    env = {"LAB_ROOT": str(tmp_path), "SPARK_CONNECT_AUTHENTICATE_TOKEN": "tok"}
    with pytest.raises(session.ConnectUrlError, match="Write sc://localhost:15002"):
        session.get_spark(env={**env, "LAB_SPARK_API": "connect",
                               "LAB_SPARK_REMOTE": "sc://127.0.0.1:15002"})
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(session.ClusterUnavailableError,
                       match=f"No Spark Connect server answers at sc://localhost:{port}"):
        session.get_spark(remote=f"sc://localhost:{port}", env=env)
    with pytest.raises(session.ClusterUnavailableError, match="make lab"):
        session.get_spark(env={**env, "LAB_SPARK_API": "connect", "LAB_CONNECT_PORT": str(port)})
    assert "pyspark.sql" not in sys.modules  # no client was built
