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
* **the all-cores ideal**: the same loop with one thread (decode and TensorFlow), its per-image
  cost times the cores the Spark application gets (``single_thread``, and ``efficiency`` of every
  row against the ideal);
* with ``--peers`` also Ray Data (``ray_data``) and Daft (``daft``) in processes of their own, on
  the same files, cores, decode, model and batch size (:mod:`lab_utils.bench.peers`);
* with ``--rest`` also ``rest`` and ``rest_pixels``: the same rows scored over HTTP by the lab's
  model server (:mod:`lab_utils.inference.rest_scoring`, a server started for the run on a free
  port, CNN only), the image files sent as ``{"b64": ...}`` and as pixel lists, each reported as
  a ratio to the in-Spark iterator UDF.

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
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab_utils import config as lab_config
from lab_utils.bench.cases import (  # noqa: F401 (re-exported: bench.STYLES, ...)
    BASELINES,
    EXTRA_STYLES,
    FIELD_SIZES,
    PEER_STYLES,
    PEERS,
    REST_BATCH,
    REST_STYLES,
    ROW_STYLES,
    STYLES,
    BenchModel,
    list_files,
    prepare_models,
)
from lab_utils.bench.report import (  # noqa: F401 (re-exported)
    plot,
    report,
    side_by_side,
    summarize,
)
from lab_utils.bench.styles import (
    cached_input,
    driver_rss_mb,
    recording_maker,
    run_style,
    spark_settings,
)
from lab_utils.common import tensorflow as tf_setup

# --------------------------------------------------------------------------- the baseline


def run_baselines(model: BenchModel, files: list[Path], sizes: list[int], threads: int,
                  batch: int, modes: tuple[str, ...] = ("parallel", "naive"),
                  ) -> dict[int, dict[str, dict]]:
    """One plain Python process, all cores, same decode and model: the physical limit.

    Runs :mod:`lab_utils.bench.baseline` in a process of its own, which times its ``parallel``
    loop (the best one process does on these cores, the limit the Spark styles are measured
    against) and its ``naive`` loop (the baseline most published comparisons use) on the first
    N files for every size; the model is loaded once and its load time reported with each size.
    Returns ``{n: {"parallel": {...}, "naive": {...}}}``.
    """
    args = {"kind": model.baseline_kind, "model_file": str(model.spec.model_file),
            "files": [str(f) for f in files[:max(sizes)]], "sizes": list(sizes),
            "size": list(model.spec.image_size), "threads": threads, "batch": batch,
            "modes": list(modes)}
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


def run_peers(engine: str, model: BenchModel, files: list[Path], sizes: list[int], cores: int,
              batch: int, marks: Path) -> dict[int, dict]:
    """Ray Data or Daft (:mod:`lab_utils.bench.peers`) in a process of its own, limited to
    ``cores``, on the first N files for every size; ``{n: record}``."""
    args = {"engine": engine, "kind": model.baseline_kind,
            "model_file": str(model.spec.model_file),
            "class_names": list(model.spec.class_names), "size": list(model.spec.image_size),
            "files": [str(f) for f in files[:max(sizes)]], "sizes": list(sizes),
            "cores": cores, "batch": batch, "marks": str(marks)}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_DEDUP_LOGS": "0",
           "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "lab_utils.bench.peers"],
                          input=json.dumps(args),
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{done.stderr[-3000:]}")
    return {r["n"]: r for r in (json.loads(line) for line in done.stdout.splitlines()
                                 if line.startswith('{"engine"'))}


def check_peers(engines: tuple[str, ...]) -> None:
    """Fail before a session starts when a peer engine is not installed."""
    import importlib.util

    missing = [e for e in engines if importlib.util.find_spec(e) is None]
    if missing:
        raise SystemExit(f"peer engine(s) {missing} not installed: `make bench-peers` (or "
                         "`uv sync --frozen --group bench-peers`) installs them")


def run_baseline(model: BenchModel, files: list[Path], threads: int, batch: int) -> dict:
    """The baseline for all of ``files``: the faster of the two single-process loops."""
    modes = run_baselines(model, files, [len(files)], threads, batch)[len(files)]
    return min(modes.values(), key=lambda m: m["seconds"])


# --------------------------------------------------------------------------- the run


def run(
    spark,
    *,
    sizes: dict[str, tuple[int, ...]],
    styles: tuple[str, ...] = STYLES,
    batch: dict[str, int] | None = None,
    row_style_max_n: dict[str, int] | None = None,
    out_dir: Path | None = None,
    peers: tuple[str, ...] = (),
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
    if set(REST_STYLES) & set(styles) and any(m.name == "cnn" for m in bench_models):
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
        progress(f"[{done + 1}/{total} {time.perf_counter() - began:6.0f}s] {model.name} "
                 f"single-threaded process (the all-cores ideal's unit), N={model_sizes}")
        single = run_baselines(model, all_files, model_sizes, 1, batch[model.name],
                               modes=("naive",))
        peer_runs = {}
        for engine in peers:
            progress(f"[{done + 1}/{total} {time.perf_counter() - began:6.0f}s] {model.name} "
                     f"{PEER_STYLES[engine]} ({cores} cores), N={model_sizes}")
            peer_runs[engine] = run_peers(engine, model, all_files, model_sizes, cores,
                                          batch[model.name],
                                          out_dir / "peer-marks" / model.name / engine)
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
            one = single[n]["naive"]
            records.append({**base_record, "style": "single_thread", "rows": one["rows"],
                            "warmup_s": one["load_s"], "seconds": one["seconds"],
                            "worker_peak_rss_mb": one["peak_rss_mb"], "python_workers": 1,
                            "tf_threads_per_task": 1})
            for engine, by_n in peer_runs.items():
                peer = by_n[n]
                records.append({**base_record, "style": PEER_STYLES[engine],
                                **{k: v for k, v in peer.items()
                                   if k not in ("engine", "n", "settings")},
                                "tf_threads_per_task": 1,
                                "peer_settings": json.dumps(peer["settings"])})
            for style in styles:
                done += 1
                if style in REST_STYLES and (rest_server is None or model.name != "cnn"):
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
SWEEP: tuple[tuple[str, dict[str, str], str], ...] = (
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


def _predict_method_fn(model_file: str) -> tf_setup.MakePredictFn:
    def make() -> tf_setup.PredictFn:
        tf_setup.configure_tensorflow()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab_utils.bench", description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, FIELD_SIZES)),
                        help="comma-separated N (default: 100..3000)")
    parser.add_argument("--models", default="cnn,resnet50")
    parser.add_argument("--styles", default=",".join(STYLES))
    parser.add_argument("--resnet-sizes", default="100,500",
                        help="N for ResNet-50 (slow on CPU); the --sizes apply to the CNN")
    parser.add_argument("--rest", action="store_true",
                        help="also score over HTTP through a model server started for the run "
                             "(rest: image files as b64; rest_pixels: pixel lists; CNN only) and "
                             "print their ratios to the iterator UDF")
    parser.add_argument("--peers", action="store_true",
                        help="also run Ray Data and Daft (the bench-peers dependency group: "
                             "`make bench-peers`) on the same files, cores and model")
    parser.add_argument("--peer-engines", default=",".join(PEERS),
                        help="which peers with --peers (default: ray,daft)")
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
        styles = tuple(dict.fromkeys([*styles, "iterator", *REST_STYLES]))
    peers: tuple[str, ...] = ()
    if args.peers:
        peers = tuple(e for e in args.peer_engines.split(",") if e)
        if set(peers) - set(PEERS):
            parser.error(f"unknown peer engines {sorted(set(peers) - set(PEERS))}: choose "
                         f"from {', '.join(PEERS)}")
        check_peers(peers)
    spark = get_spark("benchmark: " + " + ".join(sorted(suites)))
    if "inference" in suites:
        which = args.models.split(",")
        sizes = {"cnn": args.sizes, "resnet50": args.resnet_sizes}
        table = run(spark, styles=styles, peers=peers, sizes={
            name: tuple(int(n) for n in sizes[name].split(",")) for name in which})
        print(report(table))
        print()
        print(side_by_side(table))
        rest = table[table["style"].isin(REST_STYLES) & (table["rows"] > 0)]
        for row in rest.itertuples():
            print(f"REST ({row.style}) / in-Spark iterator UDF throughput, {row.model} N={row.n}: "
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
