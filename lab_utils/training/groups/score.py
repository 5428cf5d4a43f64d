"""Scoring new rows with each group's own model: the checked loader and both plans.

The default plan is the training plan's: ``repartition(P, key)``, each partition sorted by key,
one ``mapInArrow`` call per partition that cuts its Arrow batches where the key changes and
loads each group's model once. ``method="applyInPandas"`` is the textbook form (one call per
group); both give the same rows (a Spark test compares them).

Model loads from disk are counted with a ``pyspark.sql.Observation`` (both classic and Spark
Connect): each task appends how many models it loaded to its output as a hidden column, the
observation sums it while the action runs, and the column is dropped before the rows come back.
A classic accumulator is still accepted.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab_utils.common.cache import WorkerCache, file_key, freeze_heap_once, sha256_hex
from lab_utils.training.groups.cut import key_runs
from lab_utils.training.groups.fit import (
    GroupTrainingError,
    ModelIntegrityError,
    RunFilesMissingError,
)
from lab_utils.training.groups.runs import _check_columns, default_partitions, load_registry

#: How :func:`score_groups` hands the groups to Python (the first is the default).
SCORE_METHODS = ("sorted-mapInArrow", "applyInPandas")

#: Group models kept per Python worker (a scoring job touches one model per group).
MODEL_CACHE_SIZE = 64
_MODEL_CACHE: WorkerCache[Any] = WorkerCache(MODEL_CACHE_SIZE)

#: The hidden column that carries each task's model loads to an ``Observation``.
LOADS_COLUMN = "__model_loads_from_disk"
#: The metric's name in the observation: ``observation.get["model_loads"]``.
LOADS_METRIC = "model_loads"


def load_model(path: str, loads=None, *, sha256: str):
    """A stored group model (joblib or .keras), checked against the ``sha256`` its registry
    recorded, cached per Python worker (least recently used dropped first); ``loads`` (anything
    with ``add(n)``: a classic Spark accumulator, a :class:`GroupScorer`) counts the loads
    from disk.

    Loading a joblib (pickle) file runs code, so the bytes are read once, checked, and only
    those bytes are loaded: a file changed after training is refused with
    :class:`ModelIntegrityError`, never unpickled.

    The cache key is the file's version (:func:`~lab_utils.common.cache.file_key`) and the
    expected digest, not the path: workers are reused across jobs, and a run retrained under
    the same name must score with the new models.

    Examples
    --------
    A model trained in this process (:func:`~lab_utils.training.groups.train_sequential`),
    loaded by its registry row; once the file changes, it is refused:

    >>> from lab_utils.training.groups import train_sequential
    >>> rows = pd.DataFrame({"group": "a", "x": np.arange(20.0), "y": 2 * np.arange(20.0)})
    >>> row = train_sequential(rows, run="doc-load", models_dir=tmp).registry.iloc[0]
    >>> model = load_model(row["model_path"], sha256=row["sha256"])
    >>> model.predict([[10.0]]).round(3).tolist()
    [20.0]
    >>> _ = Path(row["model_path"]).write_bytes(b"changed")
    >>> load_model(row["model_path"], sha256=row["sha256"])
    Traceback (most recent call last):
    lab_utils.training.groups.fit.ModelIntegrityError: .../a.joblib is not the model file...
    """

    def load():
        data = Path(path).read_bytes()
        if sha256_hex(data) != sha256:
            raise ModelIntegrityError(
                f"{path} is not the model file its registry recorded (its sha256 differs: it "
                "changed after training): it was not loaded. Retrain the run (train_groups), or "
                "restore the file from a backup. Loading a model file runs code: keep "
                "share_storages/models writable only by people you trust.")
        if path.endswith(".keras"):
            from lab_utils.common.tensorflow import configure_tensorflow

            configure_tensorflow()
            import keras

            # Keras reads a path: give it a private copy of the checked bytes.
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "model.keras"
                copy.write_bytes(data)
                model = keras.saving.load_model(str(copy))
        else:
            import joblib

            model = joblib.load(io.BytesIO(data))
        if loads is not None:
            loads.add(1)
        return model

    model = _MODEL_CACHE.get((file_key(path), sha256), load)
    freeze_heap_once()  # after the first load in a worker: the libraries it imported
    return model


def _trained(error) -> bool:
    return error is None or (isinstance(error, float) and np.isnan(error))


def model_files(registry: pd.DataFrame, run_dir: Path | str) -> dict[str, tuple[str, str]]:
    """``{group: (model path, sha256)}`` of a registry's trained rows, checked on the driver.

    Raises
    ------
    ModelIntegrityError
        A row without a recorded sha256 (a registry written before the lab recorded them), or
        whose model path resolves, after symbolic links, outside ``run_dir``.
    FileNotFoundError
        A model file listed in the registry is gone.
    """
    root = Path(run_dir).resolve()
    shas = registry["sha256"] if "sha256" in registry.columns else [None] * len(registry)
    found = {}
    for group, path, sha, error in zip(registry["group"], registry["model_path"], shas,
                                       registry["error"], strict=True):
        if not _trained(error):
            continue
        if not isinstance(sha, str) or not sha:
            raise ModelIntegrityError(
                f"registry row for group {group!r} ({path}) has no sha256: the run was trained "
                "before the lab recorded model checksums, and an unchecked model file is not "
                "loaded (loading one runs code). Retrain the run (train_groups).")
        resolved = (root / str(path)).resolve()
        if not resolved.is_relative_to(root):
            raise ModelIntegrityError(
                f"registry row for group {group!r} points at {path}, which resolves to "
                f"{resolved}, outside the run folder {root}: refused before the job started. "
                "Restore the registry or retrain the run (train_groups).")
        found[str(group)] = (str(resolved), sha)
    missing = [p for p, _ in found.values() if not Path(p).is_file()]
    if missing:
        raise RunFilesMissingError(f"{len(missing)} model file(s) listed in the registry are "
                                   f"gone (first: {missing[0]}): retrain the run (train_groups)")
    return found


def _predict(model, X: np.ndarray) -> np.ndarray:
    if hasattr(model, "predict") and not hasattr(model, "layers"):
        return np.asarray(model.predict(X), dtype=np.float64).ravel()
    return np.asarray(model(X.astype(np.float32), training=False)).astype(np.float64).ravel()


class GroupScorer:
    """Scores one group's rows on an executor: finds the group's model (or the reason it has
    none), predicts, and marks instead of failing.

    It remembers the current group's model, so a group whose rows span several Arrow batches
    is loaded once (:func:`load_model` also caches per Python worker, and checks the sha256).
    ``loaded`` counts the models it loaded from disk (not from the worker's cache); ``loads``
    (a classic accumulator, optional) is told of each one too. A pure object: the unit tests
    drive it without Spark.
    """

    def __init__(self, paths: Mapping[str, tuple[str, str]], errors: Mapping[str, str],
                 features: Sequence[str], loads=None):
        self.paths = dict(paths)
        self.errors = dict(errors)
        self.features = tuple(features)
        self.loads = loads
        self.loaded = 0
        self._group: str | None = None
        self._model: Any = None
        self._why: str | None = None

    def model(self, group: str) -> tuple[Any, str | None]:
        """``(model, None)``, or ``(None, reason)`` when the group cannot be scored."""
        if group != self._group:
            self._model, self._why = self._resolve(group)
            self._group = group
        return self._model, self._why

    def _resolve(self, group: str) -> tuple[Any, str | None]:
        stored = self.paths.get(group)
        if stored is None:
            why = self.errors.get(group)
            return None, (f"model for group {group!r} failed to train: {why}" if why
                          else f"no model for group {group!r} in the registry")
        path, sha256 = stored
        try:
            return load_model(path, self, sha256=sha256), None
        except Exception as exc:  # noqa: BLE001 - one group's failure marks its rows only
            return None, f"scoring group {group!r} failed: {type(exc).__name__}: {exc}"

    def add(self, n: int) -> None:
        """Count ``n`` models loaded from disk (:func:`load_model` calls it)."""
        self.loaded += n
        if self.loads is not None:
            self.loads.add(n)

    def score(self, group: str, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictions (NaN where none) and errors (None where scored) for rows of one group.

        Rows with a NaN or infinite feature are marked one by one; the group's other rows are
        scored.
        """
        pred = np.full(len(X), np.nan)
        error = np.full(len(X), None, dtype=object)
        model, why = self.model(group)
        if why is not None:
            error[:] = why
            return pred, error
        ok = np.isfinite(X).all(axis=1)
        if not ok.all():
            error[~ok] = (f"row has NaN/inf in the features {list(self.features)}: impute or "
                          "drop such rows before scoring")
        if ok.any():
            try:
                pred[ok] = _predict(model, X[ok])
            except Exception as exc:  # noqa: BLE001 - one group's failure marks its rows only
                error[ok] = f"scoring group {group!r} failed: {type(exc).__name__}: {exc}"
        return pred, error


def make_pandas_score_fn(scorer: GroupScorer, prediction: str = "prediction", *,
                         loads_column: str | None = None
                         ) -> Callable[[tuple, pd.DataFrame], pd.DataFrame]:
    """The ``applyInPandas`` function: all rows of one group in, the same rows out with
    ``prediction`` and ``error`` (and ``loads_column``, when given: the models loaded from disk
    for this group on its first row, 0 elsewhere)."""
    features = list(scorer.features)

    def score(key_values: tuple, pdf: pd.DataFrame) -> pd.DataFrame:
        before = scorer.loaded
        out = pdf.copy()
        out[prediction], out["error"] = scorer.score(
            str(key_values[0]), pdf[features].to_numpy(dtype=np.float64))
        if loads_column is not None:
            out[loads_column] = _first_row(len(out), scorer.loaded - before)
        return out

    return score


def _first_row(n: int, value: int) -> np.ndarray:
    """``n`` int64 zeros with ``value`` in the first: a count that sums right over rows."""
    column = np.zeros(n, dtype=np.int64)
    if n:
        column[0] = value
    return column


def make_arrow_score_fn(scorer: GroupScorer, key: str, prediction: str = "prediction", *,
                        large_strings: bool = False, loads_column: str | None = None):
    """The ``mapInArrow`` function over partitions sorted by key: every batch comes back with
    ``prediction`` and ``error`` appended, each run of one group's rows scored by its model
    (and ``loads_column``, when given: the models loaded from disk for the batch on its first
    row, 0 elsewhere).

    The input columns go back as they came (no conversion); the key becomes one Python object
    per run of a group, the features one float64 matrix per batch.
    """
    import pyarrow as pa

    text = pa.large_string() if large_strings else pa.string()

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            X = np.column_stack([
                np.asarray(batch.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
                for c in scorer.features])
            pred = np.full(n, np.nan)
            error = np.full(n, None, dtype=object)
            before = scorer.loaded
            for group, s, e in key_runs(batch.column(key)):
                pred[s:e], error[s:e] = scorer.score(str(group), X[s:e])
            arrays = [*batch.columns, pa.array(pred, from_pandas=True), pa.array(error, type=text)]
            names = [*batch.schema.names, prediction, "error"]
            if loads_column is not None:
                arrays.append(pa.array(_first_row(n, scorer.loaded - before)))
                names.append(loads_column)
            yield pa.RecordBatch.from_arrays(arrays, names=names)

    return score


def score_groups(df, registry: pd.DataFrame | str, *, key: str = "group",
                 features: Sequence[str] = ("x",), prediction: str = "prediction",
                 partitions: int | None = None, loads=None,
                 run_dir: Path | str | None = None, method: str = "sorted-mapInArrow"):
    """Score ``df`` with each group's own model, loading each model once per task.

    Every input row comes out once, with ``prediction`` and ``error``: rows of a group whose
    model failed to train, that has no model in the registry, or whose model file changed
    since training (its sha256 differs), get the reason in ``error`` and a null prediction, and
    so does a row with a NaN or infinite feature; the job does not fail.

    ``loads`` counts the models loaded from disk: a ``pyspark.sql.Observation`` (classic and
    Spark Connect; after the first action ``loads.get["model_loads"]`` holds the count; a
    model a Python worker still had cached from an earlier job is not loaded again, and not
    counted), or in classic mode a Spark accumulator.

    ``method`` chooses the plan, as in :func:`~lab_utils.training.groups.train_groups`; both
    give the same rows, in a different order:

    * ``"sorted-mapInArrow"`` (default): ``repartition(P, key)``, each partition sorted by key,
      one ``mapInArrow`` call per partition; the input columns pass through as Arrow;
    * ``"applyInPandas"``: ``groupBy(key).applyInPandas``, one call and one pandas frame per
      group.

    ``partitions`` defaults to 4 per task slot. Model paths must resolve inside the run's
    folder (``run_dir``, default: the folder the registry came from): a row pointing elsewhere
    stops the call here, on the driver, before the job starts (:func:`model_files`).

    Examples
    --------
    Two groups' models (``y = 2x`` and ``y = -x``), trained here by
    :func:`~lab_utils.training.groups.train_sequential`; a group without a model gets the
    reason, not a failed job:

    >>> from lab_utils.training.groups import train_sequential
    >>> x = np.arange(20.0)
    >>> rows = pd.DataFrame({"group": ["a"] * 20 + ["b"] * 20, "x": np.r_[x, x],
    ...                      "y": np.r_[2 * x, -x]})
    >>> run = train_sequential(rows, run="doc-score", models_dir=tmp)
    >>> new = spark.createDataFrame([("a", 5.0), ("b", 5.0), ("c", 5.0)], "group string, x double")
    >>> score_groups(new, run.registry).selectExpr(
    ...     "group", "round(prediction, 3) AS prediction", "error").orderBy("group").collect()
    [Row(group='a', prediction=10.0, error=None), Row(group='b', prediction=-5.0, error=None),
     Row(group='c', prediction=None, error="no model for group 'c' in the registry")]
    """
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    if method not in SCORE_METHODS:
        raise GroupTrainingError(f"unknown method {method!r}: use one of {SCORE_METHODS}")
    features = tuple(features)
    _check_columns(df, [key, *features])
    if isinstance(registry, str | Path):
        registry = load_registry(registry)
    run_dir = run_dir or registry.attrs.get("run_dir")
    if run_dir is None:
        raise GroupTrainingError("the registry does not say which run folder it belongs to: pass "
                                 "run_dir=, or the run's name or folder (load_registry)")
    paths = model_files(registry, run_dir)
    errors = {str(g): e for g, e in registry[["group", "error"]].itertuples(index=False)
              if isinstance(e, str)}
    taken = {prediction, "error"} & set(df.columns)
    if taken:
        raise GroupTrainingError(f"column(s) {sorted(taken)} already exist: pass prediction= "
                                 "or drop them")
    # An accumulator is added to on the executors; an Observation (no add) sums a column.
    observation = loads if loads is not None and not hasattr(loads, "add") else None
    loads_column = LOADS_COLUMN if observation is not None else None
    fields = [*df.schema.fields, StructField(prediction, DoubleType()),
              StructField("error", StringType())]
    if loads_column is not None:
        fields.append(StructField(loads_column, LongType()))
    schema = StructType(fields)
    scorer = GroupScorer(paths, errors, features, None if observation is not None else loads)
    spark = df.sparkSession
    # The same explicit repartition as training: a fixed task count that AQE does not coalesce,
    # and every row of a group in one task (one model load).
    data = df.repartition(partitions or default_partitions(spark), key)
    if method == "applyInPandas":
        out = data.groupBy(key).applyInPandas(
            make_pandas_score_fn(scorer, prediction, loads_column=loads_column), schema)
    else:
        large = spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false") == "true"
        out = data.sortWithinPartitions(key).mapInArrow(
            make_arrow_score_fn(scorer, key, prediction, large_strings=large,
                                loads_column=loads_column), schema)
    if observation is None:
        return out
    from pyspark.sql import functions as F

    return out.observe(observation, F.sum(LOADS_COLUMN).alias(LOADS_METRIC)).drop(LOADS_COLUMN)
