"""Every inference style with the real Keras model on the real 2-worker cluster."""

from __future__ import annotations

import os
import shutil
import uuid

import pandas as pd
import pytest
from pyspark.sql import functions as F

from lab_utils import inference
from lab_utils.common import saved_model
from lab_utils.data import images
from lab_utils.inference.files import placed_name
from lab_utils.training import cnn


@pytest.fixture(scope="module")
def trained(lab_cluster):
    share = lab_cluster.cfg.share_dir
    data = share / "data" / "test-images"
    images.build_image_dataset(data, per_class=20)
    model_dir = share / "models" / "test_cnn"
    meta = cnn.train_image_classifier(data, model_dir, epochs=10)
    return data, model_dir, meta


@pytest.fixture(scope="module")
def mixed_folder(lab_cluster, trained):
    """Twenty good images and the whole bad-input corpus in one folder."""
    data, _, _ = trained
    folder = lab_cluster.cfg.share_dir / "data" / "mixed"
    expected = images.write_bad_input_corpus(folder / "bad")
    for path in sorted((data / "3").glob("*.png"))[:20]:
        shutil.copy(path, folder / path.name)
    return folder, expected


def scored(df, udf):
    return (df.select("path", "label", udf("path", "content").alias("r"))
            .select("path", "label", "r.*").toPandas().sort_values("path").reset_index(drop=True))


def test_model_learned_the_digits(trained):
    _, _, meta = trained
    assert meta["holdout_accuracy"] >= 0.7 > 0.3 >= meta["baseline_accuracy"]


def test_every_style_gives_the_same_predictions(spark, trained):
    data, model_dir, _ = trained
    df = inference.read_images(spark, data, partitions=4).cache()
    n = df.count()
    assert n == 200
    spec = saved_model.load_spec(model_dir)
    results = {
        "python UDF (pickled)": scored(df, inference.row_udf(spec, use_arrow=False)),
        "python UDF (Arrow)": scored(df, inference.row_udf(spec, use_arrow=True)),
        "pandas UDF": scored(df, inference.pandas_udf_series(spec, batch_size=16)),
        "iterator UDF": scored(df, inference.iterator_udf(spec, batch_size=16)),
        "predict_batch_udf": scored(df, inference.spark_predict_batch_udf(spec, batch_size=16)),
        "mapInPandas": inference.map_in_pandas(df, spec, keep=("path", "label")).toPandas()
        .sort_values("path").reset_index(drop=True),
        "partition predictor": inference.image_partition_predictor(spec, batch_size=16)
        .transform(df).toPandas().sort_values("path").reset_index(drop=True),
    }
    reference = results["iterator UDF"]
    assert reference["error"].isna().all()
    assert (reference["prediction"] == reference["label"]).mean() >= 0.8
    for style, frame in results.items():
        assert len(frame) == n, style
        assert list(frame["path"]) == list(reference["path"]), style
        assert list(frame["prediction"]) == list(reference["prediction"]), style
        assert frame["confidence"].to_numpy() == pytest.approx(
            reference["confidence"].to_numpy(), abs=1e-4), style
    df.unpersist()


@pytest.mark.parametrize("style", ["iterator", "pickled"])
def test_bad_files_are_row_errors_not_a_dead_job(spark, trained, mixed_folder, style):
    _, model_dir, _ = trained
    folder, expected = mixed_folder
    udf = (inference.iterator_udf(model_dir) if style == "iterator"
           else inference.row_udf(model_dir, use_arrow=False))
    out = scored(inference.read_images(spark, folder, partitions=3), udf)
    assert len(out) == 20 + len(expected)  # nothing lost, nothing skipped
    by_name = {os.path.basename(p): row for p, row in zip(out["path"], out.itertuples(),
                                                          strict=True)}
    for name, outcome in expected.items():
        row = by_name[name.replace(" ", "%20")] if name not in by_name else by_name[name]
        if outcome is None:
            assert row.error is None and row.prediction in {str(d) for d in range(10)}, name
        else:
            assert row.prediction is None and outcome in row.error, (name, row.error)
    good = out[~out["path"].str.contains("/bad/")]
    assert good["error"].isna().all() and len(good) == 20


def test_fail_fast_raises_naming_the_file(spark, trained, mixed_folder):
    _, model_dir, _ = trained
    folder, expected = mixed_folder
    df = inference.read_images(spark, folder / "bad", partitions=1)
    with pytest.raises(Exception) as failure:
        df.select(inference.iterator_udf(model_dir, fail_fast=True)("path", "content")).collect()
    bad = [name for name, outcome in expected.items() if outcome]
    assert any(name in str(failure.value) for name in bad), str(failure.value)[-500:]


def test_missing_model_fails_on_the_driver_before_any_job(spark, lab_cluster):
    group = f"missing-model-{uuid.uuid4().hex}"
    spark.sparkContext.setJobGroup(group, "should never run")
    try:
        with pytest.raises(saved_model.ModelError, match="model not found .* `make models`"):
            df = inference.read_images(spark, lab_cluster.cfg.share_dir / "data" / "test-images")
            df.select(inference.pandas_udf_series(lab_cluster.cfg.share_dir / "models" / "nope")(
                "path", "content")).collect()
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert spark.sparkContext.statusTracker().getJobIdsForGroup(group) == []


def test_model_loaded_once_per_python_worker(spark, trained, lab_cluster):
    data, model_dir, _ = trained
    marks = lab_cluster.cfg.share_dir / "output" / f"loads-{uuid.uuid4().hex}"
    marks.mkdir(parents=True)
    keras_make = inference.keras_predict_fn(saved_model.load_spec(model_dir).model_file)

    def counting_make():
        (marks / f"{os.getpid()}-{uuid.uuid4().hex}").touch()
        return keras_make()

    udf = inference.iterator_udf(model_dir, counting_make, batch_size=8)
    df = inference.read_images(spark, data, partitions=8)
    for _ in range(2):  # 16 tasks, many Arrow batches
        assert df.select(udf("path", "content").alias("r")).agg(
            F.count("r.prediction")).first()[0] == 200
    pids = [p.name.split("-")[0] for p in marks.iterdir()]
    assert pids and len(pids) == len(set(pids)), f"a worker loaded the model twice: {pids}"
    assert len(pids) <= 4  # at most one load per Python worker (2 executors x 2 cores)


def test_sql_udfs_and_rdd_functions_share_python_workers(spark):
    # Spark keys Python worker pools by environment; SQL UDFs add SPARK_SIMPLIFIED_TRACEBACK.
    # The lab's session gives RDD functions the same variable, so a partition predictor after
    # a pandas UDF finds the workers (and the model) the UDF loaded: without it the two pid
    # sets are always disjoint (two pools, two TensorFlows per executor core).
    @F.pandas_udf("long")
    def worker_pid(ids: pd.Series) -> pd.Series:
        return pd.Series([os.getpid()] * len(ids))

    df = spark.range(0, 64, 1, 8)
    sql = {row[0] for row in df.select(worker_pid("id")).distinct().collect()}

    def rdd_worker_pid(rows):
        for _ in rows:  # read the whole partition: a worker that stops early is not reused
            pass
        yield os.getpid()

    rdd = set(df.rdd.mapPartitions(rdd_worker_pid).collect())
    assert sql and rdd and sql & rdd, f"SQL UDF workers {sql}, RDD workers {rdd}"


ODD_NAMES = ["with space.png", "ünïcødé-名前.png", "50%25 off.png", "hash#1.png", "q?mark.png",
             "brackets[1].png", "braces{a,b}.png", "colon:name.png", "star*.png",
             "new\nline.png", "x" * 240 + ".png"]


def test_odd_file_names_are_read_scored_and_placed(spark, trained, lab_cluster):
    data, model_dir, _ = trained
    folder = lab_cluster.cfg.share_dir / "data" / "odd names ü" / "3"
    folder.mkdir(parents=True, exist_ok=True)
    source = sorted((data / "3").glob("*.png"))[0]
    for name in ODD_NAMES:
        shutil.copy(source, folder / name)
    spec = saved_model.load_spec(model_dir)
    df = inference.read_images(spark, folder.parent)
    result = (df.select("path", inference.iterator_udf(spec)("path", "content").alias("r"))
              .select("path", "r.*"))
    rows = result.toPandas()
    assert sorted(inference.local_path(p) for p in rows["path"]) == sorted(
        str(folder / n) for n in ODD_NAMES)
    assert rows["error"].isna().all(), rows["error"].dropna().tolist()
    assert rows["prediction"].nunique() == 1  # one image under eleven names: one answer
    dest = lab_cluster.cfg.share_dir / "output" / "odd-sorted"
    placed = inference.place_by_class(result, dest).toPandas()
    assert placed["placed_error"].isna().all(), placed["placed_error"].dropna().tolist()
    folder_of_answer = dest / rows["prediction"].iloc[0]
    assert sorted(p.name for p in folder_of_answer.iterdir()) == sorted(
        placed_name(str(folder / n)) for n in ODD_NAMES)  # each name, with its path's tag
