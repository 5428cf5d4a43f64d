"""``write_tfrecords`` on ``local[2]``: it deletes nothing it did not write, and a failed job
leaves the previous output as it was (the files are staged beside ``dest`` and swapped in)."""

from __future__ import annotations

import pytest

from lab_utils.data import tfrecords
from lab_utils.data.tfrecords import Feature, TFRecordSchema, TFRecordSchemaError

SCHEMA = TFRecordSchema((Feature("id", "int64"), Feature("x", "float32", (2,))))


def _frame(spark, n, bad_row=None):
    rows = [(i, [float(i), 0.5] if i != bad_row else [1.0]) for i in range(n)]
    return spark.createDataFrame(rows, "id long, x array<double>")


def _contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_folder_that_is_not_a_tfrecord_output_is_refused(local_spark, tmp_path):
    shared = tmp_path / "share_storages"
    (shared / "spark-events").mkdir(parents=True)
    (shared / "spark-events" / "app-1").write_text("event log")
    with pytest.raises(tfrecords.TFRecordDestinationError, match="not a TFRecord output"):
        tfrecords.write_tfrecords(_frame(local_spark, 4), shared, SCHEMA, partitions=2)
    assert (shared / "spark-events" / "app-1").read_text() == "event log"
    assert [p.name for p in tmp_path.iterdir()] == ["share_storages"]


@pytest.mark.filterwarnings("ignore:toPandas attempted Arrow optimization")  # the failed job
def test_a_previous_output_is_replaced_and_a_failed_write_keeps_it(local_spark, tmp_path):
    dest = tmp_path / "tf" / "train"
    tfrecords.write_tfrecords(_frame(local_spark, 6), dest, SCHEMA, partitions=3)
    summary = tfrecords.write_tfrecords(_frame(local_spark, 4), dest, SCHEMA, partitions=2)
    assert summary["records"] == 4
    assert sorted(_contents(dest)) == ["part-00000.tfrecord", "part-00001.tfrecord",
                                       "schema.json"]
    before = _contents(dest)
    with pytest.raises(Exception, match="feature 'x': expected shape") as info:
        tfrecords.write_tfrecords(_frame(local_spark, 5, bad_row=3), dest, SCHEMA,
                                  partitions=2)
    assert "TFRecordSchemaError" in str(info.value) or isinstance(info.value, TFRecordSchemaError)
    assert _contents(dest) == before  # the previous output, untouched
    assert [p.name for p in (tmp_path / "tf").iterdir()] == ["train"]  # no staging left
    assert tfrecords.load_schema(dest)[1]["records"] == 4


@pytest.mark.filterwarnings("ignore:toPandas attempted Arrow optimization")  # the failed job
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_float_fails_the_write_naming_it_and_keeps_the_previous_output(
        local_spark, tmp_path, bad):
    dest = tmp_path / "train"
    tfrecords.write_tfrecords(_frame(local_spark, 4), dest, SCHEMA, partitions=2)
    before = _contents(dest)
    rows = [(i, [float(i), bad if i == 3 else 0.5]) for i in range(6)]
    with pytest.raises(Exception, match="feature 'x'.* non-finite") as info:
        tfrecords.write_tfrecords(local_spark.createDataFrame(rows, "id long, x array<double>"),
                                  dest, SCHEMA, partitions=2)
    assert "TFRecordSchemaError" in str(info.value) or isinstance(info.value, TFRecordSchemaError)
    assert str(bad) in str(info.value) and "allow_non_finite=True" in str(info.value)
    assert _contents(dest) == before
    assert [p.name for p in tmp_path.iterdir()] == ["train"]
