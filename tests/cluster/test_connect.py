"""The lab's Spark Connect server (started with the session's ``lab_cluster``), from its clients.

* a client without the token, and one with a wrong token, are refused (``UNAUTHENTICATED``);
* ``get_spark`` in connect mode (``LAB_SPARK_API=connect``, ``remote=``) gives a Connect
  session that says so, applies what a client may set and names, in a warning, what it cannot;
* the lab's UDF styles (row UDF pickled and Arrow, pandas UDF, iterator UDF,
  ``predict_batch_udf``, ``mapInPandas``) give the same rows through Connect as through the
  classic ``spark`` session, bad files' errors included.

Every Connect client runs in a process of its own: PySpark's default session is process-global,
it refuses a Connect session beside the classic one this package's ``spark`` fixture holds
(``SESSION_ALREADY_EXIST``), and a Connect session marks the whole process as a Connect one
(``SPARK_CONNECT_MODE_ENABLED``), which the classic tests after this one must not inherit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab_utils import inference
from lab_utils.data import images
from lab_utils.training import cnn

ROOT = Path(__file__).resolve().parents[2]
#: What a client's process must not inherit from this one: a token, or Connect mode itself.
CONNECT_VARIABLES = ("SPARK_CONNECT_AUTHENTICATE_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE",
                     "SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_API_MODE",
                     "SPARK_LOCAL_REMOTE")

#: A bare PySpark client (no lab code): the first query's outcome, as JSON on the last line.
BARE_CLIENT = textwrap.dedent("""
    import json, sys
    from pyspark.errors.exceptions.connect import SparkConnectGrpcException
    from pyspark.sql import SparkSession

    try:
        spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
        rows = spark.range(3).collect()
        print(json.dumps({"refused": False, "rows": len(rows)}))
    except SparkConnectGrpcException as exc:
        print(json.dumps({"refused": True, "status": exc.getGrpcStatusCode().name,
                          "message": str(exc)}))
""")

#: A lab notebook's Connect client: get_spark in connect mode, the settings it applies and
#: refuses, then every UDF style over the images; a JSON report on the last line.
LAB_CLIENT = textwrap.dedent("""
    import json, math, sys

    from lab_utils import inference
    from lab_utils.common.connect import is_connect
    from lab_utils.common.saved_model import load_spec
    from lab_utils.session import describe, get_spark

    folder, model_dir, url, out = sys.argv[1:5]
    # LAB_SPARK_API=connect in the environment; one setting only the server's application
    # has, one any session may change.
    spark = get_spark("connect-styles", conf={"spark.executor.memory": "3g",
                                              "spark.sql.shuffle.partitions": "7"})
    again = get_spark(remote=url, quiet=True)  # the same server, asked for by URL
    report = {"connect": is_connect(spark), "again": is_connect(again),
              "describe": describe(spark),
              "shuffle": spark.conf.get("spark.sql.shuffle.partitions"),
              "executor_memory": spark.conf.get("spark.executor.memory", None)}

    spec = load_spec(model_dir)
    # The very batches of the classic run (see the test): hashed by label, sorted by path.
    df = inference.read_images(spark, folder).repartition(2, "label").sortWithinPartitions("path")
    styles = {
        "row UDF (pickled)": inference.row_udf(spec, use_arrow=False),
        "row UDF (Arrow)": inference.row_udf(spec, use_arrow=True),
        "pandas UDF": inference.pandas_udf_series(spec, batch_size=8),
        "iterator UDF": inference.iterator_udf(spec, batch_size=8),
        "predict_batch_udf": inference.spark_predict_batch_udf(spec, batch_size=8),
    }
    frames = {name: df.select("path", udf("path", "content").alias("r")).select("path", "r.*")
              for name, udf in styles.items()}
    frames["mapInPandas"] = inference.map_in_pandas(df, spec, keep=("path",))
    rows = {name: [[r["path"], r["prediction"], r["error"], r["confidence"]]
                   for r in frame.collect()] for name, frame in frames.items()}
    with open(out, "w") as handle:
        json.dump(rows, handle)
    print(json.dumps(report))
""")


def _client_env(**extra: str) -> dict[str, str]:
    """This process's environment (the lab's, as a kernel has it) without any Connect token or
    Connect mode, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in CONNECT_VARIABLES}
    return {**env, **extra}


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_client_without_the_token_or_with_a_wrong_one_is_refused(lab_cluster):
    url = lab_cluster.cfg.connect_url  # sc://localhost:PORT
    assert url.startswith("sc://localhost:")
    wrong = "wrong-" + lab_cluster.env["SPARK_CONNECT_AUTHENTICATE_TOKEN"][::-1]
    clients = {  # started together: each pays for its own Python and PySpark imports
        "no token": subprocess.Popen(
            [sys.executable, "-c", BARE_CLIENT, url], env=_client_env(), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "wrong token in the URL": subprocess.Popen(
            [sys.executable, "-c", BARE_CLIENT, f"{url}/;token={wrong}"], env=_client_env(),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "wrong token in the environment": subprocess.Popen(
            [sys.executable, "-c", BARE_CLIENT, url],
            env=_client_env(SPARK_CONNECT_AUTHENTICATE_TOKEN=wrong), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    found = {}
    for name, proc in clients.items():
        try:
            stdout, stderr = proc.communicate(timeout=180)
        finally:
            proc.kill()
        found[name] = _last_json(subprocess.CompletedProcess(proc.args, proc.returncode,
                                                             stdout, stderr))
    for name, outcome in found.items():
        assert outcome["refused"] and outcome["status"] == "UNAUTHENTICATED", (name, outcome)
        assert lab_cluster.env["SPARK_CONNECT_AUTHENTICATE_TOKEN"] not in outcome["message"]
    # The same bare client with the lab's token is served: the refusals were about the token.
    served = subprocess.run(
        [sys.executable, "-c", BARE_CLIENT, url], cwd=ROOT, capture_output=True, text=True,
        env=_client_env(SPARK_CONNECT_AUTHENTICATE_TOKEN=lab_cluster.cfg.connect_token),
        timeout=180)
    assert _last_json(served) == {"refused": False, "rows": 3}


@pytest.fixture(scope="module")
def image_folder(lab_cluster) -> tuple[Path, Path]:
    """(a small folder of images: 2 per class and the bad-input corpus, the lab's model)."""
    spec = cnn.ensure_model(lab_cluster.cfg)  # the lab's CNN at smoke size, once per session
    folder = lab_cluster.cfg.share_dir / "data" / "connect-images"
    shutil.rmtree(folder, ignore_errors=True)
    taken: dict[str, int] = {}
    for path, label in images.list_labelled_images(lab_cluster.cfg.share_dir / "data" / "images"):
        if taken.get(label, 0) < 2:
            taken[label] = taken.get(label, 0) + 1
            (folder / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / label / path.name)
    images.write_bad_input_corpus(folder / "bad")
    return folder, spec.path


def _rows(frame) -> list[list]:
    return [[r["path"], r["prediction"], r["error"], r["confidence"]] for r in frame.collect()]


def _same_rows(connect: list[list], classic: list[list]) -> None:
    def by_path(rows):
        return {row[0]: row for row in rows}

    got, want = by_path(connect), by_path(classic)
    assert len(got) == len(connect) and sorted(got) == sorted(want)
    for path, (_, prediction, error, confidence) in want.items():
        other = got[path]
        assert (other[1], other[2]) == (prediction, error), (path, other, want[path])
        if confidence is None or math.isnan(confidence):
            assert other[3] is None or math.isnan(other[3]), (path, other)
        else:
            assert other[3] == pytest.approx(confidence, abs=1e-6), (path, other)


def test_the_lab_udf_styles_through_connect_give_the_rows_of_classic(
        lab_cluster, spark, image_folder, tmp_path):
    folder, model_dir = image_folder
    url = lab_cluster.cfg.connect_url
    out = tmp_path / "connect-rows.json"
    # The Connect client runs while this process scores the same files in classic mode: the
    # classic application holds 2 of the cluster's 4 cores, the Connect server's takes the others.
    client = subprocess.Popen(
        [sys.executable, "-c", LAB_CLIENT, str(folder), str(model_dir), url, str(out)],
        env=_client_env(SPARK_CONNECT_AUTHENTICATE_TOKEN=lab_cluster.cfg.connect_token,
                        LAB_SPARK_API="connect"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        from lab_utils.common.saved_model import load_spec

        spec = load_spec(model_dir)
        # Each model batch holds the same images in both modes (partitions by a hash of the
        # label, rows sorted by path), so the confidences agree to float32 noise: batches of
        # other images give the same image a confidence up to ~1e-6 apart (oneDNN's kernels
        # depend on the batch).
        df = (inference.read_images(spark, folder).repartition(2, "label")
              .sortWithinPartitions("path").cache())
        styles = {
            "row UDF (pickled)": inference.row_udf(spec, use_arrow=False),
            "row UDF (Arrow)": inference.row_udf(spec, use_arrow=True),
            "pandas UDF": inference.pandas_udf_series(spec, batch_size=8),
            "iterator UDF": inference.iterator_udf(spec, batch_size=8),
            "predict_batch_udf": inference.spark_predict_batch_udf(spec, batch_size=8),
        }
        classic = {name: _rows(df.select("path", udf("path", "content").alias("r"))
                               .select("path", "r.*")) for name, udf in styles.items()}
        classic["mapInPandas"] = _rows(inference.map_in_pandas(df, spec, keep=("path",)))
        df.unpersist()
        stdout, stderr = client.communicate(timeout=600)
    finally:
        client.kill()
    report = _last_json(subprocess.CompletedProcess(client.args, client.returncode, stdout,
                                                    stderr))
    # get_spark in connect mode: a Connect session, by LAB_SPARK_API and by URL, that says so.
    assert report["connect"] and report["again"], report
    assert f"Spark Connect session on {url} · server application app-" in report["describe"], (
        report["describe"])
    # get_spark's own summary line says why it is a Connect session.
    assert (f"Spark Connect session on {url} (LAB_SPARK_API=connect: the lab's Connect server)"
            in stdout), stdout[-2000:]
    # A setting any session may change is applied; one that belongs to the server's
    # application is named in the warning, and the server keeps its own value.
    assert report["shuffle"] == "7"
    assert "a Spark Connect session cannot set these" in stderr, stderr[-3000:]
    assert "spark.executor.memory=3g (the server's application has" in stderr
    assert "spark.sql.shuffle.partitions" not in stderr
    assert report["executor_memory"] == lab_cluster.cfg.executor_memory
    assert lab_cluster.cfg.connect_token not in stdout + stderr  # the token is never printed

    connect = json.loads(out.read_text())
    assert list(connect) == list(classic)
    reference = classic["iterator UDF"]
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    assert len(reference) == files
    assert sum(row[2] is None for row in reference) >= 20  # the good images scored
    assert sum(row[2] is not None for row in reference) >= 5  # the bad files are row errors
    for style, rows in classic.items():
        assert len(rows) == files, style
        _same_rows(connect[style], rows)
