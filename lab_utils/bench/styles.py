"""The Spark side of the inference benchmark: one builder per style, run on a cached input
with a warm-up and a timed run, and the memory and settings recorded with every result."""

from __future__ import annotations

import contextlib
import os
import pstats
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab_utils import inference
from lab_utils.bench.cases import REST_BATCH, REST_IN_FLIGHT, REST_STYLES, BenchModel, warmup_rows
from lab_utils.common import tensorflow as tf_setup
from lab_utils.common.connect import is_connect


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_recording(make: tf_setup.MakePredictFn, folder: str) -> tf_setup.MakePredictFn:
    """Wrap a predict fn so each Python worker records the largest RSS it had after a batch
    in ``folder/rss-<pid>`` and each model load in ``folder/loads-<pid>``. The driver empties
    ``folder`` before each run (workers are reused across runs, so lifetime peaks would carry
    one run's memory into the next)."""

    def wrapped() -> tf_setup.PredictFn:
        predict = make()
        with open(Path(folder, f"loads-{os.getpid()}"), "a") as loads:
            loads.write("1\n")

        def recording(pixels):
            out = predict(pixels)
            mark = Path(folder, f"rss-{os.getpid()}")
            seen = float(mark.read_text()) if mark.exists() else 0.0
            mark.write_text(f"{max(seen, _rss_mb()):.1f}")
            return out

        return recording

    return wrapped


def transfer_only_udf():
    """Moves rows through Arrow and back with the same output struct, doing no work at all."""
    from pyspark.sql.functions import pandas_udf

    # PySpark's stubs have no overload for the type-hint form (SPARK-39142), which the docs
    # recommend over functionType: the decorated function is untyped (Any) to mypy.
    @pandas_udf(inference.RESULT_DDL)  # type: ignore[call-overload]
    def transfer(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for _paths, contents in batches:
            n = len(contents)
            yield pd.DataFrame({"prediction": ["x"] * n, "confidence": np.ones(n, "float32"),
                                "error": [None] * n})

    return transfer


def style_builder(style: str, model: BenchModel, make, batch: int,
                  rest_url: str | None = None) -> Callable:
    """``df -> scored df`` for ``style``; built once, so warm-up and timed run share the
    factory and therefore the model cached in each Python worker."""
    spec = model.spec
    if style in REST_STYLES:
        from lab_utils.inference.rest_client import RestOptions
        from lab_utils.inference.rest_udf import rest_udf

        in_flight = REST_IN_FLIGHT if style == "rest_in_flight" else 1
        udf = rest_udf(spec, rest_url,
                       client=RestOptions(batch_size=REST_BATCH, in_flight=in_flight),
                       payload="pixels" if style == "rest_pixels" else "auto")
        return lambda df: df.select(udf("path", "content").alias("r"))
    if style == "transfer_only":
        udf = transfer_only_udf()
        return lambda df: df.select(udf("path", "content").alias("r"))
    if style == "map_in_pandas":
        return lambda df: inference.map_in_pandas(df, spec, make, batch_size=batch)
    if style == "partition_predictor":
        # The model the UDF styles loaded (same maker, same key): the RDD functions run in the
        # same Python workers. The CPU here; on a GPU machine the predictor's own loader
        # places the model. Its form follows the session: the RDD in classic mode, mapInPandas
        # under Spark Connect (no RDDs there).
        key = inference.udf_cache_key(spec, make)
        predictor = inference.image_partition_predictor(
            spec, lambda device: inference.cached_predict_fn(key, make), batch_size=batch)
        return predictor.transform
    factory: Callable = {
        "row_pickled": lambda: inference.row_udf(spec, make, use_arrow=False),
        "row_arrow": lambda: inference.row_udf(spec, make, use_arrow=True),
        "pandas_series": lambda: inference.pandas_udf_series(spec, make, batch_size=batch),
        "iterator": lambda: inference.iterator_udf(spec, make, batch_size=batch),
        "arrow_udf": lambda: inference.arrow_iterator_udf(spec, make, batch_size=batch),
        "predict_batch_udf": lambda: inference.spark_predict_batch_udf(spec, make,
                                                                      batch_size=batch),
    }[style]
    udf = factory()
    return lambda df: df.select(udf("path", "content").alias("r"))


#: Why a Spark Connect session records no driver JVM memory.
NO_DRIVER_JVM = ("Spark Connect: the driver JVM is the Connect server's, in another process "
                 "(its memory is in the server's UI, Executors tab, driver row)")


def spark_settings(spark) -> dict[str, str]:
    """The settings in force, as recorded with every result: the session's conf, then (classic
    only) the application's ``SparkConf``; ``"default"`` for a key neither sets. A Spark Connect
    session reads them all through ``spark.conf.get`` (it has no ``sparkContext``) and gets the
    server application's values for the static ones."""
    keys = ["spark.master", "spark.cores.max", "spark.executor.cores", "spark.task.cpus",
            "spark.executor.memory", "spark.python.worker.reuse",
            "spark.sql.execution.arrow.maxRecordsPerBatch",
            "spark.sql.execution.arrow.maxBytesPerBatch",
            "spark.sql.execution.arrow.compression.codec",
            "spark.python.udf.pipelined.enabled", "spark.python.udf.pipelined.queueDepth",
            "spark.sql.execution.pythonUDF.arrow.enabled", "spark.sql.shuffle.partitions"]
    if is_connect(spark):
        return {k: spark.conf.get(k, None) or "default" for k in keys}
    conf = spark.sparkContext.getConf()
    return {k: spark.conf.get(k, None) or conf.get(k, "default") for k in keys}


def driver_rss_mb(spark) -> dict[str, float | str | None]:
    """Peak RSS of this Python process and of the driver JVM (from /proc).

    The JVM's is ``None`` when this process did not start it, with the reason in
    ``driver_jvm_note``: under Spark Connect the driver is the server's (:data:`NO_DRIVER_JVM`).
    """
    python = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if is_connect(spark):
        return {"driver_python_peak_rss_mb": round(python, 1), "driver_jvm_peak_rss_mb": None,
                "driver_jvm_note": NO_DRIVER_JVM}
    jvm = None
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    if proc is not None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    jvm = int(line.split()[1]) / 1024
        except OSError:
            pass
    return {"driver_python_peak_rss_mb": round(python, 1),
            "driver_jvm_peak_rss_mb": None if jvm is None else round(jvm, 1),
            "driver_jvm_note": "" if jvm is not None else
            "not measured: this process did not start the driver JVM, or its /proc is unreadable"}


def cached_input(spark, files: list[Path], partitions: int):
    """The N files' bytes, read once and cached in ``partitions`` partitions: ``(df, rows)``.

    Spark lists more than 32 explicit paths with a distributed job of one task per path
    (``spark.sql.sources.parallelPartitionDiscovery.threshold``): 3,000 tasks to stat 3,000
    local files. The driver lists them itself here, which takes milliseconds.
    """
    key = "spark.sql.sources.parallelPartitionDiscovery.threshold"
    before = spark.conf.get(key)
    spark.conf.set(key, str(max(len(files) + 1, 32)))
    try:
        df = (spark.read.format("binaryFile").load([f.as_uri() for f in files])
              .select("path", "content").repartition(partitions).cache())
        rows = df.count()
    finally:
        spark.conf.set(key, before)
    return df, rows


def recording_maker(model: BenchModel, rss_dir: Path) -> tf_setup.MakePredictFn:
    """The predict-fn maker the styles of ``model`` share, recording peak RSS in ``rss_dir``.

    One maker for all styles means one cache key, so each Python worker loads the model once
    and every later style finds it loaded (as a notebook that scores twice does); the first
    style that needs the model pays the load in its warm-up.
    """
    return _rss_recording(model.make_predict_fn or inference.keras_predict_fn(
        model.spec.model_file), str(rss_dir))


@contextlib.contextmanager
def session_conf(spark, conf: dict[str, str]):
    """Set runtime settings on ``spark`` for the ``with`` block, then put back what was there
    (unset when nothing was): how a ``--switches`` setting is on for one style's run only."""
    before = {k: spark.conf.get(k, None) for k in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


#: The UDF profiler's setting (Spark 4.0; iterator UDFs since 4.1, Spark Connect too).
PROFILER = "spark.sql.pyspark.udf.profiler"


def top_functions(folder: Path, limit: int = 12) -> list[dict[str, Any]]:
    """The functions with the most own time in the ``*.pstats`` files Spark's profiler dumped
    into ``folder`` (one per UDF, all Python workers summed): ``[{function, calls, own_s,
    cumulative_s}]``, most own time first."""
    files = sorted(folder.glob("*.pstats"))
    if not files:
        return []
    stats = pstats.Stats(str(files[0]))
    for more in files[1:]:
        stats.add(str(more))
    rows = [{"function": f"{Path(file).name}:{line}({name})", "calls": calls,
             "own_s": round(own, 4), "cumulative_s": round(cumulative, 4)}
            for (file, line, name), (_, calls, own, cumulative, _) in
            stats.stats.items()]  # type: ignore[attr-defined]
    return sorted(rows, key=lambda r: -r["own_s"])[:limit]


def profile_run(spark, job: Callable[[], None], folder: Path) -> list[dict[str, Any]]:
    """Run ``job`` once more with the ``perf`` UDF profiler on, dump what it recorded into
    ``folder`` (``udf_<id>_perf.pstats``, and ``top.txt``: pstats' own report sorted by own
    time) and return :func:`top_functions`. Not the timed run: the profiler slows the workers."""
    spark.profile.clear()
    with session_conf(spark, {PROFILER: "perf"}):
        job()
    folder.mkdir(parents=True, exist_ok=True)
    spark.profile.dump(str(folder), type="perf")
    spark.profile.clear()
    files = sorted(folder.glob("*.pstats"))
    if files:
        with open(folder / "top.txt", "w") as out:
            stats = pstats.Stats(*map(str, files), stream=out)
            stats.sort_stats("tottime").print_stats(25)
    return top_functions(folder)


def _sql_executions(spark) -> list[dict[str, Any]] | None:
    """The driver's record of SQL executions (its REST API), or ``None`` where there is none
    to read: a Spark Connect session (the server's driver) or a session without a UI."""
    if is_connect(spark):
        return None
    from lab_utils.common.net import http_json

    sc = spark.sparkContext
    if not sc.uiWebUrl:
        return None
    url = f"{sc.uiWebUrl.rstrip('/')}/api/v1/applications/{sc.applicationId}/sql"
    try:
        return http_json(f"{url}?details=true&offset=0&length=100000", timeout=10)
    except (OSError, ValueError):
        return None


#: The Python operators' SQL metrics kept with a result (Spark 4.3's names, as the SQL tab
#: shows them); any other metric of those operators is kept too, under its own name.
PYTHON_NODES = ("ArrowEvalPython", "MapInPandas", "MapInArrow", "BatchEvalPython",
                "PythonMapInArrow", "ArrowEvalPythonUDF")


def python_metrics(before: list[dict[str, Any]] | None,
                   after: list[dict[str, Any]] | None) -> dict[str, str]:
    """The SQL metrics of the Python operator(s) in the executions that ``after`` has and
    ``before`` had not (the timed run's), ``{"<operator>: <metric>": value}``; empty when
    either is ``None``."""
    if before is None or after is None:
        return {}
    seen = {e["id"] for e in before}
    out: dict[str, str] = {}
    for execution in after:
        if execution["id"] in seen:
            continue
        for node in execution.get("nodes", []):
            if "python" in node["nodeName"].lower() or node["nodeName"] in PYTHON_NODES:
                for metric in node.get("metrics", []):
                    out[f"{node['nodeName']}: {metric['name']}"] = metric["value"]
    return out


def _new_metrics(spark, before: list[dict[str, Any]] | None) -> dict[str, str]:
    """:func:`python_metrics` of the run just ended, once the driver has recorded it as
    completed (its listener is asynchronous: up to 5 s)."""
    if before is None:
        return {}
    seen = {e["id"] for e in before}
    for _ in range(20):
        after = _sql_executions(spark)
        new = [e for e in after or [] if e["id"] not in seen]
        if new and all(e.get("status") == "COMPLETED" for e in new):
            return python_metrics(before, after)
        time.sleep(0.25)
    return python_metrics(before, _sql_executions(spark))


def run_style(spark, style: str, model: BenchModel, files: list[Path], *, batch: int,
              partitions: int, rss_dir: Path, rest_url: str | None = None,
              data=None, make: tf_setup.MakePredictFn | None = None,
              conf: dict[str, str] | None = None, profile_dir: Path | None = None) -> dict:
    """Warm up on a slice, then time the full run; both force every row through the UDF.

    The warm-up is a query of :func:`~lab_utils.bench.cases.warmup_rows` rows (one full model
    batch per partition), the same count the peers warm up on. ``data``: ``(df, rows)`` from
    :func:`cached_input`, shared by the styles of one N; without it the files are read and
    cached for this run alone. ``make``: from :func:`recording_maker` for ``rss_dir``, shared
    by the styles of one model; without it this run's workers load the model afresh. ``conf``:
    runtime settings on for this run only (a ``--switches`` variant). ``profile_dir``: after
    the timed run, one more run with the UDF profiler on (:func:`profile_run`), its top
    functions returned as ``profile_top``. The timed run's Python SQL metrics come back as
    ``python_metrics`` (classic sessions; the driver's REST API).
    """
    owned = data is None
    df, rows = cached_input(spark, files, partitions) if owned else data
    rss_dir.mkdir(parents=True, exist_ok=True)
    for mark in rss_dir.iterdir():  # peaks of this run only (the workers outlive runs)
        mark.unlink()
    make = make or recording_maker(model, rss_dir)
    build = style_builder(style, model, make, batch, rest_url)
    warm = df.limit(warmup_rows(partitions, batch)).repartition(partitions)
    result: dict[str, Any] = {"rows": rows}
    with session_conf(spark, conf or {}):
        start = time.perf_counter()
        build(warm).write.format("noop").mode("overwrite").save()
        result["warmup_s"] = time.perf_counter() - start
        before = _sql_executions(spark)
        start = time.perf_counter()
        build(df).write.format("noop").mode("overwrite").save()
        result["seconds"] = time.perf_counter() - start
        metrics = _new_metrics(spark, before)
        if profile_dir is not None:
            result["profile_top"] = profile_run(
                spark, lambda: build(df).write.format("noop").mode("overwrite").save(),
                profile_dir)
    if owned:
        df.unpersist()
    rss = [float(p.read_text()) for p in rss_dir.glob("rss-*")]
    loads = sum(len(p.read_text().split()) for p in rss_dir.glob("loads-*"))
    return {**result, "worker_peak_rss_mb": max(rss) if rss else None,
            "python_workers": len(rss), "model_loads": loads, "python_metrics": metrics}
