"""A streaming inference query on the cluster loses an executor (``kill -9``) mid-stream, is
stopped and restarted from its checkpoint, and still writes exactly one row per landed file.

The query is notebook 09's: ``binaryFile`` files from a landing folder on shared storage,
scored by the lab's iterator UDF with the digits CNN, appended to a Parquet sink whose
checkpoint is on shared storage too. It runs in the session's ``spark`` application (one
1-core executor on each worker), not a private lab: killing one executor process, not its
worker, costs the lab nothing: the worker stays ALIVE and the master gives the application a
new executor, which the test waits for, so the lab is left as it was found.

What must hold:

* the executor dies while it runs a task of a micro-batch; that task fails
  (``ExecutorLostFailure``), runs again on the other executor, and the query goes on;
* files landed while the query runs, each written slowly in pieces with
  :func:`lab_utils.data.landing.land_file` so that triggers fire in the middle of writes, are
  never read half written: every row has the file's full length and a prediction;
* the query is stopped mid-stream, more files land, and a restart from the checkpoint
  (``availableNow``) scores the rest: every landed file has exactly one row in the sink, none
  missing, none duplicated.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

from lab_utils import inference
from lab_utils.common import process
from lab_utils.data import images
from lab_utils.data.landing import land_file
from lab_utils.ops import resilience
from lab_utils.training import cnn

FIRST = 24          # files landed before the query starts
DURING = 6          # files landed while it runs, each written in pieces
AFTER_STOP = 6      # files landed while it is stopped
PER_TRIGGER = 6     # maxFilesPerTrigger: two 3-file tasks per micro-batch
PAUSE = 0.4         # seconds per model batch (one image): a 3-file task lasts 1.2 s
SCHEMA = "path string, modificationTime timestamp, length long, content binary"


def _executor_pids(cfg, app_id: str) -> dict[str, tuple[str, int]]:
    """Executor id -> (worker, pid) of the application's executor JVMs on the native lab.

    An executor runs in ``<state>/work/<worker>/<app id>/<executor id>``; its Python workers
    share that folder, the JVM is the process running ``CoarseGrainedExecutorBackend``.
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"CoarseGrainedExecutorBackend" in cmdline and cwd.parent.name == app_id:
            found[cwd.name] = (cwd.parent.parent.name, int(entry.name))
    return found


def _committed_batches(sink: Path) -> int:
    log = sink / "_spark_metadata"
    return sum(1 for p in log.iterdir() if p.name.isdigit()) if log.is_dir() else 0


def test_executor_killed_mid_stream_then_restart_scores_every_file_once(spark, lab_cluster):
    cfg = lab_cluster.cfg
    spec = cnn.ensure_model(cfg)
    sc = spark.sparkContext
    app_id, ui = sc.applicationId, sc.uiWebUrl
    run = f"streaming-{uuid.uuid4().hex[:8]}"
    pool_dir = cfg.share_dir / "data" / f"{run}-pool"
    landing = cfg.share_dir / "data" / f"{run}-landing"
    out = cfg.share_dir / "output" / run
    sink, checkpoint = out / "predictions", out / "checkpoint"
    images.build_image_dataset(pool_dir, per_class=6)
    pool = [p.read_bytes() for p, _ in images.list_labelled_images(pool_dir)]
    landing.mkdir(parents=True)
    sizes: dict[str, int] = {}

    def land(prefix: str, count: int, *, pieces: int = 1) -> None:
        for i in range(count):
            data = pool[(len(sizes) + i) % len(pool)]

            def write(handle, data=data):
                step = -(-len(data) // pieces)
                for start in range(0, len(data), step):
                    handle.write(data[start:start + step])
                    handle.flush()
                    if pieces > 1:
                        time.sleep(0.05)  # triggers fire while the file is being written

            land_file(landing, f"{prefix}-{i:03d}.png", write)
            sizes[f"{prefix}-{i:03d}.png"] = len(data)

    keras_make = inference.keras_predict_fn(spec.model_file)

    def make_predict_fn():
        predict = keras_make()

        def predict_slowly(pixels):
            time.sleep(PAUSE)  # stands in for a bigger model
            return predict(pixels)

        return predict_slowly

    classify = inference.iterator_udf(spec, make_predict_fn, batch_size=1)

    def start(**trigger):
        files = (spark.readStream.format("binaryFile").schema(SCHEMA)
                 .option("pathGlobFilter", "*.png")
                 .option("maxFilesPerTrigger", PER_TRIGGER)
                 .load(str(landing)))
        return (files.select("path", "length", classify("path", "content").alias("r"))
                .select("path", "length", "r.*")
                .writeStream.format("parquet").option("checkpointLocation", str(checkpoint))
                .trigger(**trigger).start(str(sink)))

    land("first", FIRST)
    assert process.wait_until(lambda: len(_executor_pids(cfg, app_id)) == 2, 60, 0.2), (
        f"expected one executor on each worker, found {_executor_pids(cfg, app_id)}")
    before = _executor_pids(cfg, app_id)
    query = start(processingTime="0 seconds")
    victim_id = killed_pid = None
    try:
        # 1. Kill an executor while it runs a task of a micro-batch past the first.
        def busy_executor():
            if _committed_batches(sink) < 1:
                return None
            return next((e["id"] for e in resilience.executors(ui, app_id, cfg)
                         if e["alive"] and e["active"] > 0 and e["id"] in before), None)

        assert process.wait_until(lambda: busy_executor() is not None, 120, 0.1), (
            f"no executor got a task within 120 s: {query.lastProgress}")
        victim_id = busy_executor()
        _, killed_pid = before[victim_id]
        os.kill(killed_pid, signal.SIGKILL)

        # 2. Files land in pieces while the query runs on.
        producer = threading.Thread(target=land, args=("during", DURING), kwargs={"pieces": 4})
        producer.start()
        producer.join()
        assert process.wait_until(lambda: _committed_batches(sink) >= 3, 180, 0.2), (
            f"the query stopped making progress after the kill: {query.exception()}")
        assert query.isActive and query.exception() is None
        query.stop()  # mid-stream: files are still waiting

        # 3. More files while it is stopped; a restart from the checkpoint takes them all.
        land("after", AFTER_STOP)
        restart = start(availableNow=True)
        restart.awaitTermination(300)
        assert restart.exception() is None and restart.id == query.id
    finally:
        query.stop()

    rows = spark.read.parquet(str(sink)).toPandas()
    rows["name"] = rows["path"].str.rsplit("/", n=1).str[-1]
    per_file = rows["name"].value_counts()
    assert len(sizes) == FIRST + DURING + AFTER_STOP
    assert set(per_file.index) == set(sizes), {
        "missing": sorted(set(sizes) - set(per_file.index)),
        "unexpected": sorted(set(per_file.index) - set(sizes))}
    assert per_file.max() == 1, per_file[per_file > 1].to_dict()  # none duplicated
    # Never read half written: each row saw the whole file and scored it.
    assert (rows["length"] == rows["name"].map(sizes)).all()
    assert rows["error"].isna().all(), rows.loc[rows["error"].notna(), ["name", "error"]]
    assert rows["prediction"].notna().all()

    # The executor died with a task on it; the task ran again elsewhere.
    listed = {e["id"]: e for e in resilience.executors(ui, app_id, cfg)}
    assert listed[victim_id]["alive"] is False
    assert sum(e["failed"] for e in listed.values()) >= 1, listed
    # The lab as it was: the worker gave the application a new executor (two alive again).
    assert process.wait_until(
        lambda: sum(e["alive"] for e in resilience.executors(ui, app_id, cfg)) == 2, 90, 0.5), \
        resilience.executors(ui, app_id, cfg)
    assert len(_executor_pids(cfg, app_id)) == 2
