"""The driver side of a training run: run folders, the registry, scoring with each group's model."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lab_utils import config as lab_config
from lab_utils.common import atomic, connect
from lab_utils.common.atomic import atomic_write
from lab_utils.training.groups.fit import (
    DEFAULT_MAX_ROWS,
    DEFAULT_MIN_ROWS,
    KINDS,
    METHODS,
    REGISTRY_SCHEMA,
    FitOptions,
    GroupTrainingError,
    RunFilesMissingError,
    _kind_name,
    _registry_frame,
    fit_group,
    make_arrow_train_fn,
    make_sorted_train_fn,
    make_train_fn,
)


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


#: Rows per Arrow batch for training jobs (Spark's own default).
ARROW_BATCH = 10_000
_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


def models_root(cfg: lab_config.LabConfig | None = None) -> Path:
    return (cfg or lab_config.load()).share_dir / "models"


def prepare_run_dir(run: str, models_dir: Path | str | None = None, *,
                    overwrite: bool = True) -> Path:
    """``share_storages/models/<run>/``, emptied of an earlier run's models when overwriting.

    Examples
    --------
    >>> run_dir = prepare_run_dir("stores-v1", tmp)
    >>> run_dir == tmp / "stores-v1", run_dir.is_dir()
    (True, True)
    >>> prepare_run_dir("../stores", tmp)
    Traceback (most recent call last):
    lab_utils.training.groups.fit.GroupTrainingError: run name '../stores': ...
    """
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
    """Tasks the application runs at once, classic or Spark Connect
    (:func:`lab_utils.common.connect.task_slots`)."""
    return connect.task_slots(spark)


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
                 method: str = "sorted-mapInArrow",
                 arrow_batch: int | None = ARROW_BATCH) -> TrainingRun:
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

    ``arrow_batch`` is the rows per Arrow batch for this job
    (``spark.sql.execution.arrow.maxRecordsPerBatch``, set while it runs and restored after;
    ``None`` keeps the session's). The lab's sessions use 1,024, sized for images; a few
    numeric columns per row travel cheaper in Spark's default 10,000: a tenth of the batches
    for the JVM to write and Python to read and cut (the fixed cost of a plan that fits
    nothing, 3 M rows on 2 cores: 2.6 and 3.9 s against 3.2 and 4.5 s with 1,024).

    Everything a run cannot survive (missing columns, an unwritable folder, a bad run name, an
    unknown kind or method) fails here, on the driver, before the job starts.

    Examples
    --------
    Two groups whose true slopes are 2.5 and 3.0, and one with too few rows to train:

    >>> import numpy as np, pandas as pd
    >>> x = np.arange(50, dtype=float)
    >>> rows = pd.DataFrame({"group": ["a"] * 50 + ["b"] * 50 + ["tiny"] * 3,
    ...                      "x": np.concatenate([x, x, x[:3]]),
    ...                      "y": np.concatenate([2.5 * x + 1, 3.0 * x, x[:3]])})
    >>> run = train_groups(spark.createDataFrame(rows), run="doc-slopes", models_dir=tmp)
    >>> fitted = run.trained.set_index("group")[["slope", "intercept"]].round(3) + 0.0
    >>> fitted.to_dict("index")
    {'a': {'slope': 2.5, 'intercept': 1.0}, 'b': {'slope': 3.0, 'intercept': 0.0}}
    >>> run.failed["group"].tolist(), (run.run_dir / "registry.parquet").is_file()
    (['tiny'], True)

    Each group is scored with its own model (:func:`score_groups`):

    >>> from lab_utils.training.groups import score_groups
    >>> new = spark.createDataFrame(pd.DataFrame({"group": ["a", "b"], "x": [10.0, 10.0]}))
    >>> scored = score_groups(new, run.registry).toPandas().sort_values("group")
    >>> scored["prediction"].round(3).tolist(), scored["error"].tolist()
    ([26.0, 30.0], [None, None])
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
    registry = _collect(trained, arrow_batch)
    seconds = time.perf_counter() - t0
    # A killed attempt (executor lost, worker crash) can leave its temporary file behind; the
    # registry never points at one, and the rename of the successful attempt is what counts.
    for leftover in atomic.leftovers(run_dir):
        leftover.unlink(missing_ok=True)
    registry = _registry_frame(registry.to_dict("records")).sort_values("group")
    registry = registry.reset_index(drop=True)
    write_registry(registry, run_dir, opts)
    registry.attrs["run_dir"] = str(run_dir)  # score_groups confines model paths to it
    used = int(registry["partition"].nunique()) if len(registry) else 0
    settings = {"partitions_requested": partitions, "tasks_with_groups": used,
                "repartition": repartition, "kind": _kind_name(kind), "method": method,
                "arrow_batch": arrow_batch,
                "adaptive": spark.conf.get("spark.sql.adaptive.enabled"),
                "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
                "task_slots": task_slots(spark)}
    return TrainingRun(run, run_dir, registry, seconds, used, settings)


def _collect(trained, arrow_batch: int | None) -> pd.DataFrame:
    """``trained.toPandas()`` with ``arrow_batch`` rows per Arrow batch while the job runs."""
    if arrow_batch is None:
        return trained.toPandas()
    conf = trained.sparkSession.conf
    saved = conf.get(_BATCH_CONF, None)
    conf.set(_BATCH_CONF, str(int(arrow_batch)))
    try:
        return trained.toPandas()
    finally:
        if saved is None:
            conf.unset(_BATCH_CONF)
        else:
            conf.set(_BATCH_CONF, saved)


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
    """A run's registry by name (``share_storages/models/<run>``) or by folder path.

    The frame remembers its run folder (``.attrs["run_dir"]``): :func:`score_groups` loads no
    model from outside it.
    """
    run_dir = Path(run)
    if not run_dir.is_dir():
        run_dir = (Path(models_dir) if models_dir is not None else models_root()) / str(run)
    path = run_dir / "registry.parquet"
    if not path.is_file():
        raise RunFilesMissingError(f"no registry at {path}: train the run first (train_groups)")
    registry = pd.read_parquet(path)
    registry.attrs["run_dir"] = str(run_dir)
    return registry


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
    registry.attrs["run_dir"] = str(run_dir)
    return TrainingRun(run, run_dir, registry, seconds, 1, {"kind": _kind_name(kind)})
