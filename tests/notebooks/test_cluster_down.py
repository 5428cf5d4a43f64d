"""A notebook opened while the cluster is down: its first Spark cell says to run `make lab`.

The real notebook 00 runs in a real kernel (as in test_notebooks) with ``SPARK_MASTER_URL``
pointing at a closed port on 127.0.0.1. Execution stops at the cell that calls ``get_spark``;
what the user sees there is one clear error, not a Java stack trace.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening, closed on return: nobody answers
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cluster_down_names_make_lab(monkeypatch, tmp_path):
    master = f"spark://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("SPARK_MASTER_URL", master)  # the kernel inherits this environment
    monkeypatch.setenv("LAB_SMOKE", "1")
    nb = nbformat.read(ROOT / "notebooks" / "00_getting_started.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError):
        client.execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs)]
    assert len(failed) == 1
    cell = code[failed[0]]
    assert "get_spark(" in cell.source  # the first cell that needs the cluster
    assert all(c.execution_count for c in code[:failed[0]])  # the cells before it ran
    assert not any(c.execution_count for c in code[failed[0] + 1:])  # nothing after it

    error = next(o for o in cell.outputs if o.output_type == "error")
    assert error.ename == "ClusterUnavailableError"
    assert master in error.evalue and "`make lab`" in error.evalue
    shown = ANSI.sub("", "\n".join(error.traceback))
    assert "make lab" in shown
    # No JVM was started, so no Java frames; the whole traceback fits on a screen.
    assert not re.search(r"py4j|java\.|\bat org\.apache", shown, re.IGNORECASE), shown
    assert len(shown.splitlines()) <= 40, shown
