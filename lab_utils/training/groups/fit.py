"""Fitting one group: the same code in Spark tasks and in the sequential loop."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab_utils.common import split
from lab_utils.common.atomic import atomic_write
from lab_utils.common.cache import file_sha256, freeze_heap_once
from lab_utils.common.task import partition_id
from lab_utils.errors import LabError
from lab_utils.training.groups.cut import split_sorted, split_sorted_arrow

#: One registry row per group.
REGISTRY_SCHEMA = (
    "`group` string, kind string, model_path string, sha256 string, n_rows long, n_train long, "
    "n_holdout long, slope double, intercept double, r2 double, rmse double, train_seconds double, "
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


class ModelIntegrityError(GroupTrainingError):
    """A model file is not the one its registry recorded (changed, swapped or outside its run
    folder): loading it would run whatever code it holds."""


class RunFilesMissingError(LabError, FileNotFoundError):
    """A run's registry, or model files its registry lists, are not on disk: the run was never
    trained there, or its files were deleted."""


def save_model(path: Path, save: Callable[[Path], object]) -> str:
    """Write a model with ``save(tmp)`` under a temporary name, rename it to ``path`` and
    return the sha256 of the bytes written, which the registry records.

    The digest is taken from the temporary file, before the rename: it is what this task wrote,
    whatever happens to ``path`` later. Loading checks it (:func:`~lab_utils.training.groups.
    load_model`), because unpickling a joblib file runs code.
    """
    digest: list[str] = []

    def write(tmp: Path) -> None:
        save(tmp)
        digest.append(file_sha256(tmp))

    atomic_write(path, write)
    return digest[0]


def model_filename(group: str, suffix: str) -> str:
    """A safe file name for a group: no path separators, no dot files, bounded length.

    Names that had to change get a short hash so two groups never share a file.

    Examples
    --------
    >>> model_filename("store_12", ".joblib")
    'store_12.joblib'
    >>> model_filename("../etc/passwd", ".joblib")  # stays inside the run folder
    '_etc_passwd-....joblib'
    >>> model_filename("a/b", ".keras") != model_filename("a_b", ".keras")
    True
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
    raise GroupTrainingError(f"unknown kind {kind!r}: use one of {KINDS} or a callable "
                             "returning an estimator with fit/predict")


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
        # plain-builtin: a group's failure is its registry row ("ValueError: ..."), never raised
        # to the caller; notebook 05 compares that class with its own trainer's.
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
        out["sha256"] = save_model(path, lambda p: model.save(p))
    elif opts.kind == "noop":
        # Data movement only: the benchmark's measure of Spark's fixed cost per group.
        out.update(model_path=None, r2=float("nan"), rmse=float("nan"))
        return out
    else:
        import joblib

        path = run_dir / model_filename(group, ".joblib")
        model = _make_estimator(opts.kind, opts.params, opts.seed).fit(X[~hold], y[~hold])
        pred = model.predict(X[hold])
        out["sha256"] = save_model(path, lambda p: joblib.dump(model, p))
        if hasattr(model, "coef_"):
            out.update(slope=float(np.ravel(model.coef_)[0]),
                       intercept=float(np.ravel(model.intercept_)[0]))
    out["r2"], out["rmse"] = _metrics(y[hold], pred)
    out["model_path"] = str(path)
    return out


def _fit_keras(X: np.ndarray, y: np.ndarray, opts: FitOptions):
    from lab_utils.common.tensorflow import configure_tensorflow

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
        ss_res = float(self.yty[h] - 2 * beta @ self.aty[h] + beta @ self.ata[h] @ beta)
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
        row["model_path"] = row["sha256"] = None
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
            # plain-builtin: the registry row's class, compared by notebook 05 (see _check_finite)
            raise ValueError(f"group {group!r} has {n} rows; at least {opts.min_rows} are needed "
                             "(min_rows): merge it with similar groups or drop it")
        data = pd.concat(held, ignore_index=True) if held else pd.DataFrame(columns=columns)
        return _fit_in_memory(group, data, opts)
    # The group has more rows than fit in memory.
    if opts.kind != "linear":
        n += sum(len(b) for b in batches)  # drain: count what was not kept
        row["n_rows"] = n
        # plain-builtin: the registry row's class; notebook 05 picks these rows by "MemoryError"
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
    sha256 = save_model(path, lambda p: joblib.dump(model, p))
    return {"n_rows": seen, "sha256": sha256, "n_train": stats.n[False], "n_holdout": stats.n[True],
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


def _fitted(groups: Iterable[tuple[Any, Iterable[pd.DataFrame]]], opts: FitOptions
            ) -> Iterator[dict[str, Any]]:
    """``fit_group`` over ``(group, batches)`` pairs; after the first fit in a Python worker,
    the heap is frozen (:func:`~lab_utils.common.cache.freeze_heap_once`): PySpark collects
    garbage after every task, and the libraries the fit imported would be walked each time."""
    for group, parts in groups:
        yield fit_group(str(group), parts, opts)
        freeze_heap_once()


def make_train_fn(opts: FitOptions, key: str):
    """The ``applyInPandas`` function: (key, batches of one group) -> one registry row."""

    def train(key_values: tuple, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield _registry_frame(list(_fitted([(key_values[0], batches)], opts)))

    return train


def make_sorted_train_fn(opts: FitOptions, key: str):
    """The ``mapInPandas`` function over partitions sorted by key: one registry row per group."""

    def train(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        rows = list(_fitted(split_sorted(batches, key), opts))
        if rows:
            yield _registry_frame(rows)

    return train


def make_arrow_train_fn(opts: FitOptions, key: str):
    """The ``mapInArrow`` function over partitions sorted by key: one registry row per group."""
    import pyarrow as pa

    columns = [*opts.features, opts.target]

    def train(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows = list(_fitted(split_sorted_arrow(batches, key, columns), opts))
        if rows:
            yield pa.RecordBatch.from_pandas(_registry_frame(rows), preserve_index=False)

    return train


METHODS = ("applyInPandas", "sorted-mapInPandas", "sorted-mapInArrow")
