"""The package, the tests and the notebooks follow one ruff configuration, and the package
type-checks with mypy, and its imports keep the layers of pyproject.toml's import-linter
contract (all configured in pyproject.toml, all run by `make lint`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_clean():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "lab_utils", "tests", "notebooks"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_mypy_clean():
    mypy = Path(sys.executable).with_name("mypy")
    # Its settings and the package to check ([tool.mypy] packages) come from pyproject.toml.
    result = subprocess.run([str(mypy)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers_point_down():
    # The layers contract in pyproject.toml ([tool.importlinter]): an import back up a layer, or
    # between training and inference, fails here and in `make lint`.
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout
