"""Benchmark: a fresh kernel to a ready session and a first answer, classic against Connect.

Measured side by side in one run on one machine, on a private native lab the suite starts
(2 workers, the lab's defaults, its own ports, secrets and folders; the Connect server's idle
timeout shortened to ``idle_timeout`` seconds so that a cold start can be waited for) and
stops. Every measurement is a new Python process with a notebook kernel's environment
(:mod:`lab_utils.bench.session_probe`): import, ``get_spark``, ``spark.range(10).count()``.

Three probes, each run ``rounds`` times, alternated:

* ``classic``: ``get_spark`` starts a driver JVM in the kernel, registers an application with
  the master, and the first query waits for its executors;
* ``connect_warm``: ``LAB_SPARK_API=connect``, just after another client's query (an untimed
  probe), so the server's application still holds executors;
* ``connect_cold``: the same once the server's application has given every executor back
  (dynamic allocation, after the idle timeout, checked on its REST API), so the first query
  waits for an executor to start: the first query of the day.

Each round runs ``classic`` and ``connect_warm`` in turn, the order swapped every round, then
waits for the executors to go and runs ``connect_cold``. The table gives the median and range
of each probe and the ratio of the classic median to each probe's. Output:
``share_storages/output/bench/session.{csv,json}`` (medians) and ``session_runs.csv``
(every probe, the load average at its start included). ``python -m lab_utils.bench --suites
session`` runs it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lab_utils import config as lab_config
from lab_utils.bench.cases import BenchError
from lab_utils.bench.session_probe import MARKER
from lab_utils.bench.training_suite import cpu_model
from lab_utils.common import net
from lab_utils.ops import native, services

CLASSIC, WARM, COLD = "classic", "connect_warm", "connect_cold"
PROBES = (CLASSIC, WARM, COLD)
#: The probe's figures, in the order a reader wants them.
FIGURES = ("ready_s", "import_s", "session_s", "query_s", "process_s")
#: The lab's ports, each in its own variable (the workers' UI ports count up from the last).
PORT_VARIABLES = ("LAB_MASTER_PORT", "LAB_MASTER_UI_PORT", "LAB_HISTORY_PORT",
                  "LAB_JUPYTER_PORT", "LAB_MODEL_SERVER_PORT", "LAB_CONNECT_PORT",
                  "LAB_CONNECT_UI_PORT", "LAB_WORKER_UI_PORT")
SECRET_VARIABLES = ("SPARK_AUTH_SECRET", "JUPYTER_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN")


def private_lab_env(folder: Path, *, idle_timeout: int, workers: int = 2,
                    base: Mapping[str, str] | None = None,
                    ports: list[int] | None = None) -> dict[str, str]:
    """The environment of a private lab in ``folder``: its own state and share folders, ports
    and secrets; nothing of the developer's lab (its ``LAB_*`` settings, secrets, master URL)
    is kept from ``base`` (default ``os.environ``).

    Examples
    --------
    >>> env = private_lab_env(Path("/tmp/x"), idle_timeout=10, base={"PATH": "/bin",
    ...     "LAB_WORKERS": "5", "SPARK_MASTER_URL": "spark://elsewhere:7077"},
    ...     ports=list(range(30000, 30008)))
    >>> env["LAB_CONNECT_IDLE_TIMEOUT"], env["LAB_WORKERS"], "SPARK_MASTER_URL" in env
    ('10', '2', False)
    >>> env["LAB_CONNECT_PORT"], env["LAB_STATE_DIR"]
    ('30005', '/tmp/x/state')
    """
    base = os.environ if base is None else base
    ports = ports if ports is not None else net.free_ports(len(PORT_VARIABLES))
    if len(set(ports)) != len(PORT_VARIABLES):
        raise BenchError(f"a private lab needs {len(PORT_VARIABLES)} distinct ports, got {ports}")
    env = {k: v for k, v in base.items()
           if k not in lab_config.VARIABLES and not k.startswith("LAB_")
           and k not in {"SPARK_REMOTE", *SECRET_VARIABLES}}
    env.update(dict(zip(PORT_VARIABLES, map(str, ports), strict=True)))
    env.update({name: secrets.token_urlsafe(24) for name in SECRET_VARIABLES})
    env.update(
        LAB_STATE_DIR=str(folder / "state"),
        LAB_SHARE_DIR=str(folder / "share_storages"),
        LAB_WORKERS=str(workers),
        LAB_CONNECT_IDLE_TIMEOUT=str(idle_timeout),
        LAB_START_TIMEOUT="240",  # a loaded 2-core machine: the Connect server alone takes ~16 s
    )
    return env


def probe_env(lab: lab_config.LabConfig, probe: str) -> dict[str, str]:
    """A notebook kernel's environment on ``lab``, in the probe's mode."""
    env = services.service_env(lab, "jupyter")
    env["LAB_SPARK_API"] = "classic" if probe == CLASSIC else "connect"
    env["LAB_SPARK_REMOTE"] = ""  # the lab's own server, whatever a .env says
    env.pop("SPARK_REMOTE", None)
    return env


def parse_probe(stdout: str) -> dict[str, Any]:
    """The probe's figures from its stdout (the last line that starts with :data:`MARKER`).

    >>> parse_probe('noise\\nSESSION_PROBE {"ready_s": 2.5, "rows": 10}\\n')
    {'ready_s': 2.5, 'rows': 10}
    """
    lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
    if not lines:
        raise BenchError("the session probe printed no result line; its output ends:\n"
                         + stdout[-2000:])
    return dict(json.loads(lines[-1][len(MARKER):]))


def round_plan(rounds: int) -> list[list[str]]:
    """The probes of each round: classic and warm Connect alternate which goes first, the
    cold Connect probe always last (it waits for the executors to go).

    >>> round_plan(2)
    [['classic', 'connect_warm', 'connect_cold'], ['connect_warm', 'classic', 'connect_cold']]
    """
    return [[CLASSIC, WARM, COLD] if i % 2 == 0 else [WARM, CLASSIC, COLD]
            for i in range(rounds)]


def executor_count(executors: list[dict[str, Any]]) -> int:
    """Active executors in an application's ``/executors`` REST answer (the driver is listed
    there too, and is not one).

    >>> executor_count([{"id": "driver"}, {"id": "0"}, {"id": "3"}])
    2
    """
    return sum(1 for e in executors if e.get("id") != "driver")


def connect_executors(lab: lab_config.LabConfig, timeout: float = 5.0) -> int:
    """Executors the lab's Connect server's application holds now (its UI's REST API)."""
    base = f"http://127.0.0.1:{lab.connect_ui_port}/api/v1/applications"
    with urllib.request.urlopen(base, timeout=timeout) as answer:
        apps = json.load(answer)
    with urllib.request.urlopen(f"{base}/{apps[0]['id']}/executors", timeout=timeout) as answer:
        return executor_count(json.load(answer))


def wait_for_no_executors(lab: lab_config.LabConfig, limit: float) -> float:
    """Wait until the Connect server's application holds no executor; return the seconds
    waited."""
    began = time.perf_counter()
    while connect_executors(lab):
        if time.perf_counter() - began > limit:
            raise BenchError(f"the Connect server's application still holds executors after "
                             f"{limit:.0f} s (idle timeout {lab.connect_idle_timeout} s)")
        time.sleep(0.5)
    return time.perf_counter() - began


def run_probe(lab: lab_config.LabConfig, probe: str, timeout: float = 300) -> dict[str, Any]:
    """One probe in a fresh Python; its figures plus ``process_s`` (the process's whole life,
    the interpreter's start and the session's stop included) and the load average."""
    load = os.getloadavg()[0]
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lab_utils.bench.session_probe"],
                          env=probe_env(lab, probe), capture_output=True, text=True,
                          timeout=timeout)
    process_s = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchError(f"the {probe} probe failed (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    figures = parse_probe(done.stdout)
    expected = "classic" if probe == CLASSIC else "connect"
    if figures.get("api") != expected or figures.get("rows") != 10:
        raise BenchError(f"the {probe} probe measured the wrong thing: {figures}")
    return {"probe": probe, **figures, "process_s": process_s, "load_1min": load}


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per probe: the median of each figure, the range of ``ready_s``, and the ratio
    of the classic median ``ready_s`` to the probe's (how many times faster than classic).

    >>> runs = pd.DataFrame({"probe": ["classic", "connect_warm", "classic", "connect_warm"],
    ...     "ready_s": [20.0, 2.0, 16.0, 3.0], "import_s": 0.1, "session_s": 1.0,
    ...     "query_s": 1.0, "process_s": 3.0, "executors_before": [0, 2, 0, 2]})
    >>> summarize(runs)[["probe", "runs", "ready_s", "ready_s_max", "classic_over"]]
              probe  runs  ready_s  ready_s_max  classic_over
    0       classic     2     18.0         20.0           1.0
    1  connect_warm     2      2.5          3.0           7.2
    """
    order = [p for p in PROBES if p in set(runs["probe"])]
    grouped = runs.groupby("probe")
    table = grouped[list(FIGURES)].median().reindex(order)
    table.insert(0, "runs", grouped.size().reindex(order))
    table["ready_s_min"] = grouped["ready_s"].min().reindex(order)
    table["ready_s_max"] = grouped["ready_s"].max().reindex(order)
    if "executors_before" in runs:
        table["executors_before"] = grouped["executors_before"].median().reindex(order)
    classic = table["ready_s"].get(CLASSIC, float("nan"))
    table["classic_over"] = classic / table["ready_s"]
    return table.reset_index()


def report(table: pd.DataFrame) -> str:
    lines = [table.to_string(index=False, float_format=lambda v: f"{v:.2f}")]
    for row in table.itertuples():
        if row.probe != CLASSIC:
            lines.append(f"{row.probe}: ready in {row.ready_s:.2f} s (median of {row.runs}), "
                         f"{row.classic_over:.1f}x faster than a classic session")
    return "\n".join(lines)


def run(*, rounds: int = 5, idle_timeout: int = 10, out_dir: Path | None = None,
        progress: Callable[[str], object] = print) -> pd.DataFrame:
    """Start a private lab, run the probes ``rounds`` times, stop the lab; return the summary
    (:func:`summarize`) and write it with every run to ``out_dir``."""
    out_dir = out_dir or lab_config.load().share_dir / "output" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-session-lab-"))
    lab = lab_config.load(private_lab_env(folder, idle_timeout=idle_timeout))
    began = time.perf_counter()
    runs: list[dict[str, Any]] = []
    try:
        native.start(lab, jupyter=False, connect=True, out=lambda *_: None)
        progress(f"private lab up in {time.perf_counter() - began:.0f} s "
                 f"({lab.workers} workers x {lab.worker_cores} cores, Connect idle timeout "
                 f"{idle_timeout} s)")
        # Untimed: the first JVM and Python of the run read their files from disk; every
        # timed probe then finds them in the page cache.
        for probe in (CLASSIC, WARM):
            run_probe(lab, probe)
        for number, plan in enumerate(round_plan(rounds), 1):
            for probe in plan:
                waited = 0.0
                if probe == WARM:
                    run_probe(lab, WARM)  # another client's query: the executors are there
                if probe == COLD:
                    waited = wait_for_no_executors(lab, limit=idle_timeout + 120)
                before = connect_executors(lab)
                result = run_probe(lab, probe)
                runs.append({**result, "round": number, "executors_before": before,
                             "executors_after": connect_executors(lab),
                             "waited_for_idle_s": waited})
                progress(f"round {number}/{rounds} {probe}: ready in {result['ready_s']:.2f} s "
                         f"(session {result['session_s']:.2f} s, first query "
                         f"{result['query_s']:.2f} s; Connect executors before {before}, "
                         f"load {result['load_1min']:.2f})")
    finally:
        native.stop(lab, out=lambda *_: None)
        shutil.rmtree(folder, ignore_errors=True)
    table = pd.DataFrame(runs)
    table["cpu"] = cpu_model()
    table["cpu_count"] = os.cpu_count()
    table["workers"] = lab.workers
    table["worker_cores"] = lab.worker_cores
    table["idle_timeout_s"] = idle_timeout
    table.to_csv(out_dir / "session_runs.csv", index=False)
    summary = summarize(table)
    summary["cpu"] = cpu_model()
    summary.to_csv(out_dir / "session.csv", index=False)
    (out_dir / "session.json").write_text(summary.to_json(orient="records", indent=2))
    progress(f"results in {out_dir / 'session.csv'} and session_runs.csv")
    return summary
