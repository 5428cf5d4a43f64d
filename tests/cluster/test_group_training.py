"""Per-group training on the real cluster: plan shape, methods, retries and scoring."""

from __future__ import annotations

import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from pyspark import cloudpickle
from sklearn.linear_model import LinearRegression

from lab_utils.training import groups as gt


def crash_on_first_attempt():
    """Estimator factory whose first task attempt dies half-way through saving a model.

    On attempt 0 it replaces ``joblib.dump`` in the worker with one that writes a few bytes
    and kills the Python worker: the state a lost executor leaves behind. Retries save
    normally.
    """
    import os

    import joblib
    from pyspark import TaskContext

    if TaskContext.get().attemptNumber() == 0:
        def dump(obj, path, *args, **kwargs):
            with open(path, "wb") as handle:
                handle.write(b"torn")
            os._exit(1)

        joblib.dump = dump
    return LinearRegression()


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    specs = gt.group_specs(40, mean_rows=300, skew=1.0, seed=3, bad_groups=True)
    path = gt.write_group_dataset(spark, tmp_path_factory.mktemp("groups") / "d", specs, seed=3)
    return specs, spark.read.parquet(str(path))


def test_one_shuffle_and_the_requested_task_count(spark, data, tmp_path):
    _, df = data
    run = gt.train_groups(df, run="plan", models_dir=tmp_path, partitions=6,
                          method="applyInPandas")
    assert run.partitions == 6 and len(run.registry) == 42
    plan = df.repartition(6, "group").groupBy("group").applyInPandas(
        gt.make_train_fn(gt.FitOptions(run_dir=str(tmp_path)), "group"), gt.REGISTRY_SCHEMA)
    physical = plan._jdf.queryExecution().executedPlan().toString()
    assert physical.count("Exchange") == 1, physical


def test_both_methods_train_the_same_models(spark, data, tmp_path):
    specs, df = data
    a = gt.train_groups(df, run="a", models_dir=tmp_path, method="applyInPandas")
    cols = ["group", "n_rows", "n_train", "slope", "intercept", "r2", "error"]
    for method in ("sorted-mapInPandas", "sorted-mapInArrow"):
        b = gt.train_groups(df, run=method, models_dir=tmp_path, method=method)
        pd.testing.assert_frame_equal(a.registry[cols], b.registry[cols])
    assert sorted(a.registry["group"]) == sorted(specs["group"])
    assert a.registry["n_rows"].sum() == df.count()


def test_a_crashed_attempt_is_retried_and_leaves_no_torn_file(spark, data, tmp_path):
    _, df = data
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not on executors
    try:
        run = gt.train_groups(df.where("`group` like 'g0000%'"), run="crash",
                              models_dir=tmp_path, kind=crash_on_first_attempt, partitions=2)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert len(run.trained) == 10 and run.failed.empty
    files = sorted(p.name for p in run.run_dir.iterdir())
    assert files == sorted([*(f"g0000{i}.joblib" for i in range(10)), "registry.parquet",
                            "run.json"])
    for path in run.registry["model_path"]:
        assert isinstance(joblib.load(path), LinearRegression)


def test_scoring_loads_each_model_once_and_keeps_every_row(spark, data, tmp_path):
    specs, df = data
    run = gt.train_groups(df, run="score", models_dir=tmp_path)
    loads = spark.sparkContext.accumulator(0)
    scored = gt.score_groups(df, run.registry, loads=loads).toPandas()
    assert len(scored) == df.count()
    assert loads.value == len(run.trained)
    marked = scored[scored["error"].notna()]
    assert set(marked["group"]) == {"bad_tiny", "bad_nan"}
    ok = scored[scored["error"].isna()].merge(specs, on="group")
    expected = ok["slope"] * ok["x"] + ok["intercept"]
    assert np.sqrt(((ok["prediction"] - expected) ** 2).mean()) < 0.5
    with pytest.raises(gt.GroupTrainingError, match="column"):
        gt.score_groups(df.drop("x"), run.registry)
