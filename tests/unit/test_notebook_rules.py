"""The course-wide rules of issue 34 that a notebook's file shows, checked without a kernel.

* The tests' hook is one cell, the last: collapsed (``jupyter.source_hidden``), tagged
  ``lab-checks``, its first line ``# Checks for the lab's tests (make test): ...``. It holds the
  parity checks and the ``record_results`` call, so the learner's path ends before it, on a
  figure or a conclusion, never on a dict of recorded figures.
* Outputs are stripped (``nbstripout``).
* No development machine's measurement in the Markdown: a figure in prose is computed in the run
  (printed, or a Markdown table made by code) or a sourced fact, said as such and listed in
  :data:`SOURCED` below with where it comes from. The one measured figure the rules ask for, the
  default size's run time, belongs in the intro (the first cell), and is checked to be at most
  5 minutes there.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TAG = "lab-checks"
FIRST_LINE = "# Checks for the lab's tests (make test): "


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


@pytest.fixture(params=NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def notebook(request) -> Path:
    return request.param


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 9, [p.name for p in NOTEBOOKS]


def test_the_last_cell_is_the_one_collapsed_checks_cell(notebook):
    cells = _cells(notebook)
    tagged = [i for i, c in enumerate(cells) if TAG in c.get("metadata", {}).get("tags", [])]
    assert tagged == [len(cells) - 1], (
        f"{notebook.name}: cells {tagged} carry the tag {TAG!r}; exactly one must, the last "
        f"(of {len(cells)})")
    last = cells[-1]
    assert last["cell_type"] == "code"
    assert last["metadata"].get("jupyter", {}).get("source_hidden") is True, (
        f"{notebook.name}: the checks cell must be collapsed (metadata jupyter.source_hidden)")
    first_line = _source(last).splitlines()[0] if _source(last) else ""
    assert first_line.startswith(FIRST_LINE) and len(first_line) > len(FIRST_LINE), (
        f"{notebook.name}: the checks cell's first line is {first_line!r}, not a comment "
        f"starting {FIRST_LINE!r} and saying what it checks")
    assert "record_results(" in _source(last), f"{notebook.name}: record_results is not there"


def test_no_cell_but_the_checks_cell_records_results(notebook):
    cells = _cells(notebook)
    recording = [i for i, c in enumerate(cells[:-1])
                 if c["cell_type"] == "code" and "record_results(" in _source(c)]
    assert not recording, f"{notebook.name}: cells {recording} call record_results"


def _ends_on_a_dict(source: str) -> bool:
    try:
        body = ast.parse(source).body
    except SyntaxError:  # IPython magics: not a dict display either way
        return False
    return bool(body) and isinstance(body[-1], ast.Expr) and isinstance(
        body[-1].value, (ast.Dict, ast.DictComp))


def test_the_learner_path_ends_on_a_figure_or_a_conclusion(notebook):
    cells = _cells(notebook)
    assert len(cells) >= 2
    before = cells[-2]
    if before["cell_type"] == "markdown":
        assert _source(before).strip(), f"{notebook.name}: an empty cell before the checks"
        return
    assert before["cell_type"] == "code"
    source = _source(before)
    assert not _ends_on_a_dict(source), (
        f"{notebook.name}: the cell before the checks cell shows a dict; end on a figure or a "
        f"short conclusion")
    assert "results_path" not in source and "load_results" not in source


def test_outputs_are_stripped(notebook):
    dirty = [i for i, c in enumerate(_cells(notebook))
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, (f"{notebook.name}: cells {dirty} keep outputs; run "
                       f".venv/bin/nbstripout notebooks/{notebook.name}")


# --- figures of a development machine in prose -------------------------------------------

#: Figures that earlier versions quoted from the development machine (issue 34). Each of them
#: is wrong on the learner's machine; none may come back.
KNOWN = ("0.41×", "0.41x", "~150 MB/s", "150 MB/s", "0.55–0.60×", "0.55-0.60×", "1.5–1.8×",
         "Daft 1.6", "0.64→0.43 s", "MemoryError at 0.8 GB", "2.7 GB", "ms per row")

_NUM = r"(?<![\w.])~?\d[\d,]*(?:\.\d+)?(?:\s?[–-]\s?\d[\d,]*(?:\.\d+)?)?"
#: A measured-looking figure: a ratio ("1.7×", "0.5x"), a rate ("150 MB/s", "900 rows/s"), a
#: duration ("4 ms", "12 s", "3 min") or a size ("2.7 GB", "600 MB").
MEASURED = re.compile(
    _NUM + r"(?:\s?[×x](?![\w×\d])"
    r"|\s?(?:[KMG]i?B|[kKMG]?bytes)/s\b"
    r"|\s?(?:rows|images|photos|files|requests|clips|records|texts)/s\b"
    r"|\s?(?:ms|µs|sec|seconds?|min|minutes?|hours?)\b|\s(?:s|h)\b"
    r"|\s?(?:[KMGT]i?B)\b)")

#: Sourced facts, allowed where they stand: (notebook stem, the exact figure as written, where
#: the fact comes from). Keep this list short; a figure the run can compute is computed instead.
SOURCED: tuple[tuple[str, str, str], ...] = (
    ("03_resnet50_batch_inference", "600 KB",
     "arithmetic: 224 x 224 x 3 float32 = 602,112 bytes, the seed's decoded image"),
)


def _prose(markdown: str) -> str:
    """The Markdown without code: fenced blocks and inline code quote programs, not figures."""
    markdown = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    return re.sub(r"`[^`\n]*`", " ", markdown)


def _figures(markdown: str) -> list[str]:
    return [m.group(0).strip() for m in MEASURED.finditer(_prose(markdown))]


def test_the_figure_pattern_finds_measured_figures_and_not_others():
    found = _figures("took 0.41× the time, ~150 MB/s, 1.6–1.7× faster, 4 ms per row, "
                     "MemoryError at 0.8 GB, 900 rows/s, 12 s, 3 min")
    assert found == ["0.41×", "~150 MB/s", "1.6–1.7×", "4 ms", "0.8 GB", "900 rows/s", "12 s",
                     "3 min"]
    assert _figures("Spark 4.1, 224×224 pixels, 10,000 rows, 2 workers, `sleep 5 s`, "
                    "the 3x3 kernel, SPARK-28264, 1e-5, Python 3.11, 50 images, HTTP 503s") == []


def test_no_markdown_quotes_a_development_machine_figure(notebook):
    allowed = {fig for stem, fig, _ in SOURCED if stem == notebook.stem}
    problems = []
    for i, cell in enumerate(_cells(notebook)):
        if cell["cell_type"] != "markdown":
            continue
        text = _source(cell)
        problems += [f"cell {i}: known figure {k!r}" for k in KNOWN if k in text]
        if i == 0:
            continue  # the intro's run time: checked below
        problems += [f"cell {i}: {fig!r}" for fig in _figures(text) if fig not in allowed]
    assert not problems, (
        f"{notebook.name} quotes figures in its Markdown: {problems}. Compute them in the run "
        f"(print them, or a Markdown table made by code) or, for a sourced fact, list it in "
        f"SOURCED here with its source")


def test_the_intro_states_a_default_run_time_of_at_most_5_minutes(notebook):
    intro = _prose(_source(_cells(notebook)[0]))
    minutes = [float(m.group(1)) for m in re.finditer(r"(\d+(?:\.\d+)?)\s?min\b", intro)]
    seconds = [float(m.group(1)) for m in re.finditer(r"(\d+(?:\.\d+)?)\s?s\b", intro)]
    assert minutes or seconds, f"{notebook.name}: the intro states no run time"
    assert max(minutes + [s / 60 for s in seconds]) <= 5, (
        f"{notebook.name}: the intro states a run time over 5 minutes: {minutes} min, "
        f"{seconds} s")
