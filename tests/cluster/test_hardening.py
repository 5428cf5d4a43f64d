"""Hardening, asserted from the operating system and the files the lab writes.

* every listening TCP socket of the native lab (daemons, executors, Python workers, JupyterLab,
  the driver, the Spark Connect server's gRPC port and its application's UI) is bound to
  loopback, read from the kernel's socket table;
* neither the Spark secret, the Jupyter token nor the Connect token appears in any log, executor
  output or event log the lab produced; the Connect server's properties file, which holds the
  secret and its token, is private;
* each process holds only the secrets its role needs, read from ``/proc/<pid>/environ``: the
  Jupyter token and the Connect token in JupyterLab alone (never in a daemon, the Connect server,
  an executor or a Spark task), no Spark secret in the model server;
* the Spark UIs kill nothing: a POST to the master's ``/app/kill/`` and to the driver's
  ``/stages/stage/kill/`` leaves the application and its running job alone.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lab_utils.common.process import wait_until
from lab_utils.ops import pids, services

LISTEN = "0A"


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # /proc/net/tcp6: four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return ipaddress.IPv6Address(words)


def _listening_inodes() -> dict[str, tuple[str, int]]:
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN:
                host, port = local.split(":")
                found[inode] = (str(_address(host)), int(port, 16))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _is_loopback(host: str) -> bool:
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def test_every_listening_socket_is_on_loopback(lab_cluster, spark):
    # Run a Python job first, so executors and their Python workers are up and listening.
    assert spark.sparkContext.parallelize(range(1000), 4).map(lambda x: x * 2).sum() == 999_000
    pid_of = set(pids.lab_processes(lab_cluster.cfg)) | _descendants(os.getpid())
    listening = _listening_inodes()
    sockets = []
    for pid in pid_of:
        for inode in _socket_inodes(pid) & listening.keys():
            host, port = listening[inode]
            sockets.append((pid, host, port))
    ports = {port for _, _, port in sockets}
    cfg = lab_cluster.cfg
    # The services' own ports are among them, so the scan sees the lab: the Connect server's
    # gRPC port (every client's way in) and its application's UI included.
    assert {cfg.master_port, cfg.master_ui_port, cfg.history_port, cfg.jupyter_port,
            cfg.model_server_port, cfg.connect_port, cfg.connect_ui_port} <= ports, sorted(ports)
    connect_pid = pids.running_pid(cfg, "connect")
    assert connect_pid is not None
    assert {cfg.connect_port, cfg.connect_ui_port} <= {
        port for pid, _, port in sockets if pid == connect_pid}  # its own, not another's
    assert len(sockets) >= 8
    exposed = [s for s in sockets if not _is_loopback(s[1])]
    assert not exposed, f"sockets not on loopback (pid, address, port): {exposed}"


def _files_written_by_the_lab(cfg) -> list[Path]:
    roots = [cfg.state_dir / "logs", cfg.state_dir / "work", cfg.share_dir / "spark-events"]
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def _contents(path: Path) -> bytes:
    """A file's bytes as a reader sees them: Spark 4 writes event logs zstd-compressed
    (``events_1_<app>.zstd``), where a secret's bytes would not show; a log still being written
    is read as far as it goes."""
    data = path.read_bytes()
    if ".zstd" not in path.name:
        return data
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(data)


def test_no_secret_in_logs_or_event_logs(lab_cluster, spark):
    # A job first, so the executors have written their output.
    assert spark.sparkContext.parallelize(range(10), 2).map(lambda x: x).count() == 10
    secret = lab_cluster.env["SPARK_AUTH_SECRET"]
    token = lab_cluster.env["JUPYTER_TOKEN"]
    connect_token = lab_cluster.env["SPARK_CONNECT_AUTHENTICATE_TOKEN"]
    files = _files_written_by_the_lab(lab_cluster.cfg)
    assert any(p.name == "stderr" for p in files), "no executor output found to check"
    assert any(p.suffix == ".log" for p in files)
    # The Connect server's log and its application's event log are among the files checked.
    assert lab_cluster.cfg.state_dir / "logs" / "connect.log" in files
    [connect_app] = [app["id"] for app in services.master_state(lab_cluster.cfg)["activeapps"]
                     if app["name"] == "Spark Connect server"]
    assert any(connect_app in p.name for p in files), "no event log of the Connect server"
    # The event logs are read decompressed: this session's own, with its jobs, shows.
    events = [_contents(p) for p in files if ".zstd" in p.name]
    assert any(spark.sparkContext.applicationId.encode() in data and b"SparkListenerJobEnd"
               in data for data in events), "event logs unreadable"
    leaks = []
    for path in files:
        data = _contents(path)
        leaks += [(str(path), what) for what, value in (
            ("secret", secret), ("token", token), ("Connect token", connect_token))
                  if value.encode() in data]
    assert not leaks, leaks
    # The files that must hold the secret (and the Connect token) are private to their owner.
    conf = services.spark_conf_path(lab_cluster.cfg)
    assert secret in conf.read_text()
    assert conf.stat().st_mode & 0o077 == 0
    connect_conf = services.connect_conf_path(lab_cluster.cfg)
    assert secret in connect_conf.read_text() and connect_token in connect_conf.read_text()
    assert connect_conf.stat().st_mode & 0o077 == 0


def _environ(pid: int) -> dict[bytes, bytes]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.partition(b"=")[::2] for item in raw.split(b"\0") if item)


def _holds(pid: int, names: set[str], values: dict[str, str]) -> list[str]:
    """Which of ``names`` and of the secrets in ``values`` process ``pid``'s environment holds
    (the labels of the values, never the values: assertion messages end up in CI logs)."""
    env = _environ(pid)
    found = sorted(name for name in names if name.encode() in env)
    found += [f"the {label}'s value" for label, value in values.items()
              if any(value.encode() in item for item in env.values())]
    return found


def test_each_process_holds_only_the_secrets_of_its_role(lab_cluster, spark):
    cfg = lab_cluster.cfg
    token = {"token": lab_cluster.env["JUPYTER_TOKEN"],
             "Connect token": lab_cluster.env["SPARK_CONNECT_AUTHENTICATE_TOKEN"]}
    secret = {"Spark secret": lab_cluster.env["SPARK_AUTH_SECRET"]}
    token_names = {"JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "SPARK_CONNECT_AUTHENTICATE_TOKEN",
                   "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE"}
    secret_names = {"SPARK_AUTH_SECRET", "SPARK_AUTH_SECRET_FILE", "_SPARK_AUTH_SECRET"}
    pid_of = {s.name: pids.running_pid(cfg, s.name) for s in services.services(cfg)}
    assert all(pid_of.values()), pid_of
    assert "connect" in pid_of
    # The scan can see a token: JupyterLab's (which its kernels inherit) holds both; kernels
    # are the Connect server's clients.
    assert _holds(pid_of["jupyter"], {"JUPYTER_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN"},
                  token) == ["JUPYTER_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN",
                             "the token's value", "the Connect token's value"]
    held = {name: _holds(pid, token_names | {"SPARK_AUTH_SECRET", "SPARK_AUTH_SECRET_FILE"},
                         {**token, **secret})
            for name, pid in pid_of.items() if name != "jupyter"}
    # Spark daemons read the secret from their properties file, never from the environment; the
    # Connect server reads the secret and its token from its own.
    assert held == {name: [] for name in held}, held

    def task_and_executor(_rows):
        # Runs as a Spark task (nested: tests/ is not importable on executors, so cloudpickle
        # ships it by value): (pid of this Python worker, pid of its executor JVM).
        pid = jvm = os.getpid()
        while jvm > 1 and b"CoarseGrainedExecutorBackend" not in Path(
                f"/proc/{jvm}/cmdline").read_bytes():
            jvm = int(Path(f"/proc/{jvm}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return [(pid, jvm)]

    # Every Spark task and its executor inherit a worker's environment (plus what Spark adds:
    # the executor gets the Spark secret from its worker as _SPARK_AUTH_SECRET, by design).
    found = set(spark.sparkContext.parallelize(range(4), 4).mapPartitions(
        task_and_executor).collect())
    assert found and all(jvm > 1 for _, jvm in found), found
    for python, jvm in found:
        assert b"CoarseGrainedExecutorBackend" in Path(f"/proc/{jvm}/cmdline").read_bytes()
        assert _holds(python, token_names, token) == [], "Python worker"
        assert _holds(jvm, token_names, token) == [], "executor"
    assert _holds(pid_of["model-server"], secret_names, secret) == []


def _post(url: str, fields: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(),
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:  # refused outright (405, 403): fine too
        return exc.code


def test_the_spark_uis_kill_nothing(lab_cluster, spark):
    sc = spark.sparkContext
    done: dict[str, object] = {}

    def slow(x: int) -> int:  # nested: shipped by value (tests/ is not on executors)
        import time

        time.sleep(4)
        return x

    def job() -> None:
        try:
            done["sum"] = sc.parallelize(range(2), 2).map(slow).sum()
        except Exception as exc:  # noqa: BLE001 (a killed stage: reported below)
            done["error"] = repr(exc)

    thread = threading.Thread(target=job)
    thread.start()
    assert wait_until(lambda: sc.statusTracker().getActiveStageIds(), 30, 0.1)
    stage = sc.statusTracker().getActiveStageIds()[0]
    # Each UI's own kill link, as a local process (no login, no token) would post it.
    _post(f"{sc.uiWebUrl}/stages/stage/kill/", {"id": str(stage), "terminate": "true"})
    _post(f"{lab_cluster.cfg.master_ui_url}/app/kill/",
          {"id": sc.applicationId, "terminate": "true"})
    thread.join(60)
    assert done == {"sum": 1}
    running = [app["id"] for app in services.master_state(lab_cluster.cfg)["activeapps"]]
    assert sc.applicationId in running
    assert sc.parallelize(range(3)).count() == 3  # the application still takes jobs


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_loopback_detection(host):
    assert _is_loopback(host)
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::")
