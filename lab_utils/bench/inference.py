"""`make bench`: every inference style against the physical limit, measured honestly.

For each model (the lab's CNN on 32x32 image files, ResNet-50 at 224x224) and each size N:

* **baseline**: one plain Python process on the same cores, decoding the same bytes and calling
  the same model in batches, timed two ways: ``baseline_naive`` (decode a batch, then predict,
  one thread: what published comparisons use) and ``baseline_pipelined`` (decoder threads, one
  batch ahead of the model). The faster of the two is the physical limit of this machine, and
  every ratio is taken against it;
* **transfer only**: an iterator UDF that moves the same rows through Arrow and does no work:
  the Spark/Arrow ceiling;
* every Spark style of :mod:`lab_utils.inference`;
* with ``--rest`` also ``rest``: the same rows scored over HTTP by the lab's model server
  (:mod:`lab_utils.inference.rest_scoring`, a server started for the run on a free port, CNN only),
  reported as a ratio to the in-Spark iterator UDF.

Rules: the input bytes are cached in Spark (and in memory for the baseline) so neither side
times the disk; every timing forces full evaluation (``noop`` sink); a warm-up run on a slice of
the data starts the Python workers and loads the model (each worker loads it once, on the first
style that needs it, and keeps it for the others), and is reported apart from the steady-state
run; the Spark and TensorFlow settings in force are stored with every result.
Output: ``share_storages/output/bench/<timestamp>/results.{csv,json}`` and PNG plots, plus a
table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab_utils import config as lab_config
from lab_utils import inference
from lab_utils.data import images
from lab_utils.training import cnn as models

STYLES = ("transfer_only", "row_pickled", "row_arrow", "pandas_series", "iterator",
          "predict_batch_udf", "map_in_pandas", "partition_predictor")
ROW_STYLES = {"row_pickled", "row_arrow"}
#: The single-process loops; the faster of the two is the baseline every ratio is taken against.
BASELINES = ("baseline_pipelined", "baseline_naive")
#: Opt-in styles, not in the default run (``--rest`` or ``--styles ...,rest``).
EXTRA_STYLES = ("rest",)
#: Images per REST request (each 32x32 image is ~10 KB of JSON).
REST_BATCH = 64
FIELD_SIZES = (100, 500, 1000, 1500, 2000, 2500, 3000)


@dataclass(frozen=True)
class BenchModel:
    name: str
    spec: models.ModelSpec
    make_predict_fn: inference.MakePredictFn | None  # None: the factories' Keras default
    data_dir: Path
    baseline_kind: str  # "keras" or "resnet50"


# --------------------------------------------------------------------------- data and models


def prepare_models(
    cfg: lab_config.LabConfig, which: tuple[str, ...], max_n: int
) -> list[BenchModel]:
    """Build the data sets (enough files for ``max_n``) and the models, once."""
    from lab_utils.training import resnet

    out = []
    if "cnn" in which:
        spec = models.ensure_model(cfg)
        data = cfg.share_dir / "data" / "bench-images"
        per_scan = max(1, -(-max_n // 1797))
        marker = data / ".dataset.json"
        if not marker.is_file() or json.loads(marker.read_text())["files"] < max_n:
            images.build_image_dataset(data, copies=per_scan, image_format="jpeg")
        out.append(BenchModel("cnn", spec, None, data, "keras"))
    if "resnet50" in which:
        model_dir = cfg.share_dir / "models" / "resnet50"
        data = cfg.share_dir / "data" / "bench-photos"
        if len(list(data.rglob("*.jpg"))) < max_n:
            resnet.build_photo_dataset(data, max_n)
        try:
            spec = models.load_spec(model_dir)
        except models.ModelError:
            model, imagenet = resnet.build_model(model_dir)
            resnet.save_model(model, model_dir, imagenet)
            spec = models.load_spec(model_dir)
        out.append(BenchModel("resnet50", spec, resnet.predict_fn_from_path(spec.model_file),
                              data, "resnet50"))
    return out


def list_files(data_dir: Path, n: int) -> list[Path]:
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(files) < n:
        raise ValueError(f"{data_dir} has {len(files)} files, {n} requested")
    return files[:n]


# --------------------------------------------------------------------------- the baseline


def run_baselines(model: BenchModel, files: list[Path], sizes: list[int], threads: int,
                  batch: int) -> dict[int, dict[str, dict]]:
    """One plain Python process, all cores, same decode and model: the physical limit.

    Runs :mod:`lab_utils.bench.baseline` in a process of its own, which times its ``parallel``
    loop (the best one process does on these cores, the limit the Spark styles are measured
    against) and its ``naive`` loop (the baseline most published comparisons use) on the first
    N files for every size; the model is loaded once and its load time reported with each size.
    Returns ``{n: {"parallel": {...}, "naive": {...}}}``.
    """
    args = {"kind": model.baseline_kind, "model_file": str(model.spec.model_file),
            "files": [str(f) for f in files[:max(sizes)]], "sizes": list(sizes),
            "size": list(model.spec.image_size), "threads": threads, "batch": batch}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "lab_utils.bench.baseline"],
                          input=json.dumps(args),
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"baseline failed:\n{done.stderr[-2000:]}")
    results: dict[int, dict[str, dict]] = {}
    for line in done.stdout.splitlines():
        if line.startswith('{"n"'):
            record = json.loads(line)
            results.setdefault(record["n"], {})[record["mode"]] = record
    return results


def run_baseline(model: BenchModel, files: list[Path], threads: int, batch: int) -> dict:
    """The baseline for all of ``files``: the faster of the two single-process loops."""
    modes = run_baselines(model, files, [len(files)], threads, batch)[len(files)]
    return min(modes.values(), key=lambda m: m["seconds"])


# --------------------------------------------------------------------------- Spark styles


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_recording(make: inference.MakePredictFn, folder: str) -> inference.MakePredictFn:
    """Wrap a predict fn so each Python worker records the largest RSS it had after a batch
    in ``folder/rss-<pid>`` and each model load in ``folder/loads-<pid>``. The driver empties
    ``folder`` before each run (workers are reused across runs, so lifetime peaks would carry
    one run's memory into the next)."""

    def wrapped() -> inference.PredictFn:
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

    @pandas_udf(inference.RESULT_DDL)
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
    if style == "rest":
        from lab_utils.inference import rest_scoring

        udf = rest_scoring.rest_udf(spec, rest_url, batch_size=REST_BATCH)
        return lambda df: df.select(udf("path", "content").alias("r"))
    if style == "transfer_only":
        udf = transfer_only_udf()
        return lambda df: df.select(udf("path", "content").alias("r"))
    if style == "map_in_pandas":
        return lambda df: inference.map_in_pandas(df, spec, make, batch_size=batch)
    if style == "partition_predictor":
        # The CPU here; on a GPU machine the predictor's own loader places the model.
        predictor = inference.image_partition_predictor(
            spec, lambda device: make(), batch_size=batch)
        return predictor.transform
    factory: Callable = {
        "row_pickled": lambda: inference.row_udf(spec, make, use_arrow=False),
        "row_arrow": lambda: inference.row_udf(spec, make, use_arrow=True),
        "pandas_series": lambda: inference.pandas_udf_series(spec, make, batch_size=batch),
        "iterator": lambda: inference.iterator_udf(spec, make, batch_size=batch),
        "predict_batch_udf": lambda: inference.spark_predict_batch_udf(spec, make,
                                                                      batch_size=batch),
    }[style]
    udf = factory()
    return lambda df: df.select(udf("path", "content").alias("r"))


def spark_settings(spark) -> dict[str, str]:
    keys = ["spark.master", "spark.cores.max", "spark.executor.cores", "spark.task.cpus",
            "spark.executor.memory", "spark.python.worker.reuse",
            "spark.sql.execution.arrow.maxRecordsPerBatch",
            "spark.sql.execution.pythonUDF.arrow.enabled", "spark.sql.shuffle.partitions"]
    conf = spark.sparkContext.getConf()
    return {k: spark.conf.get(k, None) or conf.get(k, "default") for k in keys}


def driver_rss_mb(spark) -> dict[str, float]:
    """Peak RSS of this Python process and of the driver JVM (from /proc)."""
    python = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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
            "driver_jvm_peak_rss_mb": None if jvm is None else round(jvm, 1)}


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


def recording_maker(model: BenchModel, rss_dir: Path) -> inference.MakePredictFn:
    """The predict-fn maker the styles of ``model`` share, recording peak RSS in ``rss_dir``.

    One maker for all styles means one cache key, so each Python worker loads the model once
    and every later style finds it loaded (as a notebook that scores twice does); the first
    style that needs the model pays the load in its warm-up.
    """
    return _rss_recording(model.make_predict_fn or inference.keras_predict_fn(
        model.spec.model_file), str(rss_dir))


def run_style(spark, style: str, model: BenchModel, files: list[Path], *, batch: int,
              partitions: int, rss_dir: Path, rest_url: str | None = None,
              data=None, make: inference.MakePredictFn | None = None) -> dict:
    """Warm up on a slice, then time the full run; both force every row through the UDF.

    ``data``: ``(df, rows)`` from :func:`cached_input`, shared by the styles of one N;
    without it the files are read and cached for this run alone. ``make``: from
    :func:`recording_maker` for ``rss_dir``, shared by the styles of one model; without it
    this run's workers load the model afresh.
    """
    owned = data is None
    df, rows = cached_input(spark, files, partitions) if owned else data
    rss_dir.mkdir(parents=True, exist_ok=True)
    for mark in rss_dir.iterdir():  # peaks of this run only (the workers outlive runs)
        mark.unlink()
    make = make or recording_maker(model, rss_dir)
    build = style_builder(style, model, make, batch, rest_url)
    warm = df.limit(max(partitions * 2, 8)).repartition(partitions)
    start = time.perf_counter()
    build(warm).write.format("noop").mode("overwrite").save()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    build(df).write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - start
    if owned:
        df.unpersist()
    rss = [float(p.read_text()) for p in rss_dir.glob("rss-*")]
    loads = sum(len(p.read_text().split()) for p in rss_dir.glob("loads-*"))
    return {"rows": rows, "warmup_s": warmup, "seconds": seconds,
            "worker_peak_rss_mb": max(rss) if rss else None, "python_workers": len(rss),
            "model_loads": loads}


# --------------------------------------------------------------------------- the run


def run(
    spark,
    *,
    sizes: dict[str, tuple[int, ...]],
    styles: tuple[str, ...] = STYLES,
    batch: dict[str, int] | None = None,
    row_style_max_n: dict[str, int] | None = None,
    out_dir: Path | None = None,
    progress: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run the benchmark; return one row per (model, style, N) and write CSV/JSON/PNG."""
    cfg = lab_config.load()
    batch = {"cnn": 256, "resnet50": 16, **(batch or {})}
    # Row-at-a-time styles call the model once per row: cap N so a run ends (reported as such).
    row_cap = {"cnn": 3000, "resnet50": 200, **(row_style_max_n or {})}
    out_dir = out_dir or cfg.share_dir / "output" / "bench" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    sc = spark.sparkContext
    cores = int(spark.conf.get("spark.cores.max", None) or sc.defaultParallelism)
    partitions = max(cores, sc.defaultParallelism)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(), "spark": spark.version}
    settings = spark_settings(spark)
    records: list[dict[str, Any]] = []
    bench_models = [m for name, n in sizes.items() for m in prepare_models(cfg, (name,), max(n))]
    rest_server = None
    if "rest" in styles and any(m.name == "cnn" for m in bench_models):
        from lab_utils.serving import model_server

        # A server of its own, serving only the CNN (not ResNet-50's 100 MB) on a free port.
        served = out_dir / "rest-models"
        served.mkdir(exist_ok=True)
        cnn = next(m for m in bench_models if m.name == "cnn")
        link = served / cnn.spec.path.name
        if not link.exists():
            link.symlink_to(cnn.spec.path, target_is_directory=True)
        rest_server = model_server.launch(served, log_file=out_dir / "model-server.log")
    total = sum(len(n) for n in sizes.values()) * (len(styles) + 1)
    done = 0
    began = time.perf_counter()
    for model in bench_models:
        model_sizes = list(sizes[model.name])
        all_files = list_files(model.data_dir, max(model_sizes))
        progress(f"[{done + 1}/{total} {time.perf_counter() - began:6.0f}s] {model.name} "
                 f"baseline (1 process, {cores} TF threads), N={model_sizes}")
        baselines = run_baselines(model, all_files, model_sizes, cores, batch[model.name])
        rss_dir = out_dir / "rss" / model.name
        make = recording_maker(model, rss_dir)
        for n in model_sizes:
            files = all_files[:n]
            data = cached_input(spark, files, partitions)
            base_record = {"model": model.name, "n": n, "batch_size": batch[model.name],
                           "partitions": partitions, "spark_cores": cores,
                           "tf_threads_per_task": "task cpus (1)", **settings, **machine}
            done += 1
            for style, mode in (("baseline_pipelined", "parallel"), ("baseline_naive", "naive")):
                base = baselines[n][mode]
                records.append({**base_record, "style": style, "rows": base["rows"],
                                "warmup_s": base["load_s"], "seconds": base["seconds"],
                                "worker_peak_rss_mb": base["peak_rss_mb"], "python_workers": 1,
                                "tf_threads_per_task": cores})
            for style in styles:
                done += 1
                if style == "rest" and (rest_server is None or model.name != "cnn"):
                    records.append({**base_record, "style": style, "rows": 0,
                                    "skipped": "REST scoring is measured for the CNN only"})
                    continue
                if style in ROW_STYLES and n > row_cap[model.name]:
                    progress(f"[{done}/{total}] {model.name} N={n} {style}: skipped "
                             f"(row styles capped at N={row_cap[model.name]})")
                    records.append({**base_record, "style": style, "rows": 0,
                                    "skipped": f"row-at-a-time capped at N={row_cap[model.name]}"})
                    continue
                progress(f"[{done}/{total} {time.perf_counter() - began:6.0f}s] {model.name} "
                         f"N={n} {style}")
                result = run_style(spark, style, model, files, batch=batch[model.name],
                                   partitions=partitions, rss_dir=rss_dir,
                                   rest_url=rest_server.url if rest_server else None,
                                   data=data, make=make)
                records.append({**base_record, "style": style, **result})
            data[0].unpersist()
    if rest_server is not None:
        rest_server.stop()
    table = summarize(pd.DataFrame(records))
    for key, value in driver_rss_mb(spark).items():
        table[key] = value
    table.to_csv(out_dir / "results.csv", index=False)
    (out_dir / "results.json").write_text(table.to_json(orient="records", indent=2))
    plot(table, out_dir)
    latest = out_dir.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(out_dir.name)
    progress(f"results in {out_dir}")
    return table


#: One setting changed at a time against the lab's defaults: (name, Spark conf, predict variant).
SWEEP = (
    ("lab defaults (TF threads = task cores = 1, Arrow 1024, model(x))", {}, "call"),
    ("TF pools left machine-sized in every worker", {"spark.executorEnv.LAB_TF_THREADS": "tf"},
     "call"),
    ("TF intra-op threads = 2 per task", {"spark.executorEnv.LAB_TF_THREADS": "2"}, "call"),
    ("one task per executor, spark.task.cpus = 2",
     {"spark.task.cpus": "2", "spark.executor.cores": "2"}, "call"),
    ("Arrow maxRecordsPerBatch = 64", {"spark.sql.execution.arrow.maxRecordsPerBatch": "64"},
     "call"),
    ("Arrow maxRecordsPerBatch = 10000 (Spark's default)",
     {"spark.sql.execution.arrow.maxRecordsPerBatch": "10000"}, "call"),
    ("model.predict(x) instead of model(x)", {}, "predict"),
)


def _predict_method_fn(model_file: str) -> inference.MakePredictFn:
    def make() -> inference.PredictFn:
        inference.configure_tensorflow()
        import keras

        model = keras.saving.load_model(model_file, compile=False)
        return lambda x: model.predict(x.astype(np.float32), verbose=0)

    return make


def sweep(*, n: int = 3000, out_dir: Path | None = None,
          progress: Callable[[str], None] = print) -> pd.DataFrame:
    """The CNN's iterator UDF at N images, one setting changed at a time, each variant in a
    fresh application (TensorFlow's pools are fixed once a Python worker has used them)."""
    from lab_utils.session import get_spark

    cfg = lab_config.load()
    out_dir = out_dir or cfg.share_dir / "output" / "bench" / f"sweep-{time.strftime('%H%M%S')}"
    model = prepare_models(cfg, ("cnn",), n)[0]
    files = list_files(model.data_dir, n)
    base = run_baseline(model, files, cfg.app_cores_max, 256)
    rows = []
    for i, (name, conf, variant) in enumerate(SWEEP, start=1):
        progress(f"[{i}/{len(SWEEP)}] {name}")
        spark = get_spark(f"benchmark sweep: {name}", conf=conf, quiet=True)
        try:
            chosen = model if variant == "call" else BenchModel(
                model.name, model.spec, _predict_method_fn(str(model.spec.model_file)),
                model.data_dir, model.baseline_kind)
            result = run_style(spark, "iterator", chosen, files, batch=256,
                               partitions=max(spark.sparkContext.defaultParallelism, 2),
                               rss_dir=out_dir / "rss" / f"variant-{i}")
            rows.append({"setting": name, **result, **{k: v for k, v in conf.items()}})
        finally:
            spark.stop()
    table = pd.DataFrame(rows)
    table["rows_per_s"] = table["rows"] / table["seconds"]
    table["ratio_to_baseline"] = table["rows_per_s"] / (base["rows"] / base["seconds"])
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "sweep.csv", index=False)
    return table


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Add rows/s, ratio to the baseline and share of the predicted ceiling."""
    table = table.copy()
    if "skipped" not in table:
        table["skipped"] = None
    table["rows_per_s"] = table["rows"] / table["seconds"]
    if "model_loads" in table:  # Spark runs only; none for the baselines
        table["model_loads"] = table["model_loads"].astype("Int64")
    keys = ["model", "n"]
    # The physical limit is the faster of the two single-process loops for that model and N.
    base = (table[table["style"].isin(BASELINES)].groupby(keys)["rows_per_s"].max())
    transfer = table[table["style"] == "transfer_only"].set_index(keys)["rows_per_s"]
    index = pd.MultiIndex.from_frame(table[keys])
    table["baseline_rows_per_s"] = base.reindex(index).to_numpy()
    table["transfer_rows_per_s"] = transfer.reindex(index).to_numpy()
    table["ratio_to_baseline"] = table["rows_per_s"] / table["baseline_rows_per_s"]
    ceiling = 1.0 / (1.0 / table["baseline_rows_per_s"] + 1.0 / table["transfer_rows_per_s"])
    table["predicted_ceiling_rows_per_s"] = ceiling
    table["share_of_ceiling"] = table["rows_per_s"] / ceiling
    iterator = table[table["style"] == "iterator"].set_index(keys)["rows_per_s"]
    table["ratio_to_iterator"] = table["rows_per_s"] / iterator.reindex(index).to_numpy()
    return table


def plot(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    palette = plt.get_cmap("tab10")
    shown = (*BASELINES, *STYLES, *EXTRA_STYLES)
    colors = {style: palette(i % 10) for i, style in enumerate(shown)}
    for model, part in table.groupby("model"):
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
        for style, rows in part[part["rows"] > 0].groupby("style"):
            rows = rows.sort_values("n")
            kw = {"marker": "o", "label": style, "color": colors.get(style)}
            left.plot(rows["n"], rows["seconds"], **kw)
            right.plot(rows["n"], rows["ratio_to_baseline"], **kw)
        left.set(xlabel="images (N)", ylabel="seconds (steady state)",
                 title=f"{model}: time vs N")
        right.axhline(1.0, color="black", lw=1, ls="--")
        right.set(xlabel="images (N)", ylabel="throughput / single-process baseline",
                  title=f"{model}: share of the baseline (the faster single-process loop)")
        left.legend(fontsize=8)
        right.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(table: pd.DataFrame) -> str:
    columns = ["model", "n", "style", "rows", "warmup_s", "seconds", "rows_per_s",
               "ratio_to_baseline", "share_of_ceiling", "worker_peak_rss_mb", "model_loads"]
    shown = table[table["rows"] > 0][[c for c in columns if c in table]].copy()
    return shown.to_string(index=False, float_format=lambda v: f"{v:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab_utils.bench", description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, FIELD_SIZES)),
                        help="comma-separated N (default: the field's 100..3000)")
    parser.add_argument("--models", default="cnn,resnet50")
    parser.add_argument("--styles", default=",".join(STYLES))
    parser.add_argument("--resnet-sizes", default="100,500",
                        help="N for ResNet-50 (slow on CPU); the --sizes apply to the CNN")
    parser.add_argument("--rest", action="store_true",
                        help="also score over HTTP through a model server started for the run "
                             "(style 'rest', CNN only) and print its ratio to the iterator UDF")
    parser.add_argument("--sweep", action="store_true",
                        help="instead: the CNN's iterator UDF at N=3000, one setting at a time")
    parser.add_argument("--suites", default="inference,training",
                        help="inference (UDF styles), training (one model per group; see "
                        "lab_utils.bench.training), or both")
    parser.add_argument("--groups", type=int, default=1000,
                        help="groups for the training suite (default 1000)")
    args = parser.parse_args(argv)
    from lab_utils.session import get_spark

    if args.sweep:
        table = sweep()
        print(table[["setting", "seconds", "rows_per_s", "ratio_to_baseline",
                     "worker_peak_rss_mb"]].to_string(index=False, float_format="%.2f".__mod__))
        return 0

    suites = {s.strip() for s in args.suites.split(",") if s.strip()}
    if suites - {"inference", "training"}:
        parser.error(f"unknown suite(s) {sorted(suites - {'inference', 'training'})}: use "
                     "inference and/or training")
    styles = tuple(s for s in args.styles.split(",") if s)
    unknown = set(styles) - set(STYLES) - set(EXTRA_STYLES)
    if unknown:  # before a session starts: a typo should not cost a JVM
        parser.error(f"unknown styles {sorted(unknown)}: choose from "
                     f"{', '.join(STYLES + EXTRA_STYLES)}")
    if args.rest:
        styles = tuple(dict.fromkeys([*styles, "iterator", "rest"]))
    spark = get_spark("benchmark: " + " + ".join(sorted(suites)))
    if "inference" in suites:
        which = args.models.split(",")
        sizes = {"cnn": args.sizes, "resnet50": args.resnet_sizes}
        table = run(spark, styles=styles, sizes={
            name: tuple(int(n) for n in sizes[name].split(",")) for name in which})
        print(report(table))
        rest = table[(table["style"] == "rest") & (table["rows"] > 0)]
        for row in rest.itertuples():
            print(f"REST / in-Spark iterator UDF throughput, {row.model} N={row.n}: "
                  f"{row.ratio_to_iterator:.2f}x ({row.rows_per_s:,.0f} vs "
                  f"{row.rows_per_s / row.ratio_to_iterator:,.0f} rows/s)")
    if "training" in suites:
        from lab_utils.bench import training as bench_training

        table = bench_training.run(spark, groups=args.groups)
        print(bench_training.report(table))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
