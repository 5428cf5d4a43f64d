"""Benchmark: many models trained on the cluster vs. one Python process looping over the groups.

Both sides run the same per-group code (:func:`lab_utils.training.groups.fit_group`): read the
data, fit, save a joblib file, build the registry. The ratio is sequential seconds / Spark
seconds, measured side by side in one run on one machine; with S task slots the ideal is S.
Every style runs ``repeats`` times (default 3), interleaved (each round runs every style once,
so a burst of load elsewhere hits all of them); the table gives the median and the range.

Rows per workload (phase ``train``):

* ``sequential``: ``pd.read_parquet`` + a loop over ``groupby`` in this process;
* ``processes (no Spark)``: the same loop split over S plain Python processes (groups dealt
  by row count, biggest first): what the machine's cores give without Spark, the practical
  ceiling (two processes on two vCPUs rarely run at exactly twice the speed of one);
* ``spark applyInPandas``: ``repartition(4 x slots, key)`` then ``groupBy(key).applyInPandas``;
* ``spark sorted mapInPandas``: the same partitions sorted by key, groups cut in Python, one
  call per partition;
* ``spark sorted mapInArrow (lab default)``: the same over Arrow batches (the key never
  becomes a Python string per row);
* ``spark (naive)``: ``groupBy(key).applyInPandas`` with Spark's defaults, where adaptive
  execution coalesces the shuffle into as few tasks as the data size suggests;
* ``spark (no fit)``: the lab's default plan with a function that fits nothing: what the
  shuffle, the Arrow conversion and cutting the groups cost on their own.

Phase ``score``: the same groups' rows scored with the models just trained, by a loop in this
process (``sequential``: read, one checked model load and one ``predict`` per group) and by
:func:`~lab_utils.training.groups.score_groups` with both plans, written to Spark's ``noop``
sink so every row is computed.

``python -m lab_utils.bench --suites training`` runs it; results go to
``share_storages/output/bench/training.{csv,json}`` (medians) and ``training_runs.csv``
(every run).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab_utils import config as lab_config
from lab_utils.training import groups as gt

#: name -> (kind, params, groups). "tens of ms" per fit is the issue's target workload.
WORKLOADS: dict[str, tuple[str, dict[str, Any], int]] = {
    "tiny fits (linear, ~5 ms)": ("linear", {}, 1000),
    "gbm 20 trees (~20 ms)": ("gbm", {"n_estimators": 20}, 1000),
    "heavy gbm 200 trees (~180 ms)": ("gbm", {"n_estimators": 200}, 200),
}

SEQUENTIAL = "sequential"
PROCESSES = "processes (no Spark)"
LAB_DEFAULT = "spark sorted mapInArrow (lab default)"
#: Spark training styles: name -> train_groups arguments.
SPARK_STYLES: dict[str, dict[str, Any]] = {
    "spark (naive)": {"repartition": False, "method": "applyInPandas"},
    "spark applyInPandas": {"method": "applyInPandas"},
    "spark sorted mapInPandas": {"method": "sorted-mapInPandas"},
    LAB_DEFAULT: {},
    "spark (no fit)": {"kind": "noop"},
}
#: Spark scoring styles: name -> score_groups method.
SCORE_STYLES = {"spark sorted mapInArrow (lab default)": "sorted-mapInArrow",
                "spark applyInPandas": "applyInPandas"}


def _imbalance(registry: pd.DataFrame) -> float:
    """Busiest task's fitting time over the mean task's: 1.0 = perfectly packed."""
    per_task = registry.groupby("partition")["train_seconds"].sum()
    return float(per_task.max() / per_task.mean()) if len(per_task) else float("nan")


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s), for the record next to the figures."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def deal_groups(sizes: pd.Series, n: int) -> list[list[str]]:
    """Groups dealt to ``n`` workers, biggest first, each to the least loaded (by rows)."""
    shares: list[list[str]] = [[] for _ in range(n)]
    load = np.zeros(n)
    for group, rows in sizes.sort_values(ascending=False, kind="stable").items():
        i = int(load.argmin())
        shares[i].append(str(group))
        load[i] += rows
    return shares


def _fit_share(data_path: str, groups: list[str], opts: gt.FitOptions) -> list[dict[str, Any]]:
    """One process's share of the groups: read them, fit each (the sequential loop's code)."""
    if not groups:
        return []
    pdf = pd.read_parquet(data_path, filters=[("group", "in", groups)])
    return [gt.fit_group(str(g), [part], opts)
            for g, part in pdf.groupby("group", sort=True, observed=True)]


def train_processes(pool, n: int, data_path: Path, sizes: pd.Series, *, run: str,
                    models_dir: Path, kind: str, params: dict[str, Any]) -> pd.DataFrame:
    """The sequential loop split over ``pool``'s ``n`` processes; returns the registry."""
    run_dir = gt.prepare_run_dir(run, models_dir)
    opts = gt.FitOptions(run_dir=str(run_dir), kind=kind, params=dict(params))
    shares = deal_groups(sizes, n)
    parts = pool.starmap(_fit_share, [(str(data_path), share, opts) for share in shares])
    from lab_utils.training.groups.fit import _registry_frame

    registry = _registry_frame([row for part in parts for row in part])
    gt.write_registry(registry, run_dir, opts)
    return registry


def score_sequential(data_path: Path, groups: list[str], registry: pd.DataFrame) -> int:
    """Score the groups' rows in this process with the same checked loader and scorer as
    the Spark plans; returns the rows scored."""
    paths = gt.model_files(registry, registry.attrs["run_dir"])
    errors = {g: e for g, e in zip(registry["group"], registry["error"], strict=True)
              if isinstance(e, str)}
    scorer = gt.GroupScorer(paths, errors, ["x"])
    pdf = pd.read_parquet(data_path, filters=[("group", "in", groups)])
    out = []
    for g, part in pdf.groupby("group", sort=True, observed=True):
        frame = part.copy()
        frame["prediction"], frame["error"] = scorer.score(str(g), part[["x"]].to_numpy(
            dtype=np.float64))
        out.append(frame)
    return len(pd.concat(out, ignore_index=True))


def _warm_pool(_: int) -> int:
    from sklearn.ensemble import GradientBoostingRegressor

    x = np.arange(100.0).reshape(-1, 1)
    GradientBoostingRegressor(n_estimators=5).fit(x, x.ravel())
    return os.getpid()


def run(spark, *, groups: int = 1000, mean_rows: int = 3000, skew: float = 0.5,
        workloads: dict[str, tuple[str, dict[str, Any], int]] | None = None,
        out_dir: Path | None = None, seed: int = 42, repeats: int = 3, score: bool = True,
        processes: bool = True, progress=print) -> pd.DataFrame:
    """Run the suite; return the summary (one row per workload, phase and style: the median
    seconds and ratio of ``repeats`` runs, with their range)."""
    cfg = lab_config.load()
    out_dir = out_dir or cfg.share_dir / "output" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    workloads = workloads or WORKLOADS
    data_path = cfg.share_dir / "data" / "groups" / f"bench_{groups}x{mean_rows}_s{skew}"
    specs = gt.group_specs(groups, mean_rows=mean_rows, skew=skew, seed=seed)
    if not (data_path / "_SUCCESS").exists():
        progress(f"writing {groups} groups (~{groups * mean_rows:,} rows) to {data_path}")
        gt.write_group_dataset(spark, data_path, specs, seed=seed)
    models_dir = cfg.share_dir / "models" / "bench"
    slots = gt.task_slots(spark)

    # Warm-up, reported apart: every Python worker imports scikit-learn and fits once (one
    # task per slot, all at once), and so does this process, so that no timed run pays
    # an import (a first gradient-boosting fit costs about 2 s of imports).
    t0 = time.perf_counter()
    first = specs["group"].iloc[:4 * slots].tolist()
    warm = spark.read.parquet(str(data_path))
    warm = warm.where(warm["group"].isin(first))
    gt.train_groups(warm, run="warmup", models_dir=models_dir, kind="gbm",
                    params={"n_estimators": 5}, partitions=slots)
    gt.train_sequential(warm.toPandas(), run="warmup-seq", models_dir=models_dir, kind="gbm",
                        params={"n_estimators": 5})
    pool = None
    if processes:
        pool = multiprocessing.get_context("spawn").Pool(slots)
        pool.map(_warm_pool, range(slots))
    warmup_s = time.perf_counter() - t0
    progress(f"warm-up (Python workers start, scikit-learn imports): {warmup_s:.1f}s")

    runs: list[dict[str, Any]] = []
    try:
        for name, (kind, params, n_groups) in workloads.items():
            n_groups = min(n_groups, groups)
            keep = specs["group"].iloc[:n_groups].tolist()
            sizes = specs.set_index("group")["rows"].iloc[:n_groups]
            base = {"workload": name, "kind": kind, "params": json.dumps(params),
                    "groups": n_groups, "rows": int(sizes.sum()), "task_slots": slots,
                    "warmup_s": warmup_s}
            df = spark.read.parquet(str(data_path))
            if n_groups < groups:
                df = df.where(df["group"].isin(keep))
            for rep in range(repeats):
                runs += _train_round(spark, df, data_path, keep, sizes, kind, params,
                                     models_dir, pool, {**base, "phase": "train", "run": rep},
                                     progress)
            if score and kind != "noop":
                registry = gt.load_registry("seq", models_dir)
                for rep in range(repeats):
                    runs += _score_round(df, data_path, keep, registry, slots,
                                         {**base, "phase": "score", "run": rep}, progress)
    finally:
        if pool is not None:
            pool.terminate()
    table = pd.DataFrame(runs)
    seq = table[table["style"] == SEQUENTIAL].set_index(["workload", "phase", "run"])["seconds"]
    keys = pd.MultiIndex.from_frame(table[["workload", "phase", "run"]])
    table["ratio_to_sequential"] = seq.reindex(keys).to_numpy() / table["seconds"]
    table["cpu"] = cpu_model()
    table.to_csv(out_dir / "training_runs.csv", index=False)
    summary = summarize(table)
    summary.to_csv(out_dir / "training.csv", index=False)
    (out_dir / "training.json").write_text(summary.to_json(orient="records", indent=2))
    return summary


def _train_round(spark, df, data_path: Path, keep: list[str], sizes: pd.Series, kind: str,
                 params: dict[str, Any], models_dir: Path, pool, base: dict[str, Any],
                 progress) -> list[dict[str, Any]]:
    rows = []
    name, rep = base["workload"], base["run"]
    t0 = time.perf_counter()
    pdf = pd.read_parquet(data_path, filters=[("group", "in", keep)])
    seq = gt.train_sequential(pdf, run="seq", models_dir=models_dir, kind=kind, params=params)
    seq_s = time.perf_counter() - t0
    del pdf
    rows.append({**base, "style": SEQUENTIAL, "seconds": seq_s, "tasks": 1,
                 "failed": len(seq.failed), "imbalance": 1.0})
    progress(f"{name} [{rep + 1}]: sequential {seq_s:.1f}s")
    if pool is not None:
        t0 = time.perf_counter()
        reg = train_processes(pool, base["task_slots"], data_path, sizes, run="procs",
                              models_dir=models_dir, kind=kind, params=params)
        seconds = time.perf_counter() - t0
        assert len(reg) == len(keep), (PROCESSES, len(reg))
        rows.append({**base, "style": PROCESSES, "seconds": seconds, "tasks": base["task_slots"],
                     "failed": int(reg["error"].notna().sum()),
                     "imbalance": float(reg.groupby("pid")["train_seconds"].sum().pipe(
                         lambda s: s.max() / s.mean()))})
        progress(f"{name} [{rep + 1}]: {PROCESSES} {seconds:.1f}s")
    for style, extra in SPARK_STYLES.items():
        if style == "spark (no fit)" and kind != "linear":
            continue  # the fixed cost does not depend on the estimator: measured once
        args: dict[str, Any] = {"kind": kind, "params": params, **extra}
        t0 = time.perf_counter()
        res = gt.train_groups(df, run="spark", models_dir=models_dir, **args)
        seconds = time.perf_counter() - t0
        assert len(res.registry) == len(keep), (style, len(res.registry))
        rows.append({**base, "style": style, "seconds": seconds, "tasks": res.partitions,
                     "failed": len(res.failed), "imbalance": _imbalance(res.registry),
                     "settings": json.dumps(res.settings, default=str)})
        progress(f"{name} [{rep + 1}]: {style} {seconds:.1f}s in {res.partitions} task(s)")
    return rows


def _score_round(df, data_path: Path, keep: list[str], registry: pd.DataFrame, slots: int,
                 base: dict[str, Any], progress) -> list[dict[str, Any]]:
    from lab_utils.training.groups import score as scoring

    rows = []
    name, rep = base["workload"], base["run"]
    scoring._MODEL_CACHE._values.clear()  # load from disk, as the Spark workers mostly do
    t0 = time.perf_counter()
    n = score_sequential(data_path, keep, registry)
    seconds = time.perf_counter() - t0
    rows.append({**base, "style": SEQUENTIAL, "seconds": seconds, "tasks": 1, "rows_out": n})
    progress(f"{name} [{rep + 1}]: scoring, sequential {seconds:.1f}s")
    for style, method in SCORE_STYLES.items():
        t0 = time.perf_counter()
        scored = gt.score_groups(df, registry, method=method)
        scored.write.format("noop").mode("overwrite").save()
        seconds = time.perf_counter() - t0
        rows.append({**base, "style": style, "seconds": seconds,
                     "tasks": gt.default_partitions(df.sparkSession), "rows_out": n})
        progress(f"{name} [{rep + 1}]: scoring, {style} {seconds:.1f}s")
    return rows


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per workload, phase and style: median seconds and ratio, with their range."""
    keys = ["workload", "phase", "style"]
    agg = runs.groupby(keys, sort=False).agg(
        groups=("groups", "first"), rows=("rows", "first"), tasks=("tasks", "median"),
        runs=("seconds", "size"), seconds=("seconds", "median"),
        seconds_min=("seconds", "min"), seconds_max=("seconds", "max"),
        ratio_to_sequential=("ratio_to_sequential", "median"),
        ratio_min=("ratio_to_sequential", "min"), ratio_max=("ratio_to_sequential", "max"),
        task_slots=("task_slots", "first"), imbalance=("imbalance", "median"),
        failed=("failed", "max"), warmup_s=("warmup_s", "first"), cpu=("cpu", "first"),
    ).reset_index()
    agg["tasks"] = agg["tasks"].astype("int64")
    agg["ideal"] = agg["task_slots"].astype(float)
    agg["parallel_efficiency"] = agg["ratio_to_sequential"] / agg["ideal"]
    return agg


def report(table: pd.DataFrame) -> str:
    cols = ["workload", "phase", "style", "tasks", "runs", "seconds", "seconds_min",
            "seconds_max", "ratio_to_sequential", "ratio_min", "ratio_max", "ideal",
            "parallel_efficiency", "imbalance"]
    return table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}")
