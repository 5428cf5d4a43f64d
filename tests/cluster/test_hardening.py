"""Hardening, asserted from the operating system and the files the lab writes.

* every listening TCP socket of the native lab (daemons, executors, Python workers, JupyterLab,
  the driver) is bound to loopback, read from the kernel's socket table;
* neither the Spark secret nor the Jupyter token appears in any log, executor output or event
  log the lab produced.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from lab_utils.ops import lab

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
    pids = set(lab._lab_processes(lab_cluster.cfg)) | _descendants(os.getpid())
    listening = _listening_inodes()
    sockets = []
    for pid in pids:
        for inode in _socket_inodes(pid) & listening.keys():
            host, port = listening[inode]
            sockets.append((pid, host, port))
    ports = {port for _, _, port in sockets}
    cfg = lab_cluster.cfg
    # The services' own ports are among them, so the scan sees the lab.
    assert {cfg.master_port, cfg.master_ui_port, cfg.history_port, cfg.jupyter_port} <= ports
    assert len(sockets) >= 8
    exposed = [s for s in sockets if not _is_loopback(s[1])]
    assert not exposed, f"sockets not on loopback (pid, address, port): {exposed}"


def _files_written_by_the_lab(cfg) -> list[Path]:
    roots = [cfg.state_dir / "logs", cfg.state_dir / "work", cfg.share_dir / "spark-events"]
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_no_secret_in_logs_or_event_logs(lab_cluster, spark):
    # A job first, so the executors have written their output.
    assert spark.sparkContext.parallelize(range(10), 2).map(lambda x: x).count() == 10
    secret = lab_cluster.env["SPARK_AUTH_SECRET"]
    token = lab_cluster.env["JUPYTER_TOKEN"]
    files = _files_written_by_the_lab(lab_cluster.cfg)
    assert any(p.name == "stderr" for p in files), "no executor output found to check"
    assert any(p.suffix == ".log" for p in files)
    leaks = []
    for path in files:
        data = path.read_bytes()
        leaks += [(str(path), what) for what, value in (("secret", secret), ("token", token))
                  if value.encode() in data]
    assert not leaks, leaks
    # The one file that must hold the secret is private to its owner.
    conf = lab.spark_conf_path(lab_cluster.cfg)
    assert secret in conf.read_text()
    assert conf.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_loopback_detection(host):
    assert _is_loopback(host)
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::")
