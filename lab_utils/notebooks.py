"""Notebook plumbing: the figures a notebook hands to its test, and output stripping for git.

Each notebook ends by calling :func:`record_results` with the figures it computed (row counts,
accuracies, coefficients). They are written as JSON under ``share_storages/output/notebooks/``
where ``make test`` reads them back and asserts them: the notebook's own numbers, not "it ran".
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_utils import config as lab_config
from lab_utils.common.atomic import atomic_write_text
from lab_utils.errors import LabError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


class ResultsNotFoundError(LabError, FileNotFoundError):
    """A notebook's recorded figures are not there: the notebook has not run (to its end)."""


def results_path(notebook: str, cfg: lab_config.LabConfig | None = None,
                 api: str | None = None) -> Path:
    """Where a notebook's figures go: one file per notebook and Spark API (``LAB_SPARK_API``),
    so a classic run and a Connect run of the same notebook never overwrite each other."""
    cfg = cfg or lab_config.load()
    api = api or cfg.spark_api
    suffix = "" if api == "classic" else f".{api}"
    return cfg.share_dir / "output" / "notebooks" / f"{notebook}{suffix}.json"


def record_results(notebook: str, results: dict[str, Any]) -> dict[str, Any]:
    """Write ``results`` (JSON-serialisable figures) for the notebook's test and return them.

    ``spark_api`` (classic or connect, from ``LAB_SPARK_API``) is added: a check may ask for a
    figure only one mode can compute (an RDD's partitions, a broadcast's size).
    """
    results = {**results, "spark_api": lab_config.load().spark_api}
    path = results_path(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True, default=str))
    return results


def load_results(notebook: str, cfg: lab_config.LabConfig | None = None,
                 api: str | None = None) -> dict[str, Any]:
    path = results_path(notebook, cfg, api)
    if not path.is_file():
        raise ResultsNotFoundError(f"{path} not found: run notebook {notebook} first")
    return json.loads(path.read_text())


#: The physical operators that show how a DataFrame reaches Python, as ``explain()`` names them.
PYTHON_OPERATORS = ("BatchEvalPython", "ArrowEvalPython", "MapInPandas", "MapInArrow",
                    "FlatMapGroupsInPandas", "FlatMapGroupsInArrow", "FlatMapCoGroupsInPandas",
                    "AggregateInPandas", "WindowInPandas")


def python_operators(df: DataFrame) -> list[str]:
    """The Python operators in ``df``'s physical plan, top to bottom, as ``df.explain()`` shows
    them: what a notebook records so its test can assert which plan a UDF style produced.

    Works in both modes: a Connect DataFrame asks the server for the physical plan
    (``explain()``'s text), a classic one asks its JVM.
    """
    from lab_utils.common.connect import is_connect

    if is_connect(df):
        plan = df._explain_string(mode="simple")  # type: ignore[operator]  # explain()'s text
    else:
        plan = df._jdf.queryExecution().executedPlan().toString()
    found = re.findall(r"\b(" + "|".join(PYTHON_OPERATORS) + r")\b", plan)
    return list(dict.fromkeys(found))


def strip(path: Path) -> bool:
    """Remove outputs and execution counts from one notebook; return True if it changed."""
    text = path.read_text()
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("widgets", None)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new)
        return True
    return False


def execute(path: Path, out_dir: Path, *, timeout: int = 900) -> dict[str, Any]:
    """Run the notebook at ``path`` top to bottom in a fresh kernel; return its figures.

    The executed copy (outputs included) is written to ``out_dir``, also when a cell fails, so a
    human can read what went wrong; the notebook itself is never modified. Needs the
    ``jupyter`` dependency group (nbclient), which the JupyterLab image and the venv have.
    """
    import nbformat
    from nbclient import NotebookClient

    results_path(path.stem).unlink(missing_ok=True)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()  # raises CellExecutionError, with the failing cell, if any cell fails
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
    return load_results(path.stem)


USAGE = """usage: python -m lab_utils.notebooks strip NOTEBOOK...
       python -m lab_utils.notebooks run NOTEBOOK... (executed copies: output/executed/)"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in {"strip", "run"}:
        print(USAGE, file=sys.stderr)
        return 2
    for name in args[1:]:
        if args[0] == "strip":
            if strip(Path(name)):
                print(f"stripped {name}")
            continue
        out = lab_config.load().share_dir / "output" / "executed"
        execute(Path(name), out)
        print(f"ran {name}: figures in {results_path(Path(name).stem)}, executed copy in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
