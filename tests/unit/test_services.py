"""What each service of the lab runs: Java, its command, environment, secrets and Spark settings
(:mod:`lab_utils.ops.services`), without starting Java."""

import dataclasses
import stat
import sys

import pytest

from lab_utils import config
from lab_utils.ops import native, services
from lab_utils.ops.services import LaunchError


def fake_java(tmp_path, version_line: str) -> str:
    path = tmp_path / "java"
    path.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    path.chmod(0o755)
    return str(path)


def make_cfg(tmp_path, **extra):
    env = {"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET": "top-secret", "JUPYTER_TOKEN": "tok",
           "SPARK_CONNECT_AUTHENTICATE_TOKEN": "connect-token"}
    env.update(extra)
    return config.load(env)


def _props(path):
    return dict(line.split(" ", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


def test_java_17_and_newer_accepted(tmp_path):
    java = fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')
    assert services.java_version(java)[0] == 17
    assert services.java_version(fake_java(tmp_path, 'openjdk version "21" 2023-09-19'))[0] == 21


@pytest.mark.parametrize("line, found", [('openjdk version "11.0.2" 2019-01-15', "Java 11"),
                                         ('java version "1.8.0_292"', "Java 8")])
def test_old_java_names_the_fix(tmp_path, line, found):
    with pytest.raises(LaunchError, match=f"{found} found .* needs Java 17 or newer: install"):
        services.java_version(fake_java(tmp_path, line))


def test_missing_java_names_the_fix(tmp_path):
    with pytest.raises(LaunchError, match="Java not found.*openjdk-17-jre-headless"):
        services.java_version(str(tmp_path / "no-java"))


def test_spark_conf_is_private_and_complete(tmp_path):
    cfg = make_cfg(tmp_path, LAB_APP_CORES_MAX="3")
    path = services.write_spark_conf(cfg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    props = dict(line.split(" ", 1) for line in path.read_text().splitlines()
                 if line and not line.startswith("#"))
    assert props["spark.authenticate"] == "true"
    assert props["spark.authenticate.secret"] == "top-secret"
    assert props["spark.master.rest.enabled"] == "false"
    assert props["spark.deploy.defaultCores"] == "3"
    assert props["spark.history.fs.logDirectory"] == cfg.events_dir.as_uri()


@pytest.mark.parametrize("old_mode", [0o644, 0o666])
def test_spark_conf_is_private_whatever_was_there(tmp_path, old_mode):
    # A conf file, and a temporary file under the name earlier versions wrote through, left
    # readable by others (by a user, an old lab or an attacker): the new file is 0600 anyway.
    cfg = make_cfg(tmp_path)
    path = services.spark_conf_path(cfg)
    path.parent.mkdir(parents=True)
    for stale in (path, path.with_suffix(".tmp")):
        stale.write_text("stale\n")
        stale.chmod(old_mode)
    services.write_spark_conf(cfg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "top-secret" in path.read_text()
    assert "top-secret" not in path.with_suffix(".tmp").read_text()  # never written through


def test_daemon_uis_offer_no_kill_unless_asked_for(tmp_path):
    # The master's and workers' UIs have no login: with kill on, any local process could post
    # /app/kill/. The daemons read this file (--properties-file) for their UI settings.
    assert _props(services.write_spark_conf(make_cfg(tmp_path)))["spark.ui.killEnabled"] == "false"
    # The Connect server's application UI (its driver's) has no login either.
    assert _props(services.write_connect_conf(make_cfg(tmp_path)))["spark.ui.killEnabled"] == (
        "false")
    conf = services.write_spark_conf(make_cfg(tmp_path, LAB_UI_KILL="1"))
    assert _props(conf)["spark.ui.killEnabled"] == "true"
    connect_conf = services.write_connect_conf(make_cfg(tmp_path, LAB_UI_KILL="1"))
    assert _props(connect_conf)["spark.ui.killEnabled"] == "true"
    roles = set()
    for service in services.services(make_cfg(tmp_path)):
        if service.role in services.SPARK_ROLES:
            roles.add(service.role)
            argv = services.service_command(service, make_cfg(tmp_path))
            # The daemons read the lab's file; the Connect server, a Spark application, its own.
            wanted = connect_conf if service.role == "connect" else conf
            assert argv[argv.index("--properties-file") + 1] == str(wanted)
    assert roles == {"master", "worker", "history", "connect"}


def test_secret_never_on_a_command_line(tmp_path):
    cfg = make_cfg(tmp_path)
    for service in services.services(cfg):
        argv = " ".join(services.service_command(service, cfg))
        assert "top-secret" not in argv and "tok" not in argv.split("=")[-1]
        assert "connect-token" not in argv, service.name


def test_service_commands(tmp_path):
    cfg = make_cfg(tmp_path, LAB_WORKERS="3", LAB_WORKER_CORES="2", LAB_WORKER_UI_PORT="9001")
    named = {s.name: services.service_command(s, cfg) for s in services.services(cfg)}
    assert list(named) == ["master", "worker-1", "worker-2", "worker-3", "history",
                           "connect", "model-server", "jupyter"]
    master = named["master"]
    assert master[1] == "org.apache.spark.deploy.master.Master"
    assert master[master.index("--host") + 1] == "127.0.0.1"
    worker3 = named["worker-3"]
    assert worker3[2] == "spark://127.0.0.1:7077"
    assert worker3[worker3.index("--webui-port") + 1] == "9003"
    assert worker3[worker3.index("--cores") + 1] == "2"
    assert "--ip=127.0.0.1" in named["jupyter"]
    server = named["model-server"]
    assert server[1:3] == ["-m", "lab_utils.serving"]
    assert server[server.index("--host") + 1] == "127.0.0.1"
    assert server[server.index("--port") + 1] == "8501"
    assert server[server.index("--models-dir") + 1] == str(cfg.share_dir / "models")
    assert "--fail-rate" not in server  # fault injection only when asked for
    assert f"--ServerApp.root_dir={tmp_path.resolve() / 'notebooks'}" in named["jupyter"]
    # The Connect server: spark-submit in the foreground, every setting from its own file.
    connect = named["connect"]
    assert connect == [str(services.spark_home() / "bin" / "spark-submit"),
                       "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
                       "--name", "Spark Connect server",
                       "--properties-file", str(services.connect_conf_path(cfg))]


def test_connect_conf_is_private_and_holds_the_token_and_the_secret(tmp_path):
    cfg = make_cfg(tmp_path, LAB_CONNECT_PORT="16002", LAB_CONNECT_UI_PORT="4051",
                   LAB_APP_CORES_MAX="3")
    path = services.write_connect_conf(cfg)
    assert path == services.connect_conf_path(cfg) == cfg.state_dir / "conf" / "spark-connect.conf"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    props = _props(path)
    assert props["spark.connect.authenticate.token"] == "connect-token"
    assert props["spark.authenticate"] == "true"
    assert props["spark.authenticate.secret"] == "top-secret"
    assert props["spark.master"] == "spark://127.0.0.1:7077"
    assert props["spark.connect.grpc.binding.address"] == "127.0.0.1"
    assert props["spark.connect.grpc.binding.port"] == "16002"
    assert props["spark.ui.port"] == "4051"
    assert props["spark.driver.host"] == props["spark.driver.bindAddress"] == "127.0.0.1"
    assert props["spark.dynamicAllocation.enabled"] == "true"
    assert props["spark.dynamicAllocation.maxExecutors"] == "3"
    # Like any lab application: event logs for the history server, the Arrow batch size.
    assert props["spark.eventLog.dir"] == cfg.events_dir.as_uri()
    assert props["spark.sql.execution.arrow.maxRecordsPerBatch"] == str(cfg.arrow_batch)
    # Stale copies readable by others are replaced by a private file, never written through.
    path.chmod(0o644)
    services.write_connect_conf(cfg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_connect_conf_in_a_container_listens_everywhere_and_names_its_driver(tmp_path):
    cfg = make_cfg(tmp_path, LAB_HOST="0.0.0.0", SPARK_MASTER_URL="spark://spark-master:7077",
                   LAB_DRIVER_HOST="spark-connect")
    props = _props(services.write_connect_conf(cfg))
    assert props["spark.master"] == "spark://spark-master:7077"
    assert props["spark.connect.grpc.binding.address"] == "0.0.0.0"
    assert props["spark.driver.host"] == "spark-connect"  # executors reach it by that name


def test_connect_server_never_runs_without_a_token(tmp_path):
    cfg = config.load({"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET": "s"})
    with pytest.raises(LaunchError, match="SPARK_CONNECT_AUTHENTICATE_TOKEN is not set: run "
                                          "`make env`"):
        services.write_connect_conf(cfg)
    with pytest.raises(LaunchError, match="SPARK_CONNECT_AUTHENTICATE_TOKEN is not set"):
        services.prepare(cfg, connect=True)
    assert not services.connect_conf_path(cfg).exists()
    services.prepare(cfg)  # the other Spark roles do not need it
    assert services.spark_conf_path(cfg).is_file()
    assert not services.connect_conf_path(cfg).exists()


def test_jupyter_writes_no_browser_open_file_with_the_token(tmp_path):
    from jupyter_server.serverapp import ServerApp

    [jupyter] = [s for s in services.services(make_cfg(tmp_path)) if s.role == "jupyter"]
    argv = services.service_command(jupyter, make_cfg(tmp_path))
    assert "--ServerApp.jpserver_extensions=lab_utils.ops.services=True" in argv
    # The switch the extension sets is the server's own (a rename would fail here, not silently).
    assert "no_browser_open_file" in ServerApp.class_trait_names()
    app = ServerApp()
    services._load_jupyter_server_extension(app)
    assert app.no_browser_open_file is True


def test_service_env_shares_one_interpreter(tmp_path):
    cfg = make_cfg(tmp_path)
    env = services.service_env(cfg, "jupyter")
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == sys.executable
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["SPARK_MASTER_URL"] == "spark://127.0.0.1:7077"
    assert env["LAB_INSTANCE"] == str(cfg.state_dir)
    # Kernels see the lab that started them, with its master URL made explicit.
    assert config.load(env) == dataclasses.replace(cfg, master_url=cfg.lab_master_url)


def test_daemon_java_options_reach_the_spark_daemons_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_DAEMON_JAVA_OPTS", "-Dmine=1")
    cfg = make_cfg(tmp_path)
    assert cfg.daemon_java_options == config.DEFAULT_DAEMON_JAVA_OPTIONS
    for role in ("master", "worker", "history"):
        # The user's own options stay, first; the lab's come after them.
        assert services.service_env(cfg, role)["SPARK_DAEMON_JAVA_OPTS"] == (
            "-Dmine=1 -XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    # Spark's launcher would hand them to the Connect server too (spark-submit of its main
    # class), a driver that does data work: it keeps only the user's own, as Spark would.
    assert services.service_env(cfg, "connect")["SPARK_DAEMON_JAVA_OPTS"] == "-Dmine=1"
    monkeypatch.delenv("SPARK_DAEMON_JAVA_OPTS")
    for role in ("model-server", "jupyter"):  # kernels' drivers and executors keep their JITs
        assert "SPARK_DAEMON_JAVA_OPTS" not in services.service_env(cfg, role)
    # Empty means the JVM's defaults, and survives the hand-over to the services' environment.
    plain = dataclasses.replace(cfg, daemon_java_options="")
    assert config.load(config.to_env(plain)).daemon_java_options == ""
    assert "SPARK_DAEMON_JAVA_OPTS" not in services.service_env(plain, "master")


def test_jupyter_never_starts_without_a_token(tmp_path):
    cfg = config.load({"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET": "s"})
    with pytest.raises(LaunchError, match="JUPYTER_TOKEN is not set: run `make env`"):
        native.run("jupyter", cfg)
    # Spark roles do not need it (the compose file gives it to JupyterLab only).
    services.prepare(cfg)
    assert (cfg.state_dir / "conf" / "spark-defaults.conf").is_file()


def test_service_env_ignores_stale_lab_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SMOKE", "1")
    monkeypatch.setenv("SPARK_AUTH_SECRET", "from-another-lab")
    cfg = make_cfg(tmp_path)  # its own secret, no smoke
    env = services.service_env(cfg, "jupyter")
    assert env["SPARK_AUTH_SECRET"] == "top-secret"
    assert "LAB_SMOKE" not in env


def test_model_server_role_needs_neither_java_nor_the_spark_secret(tmp_path):
    cfg = config.load({"LAB_ROOT": str(tmp_path), "LAB_MODEL_SERVER_PORT": "9501"})
    assert cfg.auth_secret is None
    services.prepare(cfg, spark=False)  # what `lab run model-server` does in its container
    assert (cfg.share_dir / "models").is_dir()
    assert not services.spark_conf_path(cfg).exists()
    assert "model-server" in services.ROLES and "model-server" not in services.SPARK_ROLES
    assert native.urls(cfg)["model_server"] == cfg.model_server_url == "http://127.0.0.1:9501"
    with pytest.raises(LaunchError, match="SPARK_AUTH_SECRET is not set"):
        services.prepare(cfg)  # the Spark roles still refuse to start without it


@pytest.mark.parametrize("as_files", [False, True])
def test_each_role_gets_only_its_secrets(tmp_path, as_files):
    if as_files:  # the containers' form: file names, never values, in the environment
        (tmp_path / "secret").write_text("top-secret\n")
        (tmp_path / "token").write_text("tok-value\n")
        (tmp_path / "connect").write_text("connect-value\n")
        cfg = config.load({"LAB_ROOT": str(tmp_path), "SPARK_AUTH_SECRET_FILE":
                           str(tmp_path / "secret"), "JUPYTER_TOKEN_FILE": str(tmp_path / "token"),
                           "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE": str(tmp_path / "connect")})
    else:
        cfg = make_cfg(tmp_path, JUPYTER_TOKEN="tok-value",
                       SPARK_CONNECT_AUTHENTICATE_TOKEN="connect-value")
    names = ("SPARK_AUTH_SECRET", "SPARK_AUTH_SECRET_FILE", "JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE",
             "SPARK_CONNECT_AUTHENTICATE_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE")
    found = {}
    for role in services.ROLES:
        env = services.service_env(cfg, role)
        found[role] = sorted(name for name in names if name in env)
        # Nor under another name: no value of a secret anywhere in a role that lacks it.
        values = " ".join(env.values())
        for value in ("tok-value", "top-secret", "connect-value"):
            assert (value in values) == (role == "jupyter" and not as_files), (role, value)
    given = ["SPARK_AUTH_SECRET_FILE", "JUPYTER_TOKEN_FILE",
             "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE"] if as_files else [
        "JUPYTER_TOKEN", "SPARK_AUTH_SECRET", "SPARK_CONNECT_AUTHENTICATE_TOKEN"]
    # Spark daemons read the secret from their 0600 properties file; workers pass it to their
    # executors themselves, which inherit the rest of a worker's environment. The Connect server
    # reads the secret and its token from its own 0600 file: Python it runs on its driver sees
    # neither. Kernels, its clients, get its token.
    assert found == {"master": [], "worker": [], "history": [], "connect": [], "model-server": [],
                     "jupyter": sorted(given)}
    assert services.ROLE_SECRETS["connect"] == ()
    assert "SPARK_CONNECT_AUTHENTICATE_TOKEN" in services.ROLE_SECRETS["jupyter"]


def test_no_secret_from_the_callers_environment_reaches_a_role(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_TOKEN", "stale-token")
    monkeypatch.setenv("JUPYTER_TOKEN_FILE", "/stale/file")
    monkeypatch.setenv("SPARK_CONNECT_AUTHENTICATE_TOKEN", "stale-connect-token")
    monkeypatch.setenv("SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE", "/stale/connect")
    cfg = make_cfg(tmp_path)
    for role in ("master", "worker", "history", "connect", "model-server"):
        env = services.service_env(cfg, role)
        assert not set(services.SECRETS) & env.keys(), role
        assert not {f"{name}_FILE" for name in services.SECRETS} & env.keys(), role
    jupyter = services.service_env(cfg, "jupyter")
    assert jupyter["JUPYTER_TOKEN"] == "tok"
    assert jupyter["SPARK_CONNECT_AUTHENTICATE_TOKEN"] == "connect-token"  # the lab's, not stale
    with pytest.raises(LaunchError, match="unknown role 'driver'"):
        services.service_env(cfg, "driver")
