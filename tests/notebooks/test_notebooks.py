"""Every notebook, executed top to bottom on the test cluster at smoke size (LAB_SMOKE=1).

Each notebook records the figures it computed (lab_utils.notebooks.record_results); the checks
below assert them. A notebook without a check fails: running is not passing.

Notebook 01 is executed once per test run, in a real browser by tests/browser/test_browser.py,
which asserts its check below on the figures that run recorded; it is not executed here again.

The others run in two lanes at once (:data:`LANES`), each notebook its own kernel and its own
Spark application, as two users of the lab would: the test cluster offers 4 cores and each
application may hold 2 (``LAB_APP_CORES_MAX``), so two applications run side by side. Much of a
notebook's time is spent starting JVMs, Python workers and TensorFlow, or waiting on them, and
the lanes overlap those waits. A lane runs its notebooks in order; notebooks that write the same
files (02 and 03 both build the ResNet-50 folder) share a lane. No check asserts a timing ratio
beyond "positive", so the overlap cannot make a check pass or fail.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from lab_utils import notebooks
from tests.utils.notebook_checks import CHECKS

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: Notebooks another layer executes (and asserts with the same CHECKS), so this one skips them.
RUN_ELSEWHERE = {
    "01_udf_inference_keras": ("tests/browser/test_browser.py",
                               "run in JupyterLab by the browser test (make test-browser), which "
                               "asserts check_01_udf_inference_keras on the figures it recorded"),
}


def test_every_notebook_has_a_check():
    assert NOTEBOOKS, "no notebooks found"
    assert {nb.stem for nb in NOTEBOOKS} == set(CHECKS), "one check per notebook, no stale ones"


#: Notebooks executed one after the other in each lane; the lanes run at the same time. Balanced
#: by their measured smoke times (about 8 and 10 minutes alone, on 2 cores).
LANES = (
    ("00_getting_started", "02_benchmark_udf_styles", "03_resnet50_batch_inference",
     "08_external_api_scoring"),
    ("05_parallel_training", "06_timeseries_windows_tfrecord", "04_partition_predictor",
     "07_audio_features"),
)


def test_every_notebook_runs_in_exactly_one_lane_or_elsewhere():
    laned = [stem for lane in LANES for stem in lane]
    assert len(laned) == len(set(laned))
    assert set(laned) | set(RUN_ELSEWHERE) == {nb.stem for nb in NOTEBOOKS}
    assert not set(laned) & set(RUN_ELSEWHERE)


def _execute(path: Path, cfg) -> dict:
    """Run ``path`` top to bottom in a fresh kernel; return the figures it recorded."""
    notebooks.results_path(path.stem, cfg).unlink(missing_ok=True)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()  # raises CellExecutionError, with the failing cell, if any cell fails
    finally:
        out = cfg.share_dir / "output" / "executed"
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / path.name)  # kept for a human to read when a check fails
    return notebooks.load_results(path.stem, cfg)


@pytest.fixture(scope="module")
def executed(request, lab_cluster):
    """Start the lanes once, with the notebooks this run selected (``-k 05`` runs one); one
    Future (the figures the notebook recorded) per notebook."""
    from lab_utils.training.cnn import ensure_model

    assert os.environ["LAB_SMOKE"] == "1"
    # The digits model must exist before two lanes could both find it missing and train it.
    ensure_model(lab_cluster.cfg)
    by_stem = {nb.stem: nb for nb in NOTEBOOKS}
    selected = {item.callspec.params["path"].stem for item in request.session.items
                if getattr(item, "originalname", "") == "test_notebook_runs_on_the_cluster"}
    lanes = [[stem for stem in lane if stem in selected] for lane in LANES]
    futures: dict[str, Future] = {stem: Future() for lane in lanes for stem in lane}
    stop = threading.Event()

    def run_lane(lane):
        for stem in lane:
            if stop.is_set():
                futures[stem].cancel()
                continue
            futures[stem].set_running_or_notify_cancel()
            try:
                futures[stem].set_result(_execute(by_stem[stem], lab_cluster.cfg))
            except BaseException as exc:  # noqa: BLE001 - handed to that notebook's test
                futures[stem].set_exception(exc)

    pool = ThreadPoolExecutor(max_workers=len(LANES), thread_name_prefix="notebook-lane")
    running = [pool.submit(run_lane, lane) for lane in lanes if lane]
    try:
        yield futures
    finally:
        stop.set()  # a run cut short (Ctrl-C, -x) does not start further notebooks
        for lane in running:
            lane.result()
        pool.shutdown()


def test_notebooks_run_elsewhere_are_checked_there():
    # A skip below is only honest while the other layer really runs the notebook and its check.
    for stem, (test_file, _) in RUN_ELSEWHERE.items():
        source = (ROOT / test_file).read_text()
        assert stem in source and "CHECKS[" in source, f"{test_file} no longer checks {stem}"


def test_notebooks_are_stripped():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [c for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name} has outputs: run `make strip-notebooks`"


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.skip(reason=RUN_ELSEWHERE[p.stem][1]))
    if p.stem in RUN_ELSEWHERE else p for p in NOTEBOOKS], ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_the_cluster(path, executed):
    CHECKS[path.stem](executed[path.stem].result())


