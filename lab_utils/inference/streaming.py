"""A streaming query's progress reports as a table, the same way in classic and Connect sessions.

``query.recentProgress`` (and ``query.lastProgress``) hand back one
``pyspark.sql.streaming.listener.StreamingQueryProgress`` per micro-batch: a ``dict`` subclass
(Spark 4.0+) in both a classic and a Spark Connect session, with nested ``durationMs`` and
``sources``. :func:`progress_table` flattens the figures notebook 09 plots into one row per
micro-batch; :func:`progress_summary` sums them up. Nothing here starts, stops or waits for a
query: that is the lesson, written in the notebook.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

#: The columns of :func:`progress_table`, in order.
COLUMNS = ("batch_id", "timestamp", "input_rows", "input_rows_per_s", "processed_rows_per_s",
           "batch_ms", "add_batch_ms")


def _number(value: Any) -> float:
    """Spark reports a rate it could not compute as NaN, null or a missing key: all NaN here."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def progress_table(progress: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per micro-batch report (``query.recentProgress``), oldest first.

    * ``input_rows``: rows the batch read (``numInputRows``);
    * ``input_rows_per_s``: rows that arrived per second since the previous batch
      (``inputRowsPerSecond``); ``processed_rows_per_s``: rows per second of this batch's run
      (``processedRowsPerSecond``);
    * ``batch_ms``: the whole trigger (``durationMs.triggerExecution``), ``add_batch_ms`` its
      part that ran the query and wrote the sink (``durationMs.addBatch``; absent in a report
      of an idle trigger, NaN here).

    Spark also reports idle triggers (no new data, ``numInputRows`` 0); they are kept.

    Examples
    --------
    >>> report = {"batchId": 3, "timestamp": "2026-12-07T20:00:00.000Z", "numInputRows": 20,
    ...           "inputRowsPerSecond": 10.0, "processedRowsPerSecond": 40.0,
    ...           "durationMs": {"triggerExecution": 500, "addBatch": 420}}
    >>> progress_table([report]).iloc[0].to_dict()  # doctest: +NORMALIZE_WHITESPACE
    {'batch_id': 3, 'timestamp': Timestamp('2026-12-07 20:00:00+0000', tz='UTC'),
     'input_rows': 20, 'input_rows_per_s': 10.0, 'processed_rows_per_s': 40.0,
     'batch_ms': 500.0, 'add_batch_ms': 420.0}
    """
    rows = []
    for report in progress:
        durations = report.get("durationMs") or {}
        rows.append({
            "batch_id": int(report["batchId"]),
            "timestamp": pd.Timestamp(report["timestamp"]),
            "input_rows": int(_aggregate(report, "numInputRows") or 0),
            "input_rows_per_s": _number(_aggregate(report, "inputRowsPerSecond")),
            "processed_rows_per_s": _number(_aggregate(report, "processedRowsPerSecond")),
            "batch_ms": _number(durations.get("triggerExecution")),
            "add_batch_ms": _number(durations.get("addBatch")),
        })
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"batch_id": "int64", "input_rows": "int64"})


def _aggregate(report: Mapping[str, Any], name: str) -> Any:
    """A report's figure over all its sources. A ``StreamingQueryProgress`` from a Spark Connect
    server has no top-level ``numInputRows`` / ``...RowsPerSecond`` keys (its JSON leaves them
    out): its property of the same name sums the sources, as classic's key holds. A plain
    ``dict`` (a report read back from JSON) has only the key."""
    value = report.get(name)
    if value is None and hasattr(type(report), name):
        value = getattr(report, name)
    return value


def progress_summary(table: pd.DataFrame) -> dict[str, float | int]:
    """The figures of :func:`progress_table`'s micro-batches that read rows (idle ones left out):
    how many, their rows, the median rates and batch time."""
    busy = table[table["input_rows"] > 0]
    return {
        "batches": int(len(busy)),
        "rows": int(busy["input_rows"].sum()),
        "median_input_rows_per_s": float(busy["input_rows_per_s"].median()),
        "median_processed_rows_per_s": float(busy["processed_rows_per_s"].median()),
        "median_batch_ms": float(busy["batch_ms"].median()),
    }
