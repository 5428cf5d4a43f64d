"""Embarrassingly parallel training: one model per group on Spark, stored and reused.

The field's recipe makes each gzip file one partition and trains inside a scalar pandas UDF. That
trains one model per *Arrow batch* (past 10,000 rows the models of one data set overwrite each
other) and dumps them into the worker's working directory, where a real cluster loses them. The
lab's version:

* ``df.repartition(P, key)``, then one model per group, whatever the group's size: either
  ``groupBy(key).applyInPandas(train)`` (one call per group, the textbook form) or, the default
  and faster, each partition sorted by key and cut into groups over Arrow batches. The
  explicit repartition fixes the task count: left to itself, adaptive query execution
  coalesces the 200 default shuffle partitions of a small input into one or two tasks, and a
  2-core cluster then trains on one core.
* A group arrives as batches (the iterator form of ``applyInPandas``, or consecutive Arrow
  batches of a sorted partition). Groups up to
  ``max_rows`` are fitted in memory; a bigger group is either streamed (``kind="linear"``: exact
  least squares from sufficient statistics, constant memory) or recorded as an error that says
  what to do, instead of killing the executor.
* Every model is written under ``share_storages/models/<run>/`` with a temporary name and then
  renamed, so a retried or speculative task never leaves a torn file.
* A registry (Parquet, one row per group) lists each model's path, coefficients, hold-out
  metrics, row count, training time, the task that trained it and the error if it failed. A
  group that cannot be trained (too few rows, NaNs) is a registry row with its error; the other
  groups finish.
* :func:`score_groups` scores new data with each group's own model, loading each model once.

The per-group function is the same code on the cluster and in :func:`train_sequential`, the
single-process loop the benchmark compares against.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab_utils import config as lab_config
from lab_utils.common import atomic, split
from lab_utils.common.atomic import atomic_write
from lab_utils.common.cache import WorkerCache
from lab_utils.common.task import partition_id
from lab_utils.errors import LabError

#: The seed article's two data sets: y = 2.5 x + noise and y = 3.0 x + noise.
SEED_SLOPES = {"seed_a": 2.5, "seed_b": 3.0}

#: One registry row per group.
REGISTRY_SCHEMA = (
    "`group` string, kind string, model_path string, n_rows long, n_train long, n_holdout long, "
    "slope double, intercept double, r2 double, rmse double, train_seconds double, "
    "streamed boolean, `partition` int, pid int, error string"
)
REGISTRY_COLUMNS = [c.split()[0].strip("`") for c in REGISTRY_SCHEMA.split(", ")]

KINDS = ("linear", "gbm", "keras", "noop")
#: Every HOLDOUT_EVERY-th row of a group (in arrival order) is held out for the metrics.
HOLDOUT_EVERY = split.EVERY
DEFAULT_MAX_ROWS = 2_000_000
DEFAULT_MIN_ROWS = 10


class GroupTrainingError(LabError, ValueError):
    """A training run cannot start (bad columns, unusable run folder)."""


# --------------------------------------------------------------------------------------------
# Data: deterministic groups with known coefficients
# --------------------------------------------------------------------------------------------

def group_specs(n_groups: int, *, mean_rows: int = 2000, skew: float = 1.0, seed: int = 42,
                min_rows: int = 50, bad_groups: bool = False) -> pd.DataFrame:
    """The true model of every group: ``y = slope * x + intercept + noise * N(0, 1)``.

    The first two groups are the seed article's (slopes 2.5 and 3.0, intercept 0). Group sizes
    are log-normal around ``mean_rows`` (``skew`` is the log-normal sigma: 0 = all equal,
    1 = the biggest group is typically 20-50x the median). ``bad_groups`` adds two groups that
    cannot be trained: ``bad_tiny`` (3 rows) and ``bad_nan`` (NaN targets).
    """
    if n_groups < 2:
        raise ValueError(f"n_groups={n_groups}: at least 2 (the seed's two data sets)")
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
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files = files or max(1, spark.sparkContext.defaultParallelism)

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


# --------------------------------------------------------------------------------------------
# Fitting one group (the same code in Spark tasks and in the sequential loop)
# --------------------------------------------------------------------------------------------

def model_filename(group: str, suffix: str) -> str:
    """A safe file name for a group: no path separators, no dot files, bounded length.

    Names that had to change get a short hash so two groups never share a file.
    """
    safe = re.sub(r"[^A-Za-z0-9_.=-]", "_", group).lstrip(".")[:100] or "_"
    if safe != group:
        safe = f"{safe}-{hashlib.sha1(group.encode()).hexdigest()[:8]}"
    return safe + suffix


def _make_estimator(kind: str | Callable[[], Any], params: Mapping[str, Any], seed: int):
    if callable(kind):
        return kind()
    if kind == "linear":
        from sklearn.linear_model import LinearRegression

        return LinearRegression(**params)
    if kind == "gbm":
        # Single-threaded by design: one fit per core, the cores shared by tasks (or processes).
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(**{"n_estimators": 50, "max_depth": 3,
                                            "random_state": seed, **params})
    raise ValueError(f"unknown kind {kind!r}: use one of {KINDS} or a callable returning an "
                     "estimator with fit/predict")


def _kind_name(kind: str | Callable[[], Any]) -> str:
    return kind if isinstance(kind, str) else getattr(kind, "__name__", type(kind).__name__)


@dataclass(frozen=True)
class FitOptions:
    """What every group's fit needs; shipped to the tasks with the function."""

    run_dir: str
    kind: str | Callable[[], Any] = "linear"
    features: tuple[str, ...] = ("x",)
    target: str = "y"
    params: Mapping[str, Any] = field(default_factory=dict)
    min_rows: int = DEFAULT_MIN_ROWS
    max_rows: int = DEFAULT_MAX_ROWS
    seed: int = 0
    keras_epochs: int = 30


def _metrics(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    if len(y_true) == 0:
        return float("nan"), float("nan")
    resid = y_true - y_pred
    ss_res = float(resid @ resid)
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return r2, float(np.sqrt(ss_res / len(y_true)))


def _check_finite(frame: pd.DataFrame, columns: Sequence[str], group: str) -> None:
    bad = [c for c in columns if not np.isfinite(frame[c].to_numpy(dtype=float)).all()]
    if bad:
        n = int((~np.isfinite(frame[bad].to_numpy(dtype=float))).any(axis=1).sum())
        raise ValueError(f"group {group!r} has {n} rows with NaN/inf in {bad}: drop or impute "
                         "them before training (e.g. df.dropna(subset=[...]))")


def _fit_in_memory(group: str, data: pd.DataFrame, opts: FitOptions) -> dict[str, Any]:
    _check_finite(data, [*opts.features, opts.target], group)
    X = data[list(opts.features)].to_numpy(dtype=np.float64)
    y = data[opts.target].to_numpy(dtype=np.float64)
    hold = split.every_nth(len(y), every=HOLDOUT_EVERY)
    out: dict[str, Any] = {"n_train": int((~hold).sum()), "n_holdout": int(hold.sum())}
    run_dir = Path(opts.run_dir)
    if opts.kind == "keras":
        path = run_dir / model_filename(group, ".keras")
        model = _fit_keras(X[~hold], y[~hold], opts)
        pred = model(X[hold].astype(np.float32), training=False).numpy().ravel()
        atomic_write(path, lambda p: model.save(p))
    elif opts.kind == "noop":
        # Data movement only: the benchmark's measure of Spark's fixed cost per group.
        out.update(model_path=None, r2=float("nan"), rmse=float("nan"))
        return out
    else:
        import joblib

        path = run_dir / model_filename(group, ".joblib")
        model = _make_estimator(opts.kind, opts.params, opts.seed).fit(X[~hold], y[~hold])
        pred = model.predict(X[hold])
        atomic_write(path, lambda p: joblib.dump(model, p))
        if hasattr(model, "coef_"):
            out.update(slope=float(np.ravel(model.coef_)[0]),
                       intercept=float(np.ravel(model.intercept_)[0]))
    out["r2"], out["rmse"] = _metrics(y[hold], pred)
    out["model_path"] = str(path)
    return out


def _fit_keras(X: np.ndarray, y: np.ndarray, opts: FitOptions):
    from lab_utils.inference import configure_tensorflow

    configure_tensorflow()
    import keras

    keras.utils.set_random_seed(opts.seed)
    # Standardise inside the model, so the saved model takes raw features.
    norm = keras.layers.Normalization()
    norm.adapt(X.astype(np.float32))
    units = int(opts.params.get("units", 16))
    model = keras.Sequential([keras.Input((X.shape[1],)), norm,
                              keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(float(opts.params.get("learning_rate", 0.05))),
                  loss="mse")
    y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
    model.fit(X.astype(np.float32), ((y - y_mean) / y_std).astype(np.float32),
              epochs=int(opts.params.get("epochs", opts.keras_epochs)),
              batch_size=int(opts.params.get("batch_size", 64)), verbose=0)
    # Fold the target scaling back in: the saved model predicts y itself.
    inputs = keras.Input((X.shape[1],))
    scaled = keras.layers.Rescaling(y_std, offset=y_mean)(model(inputs))
    return keras.Model(inputs, scaled)


class _Streamed:
    """Exact least squares over batches: A'A, A'y and y'y for the train and hold-out rows."""

    def __init__(self, k: int):
        self.ata = {True: np.zeros((k + 1, k + 1)), False: np.zeros((k + 1, k + 1))}
        self.aty = {True: np.zeros(k + 1), False: np.zeros(k + 1)}
        self.yty = {True: 0.0, False: 0.0}
        self.ysum = {True: 0.0, False: 0.0}
        self.n = {True: 0, False: 0}

    def add(self, X: np.ndarray, y: np.ndarray, hold: np.ndarray) -> None:
        A = np.column_stack([np.ones(len(y)), X])
        for h in (True, False):
            a, b = A[hold == h], y[hold == h]
            self.ata[h] += a.T @ a
            self.aty[h] += a.T @ b
            self.yty[h] += float(b @ b)
            self.ysum[h] += float(b.sum())
            self.n[h] += len(b)

    def solve(self):
        from sklearn.linear_model import LinearRegression

        beta = np.linalg.lstsq(self.ata[False], self.aty[False], rcond=None)[0]
        model = LinearRegression()
        model.coef_, model.intercept_ = beta[1:], float(beta[0])
        model.n_features_in_ = len(beta) - 1
        model.rank_, model.singular_ = len(beta) - 1, None
        h = True
        ss_res = self.yty[h] - 2 * beta @ self.aty[h] + beta @ self.ata[h] @ beta
        ss_tot = self.yty[h] - self.ysum[h] ** 2 / max(self.n[h], 1)
        r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
        rmse = float(np.sqrt(max(ss_res, 0.0) / max(self.n[h], 1)))
        return model, float(r2), rmse


def fit_group(group: str, batches: Iterable[pd.DataFrame], opts: FitOptions) -> dict[str, Any]:
    """Train one group's model from its batches and save it; never raises.

    Returns one registry row. Any failure (too few rows, NaNs, a group too big for memory, an
    estimator error) is returned in ``error`` with the group's other fields filled as far as
    they got, so one bad group never kills the job.
    """
    t0 = time.perf_counter()
    row: dict[str, Any] = {c: None for c in REGISTRY_COLUMNS}
    row.update(group=str(group), kind=_kind_name(opts.kind), n_rows=0, n_train=0, n_holdout=0,
               streamed=False,
               pid=os.getpid(), partition=partition_id())
    try:
        row.update(_fit_from_batches(str(group), iter(batches), opts, row))
    except Exception as exc:  # noqa: BLE001 - the registry records every failure
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["model_path"] = None
    row["train_seconds"] = time.perf_counter() - t0
    return row


def _fit_from_batches(group: str, batches: Iterator[pd.DataFrame], opts: FitOptions,
                      row: dict[str, Any]) -> dict[str, Any]:
    columns = [*opts.features, opts.target]
    held: list[pd.DataFrame] = []
    n = 0
    for batch in batches:
        held.append(batch[columns])
        n += len(batch)
        if n > opts.max_rows:
            break
    else:
        row["n_rows"] = n
        if n < opts.min_rows:
            raise ValueError(f"group {group!r} has {n} rows; at least {opts.min_rows} are needed "
                             "(min_rows): merge it with similar groups or drop it")
        data = pd.concat(held, ignore_index=True) if held else pd.DataFrame(columns=columns)
        return _fit_in_memory(group, data, opts)
    # The group has more rows than fit in memory.
    if opts.kind != "linear":
        n += sum(len(b) for b in batches)  # drain: count what was not kept
        row["n_rows"] = n
        raise MemoryError(
            f"group {group!r} has {n} rows, more than max_rows={opts.max_rows} that are fitted in "
            f"memory: raise max_rows (about {_size(n * len(columns) * 8)} of features per task, "
            "plus the estimator's own), sample the group, or use kind='linear', which "
            "streams")
    stats = _Streamed(len(opts.features))
    seen = 0
    for batch in [*held, *(b[columns] for b in batches)]:
        _check_finite(batch, columns, group)
        X = batch[list(opts.features)].to_numpy(dtype=np.float64)
        y = batch[opts.target].to_numpy(dtype=np.float64)
        stats.add(X, y, split.every_nth(len(y), seen, every=HOLDOUT_EVERY))
        seen += len(y)
    held.clear()
    model, r2, rmse = stats.solve()
    import joblib

    path = Path(opts.run_dir) / model_filename(group, ".joblib")
    atomic_write(path, lambda p: joblib.dump(model, p))
    return {"n_rows": seen, "n_train": stats.n[False], "n_holdout": stats.n[True],
            "slope": float(model.coef_[0]), "intercept": float(model.intercept_), "r2": r2,
            "rmse": rmse, "streamed": True, "model_path": str(path)}


def _size(nbytes: float) -> str:
    if nbytes < 1024:
        return f"{nbytes:.0f} bytes"
    for unit in ("KiB", "MiB"):
        nbytes /= 1024
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1024:.1f} GiB"


def _registry_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=REGISTRY_COLUMNS)
    for col in ("n_rows", "n_train", "n_holdout"):
        frame[col] = pd.to_numeric(frame[col]).fillna(0).astype("int64")
    for col in ("slope", "intercept", "r2", "rmse", "train_seconds"):
        frame[col] = frame[col].astype("float64")
    frame["partition"] = frame["partition"].astype("int32")
    frame["pid"] = frame["pid"].astype("int32")
    frame["streamed"] = frame["streamed"].astype(bool)
    return frame


def make_train_fn(opts: FitOptions, key: str):
    """The ``applyInPandas`` function: (key, batches of one group) -> one registry row."""

    def train(key_values: tuple, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield _registry_frame([fit_group(str(key_values[0]), batches, opts)])

    return train


def split_sorted(batches: Iterable[pd.DataFrame], key: str) -> Iterator[tuple[Any, list]]:
    """Cut a stream of batches sorted by ``key`` into (group, that group's frames).

    A group may span batch boundaries; only the group being assembled is held in memory.
    """
    current, parts = None, []
    for batch in batches:
        if batch.empty:
            continue
        keys = batch[key].to_numpy()
        # Positions where the key changes inside this batch.
        cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), len(batch)]
        for s, e in zip(starts, ends, strict=True):
            k = keys[s]
            if parts and k != current:
                yield current, parts
                parts = []
            current = k
            parts.append(batch.iloc[s:e])
    if parts:
        yield current, parts


def make_sorted_train_fn(opts: FitOptions, key: str):
    """The ``mapInPandas`` function over partitions sorted by key: one registry row per group."""

    def train(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        rows = [fit_group(str(group), parts, opts) for group, parts in split_sorted(batches, key)]
        if rows:
            yield _registry_frame(rows)

    return train


def split_sorted_arrow(batches: Iterable, key: str,
                       columns: Sequence[str]) -> Iterator[tuple[str, list[pd.DataFrame]]]:
    """Like :func:`split_sorted`, over Arrow record batches: the key column never becomes
    Python objects (one string per group, not per row), the numeric columns become NumPy
    arrays without a copy."""
    import pyarrow.compute as pc

    current, parts = None, []
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        keys = batch.column(key)
        change = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(
            zero_copy_only=False)
        cuts = (np.flatnonzero(change) + 1).tolist()
        for s, e in zip([0, *cuts], [*cuts, n], strict=True):
            k = keys[s].as_py()
            if parts and k != current:
                yield current, parts
                parts = []
            current = k
            part = batch.slice(s, e - s)
            parts.append(pd.DataFrame({c: part.column(c).to_numpy(zero_copy_only=False)
                                       for c in columns}))
    if parts:
        yield current, parts


def make_arrow_train_fn(opts: FitOptions, key: str):
    """The ``mapInArrow`` function over partitions sorted by key: one registry row per group."""
    import pyarrow as pa

    columns = [*opts.features, opts.target]

    def train(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows = [fit_group(str(group), parts, opts)
                for group, parts in split_sorted_arrow(batches, key, columns)]
        if rows:
            yield pa.RecordBatch.from_pandas(_registry_frame(rows), preserve_index=False)

    return train


METHODS = ("applyInPandas", "sorted-mapInPandas", "sorted-mapInArrow")


# --------------------------------------------------------------------------------------------
# The driver side: runs, registry, scoring
# --------------------------------------------------------------------------------------------

@dataclass
class TrainingRun:
    """What a training run produced: its folder, the registry and how long it took."""

    run: str
    run_dir: Path
    registry: pd.DataFrame
    seconds: float
    partitions: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def registry_path(self) -> Path:
        return self.run_dir / "registry.parquet"

    @property
    def failed(self) -> pd.DataFrame:
        return self.registry[self.registry["error"].notna()]

    @property
    def trained(self) -> pd.DataFrame:
        return self.registry[self.registry["error"].isna()]


def models_root(cfg: lab_config.LabConfig | None = None) -> Path:
    return (cfg or lab_config.load()).share_dir / "models"


def prepare_run_dir(run: str, models_dir: Path | str | None = None, *,
                    overwrite: bool = True) -> Path:
    """``share_storages/models/<run>/``, emptied of an earlier run's models when overwriting."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", run):
        raise GroupTrainingError(f"run name {run!r}: use letters, digits, '_', '-', '.' (it "
                                 "becomes a folder name under share_storages/models)")
    run_dir = Path(models_dir) if models_dir is not None else models_root()
    run_dir = run_dir / run
    if run_dir.exists():
        if not overwrite:
            raise GroupTrainingError(f"{run_dir} already holds a run: pass overwrite=True to "
                                     "replace it, or choose another run name")
        if (run_dir / "registry.parquet").exists() or any(run_dir.glob("*.joblib")) or any(
                run_dir.glob("*.keras")):
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    probe = run_dir / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise GroupTrainingError(f"cannot write models to {run_dir} ({exc}): set LAB_SHARE_DIR "
                                 "to a folder every executor can write") from exc
    return run_dir


def task_slots(spark) -> int:
    """Cores the application can run tasks on (executors x cores; local[N]: N)."""
    return max(1, spark.sparkContext.defaultParallelism)


def default_partitions(spark, n_groups: int | None = None, per_slot: int = 4) -> int:
    """Task count for training: a few tasks per core, so skewed groups even out, but no more
    tasks than groups."""
    parts = task_slots(spark) * per_slot
    return max(1, min(parts, n_groups)) if n_groups else parts


def _check_columns(df, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise GroupTrainingError(f"column(s) {missing} not in the DataFrame (it has "
                                 f"{df.columns}): pass key=, features= and target= to match")


def train_groups(df, *, run: str, key: str = "group", features: Sequence[str] = ("x",),
                 target: str = "y", kind: str | Callable[[], Any] = "linear",
                 params: Mapping[str, Any] | None = None, partitions: int | None = None,
                 min_rows: int = DEFAULT_MIN_ROWS, max_rows: int = DEFAULT_MAX_ROWS,
                 models_dir: Path | str | None = None, overwrite: bool = True,
                 seed: int = 0, keras_epochs: int = 30, repartition: bool = True,
                 method: str = "sorted-mapInArrow") -> TrainingRun:
    """Train one model per ``key`` group on the cluster; write models and the registry.

    ``partitions`` (default: 4 per task slot) is the number of training
    tasks. ``repartition=False`` reproduces the naive ``groupBy().applyInPandas()`` whose task
    count is left to the shuffle partition setting and adaptive coalescing (the benchmark's
    comparison).

    ``method`` chooses how the groups reach Python; all three train the same models:

    * ``"applyInPandas"``: ``groupBy(key).applyInPandas``, one call per group (the textbook
      form);
    * ``"sorted-mapInPandas"``: each partition sorted by key, groups cut in Python, one call per
      partition;
    * ``"sorted-mapInArrow"`` (default): the same over Arrow batches, so the key column never
      becomes one Python string per row. Fastest in ``make bench``: the lab's default.

    Everything a run cannot survive (missing columns, an unwritable folder, a bad run name, an
    unknown kind or method) fails here, on the driver, before the job starts.
    """
    features = tuple(features)
    _check_columns(df, [key, *features, target])
    if method not in METHODS:
        raise GroupTrainingError(f"unknown method {method!r}: use one of {METHODS}")
    if method != "applyInPandas" and not repartition:
        raise GroupTrainingError(f"method={method!r} needs repartition=True")
    if isinstance(kind, str) and kind not in KINDS:
        raise GroupTrainingError(f"unknown kind {kind!r}: use one of {KINDS} or a callable "
                                 "returning an estimator with fit/predict")
    run_dir = prepare_run_dir(run, models_dir, overwrite=overwrite)
    opts = FitOptions(run_dir=str(run_dir), kind=kind, features=features, target=target,
                      params=dict(params or {}), min_rows=min_rows, max_rows=max_rows,
                      seed=seed, keras_epochs=keras_epochs)
    spark = df.sparkSession
    data = df.select(key, *features, target)
    if repartition:
        partitions = partitions or default_partitions(spark)
        # repartition(P, key) is not coalesced by AQE, and groupBy(key) reuses its
        # hash partitioning: one shuffle, exactly P tasks.
        data = data.repartition(partitions, key)
    t0 = time.perf_counter()
    if method == "applyInPandas":
        trained = data.groupBy(key).applyInPandas(make_train_fn(opts, key), REGISTRY_SCHEMA)
    elif method == "sorted-mapInPandas":
        trained = data.sortWithinPartitions(key).mapInPandas(
            make_sorted_train_fn(opts, key), REGISTRY_SCHEMA)
    else:
        trained = data.sortWithinPartitions(key).mapInArrow(
            make_arrow_train_fn(opts, key), REGISTRY_SCHEMA)
    registry = trained.toPandas()
    seconds = time.perf_counter() - t0
    # A killed attempt (executor lost, worker crash) can leave its temporary file behind; the
    # registry never points at one, and the rename of the successful attempt is what counts.
    for leftover in atomic.leftovers(run_dir):
        leftover.unlink(missing_ok=True)
    registry = _registry_frame(registry.to_dict("records")).sort_values("group")
    registry = registry.reset_index(drop=True)
    write_registry(registry, run_dir, opts)
    used = int(registry["partition"].nunique()) if len(registry) else 0
    settings = {"partitions_requested": partitions, "tasks_with_groups": used,
                "repartition": repartition, "kind": _kind_name(kind), "method": method,
                "adaptive": spark.conf.get("spark.sql.adaptive.enabled"),
                "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
                "task_slots": task_slots(spark)}
    return TrainingRun(run, run_dir, registry, seconds, used, settings)


def write_registry(registry: pd.DataFrame, run_dir: Path, opts: FitOptions | None = None) -> Path:
    path = run_dir / "registry.parquet"
    atomic_write(path, lambda p: registry.to_parquet(p, index=False))
    if opts is not None:
        meta = {"kind": _kind_name(opts.kind), "features": list(opts.features),
                "target": opts.target, "params": dict(opts.params), "min_rows": opts.min_rows,
                "max_rows": opts.max_rows, "groups": len(registry),
                "failed": int(registry["error"].notna().sum())}
        atomic_write(run_dir / "run.json",
                      lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    return path


def load_registry(run: str | Path, models_dir: Path | str | None = None) -> pd.DataFrame:
    """A run's registry by name (``share_storages/models/<run>``) or by folder path."""
    run_dir = Path(run)
    if not run_dir.is_dir():
        run_dir = (Path(models_dir) if models_dir is not None else models_root()) / str(run)
    path = run_dir / "registry.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no registry at {path}: train the run first (train_groups)")
    return pd.read_parquet(path)


def train_sequential(data: pd.DataFrame, *, run: str, key: str = "group",
                     features: Sequence[str] = ("x",), target: str = "y",
                     kind: str | Callable[[], Any] = "linear",
                     params: Mapping[str, Any] | None = None,
                     min_rows: int = DEFAULT_MIN_ROWS, max_rows: int = DEFAULT_MAX_ROWS,
                     models_dir: Path | str | None = None, seed: int = 0,
                     keras_epochs: int = 30) -> TrainingRun:
    """The same per-group training in one Python process: the benchmark's baseline."""
    run_dir = prepare_run_dir(run, models_dir)
    opts = FitOptions(run_dir=str(run_dir), kind=kind, features=tuple(features), target=target,
                      params=dict(params or {}), min_rows=min_rows, max_rows=max_rows,
                      seed=seed, keras_epochs=keras_epochs)
    t0 = time.perf_counter()
    rows = [fit_group(str(g), [part], opts)
            for g, part in data.groupby(key, sort=True, observed=True)]
    seconds = time.perf_counter() - t0
    registry = _registry_frame(rows)
    write_registry(registry, run_dir, opts)
    return TrainingRun(run, run_dir, registry, seconds, 1, {"kind": _kind_name(kind)})


#: Group models kept per Python worker (a scoring job touches one model per group).
MODEL_CACHE_SIZE = 64
_MODEL_CACHE: WorkerCache[Any] = WorkerCache(MODEL_CACHE_SIZE)


def load_model(path: str, loads=None):
    """A stored group model (joblib or .keras), cached per Python worker (least recently used
    dropped first); ``loads`` (a Spark accumulator) counts the loads from disk."""

    def load():
        if path.endswith(".keras"):
            from lab_utils.inference import configure_tensorflow

            configure_tensorflow()
            import keras

            model = keras.saving.load_model(path)
        else:
            import joblib

            model = joblib.load(path)
        if loads is not None:
            loads.add(1)
        return model

    return _MODEL_CACHE.get(path, load)


def _predict(model, X: np.ndarray) -> np.ndarray:
    if hasattr(model, "predict") and not hasattr(model, "layers"):
        return np.asarray(model.predict(X), dtype=np.float64).ravel()
    return np.asarray(model(X.astype(np.float32), training=False)).astype(np.float64).ravel()


def score_groups(df, registry: pd.DataFrame | str, *, key: str = "group",
                 features: Sequence[str] = ("x",), prediction: str = "prediction",
                 partitions: int | None = None, loads=None):
    """Score ``df`` with each group's own model: one ``applyInPandas`` call per group.

    Every input row comes out once, with ``prediction`` and ``error``: rows of a group whose
    model failed to train, or that has no model in the registry, get the reason in ``error``
    and a null prediction. ``loads`` (a Spark accumulator) counts model loads from disk.
    """
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    features = tuple(features)
    _check_columns(df, [key, *features])
    if isinstance(registry, str | Path):
        registry = load_registry(registry)
    paths = {str(g): p for g, p, e in registry[["group", "model_path", "error"]].itertuples(
        index=False) if e is None or (isinstance(e, float) and np.isnan(e))}
    errors = {str(g): e for g, e in registry[["group", "error"]].itertuples(index=False)
              if isinstance(e, str)}
    missing = [p for p in paths.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} model file(s) listed in the registry are gone "
                                f"(first: {missing[0]}): retrain the run")
    taken = {prediction, "error"} & set(df.columns)
    if taken:
        raise GroupTrainingError(f"column(s) {sorted(taken)} already exist: pass prediction= "
                                 "or drop them")
    schema = StructType([*df.schema.fields, StructField(prediction, DoubleType()),
                         StructField("error", StringType())])

    def score(key_values: tuple, pdf: pd.DataFrame) -> pd.DataFrame:
        group = str(key_values[0])
        out = pdf.copy()
        out[prediction] = np.nan
        out["error"] = None
        path = paths.get(group)
        if path is None:
            why = errors.get(group)
            out["error"] = (f"model for group {group!r} failed to train: {why}" if why
                            else f"no model for group {group!r} in the registry")
            return out
        try:
            model = load_model(path, loads)
            out[prediction] = _predict(model, pdf[list(features)].to_numpy(dtype=np.float64))
        except Exception as exc:  # noqa: BLE001 - one group's failure marks its rows only
            out["error"] = f"scoring group {group!r} failed: {type(exc).__name__}: {exc}"
        return out

    data = df.repartition(partitions or default_partitions(df.sparkSession), key)
    return data.groupBy(key).applyInPandas(score, schema)


# --------------------------------------------------------------------------------------------
# Hyperparameter search fanned out over the cluster (joblibspark)
# --------------------------------------------------------------------------------------------

def search_hyperparameters(X: np.ndarray, y: np.ndarray, param_grid: Mapping[str, Sequence],
                           *, estimator=None, cv: int = 3, n_jobs: int | None = None,
                           seed: int = 0, spark=None):
    """scikit-learn's ``GridSearchCV`` with every (candidate, fold) fit run as a Spark task.

    joblibspark is a joblib backend: the search code is plain scikit-learn, and the fits go to
    the cluster instead of local processes. ``n_jobs`` defaults to the application's task
    slots. Returns the fitted search (``best_params_``, ``cv_results_``).
    """
    import joblib
    from joblibspark import register_spark
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import GridSearchCV, KFold

    register_spark()
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
    jobs = n_jobs or (task_slots(spark) if spark is not None else 1)
    estimator = estimator or GradientBoostingRegressor(random_state=seed)
    search = GridSearchCV(estimator, dict(param_grid), cv=KFold(cv, shuffle=True,
                                                                random_state=seed),
                          scoring="neg_root_mean_squared_error", n_jobs=jobs, refit=True)
    with joblib.parallel_backend("spark", n_jobs=jobs):
        search.fit(X, y)
    return search
