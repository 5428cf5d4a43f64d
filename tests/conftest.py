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
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab_utils.ops import native, services
from tests.utils.labs import LabCluster, lab_env

ROOT = Path(__file__).resolve().parent.parent

_DIR_MARKERS = {"unit": "unit", "spark": "spark", "cluster": "cluster", "browser": "browser",
                "notebooks": "notebooks", "packaging": "packaging", "gpu": "gpu",
                "docker": "docker"}


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


def pytest_collection_modifyitems(items):
    # The folder decides the marker, so `-m unit` and friends select exactly one layer.
    for item in items:
        layer = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if layer in _DIR_MARKERS:
            item.add_marker(getattr(pytest.mark, _DIR_MARKERS[layer]))


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
