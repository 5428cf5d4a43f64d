"""``clean_events`` and ``build_windows`` on ``local[2]``: every raw row accounted for, and the
Spark windows equal the pure per-customer function's."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
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


def test_non_finite_and_implausibly_large_values_are_rejected_with_their_reasons(local_spark):
    _, _, customers_df, _ = _tables(local_spark)
    ts = dt.datetime.combine(SPEC.start, dt.time()) + dt.timedelta(days=3)
    values = [float("inf"), float("-inf"), float("nan"), 1e308, 2e9, -1.0, None, 1e9, 3.5]
    # From tuples: a pandas NaN would arrive as NULL.
    events = local_spark.createDataFrame([("C000000001", ts, "call", v) for v in values],
                                         churn.EVENTS_DDL)
    clean, rejected = churn.clean_events(events, customers_df, SPEC.start, SPEC.end)
    reasons = {"nan" if r["value"] is not None and math.isnan(r["value"]) else r["value"]:
               r["reject_reason"] for r in rejected.collect()}
    non_finite, large = "non-finite value", "value above MAX_EVENT_VALUE (1e9)"
    assert reasons == {float("inf"): non_finite, float("-inf"): non_finite, "nan": non_finite,
                       1e308: large, 2e9: large, -1.0: "missing or negative value",
                       None: "missing or negative value"}
    assert sorted(r["value"] for r in clean.collect()) == [3.5, 1e9]  # the bound is inclusive
    assert clean.count() + rejected.count() == len(values)  # nothing lost
    # The bound is a keyword: a feed of minutes might cap at a day's worth.
    clean, rejected = churn.clean_events(events, customers_df, SPEC.start, SPEC.end,
                                         max_value=1440)
    assert [r["value"] for r in clean.collect()] == [3.5]
    assert rejected.where("reject_reason = 'value above max_value (1440)'").count() == 3


def test_no_window_holds_a_non_finite_feature_after_cleaning(local_spark):
    customers, events, customers_df, _ = _tables(local_spark)
    steady = customers["churn_date"].isna() & (customers["signup_date"] == SPEC.start)
    cid = customers["customer_id"][steady].iloc[0]  # windows start on days 0, 7, 14, ...
    ts = dt.datetime.combine(SPEC.start, dt.time(9)) + dt.timedelta(days=40)
    hostile = local_spark.createDataFrame(  # from tuples: a pandas NaN would arrive as NULL
        [(cid, ts, "call", v) for v in (1e308, 1e308, float("inf"), float("nan"), 1e39)],
        churn.EVENTS_DDL)
    events_df = local_spark.createDataFrame(events, churn.EVENTS_DDL).unionByName(hostile)
    clean, _ = churn.clean_events(events_df, customers_df, SPEC.start, SPEC.end)
    windows = churn_windows.build_windows(clean, customers_df,
                                          churn_windows.WindowSpec(SPEC.start, SPEC.days))
    rows = windows.where(F.col("error").isNull()).select("features", "baseline_calls").toPandas()
    assert len(rows) > 100
    assert all(np.isfinite(f).all() for f in rows["features"])
    assert np.isfinite(rows["baseline_calls"]).all()
    # Without the cleaning, the windows holding that day are error rows naming customer and day.
    raw = churn_windows.build_windows(events_df.where(F.col("customer_id") == cid),
                                      customers_df.where(F.col("customer_id") == cid),
                                      churn_windows.WindowSpec(SPEC.start, SPEC.days))
    errors = [r["error"] for r in raw.where(F.col("error").isNotNull()).collect()]
    day = (SPEC.start + dt.timedelta(days=40)).isoformat()
    assert len(errors) == 2 and all(cid in e and day in e for e in errors), errors
