"""train_groups on ``local[2]``: the Arrow batch size of the training job."""

from __future__ import annotations

import pandas as pd

from lab_utils.training import groups as gt

CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


def test_the_batch_size_is_the_jobs_own_and_does_not_change_the_models(local_spark, tmp_path):
    specs = gt.group_specs(6, mean_rows=400, skew=1.0, seed=5, bad_groups=True)
    data = pd.concat([gt.group_rows(s) for s in specs.to_dict("records")], ignore_index=True)
    df = local_spark.createDataFrame(data)
    local_spark.conf.set(CONF, "64")  # small: most groups span several batches
    try:
        small = gt.train_groups(df, run="small", models_dir=tmp_path, arrow_batch=None,
                                partitions=2)
        assert local_spark.conf.get(CONF) == "64"
        big = gt.train_groups(df, run="big", models_dir=tmp_path, partitions=2)
        assert big.settings["arrow_batch"] == gt.runs.ARROW_BATCH == 10_000
        assert local_spark.conf.get(CONF) == "64"  # restored after the job
    finally:
        local_spark.conf.unset(CONF)
    cols = ["group", "n_rows", "n_train", "slope", "intercept", "r2", "rmse", "error"]
    pd.testing.assert_frame_equal(small.registry[cols], big.registry[cols])
    assert len(small.trained) == 6 and set(small.failed["group"]) == {"bad_tiny", "bad_nan"}
