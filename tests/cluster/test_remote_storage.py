"""A remote cluster simulated on one machine: the client sees another storage root than the
workers (docs/remote-cluster.md).

On a real remote cluster the notebook's folder ``share_storages/`` is not the workers' unless
it is mounted at the same path on both. Here the client script runs in a private mount
namespace (``unshare --mount``) with an empty tmpfs mounted over ``LAB_SHARE_DIR``: it writes
into a folder that only it sees, while the lab's Connect server (the driver) and its workers
keep the real one, as a laptop and a remote cluster would. The client then gets what a learner
gets: :func:`lab_utils.common.shared.check_shared_storage` raises its clear error, a model the
client saved is a ``FileNotFoundError`` in a UDF, a data set it wrote is ``PATH_NOT_FOUND``
(Connect: the driver is on the cluster's side too) or ``FAILED_READ_FILE`` (classic: the
driver, in the client, lists the file and the executors cannot read it). The
same script outside the namespace passes all three, and ships the lab's package to the workers
as the recipe says (a wheel built with ``uv build``, renamed ``.zip``).

Needs root (or CAP_SYS_ADMIN) and util-linux's ``unshare``; skipped, in one line, without.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"
SUMMARY = ROOT / "test-output" / "remote-storage.summary.txt"

#: What the client does, as a learner's notebook would: check the storage, save a model with
#: plain file I/O and score with it in a UDF, write a data set with pandas and read it with
#: Spark; with a wheel, ship it. Everything it saw goes to the JSON file in argv[1].
CLIENT = textwrap.dedent('''
    import json, shutil, sys, time
    from pathlib import Path

    import pandas as pd

    from lab_utils import config
    from lab_utils.common.shared import StorageNotSharedError, check_shared_storage
    from lab_utils.session import get_spark

    out_path, wheel = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
    out = {}
    root = config.load().share_dir
    out["client_sees"] = sorted(p.name for p in root.iterdir())
    began = time.perf_counter()
    spark = get_spark("remote-storage", quiet=True)
    out["session"] = type(spark).__module__
    out["session_s"] = time.perf_counter() - began

    began = time.perf_counter()
    try:
        out["hosts"] = list(check_shared_storage(spark, root))
    except StorageNotSharedError as e:
        out["check_error"] = str(e)
    out["check_s"] = time.perf_counter() - began
    out["markers_left"] = sorted(p.name for p in root.glob(".lab-shared-check-*"))

    def error(e):
        cond = getattr(e, "getCondition", lambda: None)()
        return {"type": type(e).__name__, "condition": cond, "message": str(e)[:3000]}

    # A model saved by the client with plain file I/O, then used in a UDF on the executors.
    model = root / "models" / "remote-demo" / "weights.json"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_text(json.dumps({"slope": 2.5}))
    path = str(model)

    def predict(batches):
        import json
        import pandas as pd
        with open(path) as f:
            slope = json.load(f)["slope"]
        for batch in batches:
            yield pd.DataFrame({"y": batch["id"] * slope})

    try:
        rows = spark.range(4, numPartitions=2).mapInPandas(predict, "y double").collect()
        out["udf"] = sorted(r.y for r in rows)
    except Exception as e:
        out["udf_error"] = error(e)

    # A data set written by the client with pandas, read by Spark.
    data = root / "data" / "remote-demo.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"x": [1, 2, 3]}).to_parquet(data)
    try:
        out["read"] = spark.read.parquet(str(data)).count()
    except Exception as e:
        out["read_error"] = error(e)
    shutil.rmtree(model.parent)
    data.unlink()

    if wheel:
        # The recipe for a cluster without the lab's package: the client refuses a .whl as a
        # pyfile; the same pure-Python wheel under a .zip name is put on the workers' path.
        try:
            spark.addArtifacts(wheel, pyfile=True)
            out["whl"] = "accepted"
        except Exception as e:
            out["whl_error"] = error(e)
        zipped = str(Path(wheel).with_name("lab_utils.zip"))
        shutil.copyfile(wheel, zipped)
        spark.addArtifacts(zipped, pyfile=True)

        def where(batches):
            import pandas as pd
            import lab_utils.common.shared as shared
            for _ in batches:
                pass
            yield pd.DataFrame({"file": [shared.__file__]})

        out["shipped"] = spark.range(1).mapInPandas(where, "file string").first()["file"]
    Path(out_path).write_text(json.dumps(out))
''')


def _namespace_problem(folder: Path) -> str | None:
    """Why the client cannot get a private tmpfs over a folder here, or None if it can."""
    if shutil.which("unshare") is None:
        return "util-linux's unshare is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=1m tmpfs "$1" && touch "$1/x"', "sh", str(folder)],
        capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0 or any(folder.iterdir()):
        line = (probe.stderr.strip().splitlines() or ["no error text"])[-1]
        return f"no private mount namespace here (needs root or CAP_SYS_ADMIN): {line}"
    return None


def run_client(tmp_path: Path, api: str, *, hidden: bool, wheel: Path | None = None
               ) -> dict[str, Any]:
    """Run :data:`CLIENT` with ``LAB_SPARK_API=api``; with ``hidden``, in a mount namespace
    where ``LAB_SHARE_DIR`` is an empty tmpfs. Returns what it saw, with ``wall_s``."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    out = tmp_path / f"client-{api}-{'hidden' if hidden else 'shared'}.json"
    argv = [sys.executable, str(script), str(out)] + ([str(wheel)] if wheel else [])
    if hidden:
        share = os.environ["LAB_SHARE_DIR"]
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs -o size=64m tmpfs "$1" && shift && exec "$@"', "sh", share,
                *argv]
    env = {**os.environ, "LAB_SPARK_API": api}
    began = time.perf_counter()
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=420, check=False)
    assert done.returncode == 0, done.stderr[-5000:]
    facts = json.loads(out.read_text())
    facts["wall_s"] = time.perf_counter() - began
    return facts


def _summary(title: str, facts: dict[str, Any]) -> None:
    SUMMARY.parent.mkdir(exist_ok=True)
    with SUMMARY.open("a") as f:
        f.write(f"== {title} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n"
                + json.dumps(facts, indent=2) + "\n")


@pytest.fixture(scope="module")
def namespace_ok(tmp_path_factory) -> None:
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace needs root (or CAP_SYS_ADMIN)")
    problem = _namespace_problem(tmp_path_factory.mktemp("mount-probe"))
    if problem:
        pytest.skip(problem)


def test_shared_folder_passes_and_the_wheel_ships_as_a_zip(lab_cluster, tmp_path):
    """The lab as it is: one folder for the client and the workers. The check passes, the
    model and the data set are found, and the lab's package reaches the workers as the recipe
    ships it."""
    if not UV.is_file():
        pytest.fail(f"{UV} is missing: `make venv` installs the lab's uv")
    built = subprocess.run([str(UV), "build", "--wheel", "--offline", "--quiet", "-o",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True,
                           timeout=120, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lab_utils-*-py3-none-any.whl")
    facts = run_client(tmp_path, "connect", hidden=False, wheel=wheel)
    _summary("connect, one folder", facts)
    assert facts["session"].startswith("pyspark.sql.connect")
    assert facts["hosts"] and "check_error" not in facts, facts
    assert facts["markers_left"] == []
    assert facts["udf"] == [0.0, 2.5, 5.0, 7.5]
    assert facts["read"] == 3
    # Connect's client takes .py, .zip, .egg and .jar as pyfiles, and a wheel is a zip.
    assert facts["whl_error"]["condition"] == "UNSUPPORTED_OPERATION", facts
    # The workers imported the shipped copy (under the session's artifacts), not the venv's.
    assert "lab_utils.zip" in facts["shipped"], facts["shipped"]
    assert not facts["shipped"].startswith(str(ROOT)), facts["shipped"]


@pytest.mark.parametrize("api", ["connect", "classic"])
def test_a_client_with_another_folder_gets_the_clear_error(lab_cluster, namespace_ok, tmp_path,
                                                           api):
    """The remote case: the client writes into a folder the workers do not have."""
    share = os.environ["LAB_SHARE_DIR"]
    facts = run_client(tmp_path, api, hidden=True)
    _summary(f"{api}, the client's own folder over LAB_SHARE_DIR", facts)
    assert facts["client_sees"] == []  # the tmpfs, not the lab's folder
    assert facts["session"].startswith(
        "pyspark.sql.connect" if api == "connect" else "pyspark.sql.session")
    message = facts.get("check_error", "")
    assert message.startswith(f"The storage root {share} is not the same folder for this "
                              f"client and the Spark workers: the client wrote {share}/"
                              ".lab-shared-check-"), facts
    assert "and the tasks found no such file on " in message
    assert "set LAB_SHARE_DIR to that path" in message
    assert "spark.addArtifacts(path, file=True)" in message
    assert facts["markers_left"] == []
    assert facts["check_s"] < 120
    # What the learner meets without the check: the model and the data are not there.
    assert "FileNotFoundError" in facts["udf_error"]["message"], facts["udf_error"]
    assert "remote-demo/weights.json" in facts["udf_error"]["message"]
    if api == "connect":  # the driver (the Connect server) sees the workers' folder
        assert facts["read_error"]["condition"] == "PATH_NOT_FOUND", facts["read_error"]
    else:  # the driver, in the client, lists the file; the executors cannot open it
        assert "FAILED_READ_FILE" in facts["read_error"]["message"], facts["read_error"]
    # Nothing the client wrote reached the real folder.
    assert not (Path(share) / "models" / "remote-demo").exists()
