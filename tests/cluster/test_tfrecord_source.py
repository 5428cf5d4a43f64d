"""``format("tfrecord")`` (``lab_utils.data.tfrecords.datasource``) on the real standalone lab:

* every dtype round-trips exactly through executors of the cluster, in both directions;
* a task whose Python worker is killed while the writer has its part file open is retried, and
  the output is still exact, with no temporary file, staging or trash folder left behind;
* a folder of a user's files is refused and left as it was, and a job that fails leaves the
  previous output as it was;
* through the lab's Spark Connect server, ``get_spark`` registers the source too: a Connect
  client writes and reads it, and the classic session reads what the client wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab_utils.data import tfrecords
from tests.spark.test_tfrecords import EVERY, EVERY_DDL, _every_rows, _exact

ROOT = Path(__file__).resolve().parents[2]
CONNECT_VARIABLES = ("SPARK_CONNECT_AUTHENTICATE_TOKEN", "SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE",
                     "SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_API_MODE",
                     "SPARK_LOCAL_REMOTE")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def place(lab_cluster, request) -> Path:
    """An empty folder on the lab's shared storage, for this test alone."""
    folder = lab_cluster.cfg.share_dir / "data" / "tfrecord-source" / request.node.name
    folder.mkdir(parents=True)
    return folder


def test_every_dtype_round_trips_exactly_on_the_cluster(spark, place):
    rows = _every_rows(40)
    dest = place / "every"
    (spark.createDataFrame(rows, EVERY_DDL).repartition(4).write.format("tfrecord")
     .option("schema", EVERY.to_json()).option("compression", "gzip").mode("overwrite")
     .save(str(dest)))
    summary = tfrecords.load_schema(dest)[1]
    assert summary["records"] == 40 and len(summary["files"]) == 4
    back = spark.read.format("tfrecord").load(str(dest))
    assert back.rdd.getNumPartitions() == 4
    assert _exact(back.collect()) == _exact(rows)
    assert sorted(p.name for p in place.iterdir()) == ["every"]


def test_a_killed_task_is_retried_and_the_output_is_exact_with_nothing_left(spark, place):
    from pyspark.sql import functions as F

    dest = place / "out"
    marker = place / "killed"
    parent = str(place)

    @F.udf("long")
    def kill_once(value):
        """Kill this Python worker once, at row 45 (15 rows into its partition), while the
        writer holds its part file open."""
        import glob
        import signal
        import time

        if value == 45:
            try:
                fd = os.open(str(marker), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return value  # the retry: the marker says it was killed already
            deadline = time.monotonic() + 120  # the writer's Python worker may start slowly
            partial = []
            while not partial and time.monotonic() < deadline:  # the writer's temporary file
                partial = glob.glob(f"{parent}/.out.staging-*/.part-*")
                time.sleep(0.1)
            os.write(fd, json.dumps(partial).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        return value

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "8")
    try:
        df = (spark.range(0, 60, numPartitions=2).withColumn("id", kill_once("id"))
              .withColumn("x", F.array(F.col("id").cast("double") / 4, F.lit(0.5))))
        df.write.format("tfrecord").option("shape.x", "2").mode("overwrite").save(str(dest))
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    partial = json.loads(marker.read_text())
    assert partial, "the killed attempt had no part file open: the kill came too early"
    assert sorted(p.name for p in dest.iterdir()) == [
        "part-00000.tfrecord", "part-00001.tfrecord", "schema.json"]  # no temporary file
    assert sorted(p.name for p in place.iterdir()) == ["killed", "out"]  # no staging or trash
    back = spark.read.format("tfrecord").load(str(dest)).collect()
    assert sorted((r.id, r.x) for r in back) == [(i, [i / 4, 0.5]) for i in range(60)]


@pytest.mark.filterwarnings("ignore:toPandas attempted Arrow optimization")
def test_a_user_folder_is_refused_and_a_failed_job_keeps_the_previous_output(spark, place):
    user = place / "mine"
    user.mkdir()
    (user / "model.keras").write_bytes(b"weights")
    (user / "part-notes.txt").write_text("mine too")
    df = spark.createDataFrame([(i, [float(i), 1.0]) for i in range(6)], "id long, x array<double>")
    with pytest.raises(Exception, match="is not a TFRecord output of the lab"):
        df.write.format("tfrecord").option("shape.x", "2").mode("overwrite").save(str(user))
    assert _files(user) == {"model.keras": b"weights", "part-notes.txt": b"mine too"}

    dest = place / "train"
    df.write.format("tfrecord").option("shape.x", "2").mode("overwrite").save(str(dest))
    before = _files(dest)
    bad = spark.createDataFrame([(i, [float(i)] * (1 if i == 4 else 2)) for i in range(6)],
                                "id long, x array<double>")
    with pytest.raises(Exception, match=r"feature 'x': expected shape \(2,\)"):
        bad.repartition(2).write.format("tfrecord").option("shape.x", "2").mode(
            "overwrite").save(str(dest))
    assert _files(dest) == before
    assert sorted(p.name for p in place.iterdir()) == ["mine", "train"]


#: A Connect client made by get_spark: writes the rows it is given, reads back its own output
#: and the classic session's; a JSON report on the last line.
CONNECT_CLIENT = textwrap.dedent("""
    import json, sys
    from lab_utils.session import get_spark

    rows_file, schema_json, ddl, mine, theirs = sys.argv[1:]
    spark = get_spark("tfrecord-connect", quiet=True)
    rows = [tuple(bytes.fromhex(v["hex"]) if isinstance(v, dict) else
                  [bytes.fromhex(x["hex"]) for x in v] if isinstance(v, list) and v
                  and isinstance(v[0], dict) else v for v in row)
            for row in json.load(open(rows_file))]
    (spark.createDataFrame(rows, ddl).repartition(2).write.format("tfrecord")
     .option("schema", schema_json).mode("overwrite").save(mine))
    ids = {name: sorted(r.id for r in spark.read.format("tfrecord").load(folder)
                        .select("id").collect()) for name, folder in (("mine", mine),
                                                                      ("theirs", theirs))}
    print(json.dumps({"connect": type(spark).__module__, **ids}))
""")


def _json_value(value):
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [{"hex": v.hex()} for v in value]
    return value


def test_a_connect_client_of_get_spark_writes_and_reads_the_source(lab_cluster, spark, place):
    rows = _every_rows(12)
    (place / "rows.json").write_text(json.dumps([[_json_value(v) for v in r] for r in rows]))
    classic = place / "classic"
    (spark.createDataFrame(rows[:5], EVERY_DDL).write.format("tfrecord")
     .option("schema", EVERY.to_json()).mode("overwrite").save(str(classic)))
    env = {k: v for k, v in os.environ.items() if k not in CONNECT_VARIABLES}
    env.update(SPARK_CONNECT_AUTHENTICATE_TOKEN=lab_cluster.cfg.connect_token,
               LAB_SPARK_API="connect")
    proc = subprocess.run(
        [sys.executable, "-c", CONNECT_CLIENT, str(place / "rows.json"), EVERY.to_json(),
         EVERY_DDL, str(place / "connect"), str(classic)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["connect"].startswith("pyspark.sql.connect"), report
    assert report["mine"] == list(range(12)) and report["theirs"] == list(range(5))
    # What the Connect server's executors wrote is exactly what the classic session reads.
    written = spark.read.format("tfrecord").load(str(place / "connect")).collect()
    assert _exact(written) == _exact(rows)
    assert sorted(p.name for p in place.iterdir()) == ["classic", "connect", "rows.json"]
