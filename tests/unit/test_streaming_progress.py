"""lab_utils.inference.streaming: progress reports as Spark 4 hands them, to a table."""

from __future__ import annotations

import math
import uuid

import pandas as pd
import pytest
from pyspark.sql.streaming.listener import StreamingQueryProgress

from lab_utils.inference import streaming


def _report(batch: int, rows: int, *, busy: bool = True) -> StreamingQueryProgress:
    """A report of the class both classic and Connect sessions return (a dict subclass)."""
    return StreamingQueryProgress.fromJson({
        "id": str(uuid.uuid4()), "runId": str(uuid.uuid4()), "name": "q",
        "timestamp": f"2026-12-07T20:00:0{batch}.000Z", "batchId": batch, "batchDuration": 10,
        "durationMs": ({"triggerExecution": 100 * (batch + 1), "addBatch": 90 * (batch + 1)}
                       if busy else {"triggerExecution": 2}),
        "eventTime": {}, "stateOperators": [], "sources": [],
        "sink": {"description": "FileSink", "numOutputRows": rows},
        "numInputRows": rows,
        "inputRowsPerSecond": 4.0 * rows if busy else "NaN",
        "processedRowsPerSecond": 10.0 * rows if busy else 0.0,
        "observedMetrics": {}})


def test_one_row_per_report_with_the_figures_flattened():
    table = streaming.progress_table([_report(0, 8), _report(1, 6), _report(2, 0, busy=False)])
    assert list(table.columns) == list(streaming.COLUMNS)
    assert table["batch_id"].tolist() == [0, 1, 2]
    assert table["input_rows"].tolist() == [8, 6, 0]
    assert table["input_rows_per_s"].tolist()[:2] == [32.0, 24.0]
    assert math.isnan(table["input_rows_per_s"].iloc[2])  # Spark's NaN for an idle trigger
    assert table["processed_rows_per_s"].tolist() == [80.0, 60.0, 0.0]
    assert table["batch_ms"].tolist() == [100.0, 200.0, 2.0]
    assert table["add_batch_ms"].tolist()[:2] == [90.0, 180.0]
    assert math.isnan(table["add_batch_ms"].iloc[2])  # no addBatch in an idle trigger
    assert table["timestamp"].iloc[1] == pd.Timestamp("2026-12-07T20:00:01Z")


def test_the_summary_leaves_idle_triggers_out():
    table = streaming.progress_table([_report(0, 8), _report(1, 6), _report(2, 0, busy=False)])
    assert streaming.progress_summary(table) == {
        "batches": 2, "rows": 14, "median_input_rows_per_s": 28.0,
        "median_processed_rows_per_s": 70.0, "median_batch_ms": 150.0}


def test_no_reports_give_an_empty_table():
    table = streaming.progress_table([])
    assert table.empty and list(table.columns) == list(streaming.COLUMNS)
    assert streaming.progress_summary(table)["batches"] == 0


def test_plain_dicts_from_the_json_work_too():
    row = streaming.progress_table([{"batchId": 4, "timestamp": "2026-12-07T20:00:00Z",
                                     "numInputRows": 3}]).iloc[0]
    assert (row["batch_id"], row["input_rows"]) == (4, 3)
    assert math.isnan(row["batch_ms"])


@pytest.mark.parametrize("value", [None, "NaN", "x"])
def test_a_rate_spark_could_not_compute_is_nan(value):
    row = streaming.progress_table([{"batchId": 0, "timestamp": "2026-12-07T20:00:00Z",
                                     "processedRowsPerSecond": value}]).iloc[0]
    assert math.isnan(row["processed_rows_per_s"])


def test_a_connect_report_without_top_level_counts_sums_its_sources():
    """A Spark Connect server's report JSON leaves out the top-level ``numInputRows`` and rates
    (seen on the lab's Connect server: every batch read as 0 rows before this); the figures are
    the sum over the sources, as PySpark's own properties compute them."""
    source = {"description": "FileStreamSource[file:/landing]", "startOffset": None,
              "endOffset": {"logOffset": 1}, "latestOffset": None, "numInputRows": 8,
              "inputRowsPerSecond": 2.0, "processedRowsPerSecond": 4.0}
    report = StreamingQueryProgress.fromJson({
        "id": str(uuid.uuid4()), "runId": str(uuid.uuid4()), "name": None,
        "timestamp": "2026-12-07T20:00:00.000Z", "batchId": 1, "batchDuration": 2000,
        "durationMs": {"triggerExecution": 2000, "addBatch": 1500}, "stateOperators": [],
        "sources": [source], "sink": {"description": "FileSink[/sink]", "numOutputRows": -1}})
    assert report.get("numInputRows") is None  # what a plain key lookup finds
    row = streaming.progress_table([report]).iloc[0]
    figures = (row["input_rows"], row["input_rows_per_s"], row["processed_rows_per_s"])
    assert figures == (8, 2.0, 4.0)
    assert streaming.progress_summary(streaming.progress_table([report]))["batches"] == 1
