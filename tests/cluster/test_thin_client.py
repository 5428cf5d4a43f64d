"""A user without Spark: only the thin Spark Connect client (``pyspark-client``), no JVM, no
lab_utils, runs a notebook's UDFs on the lab's cluster through its Connect server.

The client's venv is built from ``tests/utils/thin_client/requirements.txt`` (every file
hash-pinned) with the lab's uv, once per version of that file: it is kept under
``.lab/cache/thin-client-<hash of the file>/`` (ignored, removed by ``make clean``), so a run
pays the install once (about 6 s with uv's cache warm from the lab's own sync; the download of
pandas, pyarrow and numpy on a fresh machine) and later runs reuse it. The job itself
(``thin_client_job.py``) writes what it saw as JSON; every figure is checked here against what
follows from the image files alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.utils import fake_models

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "utils" / "thin_client"
REQUIREMENTS = HERE / "requirements.txt"
JOB = HERE / "thin_client_job.py"
UV = ROOT / ".tools" / "bin" / "uv"
CACHE = ROOT / ".lab" / "cache"
SUMMARY = ROOT / "test-output" / "thin-client.summary.txt"

#: The requirements' packages the workers also have: pinned to the lab's uv.lock versions.
SHARED_WITH_THE_LAB = ("pandas", "pyarrow", "numpy", "grpcio", "grpcio-status",
                       "googleapis-common-protos", "zstandard", "protobuf")


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def _uv(*args: str, timeout: float = 600) -> None:
    # --no-config: the lab project's uv settings (its pyarrow override) are not this venv's.
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    result = subprocess.run([str(UV), *args, "--no-config"], capture_output=True, text=True,
                            env=env, timeout=timeout)
    assert result.returncode == 0, f"uv {' '.join(args)} failed:\n{result.stderr[-3000:]}"


def thin_venv() -> tuple[Path, float | None]:
    """The thin client's venv for this requirements file: ``(its python, seconds spent
    building it)``, ``None`` seconds when an earlier run's venv was reused.

    Built in place under a file lock (a venv holds its own absolute path), its ``.complete``
    marker written last: a build cut short is found without it and made again.
    """
    if not UV.is_file():
        pytest.fail(f"{UV} is missing: `make venv` installs the lab's uv")
    key = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    venv = CACHE / f"thin-client-{key}"
    python = venv / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "thin-client.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").is_file():
            return python, None
        began = time.perf_counter()
        shutil.rmtree(venv, ignore_errors=True)
        # The interpreter the lab's workers run: a UDF pickled by a client of another Python
        # minor version is refused by the workers (PYTHON_VERSION_MISMATCH).
        _uv("venv", "--quiet", "--python", sys.executable, str(venv))
        _uv("pip", "install", "--quiet", "--python", str(python), "--require-hashes",
            "-r", str(REQUIREMENTS))
        (venv / ".complete").write_text(key + "\n")
        return python, time.perf_counter() - began


def test_requirements_pin_the_newest_client_and_the_labs_versions():
    """Every package pinned with its hashes; the client is ``pyspark-client`` 4.2.0, the
    newest release on PyPI (checked 2026-12-07, ``pip index versions pyspark-client``); the
    packages the workers also have are at the lab's locked versions."""
    text = REQUIREMENTS.read_text()
    pins = _pins(text)
    entries = [b for b in text.split("\n") if b and not b.startswith((" ", "#"))]
    assert len(entries) == len(pins) and text.count("--hash=sha256:") >= len(pins)
    assert pins["pyspark-client"] == "4.2.0"
    assert "pyspark" not in pins and "py4j" not in pins
    wanted = _pins((HERE / "requirements.in").read_text())
    assert {k: pins.get(k) for k in wanted} == wanted, "requirements.txt is not compiled from .in"
    lock = {p["name"]: p["version"] for p in
            tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    assert {k: pins[k] for k in SHARED_WITH_THE_LAB} == {k: lock[k] for k in SHARED_WITH_THE_LAB}


def expected_rows(folder: Path) -> dict[str, tuple[str | None, float | None]]:
    """What the brightness "model" must say of each file, from its name alone (the grey
    level): the class and the confidence, or ``(None, None)`` (an error) for a file that is
    not an image. Empty files are left out: Spark's binaryFile source lists none."""
    out: dict[str, tuple[str | None, float | None]] = {}
    for path in sorted(folder.rglob("*.png")):
        if path.stat().st_size == 0:
            continue
        if not path.stem.isdigit():
            out[path.name] = (None, None)
            continue
        light = int(path.stem) / 255
        out[path.name] = ("light" if light > 0.5 else "dark", max(light, 1 - light))
    return out


def test_thin_client_runs_a_notebook_udf_on_the_lab(lab_cluster, tmp_path):
    cfg = lab_cluster.cfg
    began = time.perf_counter()
    python, built_s = thin_venv()
    venv_s = time.perf_counter() - began
    folder = fake_models.write_images(cfg.share_dir / "data" / "thin-client", size=(8, 8))
    (folder / "dark" / "broken.png").write_bytes(b"not a png")  # a row's error, not a failure
    expected = expected_rows(folder)
    out = tmp_path / "thin-client.json"
    # Nothing of the lab's environment but the token: no PYTHONPATH, no SPARK_HOME, and the
    # job runs outside the checkout, so neither lab_utils nor a full pyspark can be found.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "LANG": "C.UTF-8",
           "SPARK_CONNECT_AUTHENTICATE_TOKEN": os.environ["SPARK_CONNECT_AUTHENTICATE_TOKEN"]}
    url = f"sc://localhost:{cfg.connect_port}"
    began = time.perf_counter()
    job = subprocess.run([str(python), str(JOB), url, str(folder), str(out)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    job_s = time.perf_counter() - began
    assert job.returncode == 0, job.stderr[-5000:]
    facts = json.loads(out.read_text())
    SUMMARY.parent.mkdir(exist_ok=True)
    venv_note = "reused" if built_s is None else f"built in {built_s:.1f} s"
    SUMMARY.write_text(
        f"thin client: venv {venv_note} "
        f"({venv_s:.1f} s), job {job_s:.1f} s (session {facts['session_s']:.1f} s), "
        f"pyspark-client {facts['pyspark_version']} against Spark {facts['server_version']}; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in facts["steps"].items()) + "\n")

    # The client side: the thin client only.
    assert facts["pyspark_version"] == _pins(REQUIREMENTS.read_text())["pyspark-client"]
    assert "pyspark-client" in facts["distributions"]
    assert "pyspark" not in facts["distributions"] and "py4j" not in facts["distributions"]
    assert not facts["has_jars"] and not facts["has_bin"] and not facts["py4j"]
    assert not facts["lab_utils"] and facts["spark_home"] is None
    assert Path(facts["python"]).parent.parent == python.parent.parent

    # The workers: the lab's venv, its lab_utils and its Spark.
    assert facts["server_version"].startswith("4.3.")
    assert facts["workers"]["pyspark"] == facts["server_version"]
    assert facts["workers"]["lab_utils"].startswith(str(ROOT / "lab_utils"))

    # Every file scored by both UDFs as its grey level says.
    assert facts["rows"] == len(expected) == 5
    assert facts["total_bytes"] == sum(p.stat().st_size for p in folder.rglob("*.png"))
    assert len(facts["results"]) == 2
    for style, rows in facts["results"].items():
        assert len(rows) == len(expected), style
        for row in rows:
            name = Path(row["path"]).name
            want_class, want_confidence = expected[name]
            assert row["prediction"] == want_class, (style, row)
            if want_class is None:
                assert row["error"], (style, row)
            else:
                assert row["error"] is None, (style, row)
                assert row["confidence"] == pytest.approx(want_confidence, abs=1e-6), (style, row)
