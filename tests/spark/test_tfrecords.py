"""``write_tfrecords`` on ``local[2]``: it deletes nothing it did not write, and a failed job
leaves the previous output as it was (the files are staged beside ``dest`` and swapped in)."""

from __future__ import annotations

import pandas as pd
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


# --------------------------------------------------------------------------- format("tfrecord")

#: Every dtype, scalar, fixed (1-D and 2-D) and variable-length, as the data source reads them.
EVERY = TFRecordSchema((
    Feature("id", "int64"),
    Feature("name", "string"),
    Feature("raw", "bytes"),
    Feature("score", "float32"),
    Feature("pair", "int64", (2,)),
    Feature("window", "float32", (3, 2)),
    Feature("words", "string", None),
    Feature("blobs", "bytes", None),
    Feature("steps", "float32", None),
    Feature("codes", "string", (2,)),
))
EVERY_DDL = ("id long, name string, raw binary, score float, pair array<long>, "
             "window array<array<float>>, words array<string>, blobs array<binary>, "
             "steps array<float>, codes array<string>")


def _every_rows(n):
    """Rows whose floats are float32 values, so that reading them back is an exact test."""
    return [(i, f"naïve-{i}", bytes([i % 256, 0, 255]) * (i % 3), i / 8 - 1.5, [i, -(2**40) - i],
             [[i + 0.25, -0.5], [2.0 ** -(i % 8 + 10), 3.0], [0.0, -(i / 4)]],
             [f"w{j}é" for j in range(i % 3)], [bytes([j]) * j for j in range(i % 4)],
             [j / 16 for j in range(i % 5)], ["a", f"b{i}"]) for i in range(n)]


def _exact(rows):
    """Rows as comparable Python values (float32 read back as the same double)."""
    return sorted((tuple(bytes(v) if isinstance(v, (bytes, bytearray)) else
                         [bytes(x) for x in v] if v and isinstance(v, list)
                         and isinstance(v[0], (bytes, bytearray)) else v for v in row)
                   for row in rows), key=lambda r: r[0])


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_format_tfrecord_round_trips_every_dtype_exactly(local_spark, tmp_path, compression):
    from lab_utils.session import register_data_sources

    register_data_sources(local_spark)
    rows = _every_rows(11)
    df = local_spark.createDataFrame(rows, EVERY_DDL).repartition(3)
    dest = tmp_path / "every"
    writer = df.write.format("tfrecord").mode("overwrite").option("schema", EVERY.to_json())
    if compression:
        writer = writer.option("compression", compression)
    writer.save(str(dest))
    suffix = ".tfrecord.gz" if compression else ".tfrecord"
    names = sorted(p.name for p in dest.iterdir())
    assert names == [*(f"part-{i:05d}{suffix}" for i in range(3)), "schema.json"]
    schema, summary = tfrecords.load_schema(dest)
    assert schema.features == EVERY.features and summary["records"] == 11
    assert schema.compression == ("GZIP" if compression else None)
    back = local_spark.read.format("tfrecord").load(str(dest))  # no option: schema.json
    assert [f.dataType.simpleString() for f in back.schema.fields] == [
        "bigint", "string", "binary", "float", "array<bigint>", "array<array<float>>",
        "array<string>", "array<binary>", "array<float>", "array<string>"]
    assert back.rdd.getNumPartitions() == 3  # one input partition per part file
    assert _exact(back.collect()) == _exact(rows)
    # The tf.data reader reads the same folder: one schema drives every side.
    ds = tfrecords.read_tfrecords(dest, features="pair", batch_size=32)
    assert sorted(map(tuple, next(ds.as_numpy_iterator()).tolist())) == sorted(
        (r[0], r[4][1]) for r in rows)


def test_format_tfrecord_derives_the_schema_from_the_dataframe(local_spark, tmp_path):
    from lab_utils.session import register_data_sources

    register_data_sources(local_spark)
    df = local_spark.createDataFrame([(i, float(i), [[1.0, 2.0]] * 2, [i] * i) for i in range(5)],
                                     "id int, x double, window array<array<double>>, "
                                     "tags array<long>")
    dest = tmp_path / "derived"
    (df.write.format("tfrecord").mode("append").option("shape.window", "2,2")
     .save(str(dest)))  # append to a missing folder creates it
    schema, _ = tfrecords.load_schema(dest)
    assert [(f.name, f.dtype, f.shape) for f in schema.features] == [
        ("id", "int64", ()), ("x", "float32", ()), ("window", "float32", (2, 2)),
        ("tags", "int64", None)]
    df.write.format("tfrecord").mode("append").option("shape.window", "2,2").save(str(dest))
    back = local_spark.read.format("tfrecord").load(str(dest))
    assert back.count() == 10 and sorted(r.id for r in back.collect()) == sorted([*range(5)] * 2)
    picked = local_spark.read.format("tfrecord").schema("tags array<bigint>").load(str(dest))
    assert sorted(len(r.tags) for r in picked.collect()) == sorted([*range(5)] * 2)
    with pytest.raises(Exception, match="nested array.*shape.window"):
        df.write.format("tfrecord").mode("overwrite").save(str(tmp_path / "other"))
    with pytest.raises(Exception, match="mode append.*another schema"):
        (df.write.format("tfrecord").mode("append").option("shape.window", "1,4")
         .save(str(dest)))
    assert not (tmp_path / "other").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["derived"]  # no staging left


@pytest.mark.filterwarnings("ignore:toPandas attempted Arrow optimization")
def test_format_tfrecord_refuses_a_user_folder_and_a_bad_row_keeps_the_output(local_spark,
                                                                             tmp_path):
    from lab_utils.session import register_data_sources

    register_data_sources(local_spark)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    for mode in ("overwrite", "append"):
        with pytest.raises(Exception, match="not a TFRecord output of the lab"):
            _frame(local_spark, 4).write.format("tfrecord").mode(mode).save(str(user))
    assert _contents(user) == {"notes.txt": b"keep me"}
    dest = tmp_path / "train"
    options = {"schema": SCHEMA.to_json()}
    _frame(local_spark, 6).write.format("tfrecord").options(**options).mode("overwrite") \
        .save(str(dest))
    before = _contents(dest)
    with pytest.raises(Exception, match=r"part-\d+\.tfrecord of .*feature 'x': expected shape"):
        (_frame(local_spark, 6, bad_row=4).repartition(2).write.format("tfrecord")
         .options(**options).mode("overwrite").save(str(dest)))
    assert _contents(dest) == before  # abort removed the staging, the output is as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "train"]


def test_reading_records_of_another_schema_names_file_record_and_feature(local_spark, tmp_path):
    from lab_utils.session import register_data_sources

    register_data_sources(local_spark)
    dest = tmp_path / "train"
    tfrecords.write_tfrecords_local(
        pd.DataFrame({"id": [1, 2], "x": [[0.5, 1.0], [2.0, 3.0]]}),
        dest, SCHEMA)
    wrong = TFRecordSchema((Feature("id", "int64"), Feature("x", "float32", (3,))))
    with pytest.raises(Exception, match=r"part-00000.tfrecord, record 0: feature 'x' holds 2 "
                                        r"values where the schema's shape \(3,\) needs 3"):
        (local_spark.read.format("tfrecord").option("schema", wrong.to_json())
         .load(str(dest)).collect())
