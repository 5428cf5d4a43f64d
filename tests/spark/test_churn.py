"""``clean_events`` and ``build_windows`` on ``local[2]``: every raw row accounted for, and the
Spark windows equal the pure per-customer function's."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import functions as F

from lab_utils.data import churn, churn_windows

SPEC = churn.ChurnSpec(120, seed=5, block_size=60)


def _tables(spark):
    customers = pd.concat([churn.customers_block(SPEC, b) for b in range(SPEC.blocks)])
    events = pd.concat([churn.events_block(SPEC, b) for b in range(SPEC.blocks)])
    return (customers, events, spark.createDataFrame(customers, churn.CUSTOMERS_DDL),
            spark.createDataFrame(events, churn.EVENTS_DDL))


def test_cleaning_finds_what_the_generator_injected_and_loses_nothing(local_spark):
    customers, events, customers_df, events_df = _tables(local_spark)
    clean, rejected = churn.clean_events(events_df, customers_df, SPEC.start, SPEC.end)
    reasons = {r["reject_reason"]: r["count"] for r in
               rejected.groupBy("reject_reason").count().collect()}
    injected = churn.expected_defects(SPEC)
    assert reasons["missing customer_id"] == injected["missing_customer_id"] > 0
    assert reasons["unknown customer"] == injected["unknown_customer"] > 0
    n_clean, n_rejected = clean.count(), rejected.count()
    duplicates = len(events) - n_rejected - n_clean
    assert duplicates == int(customers["injected_duplicates"].sum()) > 0
    assert clean.groupBy("customer_id", "ts", "event_type", "value").count().where(
        "count > 1").count() == 0


def test_spark_windows_equal_the_per_customer_function(local_spark):
    customers, _, customers_df, events_df = _tables(local_spark)
    clean, _ = churn.clean_events(events_df, customers_df, SPEC.start, SPEC.end)
    spec = churn_windows.WindowSpec(SPEC.start, SPEC.days)
    spark_side = (churn_windows.build_windows(clean, customers_df, spec)
                  .where(F.col("error").isNull()).toPandas())
    history = clean.toPandas()
    expected = []
    for row in customers.itertuples():
        mine = history[history["customer_id"] == row.customer_id]
        frame = pd.DataFrame({
            "customer_id": row.customer_id, "signup_date": row.signup_date, "plan": row.plan,
            "churn_date": row.churn_date,
            "ts": mine["ts"].tolist() or [pd.NaT], "event_type": mine["event_type"].tolist()
            or [None], "value": mine["value"].tolist() or [None]})
        try:
            expected.append(churn_windows.customer_windows(frame, spec))
        except ValueError:
            continue  # an inconsistent record: one error row on the Spark side
    expected = pd.concat(expected, ignore_index=True)
    key = ["customer_id", "window_start"]
    got = spark_side.sort_values(key).reset_index(drop=True)
    want = expected.sort_values(key).reset_index(drop=True)
    assert len(got) == len(want) > 100
    pd.testing.assert_frame_equal(got[key + ["window_end", "label"]],
                                  want[key + ["window_end", "label"]], check_dtype=False)
    assert all((a == b).all() for a, b in zip(got["features"], want["features"], strict=True))
