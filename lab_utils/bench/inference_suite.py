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
* with ``--switches pipelined,zstd,lz4,max_bytes`` every asked style also with each Spark
  setting of :data:`~lab_utils.bench.cases.SWITCHES` on (a runtime setting right after the run
  without it, in the same application; the pipelined transfer, fixed when an application
  starts, in a second classic application after the first), as ``<style>+<switch>`` rows;
* with ``--profile`` each style's top functions from Spark's UDF profiler (``perf``), written to
  ``profiles/<model>-<N>-<style>/`` (the pstats files and ``top.txt``), from one more run
  after the timed one; every timed run's Python SQL metrics (classic) are in ``results.json``;
* with ``--rest`` also ``rest``, ``rest_pixels`` and ``rest_in_flight``: the same rows scored
  over HTTP by the lab's model server (:mod:`lab_utils.inference.rest_udf`, a server started for
  the run on a free port, CNN only), the image files sent as ``{"b64": ...}``, as pixel lists,
  and as ``{"b64": ...}`` with several requests in flight per task, each reported as
  a ratio to the in-Spark iterator UDF.

Rules: the input bytes are cached in Spark (and in memory for the baseline) so neither side
times the disk; every timing forces full evaluation (``noop`` sink); a warm-up run on a slice of
the data starts the Python workers and loads the model (each worker loads it once, on the first
style that needs it, and keeps it for the others), and is reported apart from the steady-state
run; the Spark and TensorFlow settings in force are stored with every result.
Output: ``share_storages/output/bench/<timestamp>/results.{csv,json}`` and PNG plots, plus a
table on stdout. The default run starts with the ``server`` suite, without Spark: the lab's
model server under load (:mod:`lab_utils.bench.server_load`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from lab_utils import config as lab_config
from lab_utils.bench.cases import (
    BENCH_STYLES,
    EXTRA_STYLES,
    FIELD_SIZES,
    PEERS,
    REST_STYLES,
    ROW_STYLES,
    STYLES,
    SWITCHES,
    BenchModel,
    list_files,
    prepare_models,
    switch_style,
)
from lab_utils.bench.references import check_peers, reference_records, reference_runs
from lab_utils.bench.report import (
    plot,
    report,
    side_by_side,
    summarize,
    switches_side_by_side,
)
from lab_utils.bench.styles import (
    cached_input,
    driver_rss_mb,
    recording_maker,
    run_style,
    spark_settings,
)
from lab_utils.common.connect import is_connect, task_slots

# --------------------------------------------------------------------------- the run


class _Progress:
    """``[step/total seconds]`` progress lines for one run."""

    def __init__(self, total: int, out: Callable[[str], None]) -> None:
        self.done, self.total, self.out = 0, total, out
        self.began = time.perf_counter()

    def __call__(self, text: str, *, step: bool = False) -> None:
        """Print ``text``; with ``step`` it is a new step (a style run), otherwise it belongs to
        the step about to come (the reference runs before a model's first N)."""
        self.done += step
        number = self.done if step else self.done + 1
        self.out(f"[{number}/{self.total} {time.perf_counter() - self.began:6.0f}s] {text}")


def _start_rest_server(bench_models: list[BenchModel], out_dir: Path):
    """A model server of the run's own, serving only the CNN (not ResNet-50's 100 MB) on a
    free port."""
    from lab_utils.serving.process import launch

    served = out_dir / "rest-models"
    served.mkdir(exist_ok=True)
    cnn = next(m for m in bench_models if m.name == "cnn")
    link = served / cnn.spec.path.name
    if not link.exists():
        link.symlink_to(cnn.spec.path, target_is_directory=True)
    return launch(served, log_file=out_dir / "model-server.log")


def _skip_reason(style: str, model: BenchModel, n: int, rest_url: str | None,
                 row_cap: dict[str, int]) -> str | None:
    if style in REST_STYLES and (rest_url is None or model.name != "cnn"):
        return "REST scoring is measured for the CNN only"
    if style in ROW_STYLES and n > row_cap[model.name]:
        return f"row-at-a-time capped at N={row_cap[model.name]}"
    return None


def _write_results(spark, records: list[dict[str, Any]], out_dir: Path) -> pd.DataFrame:
    """The summary table, as ``results.csv``/``.json`` and plots in ``out_dir``; ``latest``
    then points to it."""
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
    return table


def run(
    spark,
    *,
    sizes: dict[str, tuple[int, ...]],
    styles: tuple[str, ...] = STYLES,
    batch: dict[str, int] | None = None,
    row_style_max_n: dict[str, int] | None = None,
    out_dir: Path | None = None,
    peers: tuple[str, ...] = (),
    switches: tuple[str, ...] = (),
    profile: bool = False,
    progress: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, Any]:
    """Run the benchmark; return one row per (model, style, N) and the session it ended with;
    write CSV/JSON/PNG.

    For each model and N: the reference runs
    (:func:`~lab_utils.bench.references.reference_runs`), then every Spark style on the same
    cached input, each in the same application. ``switches`` (names of
    :data:`~lab_utils.bench.cases.SWITCHES`): every style also with that setting on; one fixed
    at an application's start runs the styles again in a classic application of its own
    (``spark`` is stopped for it, and the last of them is the session returned).
    """
    cfg = lab_config.load()
    out_dir = out_dir or cfg.share_dir / "output" / "bench" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    runtime = tuple(s for s in switches if not SWITCHES[s][1])
    at_start = tuple(s for s in switches if SWITCHES[s][1])
    references: dict[str, Any] = {}
    options: dict[str, Any] = {"sizes": sizes, "styles": styles, "batch": batch,
               "row_style_max_n": row_style_max_n, "out_dir": out_dir, "peers": peers,
               "profile": profile, "references": references}
    records = run_records(spark, switches=runtime, progress=progress, **options)
    for switch in at_start:
        progress(f"a new classic application with {switch} on: {SWITCHES[switch][0]}")
        spark.stop()
        spark = switched_session(switch)
        records += run_records(spark, label=switch, progress=progress, **options)
    table = _write_results(spark, records, out_dir)
    progress(f"results in {out_dir}")
    return table, spark


def switched_session(switch: str | None):
    """A classic session with ``switch``'s settings (fixed at an application's start) on;
    ``None``: the lab's defaults."""
    from lab_utils import envfile
    from lab_utils.session import get_spark

    cfg = lab_config.load()
    # Classic whatever LAB_SPARK_API says: a Connect client cannot set the server's start-up
    # settings (the same reason the settings sweep forces classic).
    return get_spark(f"benchmark: inference, {switch or 'lab defaults'}",
                     conf=SWITCHES[switch][0] if switch else {}, quiet=True,
                     env={**envfile.read(cfg.root / ".env"), **os.environ,
                          "LAB_SPARK_API": "classic"})


def run_records(
    spark,
    *,
    sizes: dict[str, tuple[int, ...]],
    styles: tuple[str, ...],
    batch: dict[str, int] | None,
    row_style_max_n: dict[str, int] | None,
    out_dir: Path,
    peers: tuple[str, ...],
    profile: bool,
    references: dict[str, Any],
    switches: tuple[str, ...] = (),
    label: str | None = None,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """One pass of :func:`run` in ``spark``: every style (and runtime switch) at every model
    and N. ``label``: the start-up switch this application runs with; its rows are named
    ``<style>+<label>``. ``references``: the reference runs by model, filled by the first pass
    and reused by later ones (the baselines and peers do not change with Spark's settings)."""
    cfg = lab_config.load()
    batch = {"cnn": 256, "resnet50": 16, **(batch or {})}
    # Row-at-a-time styles call the model once per row: cap N so a run ends (reported as such).
    row_cap = {"cnn": 3000, "resnet50": 200, **(row_style_max_n or {})}
    # Task slots in either mode (spark.cores.max, else the executors' cores in classic mode):
    # a Spark Connect session has no sparkContext.
    cores = task_slots(spark)
    partitions = cores if is_connect(spark) else max(cores, spark.sparkContext.defaultParallelism)
    fixed = {"partitions": partitions, "spark_cores": cores,
             "tf_threads_per_task": "task cpus (1)", **spark_settings(spark),
             "cpu_count": os.cpu_count(), "platform": platform.platform(),
             "python": platform.python_version(), "spark": spark.version}
    records: list[dict[str, Any]] = []
    bench_models = [m for name, n in sizes.items() for m in prepare_models(cfg, (name,), max(n))]
    rest_server = None
    if set(REST_STYLES) & set(styles) and any(m.name == "cnn" for m in bench_models):
        rest_server = _start_rest_server(bench_models, out_dir)
    rest_url = rest_server.url if rest_server else None
    variants: list[tuple[str | None, dict[str, str]]] = [
        (None, {}), *((w, SWITCHES[w][0]) for w in switches)]
    steps = _Progress(sum(len(n) for n in sizes.values()) * (len(styles) * len(variants) + 1),
                      progress)
    try:
        for model in bench_models:
            model_sizes = list(sizes[model.name])
            all_files = list_files(model.data_dir, max(model_sizes))
            if model.name not in references:
                references[model.name] = reference_runs(
                    model, all_files, model_sizes, cores, batch[model.name], peers, out_dir,
                    steps)
            runs = references[model.name]
            rss_dir = out_dir / "rss" / model.name
            make = recording_maker(model, rss_dir)
            for n in model_sizes:
                files = all_files[:n]
                data = cached_input(spark, files, partitions)
                base_record = {"model": model.name, "n": n, "batch_size": batch[model.name],
                               **fixed}
                steps.done += 1
                if label is None:
                    records += reference_records(base_record, runs, n, cores)
                for style in styles:
                    for switch, conf in variants:
                        name = style if switch is None and label is None else switch_style(
                            style, switch or label or "")
                        skipped = _skip_reason(style, model, n, rest_url, row_cap)
                        if skipped:
                            steps(f"{model.name} N={n} {name}: skipped ({skipped})", step=True)
                            records.append({**base_record, "style": name, "rows": 0,
                                            "skipped": skipped})
                            continue
                        steps(f"{model.name} N={n} {name}", step=True)
                        folder = out_dir / "profiles" / f"{model.name}-{n}-{name}"
                        result = run_style(
                            spark, style, model, files, batch=batch[model.name],
                            partitions=partitions, rss_dir=rss_dir, rest_url=rest_url,
                            data=data, make=make, conf=conf,
                            profile_dir=folder if profile and style != "transfer_only" else None)
                        records.append({**base_record, "style": name, "switch": switch or label,
                                        **result})
                data[0].unpersist()
    finally:
        if rest_server is not None:
            rest_server.stop()
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab_utils.bench", description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, FIELD_SIZES)),
                        help="comma-separated N (default: 100..3000)")
    parser.add_argument("--models", default="cnn,resnet50")
    parser.add_argument("--styles", default=",".join(BENCH_STYLES))
    parser.add_argument("--resnet-sizes", default="100,500",
                        help="N for ResNet-50 (slow on CPU); the --sizes apply to the CNN")
    parser.add_argument("--rest", action="store_true",
                        help="also score over HTTP through a model server started for the run "
                             "(rest: image files as b64; rest_pixels: pixel lists; "
                             "rest_in_flight: b64 with several requests in flight per task; "
                             "CNN only) and "
                             "print their ratios to the iterator UDF")
    parser.add_argument("--peers", action="store_true",
                        help="also run Ray Data and Daft (the bench-peers dependency group: "
                             "`make bench-peers`) on the same files, cores and model")
    parser.add_argument("--peer-engines", default=",".join(PEERS),
                        help="which peers with --peers (default: ray,daft)")
    parser.add_argument("--switches", default="",
                        help="also run every style with these Spark settings on, side by side: "
                             f"{', '.join(SWITCHES)} (see lab_utils.bench.cases.SWITCHES); "
                             "pipelined runs in a second classic application")
    parser.add_argument("--profile", action="store_true",
                        help="record each style's top functions with Spark's UDF profiler "
                             "(perf) in the results folder's profiles/")
    parser.add_argument("--sweep", action="store_true",
                        help="instead: the CNN's iterator UDF at N=3000, one setting at a time")
    parser.add_argument("--suites", default="server,inference,training",
                        help="server (the model server under load, no Spark; see "
                        "lab_utils.bench.server_load), inference (UDF styles), training (one "
                        "model per group; see lab_utils.bench.training_suite), or several")
    parser.add_argument("--groups", type=int, default=1000,
                        help="groups for the training suite (default 1000)")
    args = parser.parse_args(argv)
    from lab_utils.session import get_spark

    if args.sweep:
        from lab_utils.bench.settings_sweep import sweep

        table = sweep()
        print(table[["setting", "seconds", "rows_per_s", "ratio_to_baseline",
                     "worker_peak_rss_mb"]].to_string(index=False, float_format="%.2f".__mod__))
        return 0

    suites = {s.strip() for s in args.suites.split(",") if s.strip()}
    if suites - {"server", "inference", "training"}:
        parser.error(f"unknown suite(s) {sorted(suites - {'server', 'inference', 'training'})}: "
                     "use server, inference and/or training")
    styles = tuple(s for s in args.styles.split(",") if s)
    unknown = set(styles) - set(BENCH_STYLES) - set(EXTRA_STYLES)
    if unknown:  # before a session starts: a typo should not cost a JVM
        parser.error(f"unknown styles {sorted(unknown)}: choose from "
                     f"{', '.join(BENCH_STYLES + EXTRA_STYLES)}")
    switches = tuple(w for w in args.switches.split(",") if w)
    if set(switches) - set(SWITCHES):
        parser.error(f"unknown switches {sorted(set(switches) - set(SWITCHES))}: choose from "
                     f"{', '.join(SWITCHES)}")
    if args.rest:
        styles = tuple(dict.fromkeys([*styles, "iterator", *REST_STYLES]))
    peers: tuple[str, ...] = ()
    if args.peers:
        peers = tuple(e for e in args.peer_engines.split(",") if e)
        if set(peers) - set(PEERS):
            parser.error(f"unknown peer engines {sorted(set(peers) - set(PEERS))}: choose "
                         f"from {', '.join(PEERS)}")
        check_peers(peers)
    if "server" in suites:  # first, and without Spark: nothing else on the cores
        from lab_utils.bench import server_load

        print(server_load.report(server_load.run(clients=8, seconds=30, probe_every=0.25,
                                                 concurrency=None, queue=None)))
        if not suites & {"inference", "training"}:
            return 0
    if any(SWITCHES[w][1] for w in switches) and "inference" in suites:
        # A switch fixed at start runs in a classic application of its own: the run without
        # it is classic too, so the two differ in that setting only.
        spark = switched_session(None)
    else:
        spark = get_spark("benchmark: " + " + ".join(sorted(suites)))
    if "inference" in suites:
        which = args.models.split(",")
        sizes = {"cnn": args.sizes, "resnet50": args.resnet_sizes}
        table, spark = run(spark, styles=styles, peers=peers, switches=switches,
                           profile=args.profile,
                           sizes={name: tuple(int(n) for n in sizes[name].split(","))
                                  for name in which})
        print(report(table))
        print()
        print(side_by_side(table))
        if switches:
            print()
            print(switches_side_by_side(table))
        rest = table[table["style"].isin(REST_STYLES) & (table["rows"] > 0)]
        for row in rest.itertuples():
            print(f"REST ({row.style}) / in-Spark iterator UDF throughput, {row.model} N={row.n}: "
                  f"{row.ratio_to_iterator:.2f}x ({row.rows_per_s:,.0f} vs "
                  f"{row.rows_per_s / row.ratio_to_iterator:,.0f} rows/s)")
    if "training" in suites:
        from lab_utils.bench import training_suite as bench_training

        table = bench_training.run(spark, groups=args.groups)
        print(bench_training.report(table))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
