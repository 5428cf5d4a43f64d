"""The partition predictor's two forms without a cluster: the ``mapInPandas`` form feeds the
partition function the rows and the index the RDD form would, and ``transform`` picks the form
a session can run (no RDD under Spark Connect)."""

from __future__ import annotations

import pandas as pd
import pytest

from lab_utils.common.connect import ClassicOnlyError
from lab_utils.inference import partition
from tests.utils.task_context import summing_predictor


def test_ddl_fields_skips_the_commas_inside_nested_types():
    assert partition.ddl_fields("a long, b map<string, array<float>>, c struct<x: int, y: int>,"
                                " d decimal(10, 2), e string") == ["a", "b", "c", "d", "e"]


def test_frames_become_rows_with_none_for_nulls():
    frames = [pd.DataFrame({"id": [1, 2], "x": [2.0, None]}), pd.DataFrame({"id": [3], "x": [5.0]})]
    rows = list(partition.frames_to_rows(frames))
    assert [row["id"] for row in rows] == [1, 2, 3]
    assert [row["x"] for row in rows] == [2.0, None, 5.0]
    assert rows[0].asDict() == {"id": 1, "x": 2.0}


def test_map_in_pandas_form_gives_the_rdd_form_s_rows_in_frames_of_a_batch(monkeypatch):
    devices: list[str] = []
    predictor = summing_predictor(devices, gpu_count=0, batch_size=2)
    monkeypatch.setattr(partition, "partition_id", lambda default=-1: 3)
    rows = [{"id": i, "x": float(i)} for i in range(5)]
    expected = list(predictor._predict_partition(3, iter(rows)))
    frames = list(predictor._predict_frames([pd.DataFrame(rows[:3]), pd.DataFrame(rows[3:])]))
    assert [len(f) for f in frames] == [2, 2, 1]
    assert list(pd.concat(frames).itertuples(index=False, name=None)) == expected
    assert list(frames[0].columns) == partition.ddl_fields(predictor.schema)
    assert list(predictor._predict_frames([])) == []  # an empty partition: no frame


class _ConnectDataFrame:
    """Stands in for a Spark Connect DataFrame (``is_connect`` goes by the class's module)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def mapInPandas(self, func, schema):  # noqa: N802 - PySpark's spelling
        self.calls.append((func, schema))
        return "scored"


_ConnectDataFrame.__module__ = "pyspark.sql.connect.dataframe"


def test_under_connect_transform_runs_map_in_pandas_and_refuses_the_rdd_form():
    predictor = summing_predictor([], gpu_count=0)
    df = _ConnectDataFrame()
    assert predictor.transform(df) == "scored"
    assert df.calls == [(predictor._predict_frames, predictor.schema)]
    with pytest.raises(ClassicOnlyError, match="form='map_in_pandas'"):
        predictor.transform(df, form="rdd")
    with pytest.raises(ValueError, match="form must be one of"):
        predictor.transform(df, form="pandas")
