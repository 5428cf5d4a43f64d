"""Every notebook, executed top to bottom on the test cluster at smoke size (LAB_SMOKE=1).

Each notebook records the figures it computed (lab_utils.notebooks.record_results); the checks
below assert them. A notebook without a check fails: running is not passing.

Notebook 01 is executed once per test run, in a real browser by tests/browser/test_browser.py,
which asserts its check below on the figures that run recorded; it is not executed here again.

Every notebook also runs under Spark Connect (``LAB_SPARK_API=connect``: a thin client of the
lab's Connect server), 01 included, and its figures pass the same check.

The runs go in two lanes at once (:data:`LANES`), each notebook its own kernel, as two users of
the lab would. A classic run is its own Spark application; the Connect runs are sessions of the
Connect server's one application. The test cluster offers 4 cores and each application may hold
2 (``LAB_APP_CORES_MAX``), so two applications run side by side. Much of a
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


APIS = ("classic", "connect")

#: (notebook, Spark API) runs executed one after the other in each lane; the lanes run at the
#: same time. Each lane runs its classic notebooks first: while one lane is still classic and
#: the other on Connect, the two applications hold the cluster's 4 cores between them.
#: Balanced by their measured smoke times on 2 cores (2026-12-08, a quiet CI run: the cell
#: times sum to about 19.1 min in the first lane and 19.2 in the second). Notebook 04's
#: classic run asks for one 2-core executor (its stage-level scheduling section runs 2-cpu
#: tasks), so it needs a worker
#: with both cores free: it comes third in its lane, while the other lane is still on classic
#: notebooks (05 and 06 together take less time than 00, 02 and 03), and waits at most for that
#: notebook's application to end, never for a Connect server kept busy by the other lane. Not
#: first: notebook 00 then gets a single worker's cores, and its classic check counts one
#: executor on each worker (the first CI run with 04 first failed that way).
LANES = (
    (("00_getting_started", "classic"), ("02_benchmark_udf_styles", "classic"),
     ("03_resnet50_batch_inference", "classic"), ("08_external_api_scoring", "classic"),
     ("00_getting_started", "connect"), ("01_udf_inference_keras", "connect"),
     ("02_benchmark_udf_styles", "connect"), ("03_resnet50_batch_inference", "connect"),
     ("08_external_api_scoring", "connect"),
     ("11_distributed_training", "classic"), ("11_distributed_training", "connect")),
    (("05_parallel_training", "classic"), ("06_timeseries_windows_tfrecord", "classic"),
     ("04_partition_predictor", "classic"), ("07_audio_features", "classic"),
     ("05_parallel_training", "connect"), ("06_timeseries_windows_tfrecord", "connect"),
     ("04_partition_predictor", "connect"), ("07_audio_features", "connect"),
     ("10_text_embeddings_search", "classic"), ("10_text_embeddings_search", "connect"),
     ("09_streaming_inference", "classic"), ("09_streaming_inference", "connect")),
)


def test_every_notebook_runs_in_exactly_one_lane_or_elsewhere():
    laned = [run for lane in LANES for run in lane]
    assert len(laned) == len(set(laned))
    everything = {(nb.stem, api) for nb in NOTEBOOKS for api in APIS}
    elsewhere = {(stem, "classic") for stem in RUN_ELSEWHERE}
    assert set(laned) | elsewhere == everything
    assert not set(laned) & elsewhere


def _execute(path: Path, cfg, api: str) -> dict:
    """Run ``path`` top to bottom in a fresh kernel with ``LAB_SPARK_API=api``; return the
    figures it recorded."""
    notebooks.results_path(path.stem, cfg, api).unlink(missing_ok=True)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        # The kernel's environment: the lab's (as JupyterLab gives its kernels) and the API.
        client.execute(env={**os.environ, "LAB_SPARK_API": api})
    finally:  # execute() raised CellExecutionError, with the failing cell, if a cell failed
        out = cfg.share_dir / "output" / "executed"
        out.mkdir(parents=True, exist_ok=True)
        name = path.name if api == "classic" else f"{path.stem}.{api}.ipynb"
        nbformat.write(nb, out / name)  # kept for a human to read when a check fails
    return notebooks.load_results(path.stem, cfg, api)


@pytest.fixture(scope="module")
def executed(request, lab_cluster):
    """Start the lanes once, with the notebooks this run selected (``-k 05`` runs one); one
    Future (the figures the notebook recorded) per notebook."""
    from lab_utils.training.cnn import ensure_model

    assert os.environ["LAB_SMOKE"] == "1"
    # The digits model must exist before two lanes could both find it missing and train it.
    ensure_model(lab_cluster.cfg)
    by_stem = {nb.stem: nb for nb in NOTEBOOKS}
    selected = {(item.callspec.params["path"].stem, item.callspec.params["api"])
                for item in request.session.items
                if getattr(item, "originalname", "") == "test_notebook_runs_on_the_cluster"}
    lanes = [[run for run in lane if run in selected] for lane in LANES]
    futures: dict[tuple[str, str], Future] = {run: Future() for lane in lanes for run in lane}
    stop = threading.Event()

    def run_lane(lane):
        for run in lane:
            if stop.is_set():
                futures[run].cancel()
                continue
            futures[run].set_running_or_notify_cancel()
            stem, api = run
            try:
                futures[run].set_result(_execute(by_stem[stem], lab_cluster.cfg, api))
            except BaseException as exc:  # noqa: BLE001 - handed to that notebook's test
                futures[run].set_exception(exc)

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


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_the_cluster(path, api, executed):
    if api == "classic" and path.stem in RUN_ELSEWHERE:
        pytest.skip(RUN_ELSEWHERE[path.stem][1])
    CHECKS[path.stem](executed[path.stem, api].result())


