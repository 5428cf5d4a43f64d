"""Embarrassingly parallel training: one model per group on Spark, stored and reused.

A common recipe makes each gzip file one partition and trains inside a scalar pandas UDF. That
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
* :func:`score_groups` scores new data with each group's own model on the same sorted plan
  (``mapInArrow`` over partitions sorted by key), loading each model once per task. The
  registry records each model file's sha256 and loading checks it; a registry row whose model
  lies outside its run folder is refused before the job starts. Loading a joblib file runs
  code: ``share_storages/models`` must be writable only by people you trust.

The per-group function is the same code on the cluster and in :func:`train_sequential`, the
single-process loop the benchmark compares against.

The package, by step: :mod:`.data` (deterministic groups with known coefficients),
:mod:`.fit` (one group, in a task or in the sequential loop), :mod:`.cut` (cutting sorted
partitions into groups), :mod:`.runs` (the driver side: run folders, training runs, the
registry), :mod:`.score` (the checked model loader and scoring), :mod:`.search`
(hyperparameter search on the cluster).
Notebooks use the names re-exported here: ``from lab_utils.training import groups as gt``.
"""

from lab_utils.training.groups.cut import key_runs, split_sorted, split_sorted_arrow
from lab_utils.training.groups.data import (
    SEED_SLOPES,
    group_rows,
    group_specs,
    truth_path,
    write_group_dataset,
)
from lab_utils.training.groups.fit import (
    DEFAULT_MAX_ROWS,
    DEFAULT_MIN_ROWS,
    HOLDOUT_EVERY,
    KINDS,
    METHODS,
    REGISTRY_COLUMNS,
    REGISTRY_SCHEMA,
    FitOptions,
    GroupTrainingError,
    ModelIntegrityError,
    RunFilesMissingError,
    fit_group,
    make_arrow_train_fn,
    make_sorted_train_fn,
    make_train_fn,
    model_filename,
    save_model,
)
from lab_utils.training.groups.runs import (
    TrainingRun,
    default_partitions,
    load_registry,
    models_root,
    prepare_run_dir,
    task_slots,
    train_groups,
    train_sequential,
    write_registry,
)
from lab_utils.training.groups.score import (
    MODEL_CACHE_SIZE,
    SCORE_METHODS,
    GroupScorer,
    load_model,
    make_arrow_score_fn,
    make_pandas_score_fn,
    model_files,
    score_groups,
)
from lab_utils.training.groups.search import search_hyperparameters

__all__ = [
    "DEFAULT_MAX_ROWS", "DEFAULT_MIN_ROWS", "HOLDOUT_EVERY", "KINDS", "METHODS", "MODEL_CACHE_SIZE",
    "REGISTRY_COLUMNS", "REGISTRY_SCHEMA", "SCORE_METHODS", "SEED_SLOPES", "FitOptions",
    "GroupScorer", "GroupTrainingError", "ModelIntegrityError", "RunFilesMissingError",
    "TrainingRun",
    "default_partitions", "fit_group", "group_rows", "group_specs", "key_runs", "load_model",
    "load_registry", "make_arrow_score_fn", "make_arrow_train_fn", "make_pandas_score_fn",
    "make_sorted_train_fn", "make_train_fn", "model_filename", "model_files", "models_root",
    "prepare_run_dir",
    "save_model", "score_groups", "search_hyperparameters", "split_sorted", "split_sorted_arrow",
    "task_slots", "train_groups", "train_sequential", "truth_path", "write_group_dataset",
    "write_registry",
]
