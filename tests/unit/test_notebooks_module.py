import json

import pandas as pd

from lab_utils import notebooks
from lab_utils.ops import cluster


def test_record_and_load_results(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SHARE_DIR", str(tmp_path))
    notebooks.record_results("nb", {"accuracy": 0.93, "rows": 10})
    assert notebooks.load_results("nb") == {"accuracy": 0.93, "rows": 10}
    assert (tmp_path / "output" / "notebooks" / "nb.json").is_file()


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
