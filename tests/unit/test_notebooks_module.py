import json
import re
from pathlib import Path

import pandas as pd
import pytest

from lab_utils import notebooks
from lab_utils.ops import cluster


def test_record_and_load_results(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SHARE_DIR", str(tmp_path))
    monkeypatch.delenv("LAB_SPARK_API", raising=False)
    notebooks.record_results("nb", {"accuracy": 0.93, "rows": 10})
    assert notebooks.load_results("nb") == {"accuracy": 0.93, "rows": 10, "spark_api": "classic"}
    assert (tmp_path / "output" / "notebooks" / "nb.json").is_file()


def test_a_connect_run_keeps_its_own_results(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SHARE_DIR", str(tmp_path))
    monkeypatch.setenv("LAB_SPARK_API", "connect")
    notebooks.record_results("nb", {"rows": 3})
    monkeypatch.setenv("LAB_SPARK_API", "classic")
    notebooks.record_results("nb", {"rows": 4})
    assert notebooks.load_results("nb", api="connect") == {"rows": 3, "spark_api": "connect"}
    assert notebooks.load_results("nb") == {"rows": 4, "spark_api": "classic"}
    assert (tmp_path / "output" / "notebooks" / "nb.connect.json").is_file()


def test_strip_removes_outputs(tmp_path):
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": 3,
                                           "metadata": {}, "outputs": [{"x": 1}], "source": "1"}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert notebooks.strip(path)
    cell = json.loads(path.read_text())["cells"][0]
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert not notebooks.strip(path)  # idempotent


def test_version_mismatches_are_reported():
    driver = {"python": "3.11.7", "pandas": "2.3.3"}
    same = pd.DataFrame([{"python": "3.11.7", "pandas": "2.3.3"}] * 2)
    assert cluster.version_mismatches(driver, same) == []
    other = pd.DataFrame([{"python": "3.11.7", "pandas": "2.3.3"}, {"python": "3.12.1",
                                                                     "pandas": "2.3.3"}])
    assert cluster.version_mismatches(driver, other) == [
        "python: driver has 3.11.7, an executor has 3.12.1"]


NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_parameters_cell_is_tagged_and_holds_the_smoke_switch(path):
    # papermill and nbclient users inject values after the cell tagged "parameters"; it must be
    # the one cell that reads the LAB_SMOKE switch (cfg.smoke), so injected sizes win over it.
    cells = json.loads(path.read_text())["cells"]  # json, not nbformat: no jupyter needed
    code = [c for c in cells if c["cell_type"] == "code"]
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    smoke = [c for c in code if "cfg.smoke" in "".join(c["source"])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} code cells tagged 'parameters'"
    assert len(smoke) == 1, f"{path.name}: {len(smoke)} code cells read cfg.smoke"
    assert tagged[0] is smoke[0], f"{path.name}: the 'parameters' tag is not on the LAB_SMOKE cell"
    assert not [c for c in cells if c["cell_type"] != "code"
                and "parameters" in c["metadata"].get("tags", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_intro_says_what_a_run_costs(path):
    # A learner plans by the intro: what the default size costs, measured, and where the default
    # takes more than a few minutes, the quick size the parameters cell offers.
    cells = json.loads(path.read_text())["cells"]
    intro = "".join(cells[0]["source"])
    params = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
                     ["source"])
    assert "**How long it takes.**" in intro, f"{path.name}: the intro gives no run time"
    assert re.search(r"\d+(\.\d+)? (s|min)\b", intro.split("**How long it takes.**")[1]), path.name
    if "QUICK" in params:
        assert "QUICK = cfg.quick" in params, f"{path.name}: QUICK not read from LAB_QUICK"
        assert "`QUICK = True`" in intro, f"{path.name}: the intro does not give the quick size"


def test_every_notebook_is_checked_for_its_parameters_cell():
    assert [p.stem[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(12)]


class _Plan:
    """The corner of a DataFrame's JVM handle that python_operators reads."""

    def __init__(self, text):
        self._text = text

    def queryExecution(self):  # noqa: N802 - the JVM's name
        return self

    def executedPlan(self):  # noqa: N802
        return self

    def toString(self):  # noqa: N802
        return self._text


class _Frame:
    def __init__(self, text):
        self._jdf = _Plan(text)


def test_python_operators_lists_each_python_node_once_in_plan_order():
    plan = ("*(2) Project [path#0, r#5]\n+- ArrowEvalPython [predict(path#0)#4], [r#5], 200\n"
            "   +- MapInPandas predict_partition(path#0), [path#0]\n"
            "      +- ArrowEvalPython [f(x#1)#2], [y#3], 200\n      +- FileScan binaryFile")
    assert notebooks.python_operators(_Frame(plan)) == ["ArrowEvalPython", "MapInPandas"]
    assert notebooks.python_operators(_Frame("*(1) Range (0, 10)")) == []
