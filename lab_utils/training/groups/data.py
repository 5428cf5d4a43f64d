"""Deterministic groups with known coefficients: the data of notebook 05 and of the tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab_utils.common.connect import task_slots
from lab_utils.training.groups.fit import GroupTrainingError

#: The seed article's two data sets: y = 2.5 x + noise and y = 3.0 x + noise.
SEED_SLOPES = {"seed_a": 2.5, "seed_b": 3.0}


def group_specs(n_groups: int, *, mean_rows: int = 2000, skew: float = 1.0, seed: int = 42,
                min_rows: int = 50, bad_groups: bool = False) -> pd.DataFrame:
    """The true model of every group: ``y = slope * x + intercept + noise * N(0, 1)``.

    The first two groups are reference groups with known slopes 2.5 and 3.0 (intercept 0), so
    a test or a notebook can check that the fit recovers them. Group sizes
    are log-normal around ``mean_rows`` (``skew`` is the log-normal sigma: 0 = all equal,
    1 = the biggest group is typically 20-50x the median). ``bad_groups`` adds two groups that
    cannot be trained: ``bad_tiny`` (3 rows) and ``bad_nan`` (NaN targets).

    Examples
    --------
    >>> specs = group_specs(4, mean_rows=100, bad_groups=True)
    >>> specs["group"].tolist()
    ['seed_a', 'seed_b', 'g00000', 'g00001', 'bad_tiny', 'bad_nan']
    >>> specs.loc[:1, ["slope", "intercept", "rows"]].to_dict("list")
    {'slope': [2.5, 3.0], 'intercept': [0.0, 0.0], 'rows': [100, 100]}
    """
    if n_groups < 2:
        raise GroupTrainingError(f"n_groups={n_groups}: at least 2 (the reference groups with "
                                 "slopes 2.5 and 3.0)")
    rng = np.random.default_rng(seed)
    others = n_groups - len(SEED_SLOPES)
    names = list(SEED_SLOPES) + [f"g{i:05d}" for i in range(others)]
    slopes = np.concatenate([list(SEED_SLOPES.values()), rng.uniform(-5, 5, others)])
    intercepts = np.concatenate([np.zeros(len(SEED_SLOPES)), rng.uniform(-10, 10, others)])
    noise = np.concatenate([np.ones(len(SEED_SLOPES)), rng.uniform(0.5, 2.0, others)])
    z = rng.standard_normal(others)
    sizes = mean_rows * np.exp(skew * z - skew**2 / 2) if skew > 0 else np.full(others, mean_rows)
    rows = np.concatenate([np.full(len(SEED_SLOPES), mean_rows),
                           np.maximum(min_rows, np.round(sizes))]).astype(np.int64)
    specs = pd.DataFrame({"group": names, "slope": slopes, "intercept": intercepts,
                          "noise": noise, "rows": rows, "nan_rows": 0})
    if bad_groups:
        bad = pd.DataFrame({"group": ["bad_tiny", "bad_nan"], "slope": [1.0, 1.0],
                            "intercept": [0.0, 0.0], "noise": [1.0, 1.0], "rows": [3, 200],
                            "nan_rows": [0, 20]})
        specs = pd.concat([specs, bad], ignore_index=True)
    specs["index"] = np.arange(len(specs), dtype=np.int64)
    return specs


def group_rows(spec: Mapping[str, Any], seed: int = 42) -> pd.DataFrame:
    """The rows of one group, reproducible from the group's own seed (not from its position)."""
    rng = np.random.default_rng([seed, int(spec["index"])])
    n = int(spec["rows"])
    x = rng.uniform(0.0, 10.0, n)
    y = spec["slope"] * x + spec["intercept"] + spec["noise"] * rng.standard_normal(n)
    if spec.get("nan_rows", 0):
        y[rng.choice(n, int(spec["nan_rows"]), replace=False)] = np.nan
    return pd.DataFrame({"group": spec["group"], "x": x, "y": y})


DATA_SCHEMA = "`group` string, x double, y double"


def write_group_dataset(spark, path: Path | str, specs: pd.DataFrame, *, seed: int = 42,
                        files: int | None = None) -> Path:
    """Generate every group's rows on the cluster and write them as Parquet (``path``).

    Rows are generated where they are written (``mapInPandas`` over the specs), so millions of
    rows never pass through the driver. The specs (the truth) are written next to the data as
    ``<path>.truth.parquet``.

    Examples
    --------
    Three groups of 100 rows (``skew=0``: all the same size), in two files:

    >>> specs = group_specs(3, mean_rows=100, skew=0)
    >>> path = write_group_dataset(spark, tmp / "groups.parquet", specs, files=2)
    >>> spark.read.parquet(str(path)).groupBy("group").count().orderBy("group").collect()
    [Row(group='g00000', count=100), Row(group='seed_a', count=100), Row(group='seed_b', count=100)]
    >>> pd.read_parquet(truth_path(path))["slope"][:2].tolist()
    [2.5, 3.0]
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files = files or task_slots(spark)

    def expand(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for spec in batch.to_dict("records"):
                yield group_rows(spec, seed)

    (spark.createDataFrame(specs).repartition(files)
     .mapInPandas(expand, DATA_SCHEMA)
     .write.mode("overwrite").parquet(str(path)))
    specs.to_parquet(truth_path(path), index=False)
    return path


def truth_path(data_path: Path | str) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(data_path.name + ".truth.parquet")
