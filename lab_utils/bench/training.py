"""Benchmark: many models trained on the cluster vs. one Python process looping over the groups.

Both sides run the same per-group code (:func:`lab_utils.training.groups.fit_group`): read the
data, fit, save a joblib file, build the registry. The ratio is sequential seconds / Spark
seconds, measured side by side in one run on one machine; with S task slots the ideal is S.

Rows per workload:

* ``sequential``: ``pd.read_parquet`` + a loop over ``groupby`` in this process;
* ``spark applyInPandas``: ``repartition(4 x slots, key)`` then ``groupBy(key).applyInPandas``;
* ``spark sorted mapInPandas``: the same partitions sorted by key, groups cut in Python, one
  call per partition;
* ``spark sorted mapInArrow (lab default)``: the same over Arrow batches (the key never
  becomes a Python string per row);
* ``spark (naive)``: ``groupBy(key).applyInPandas`` with Spark's defaults, where adaptive
  execution coalesces the shuffle into as few tasks as the data size suggests;
* ``spark (no fit)``: the lab's default plan with a function that fits nothing: what the
  shuffle, the Arrow conversion and cutting the groups cost on their own.

``python -m lab_utils.bench --suites training`` runs it; results go to
``share_storages/output/bench/training.{csv,json}``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from lab_utils import config as lab_config
from lab_utils.training import groups as gt

#: name -> (kind, params, groups). "tens of ms" per fit is the issue's target workload.
WORKLOADS: dict[str, tuple[str, dict[str, Any], int]] = {
    "tiny fits (linear, ~5 ms)": ("linear", {}, 1000),
    "gbm 20 trees (~20 ms)": ("gbm", {"n_estimators": 20}, 1000),
    "heavy gbm 200 trees (~180 ms)": ("gbm", {"n_estimators": 200}, 200),
}


def _imbalance(registry: pd.DataFrame) -> float:
    """Busiest task's fitting time over the mean task's: 1.0 = perfectly packed."""
    per_task = registry.groupby("partition")["train_seconds"].sum()
    return float(per_task.max() / per_task.mean()) if len(per_task) else float("nan")


def run(spark, *, groups: int = 1000, mean_rows: int = 3000, skew: float = 0.5,
        workloads: dict[str, tuple[str, dict[str, Any], int]] | None = None,
        out_dir: Path | None = None, seed: int = 42, progress=print) -> pd.DataFrame:
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

    t0 = time.perf_counter()
    warm = spark.read.parquet(str(data_path)).where("`group` in ('seed_a', 'seed_b')")
    gt.train_groups(warm, run="warmup", models_dir=models_dir, kind="gbm",
                    params={"n_estimators": 5})
    warmup_s = time.perf_counter() - t0
    progress(f"warm-up (Python workers start, scikit-learn imports): {warmup_s:.1f}s")

    rows: list[dict[str, Any]] = []
    for name, (kind, params, n_groups) in workloads.items():
        n_groups = min(n_groups, groups)
        keep = specs["group"].iloc[:n_groups].tolist()
        n_rows = int(specs["rows"].iloc[:n_groups].sum())

        t0 = time.perf_counter()
        pdf = pd.read_parquet(data_path, filters=[("group", "in", keep)])
        seq = gt.train_sequential(pdf, run="seq", models_dir=models_dir, kind=kind,
                                  params=params)
        seq_s = time.perf_counter() - t0
        del pdf
        base = {"workload": name, "kind": kind, "params": json.dumps(params),
                "groups": n_groups, "rows": n_rows, "task_slots": slots, "warmup_s": warmup_s}
        rows.append({**base, "style": "sequential", "seconds": seq_s, "tasks": 1,
                     "failed": len(seq.failed), "imbalance": 1.0})
        progress(f"{name}: sequential {seq_s:.1f}s")

        df = spark.read.parquet(str(data_path))
        if n_groups < groups:
            df = df.where(df["group"].isin(keep))
        for style, extra in (("spark (naive)", {"repartition": False,
                                                "method": "applyInPandas"}),
                             ("spark applyInPandas", {"method": "applyInPandas"}),
                             ("spark sorted mapInPandas", {"method": "sorted-mapInPandas"}),
                             ("spark sorted mapInArrow (lab default)", {}),
                             ("spark (no fit)", {"kind": "noop"})):
            if style == "spark (no fit)" and kind != "linear":
                continue  # the fixed cost does not depend on the estimator: measured once
            args: dict[str, Any] = {"kind": kind, "params": params, **extra}
            t0 = time.perf_counter()
            res = gt.train_groups(df, run="spark", models_dir=models_dir, **args)
            seconds = time.perf_counter() - t0
            assert len(res.registry) == n_groups, (style, len(res.registry))
            rows.append({**base, "style": style, "seconds": seconds, "tasks": res.partitions,
                         "failed": len(res.failed), "imbalance": _imbalance(res.registry),
                         "settings": json.dumps(res.settings, default=str)})
            progress(f"{name}: {style} {seconds:.1f}s in {res.partitions} task(s)")

    table = pd.DataFrame(rows)
    seq = table[table["style"] == "sequential"].set_index("workload")["seconds"]
    table["ratio_to_sequential"] = table["workload"].map(seq) / table["seconds"]
    table["parallel_efficiency"] = table["ratio_to_sequential"] / table["task_slots"]
    table.to_csv(out_dir / "training.csv", index=False)
    (out_dir / "training.json").write_text(table.to_json(orient="records", indent=2))
    return table


def report(table: pd.DataFrame) -> str:
    cols = ["workload", "style", "groups", "tasks", "seconds", "ratio_to_sequential",
            "parallel_efficiency", "imbalance", "failed"]
    return table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}")
