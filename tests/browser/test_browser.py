"""The lab as a learner sees it: a real browser against the real native lab.

Debian's chromium, driven by Playwright, walks the path of a first session: JupyterLab through
the token URL (and its login form without it), notebook 01 run from the Run menu with
sparkmonitor's live job table under the running cell, the master UI with its two ALIVE workers
and the history server listing the notebook's finished application.

Every step leaves a screenshot in ``test-output/browser/`` (the run's summary lists them with
their sizes); a failing step leaves ``FAILED-<step>.png`` and says what it waited for.

The browser is Debian's ``chromium`` package, never a download: Playwright's own browser builds
are not used (no ``playwright install``; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1).

Notebook 01 is executed here and not by ``tests/notebooks`` (its nbclient run is skipped there):
this test asserts the same check, ``check_01_udf_inference_keras``, on the figures the browser
run recorded. JupyterLab serves a copy of the notebooks (``LAB_NOTEBOOKS_DIR``, see
``tests/conftest.py``), so the executed notebook saved here never touches the tracked one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from lab_utils import notebooks
from lab_utils.common import net, process
from tests.utils.notebook_checks import CHECKS

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}
NOTEBOOK = "01_udf_inference_keras"
APP_NAME = "01 udf inference keras"  # the notebook's get_spark(...) name
#: Smoke-sized notebook 01 takes 3-6 minutes on 2 busy cores; leave room for a slower machine.
RUN_TIMEOUT_S = 15 * 60
#: Selectors in the page (JupyterLab 4 and sparkmonitor 3.x class names).
NOTEBOOK_PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
#: sparkmonitor inserts this widget under a cell that runs Spark jobs, with one row per job.
MONITOR = ".spark-monitor-cell-widget .sparkMonitorCellRoot.CellMonitor"
MIN_SCREENSHOT_BYTES = 20_000  # a blank 1400x1000 page is a few kB

# Page scripts below take {panel, monitor}: the selectors above (SELECTORS).
SELECTORS = {"panel": NOTEBOOK_PANEL, "monitor": MONITOR}

# Records what sparkmonitor showed while the notebook ran: a job row, and a job RUNNING.
WATCH_SPARKMONITOR = """({monitor}) => {
  const seen = window.__sparkmonitorSeen = {monitors: 0, jobRows: 0, running: false};
  const look = () => {
    seen.monitors = Math.max(seen.monitors, document.querySelectorAll(monitor).length);
    seen.jobRows = Math.max(seen.jobRows,
                            document.querySelectorAll(`${monitor} td.tdjobid`).length);
    if (document.querySelector(`${monitor} .tditemjobstatus.RUNNING`)) seen.running = true;
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true,
                                                     attributes: true, attributeFilter: ['class']});
}"""

NOTEBOOK_STATE = """({panel: selector}) => {
  const panel = document.querySelector(selector);
  if (!panel) return null;
  const stderr = [...panel.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')];
  return {
    prompts: [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt:not(.jp-Placeholder-prompt)')]
             .map(e => e.textContent.trim()),
    status: panel.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status ?? null,
    lastStderr: stderr.length ? stderr[stderr.length - 1].textContent.slice(-3000) : '',
    sparkmonitor: window.__sparkmonitorSeen ?? null,
  };
}"""

# Rendered outputs a learner looks at: DataFrames with a prediction column, and images.
RENDERED_OUTPUTS = """({panel: selector}) => {
  const panel = document.querySelector(selector);
  const tables = [...panel.querySelectorAll('.jp-OutputArea-output table')]
    .filter(t => [...t.querySelectorAll('th')].some(th => th.textContent.trim() === 'prediction'));
  const images = [...panel.querySelectorAll('.jp-OutputArea-output img')]
    .filter(img => img.complete && img.naturalWidth > 100);
  return {predictionTables: tables.map(t => t.querySelectorAll('tbody tr').length),
          images: images.map(img => [img.naturalWidth, img.naturalHeight])};
}"""

# Scrolls an element into the middle of the notebook's view. As a wait_for_function predicate it
# is true once the element lies wholly in view and stayed put since the last poll: JupyterLab
# lays out off-screen cells lazily, so their heights (and the element's place) change after a
# scroll.
SCROLL_TO = """(selector) => {
  const el = document.querySelector(selector);
  if (!el) return false;
  const view = el.closest('.jp-WindowedPanel-outer')?.getBoundingClientRect()
               ?? {top: 0, bottom: window.innerHeight};
  let box = el.getBoundingClientRect();
  const inView = box.height > 0 && box.top >= view.top && box.bottom <= view.bottom;
  const tops = window.__scrollTops = window.__scrollTops ?? {};
  const settled = inView && tops[selector] === box.top;
  if (!inView) {
    el.scrollIntoView({block: 'center'});
    box = el.getBoundingClientRect();
  }
  tops[selector] = box.top;
  return settled;
}"""


# --------------------------------------------------------------------------- helpers


def shoot(page, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_screenshot(path: Path) -> None:
    assert path.is_file(), f"no screenshot at {path}"
    size = path.stat().st_size
    assert size >= MIN_SCREENSHOT_BYTES, f"{path} is only {size} bytes: a blank page?"


@contextlib.contextmanager
def step(page, name: str) -> Iterator[None]:
    """One step of the walk; on failure save FAILED-<name>.png and name it in the message."""
    try:
        yield
    except Exception as exc:
        shot = SHOTS / f"FAILED-{name}.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True)
        pytest.fail(f"browser step '{name}' failed: {exc}\nscreenshot of the page: {shot}")


def jupyter_base(lab_cluster) -> str:
    return lab_cluster.urls["jupyter"].split("/lab?", 1)[0]


def jupyter_api(lab_cluster, path: str, method: str = "GET"):
    request = urllib.request.Request(
        f"{jupyter_base(lab_cluster)}{path}", method=method,
        headers={"Authorization": f"token {lab_cluster.cfg.jupyter_token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
    return json.loads(body) if body else None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def chromium_installed() -> None:
    """Session-scoped, so pytest checks it before it starts the session's lab (a minute)."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} not found: the browser tests drive Debian's chromium. Install it "
                    "with `apt-get install chromium` (.ci/run does this on a fresh machine); "
                    "never `playwright install`.", pytrace=False)


@pytest.fixture(scope="module")
def browser(chromium_installed):
    """Debian's chromium, launched by Playwright's bundled driver (no browser download)."""
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"

    shutil.rmtree(SHOTS, ignore_errors=True)  # a stale screenshot must not pass for a new one
    SHOTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              headless=True)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    """A fresh browser context (no cookies), one tab."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(120_000)  # slow, shared 2-core machines
    yield context.new_page()
    context.close()


@dataclass
class NotebookRun:
    """What the browser saw while notebook 01 ran in JupyterLab."""

    prompts: list[str]
    seconds: float
    started_ms: int
    rendered: dict
    sparkmonitor: dict
    saved: nbformat.NotebookNode
    screenshots: dict[str, Path] = field(default_factory=dict)


def _run_all(page) -> None:
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def _accept_kernel_dialog(page, shots: dict[str, Path]) -> bool:
    """Click *Select* if JupyterLab asks which kernel to use, as a learner would.

    JupyterLab 4 can show its *Select Kernel* dialog over a notebook whose kernel has already
    started (seen on a loaded 2-core CI machine); the preselected kernel is the notebook's own
    (Python 3, ipykernel), and until someone answers, *Run All Cells* runs nothing.
    """
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count() and dialog.first.is_visible():
        shots.setdefault("kernel-dialog", shoot(page, "03a-select-kernel-dialog"))
        dialog.first.get_by_role("button", name="Select", exact=True).click()
        return True
    return False


def _wait_for_run_all(page, expected_cells: int, shots: dict[str, Path], finished) -> dict:
    """Poll the notebook until every code cell has run; fail early when execution stops.

    ``expected_cells`` counts the cells whose input shows: a collapsed one (the checks cell at
    the end) has no numbered prompt on the page, only JupyterLab's placeholder, so its run is
    told by ``finished()`` (the figures file it writes)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    began, stalled, state = time.monotonic(), 0, None
    while time.monotonic() < deadline:
        answered = _accept_kernel_dialog(page, shots)
        state = page.evaluate(NOTEBOOK_STATE, SELECTORS)
        prompts = state["prompts"]
        numbered = [p for p in prompts if re.fullmatch(r"\[\d+\]:", p)]
        if answered and not numbered and "[*]:" not in prompts:
            page.wait_for_timeout(3000)
            _run_all(page)  # the dialog swallowed the first Run All: ask again, once answered
            began = time.monotonic()
            continue
        if (len(prompts) == expected_cells == len(numbered) and state["status"] == "idle"
                and finished()):
            return state
        if (state["sparkmonitor"] or {}).get("running") and "sparkmonitor" not in shots:
            # Show the live job table: scroll the running job into view, then take the picture.
            page.evaluate(SCROLL_TO, f"{MONITOR} .tditemjobstatus.RUNNING, {MONITOR}")
            shots["sparkmonitor"] = shoot(page, "03-sparkmonitor-job-progress")
        if "[*]:" not in prompts and state["status"] == "idle":
            if not numbered and time.monotonic() - began > 120:
                raise AssertionError(f"Run All Cells started no cell in 120 s: prompts {prompts}")
            stalled = stalled + 1 if numbered else 0
            if stalled >= 3:  # idle, nothing queued, cells left: a cell failed
                raise AssertionError(
                    f"execution stopped after {len(numbered)} of {expected_cells} code cells "
                    f"(prompts {prompts}); last stderr output:\n{state['lastStderr']}")
        else:
            stalled = 0
        page.wait_for_timeout(2000)
    raise AssertionError(f"notebook still running after {RUN_TIMEOUT_S} s: {state}")


@pytest.fixture(scope="module")
def notebook_run(browser, lab_cluster) -> NotebookRun:
    """Open notebook 01 in JupyterLab, Run > Run All Cells, wait, save, shut the kernel down."""
    cfg = lab_cluster.cfg
    path = cfg.notebooks_dir / f"{NOTEBOOK}.ipynb"
    assert path.resolve() != (ROOT / "notebooks" / path.name).resolve(), \
        "JupyterLab must serve a copy of the notebooks (LAB_NOTEBOOKS_DIR) in the tests"
    code_cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    expected_cells = len(code_cells)
    shown_cells = sum(1 for c in code_cells
                      if not c.metadata.get("jupyter", {}).get("source_hidden"))
    results = notebooks.results_path(NOTEBOOK, cfg)
    # Stale figures from an earlier run must not pass for this one.
    notebooks.results_path(NOTEBOOK, cfg).unlink(missing_ok=True)
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(180_000)
    page = context.new_page()
    shots: dict[str, Path] = {}
    try:
        with step(page, "open-notebook"):
            page.goto(lab_cluster.urls["jupyter"])  # the token logs this context in
            page.wait_for_selector(".jp-LabShell")
            page.goto(f"{jupyter_base(lab_cluster)}/lab/tree/{NOTEBOOK}.ipynb")
            page.wait_for_function(
                "([panel, n]) => document.querySelectorAll(panel + ' .jp-CodeCell').length === n",
                arg=[NOTEBOOK_PANEL, expected_cells])
            # The kernel has started and the page is connected to it.
            page.wait_for_selector(
                f"{NOTEBOOK_PANEL} .jp-Notebook-ExecutionIndicator[data-status=idle]")
            page.evaluate(WATCH_SPARKMONITOR, SELECTORS)
        started_ms = int(time.time() * 1000)
        began = time.monotonic()
        with step(page, "run-all-cells"):
            _accept_kernel_dialog(page, shots)
            _run_all(page)
            state = _wait_for_run_all(page, shown_cells, shots, results.exists)
        seconds = time.monotonic() - began
        with step(page, "rendered-outputs"):
            rendered = page.evaluate(RENDERED_OUTPUTS, SELECTORS)
            with contextlib.suppress(PlaywrightTimeout):  # a picture taller than the view
                page.wait_for_function(SCROLL_TO, timeout=30_000, polling=500,
                                       arg=f"{NOTEBOOK_PANEL} .jp-OutputArea-output img")
            shots["notebook"] = shoot(page, "04-notebook-01-after-run-all")
            tables = page.locator(f"{NOTEBOOK_PANEL} .jp-OutputArea-output table",
                                  has=page.locator("th", has_text=re.compile(r"^prediction$")))
            if tables.count():
                tables.last.scroll_into_view_if_needed()
                shots["predictions"] = shoot(page, "05-notebook-01-predictions-table")
        with step(page, "save-notebook"):
            page.locator(f"{NOTEBOOK_PANEL} [data-jp-item-name=save]").click()

            def saved_executed() -> bool:
                nb = nbformat.read(path, as_version=4)
                return all(c.execution_count for c in nb.cells if c.cell_type == "code")

            assert process.wait_until(saved_executed, timeout=120), \
                f"JupyterLab did not save the executed notebook to {path}"
            saved = nbformat.read(path, as_version=4)
            # Saving signs the notebook as trusted, in the test lab's own Jupyter data folder.
            signatures = Path(lab_cluster.env["JUPYTER_DATA_DIR"]) / "nbsignatures.db"
            assert signatures.is_file(), f"no {signatures}: where did JupyterLab sign it?"
    finally:
        context.close()
    # Shut the kernel down, as a learner closing the notebook would: its application ends.
    for session in jupyter_api(lab_cluster, "/api/sessions"):
        if session["path"].endswith(f"{NOTEBOOK}.ipynb"):
            jupyter_api(lab_cluster, f"/api/sessions/{session['id']}", method="DELETE")
    return NotebookRun(prompts=state["prompts"], seconds=seconds, started_ms=started_ms,
                       rendered=rendered, sparkmonitor=state["sparkmonitor"], saved=saved,
                       screenshots=shots)


# --------------------------------------------------------------------------- tests


def test_jupyterlab_opens_with_the_token_and_asks_for_it_without(browser, lab_cluster, page):
    with step(page, "jupyterlab-with-token"):
        page.goto(lab_cluster.urls["jupyter"])
        page.wait_for_selector(".jp-LabShell")
        # The file browser lists the notebooks JupyterLab serves.
        page.get_by_text(f"{NOTEBOOK}.ipynb").first.wait_for()
        shot = shoot(page, "01-jupyterlab")
    assert page.get_by_role("menuitem", name="Run", exact=True).is_visible()
    assert_screenshot(shot)

    stranger = browser.new_context(viewport=VIEWPORT)
    anonymous = stranger.new_page()
    try:
        with step(anonymous, "jupyterlab-without-token"):
            anonymous.goto(f"{jupyter_base(lab_cluster)}/lab")
            anonymous.wait_for_selector("form input[type=password]")
            shot = shoot(anonymous, "02-jupyterlab-login-without-token")
        assert "/login" in anonymous.url, anonymous.url
        assert anonymous.locator(".jp-LabShell").count() == 0
        assert "Password or token" in anonymous.inner_text("body")
    finally:
        stranger.close()
    assert_screenshot(shot)


def test_notebook_01_runs_every_cell_in_jupyterlab(notebook_run):
    run = notebook_run
    print(f"notebook {NOTEBOOK} ran in JupyterLab in {run.seconds:.0f} s")
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in run.prompts), run.prompts
    code = [c for c in run.saved.cells if c.cell_type == "code"]
    # The page numbers the cells whose input shows; the saved file has every cell's count,
    # the collapsed checks cell's included.
    shown = [c for c in code if not c.metadata.get("jupyter", {}).get("source_hidden")]
    assert len(shown) == len(run.prompts) and len(shown) == len(code) - 1
    assert all(c.execution_count for c in code)
    errors = [(c.execution_count, o.get("ename"), o.get("evalue")) for c in code
              for o in c.outputs if o.output_type == "error"]
    assert errors == [], f"cells with errors (execution count, error, message): {errors}"
    # The mixed-folder predictions table and the sample images are in the page.
    assert run.rendered["predictionTables"], f"no table with a prediction column: {run.rendered}"
    assert max(run.rendered["predictionTables"]) >= 12, run.rendered  # the broken-files table
    assert run.rendered["images"], f"no rendered image output: {run.rendered}"
    assert any(o.output_type in {"display_data", "execute_result"} and "image/png" in o.data
               for c in code for o in c.outputs), "the saved notebook has no image output"
    assert_screenshot(run.screenshots["notebook"])
    assert_screenshot(run.screenshots["predictions"])


def test_notebook_01_figures_pass_its_check(notebook_run, lab_cluster):
    # The same check tests/notebooks applies, on the figures this browser run recorded.
    CHECKS[NOTEBOOK](notebooks.load_results(NOTEBOOK, lab_cluster.cfg))


def test_sparkmonitor_showed_job_progress_under_the_running_cell(notebook_run):
    seen = notebook_run.sparkmonitor
    assert seen and seen["monitors"] >= 1, f"sparkmonitor's job display never appeared: {seen}"
    assert seen["jobRows"] >= 1, f"sparkmonitor showed no Spark job: {seen}"
    assert seen["running"], f"sparkmonitor never showed a job RUNNING: {seen}"
    assert "sparkmonitor" in notebook_run.screenshots, "no screenshot while a job ran"
    assert_screenshot(notebook_run.screenshots["sparkmonitor"])


def test_master_ui_shows_two_alive_workers(lab_cluster, page):
    with step(page, "master-ui"):
        page.goto(lab_cluster.urls["master_ui"])
        workers = page.locator("table", has_text="Worker Id").first.locator("tbody tr")
        workers.first.wait_for()
        shot = shoot(page, "06-spark-master-ui")
    summary = page.inner_text("body")
    assert re.search(r"Workers:\s*2 Alive", summary), summary[:1000]
    states = [row.locator("td").nth(2).inner_text().strip() for row in workers.all()]
    assert states == ["ALIVE", "ALIVE"], states
    assert_screenshot(shot)


def test_history_server_lists_the_notebooks_application(notebook_run, lab_cluster, page):
    cfg = lab_cluster.cfg

    def finished_app() -> str | None:
        for app in net.http_json(f"{cfg.history_url}/api/v1/applications"):
            attempt = app["attempts"][0]
            if (app["name"] == APP_NAME and attempt["completed"]
                    and attempt["startTimeEpoch"] >= notebook_run.started_ms):
                return app["id"]
        return None

    assert process.wait_until(lambda: finished_app() is not None, timeout=180), \
        f"the history server lists no completed application named {APP_NAME!r}"
    app_id = finished_app()
    with step(page, "history-ui"):
        page.goto(lab_cluster.urls["history"])
        # The application table is rendered by the page's JavaScript from the REST API.
        row = page.locator("#history-summary-table tbody tr", has_text=app_id)
        row.wait_for()
        shot = shoot(page, "07-spark-history-ui")
    assert APP_NAME in row.inner_text()
    assert_screenshot(shot)
