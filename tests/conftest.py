"""Shared fixtures. The layout says what each test needs:

* ``unit/``       pure Python, no cluster, no JVM;
* ``spark/``      Spark functions on one ``local[2]`` session (no cluster, one JVM);
* ``cluster/``    a real native standalone cluster (master + 2 workers + history + JupyterLab,
                  authentication on), started once per session by ``lab_cluster``;
* ``browser/``    the lab as a user sees it: Debian's chromium driven by Playwright runs
                  notebook 01 in JupyterLab and reads the Spark UIs;
* ``notebooks/``  every notebook executed against that cluster at smoke size;
* ``packaging/``  the compose file and the Dockerfiles, checked statically;
* ``gpu/``        the digits model and the partition predictor on an NVIDIA GPU, compared with
                  the CPU (skipped, in one line, without a usable GPU);
* ``docker/``     both images built, the compose lab up, notebooks run in its JupyterLab.

Every test has a time limit, its layer's (:data:`LAYER_TIMEOUTS`), enforced by pytest-timeout.
"""

from __future__ import annotations

import faulthandler
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_timeout

from lab_utils.ops import native, services
from tests.utils.labs import LabCluster, lab_env

ROOT = Path(__file__).resolve().parent.parent

_DIR_MARKERS = {"unit": "unit", "spark": "spark", "cluster": "cluster", "browser": "browser",
                "notebooks": "notebooks", "packaging": "packaging", "gpu": "gpu",
                "docker": "docker"}


#: Seconds a test of each layer may take, its fixtures' setup and teardown included (so the
#: first test of a layer also pays for starting the cluster or building the images), before
#: pytest-timeout fails it. Far above the slowest runs measured (docs/testing.md, "Test time";
#: the same suite has taken twice as long on another machine of the project's kind) and above
#: the layers' own bounds, so that those fail first with the better message: mypy's 300 s
#: (packaging), the worker-loss driver's 600 s (cluster), Run All's 900 s (browser), a cell's
#: 900 s, while a test waits for the notebooks ahead of it in its lane (notebooks), an
#: uncached image build and a 1,200 s notebook run in the container (docker).
#: pyproject.toml's ``timeout`` is the default; an explicit ``--timeout`` or ``PYTEST_TIMEOUT``
#: replaces these for every test (``--timeout=0``: none).
LAYER_TIMEOUTS = {"unit": 120, "spark": 300, "packaging": 600, "gpu": 900, "cluster": 1200,
                  "browser": 1800, "notebooks": 1800, "docker": 3600}

#: Seconds after its timeout before a test that is still running stops the whole run, with the
#: stack of every thread. pytest-timeout's "signal" method (pyproject.toml) fails a test by
#: raising in the main thread, so its ``finally`` blocks and fixtures still stop the processes
#: and containers it started (they run in sessions of their own and would outlive a killed
#: pytest; the "thread" method's os._exit() skips all teardown). A main thread stuck in C code
#: never sees that exception: faulthandler's watchdog, a C thread that needs no GIL, then ends
#: the process, after leaving the teardown this much time (a lab's stop, `docker-compose down`,
#: the notebook a lane is running).
HARD_STOP_GRACE_S = 600
_WATCHDOG_FD = pytest.StashKey[int]()  # where the watchdog writes: see pytest_configure

OUTPUT = ROOT / "test-output"
_SESSION_START = time.time()


#: A folder with more fresh files than this is one summary line (the Docker lab's share folder
#: holds hundreds of data files; the screenshots are worth listing one by one).
_LIST_AT_MOST = 12


def pytest_terminal_summary(terminalreporter):
    # Screenshots and other artefacts the tests wrote this run, listed even when every test
    # passes, so a CI log shows where to look (test-output/ is kept, never committed).
    if not OUTPUT.is_dir():
        return
    files = sorted(p for p in OUTPUT.rglob("*") if p.is_file())
    fresh = [p for p in files if p.stat().st_mtime >= _SESSION_START]
    if not fresh:
        return
    terminalreporter.section(f"files written under {OUTPUT.relative_to(ROOT)}/ by this run")
    groups: dict[Path, list[Path]] = {}
    for path in fresh:  # grouped by their folder two levels under test-output/
        rel = path.relative_to(OUTPUT)
        groups.setdefault(OUTPUT.joinpath(*rel.parts[:min(2, len(rel.parts) - 1)]), []).append(path)
    for folder, paths in groups.items():
        if len(paths) > _LIST_AT_MOST:
            size = sum(p.stat().st_size for p in paths)
            terminalreporter.write_line(
                f"{folder.relative_to(ROOT)}/  {len(paths):,} files, {size:,} bytes")
            continue
        for path in paths:
            terminalreporter.write_line(f"{path.relative_to(ROOT)}  {path.stat().st_size:,} bytes")
    for path in fresh:  # a layer's one-line account of its costs (tests/docker writes one)
        if path.name.endswith(".summary.txt"):
            terminalreporter.write_line(path.read_text().strip())
    if len(files) > len(fresh):
        older = len(files) - len(fresh)
        terminalreporter.write_line(f"(and {older} older files from earlier runs)")


def pytest_collection_modifyitems(config, items):
    # The folder decides the marker, so `-m unit` and friends select exactly one layer, and the
    # time limit, unless the command line or PYTEST_TIMEOUT names one for every test. A
    # test's own @pytest.mark.timeout comes first and wins over its layer's (appended here).
    by_layer = config.getoption("timeout") is None and not os.environ.get("PYTEST_TIMEOUT")
    for item in items:
        layer = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if layer in _DIR_MARKERS:
            item.add_marker(getattr(pytest.mark, _DIR_MARKERS[layer]))
        if by_layer and layer in LAYER_TIMEOUTS:
            item.add_marker(pytest.mark.timeout(LAYER_TIMEOUTS[layer]))


def pytest_configure(config):
    # The watchdog writes to the terminal's stderr, not to a test's captured one (lost when the
    # process ends): capture is off while plugins are configured, so fd 2 is the terminal here.
    config.stash[_WATCHDOG_FD] = os.dup(2)


def pytest_unconfigure(config):
    os.close(config.stash[_WATCHDOG_FD])


@pytest.hookimpl(optionalhook=True)  # optional: `-p no:timeout` turns the plugin off
def pytest_timeout_set_timer(item, settings):
    # Armed with pytest-timeout's own timer (this returns None, so that one is set too), with
    # the same timeout, unless a debugger holds the test (as that timer does); cancelled with
    # it below, and by pytest when it enters pdb.
    if settings.disable_debugger_detection or not pytest_timeout.is_debugging():
        faulthandler.dump_traceback_later(settings.timeout + HARD_STOP_GRACE_S, exit=True,
                                          file=item.config.stash[_WATCHDOG_FD])


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item):
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def lab_cluster(tmp_path_factory) -> Iterator[LabCluster]:
    """The real native lab (as `make lab` starts it), private to this test session.

    The process environment points at it while tests run, like a notebook kernel's does.
    """
    env = lab_env(tmp_path_factory.mktemp("lab"))
    cluster = LabCluster(env)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        cluster.urls = native.start(cluster.cfg, out=lambda *_: None)
        os.environ.update(services.service_env(cluster.cfg, "jupyter"))
        yield cluster
    finally:
        native.stop(cluster.cfg, out=lambda *_: None)
        os.environ.clear()
        os.environ.update(saved)
