"""TFRecord schema, encoding and the tf.data reader: what is written is exactly what is read."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lab_utils.data import tfrecords
from lab_utils.data.tfrecords import Feature, TFRecordSchema, TFRecordSchemaError
from lab_utils.errors import LabError

SCHEMA = TFRecordSchema((
    Feature("customer_id", "string"),
    Feature("window_end", "int64"),
    Feature("sequence", "float32", (3, 2)),
    Feature("tags", "int64", None),
    Feature("raw", "bytes"),
    Feature("label", "int64"),
), metadata={"note": "ünïcode"})


def frame(n: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "customer_id": [f"C{i:03d}-é" for i in range(n)],
        "window_end": np.arange(n, dtype=np.int64) * 2**40,  # beyond int32
        # Nested arrays, as Arrow hands array<array<float>> to pandas.
        "sequence": [np.array([row for row in rng.normal(size=(3, 2)).astype(np.float32)],
                              dtype=object) for _ in range(n)],
        "tags": [np.arange(i % 4, dtype=np.int64) - 2 for i in range(n)],  # some empty
        "raw": [bytes([i, 0, 255]) * i for i in range(n)],  # some empty, some with NULs
        "label": np.arange(n) % 2,
    })


def test_schema_json_round_trip():
    again = TFRecordSchema.from_dict(json.loads(json.dumps(SCHEMA.to_dict())))
    assert again == SCHEMA
    assert SCHEMA["sequence"].size == 6 and SCHEMA["tags"].size is None


@pytest.mark.parametrize("bad, message", [
    (lambda: Feature("x", "float64"), "dtype 'float64'"),
    (lambda: Feature("x", "int64", (0,)), "positive sizes"),
    (lambda: TFRecordSchema((Feature("x", "int64"), Feature("x", "bytes"))), "duplicate"),
    (lambda: TFRecordSchema((Feature("x", "int64"),), compression="LZ4"), "compression"),
])
def test_schema_rejects_mistakes(bad, message):
    with pytest.raises(TFRecordSchemaError, match=message):
        bad()


@pytest.mark.parametrize("feature, value, message", [
    (Feature("seq", "float32", (3, 2)), np.zeros((2, 3, 1)), r"expected shape \(3, 2\)"),
    (Feature("seq", "float32", (3, 2)), np.zeros(5), r"expected shape \(3, 2\), got \(5,\)"),
    (Feature("n", "int64"), 1.5, "non-integer"),
    (Feature("n", "int64"), "7", "expected integers"),
    (Feature("s", "string"), b"\xff\xfe", "not UTF-8; declare it 'bytes'"),
    (Feature("s", "bytes"), 3, "expected bytes"),
    (Feature("v", "float32", None), np.zeros((2, 2)), "1-D"),
    (Feature("n", "int64"), None, "null"),
])
def test_check_value_names_the_feature_and_the_problem(feature, value, message):
    with pytest.raises(TFRecordSchemaError, match=message) as info:
        tfrecords.check_value(feature, value)
    assert repr(feature.name) in str(info.value)


def test_check_value_accepts_flat_arrays_of_the_right_size():
    out = tfrecords.check_value(Feature("seq", "float32", (3, 2)), list(range(6)))
    assert out.dtype == np.float32 and out.tolist() == list(range(6))


@pytest.mark.parametrize("compression, batch_size", [(None, None), ("GZIP", 3)])
def test_round_trip_is_exact(tmp_path, compression, batch_size):
    data = frame()
    schema = TFRecordSchema(SCHEMA.features, compression=compression)
    summary = tfrecords.write_tfrecords_local(data, tmp_path / "ds", schema, files=3)
    assert summary["records"] == 7 and [f["records"] for f in summary["files"]] == [3, 2, 2]
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        *[f["name"] for f in summary["files"]], "schema.json"]  # no temporary file left
    ds = tfrecords.read_tfrecords(tmp_path / "ds", label="label", batch_size=batch_size)
    rows = []
    for x, y in ds.as_numpy_iterator():
        if batch_size:  # a batch: variable-length tags come back padded to the longest
            rows += [({k: v[i] for k, v in x.items()}, y[i]) for i in range(len(y))]
        else:
            rows.append((x, y))
    assert len(rows) == 7
    for i, (x, y) in enumerate(rows):
        assert tfrecords.decode_strings(x["customer_id"]) == data["customer_id"][i]
        assert x["window_end"] == data["window_end"][i] and x["window_end"].dtype == np.int64
        expected = np.stack(data["sequence"][i])
        assert x["sequence"].dtype == np.float32 and x["sequence"].shape == (3, 2)
        np.testing.assert_array_equal(x["sequence"], expected)  # bit-exact
        tags = x["tags"][: len(data["tags"][i])]
        np.testing.assert_array_equal(tags, data["tags"][i])
        if not batch_size:
            assert len(x["tags"]) == len(data["tags"][i])
        assert x["raw"] == data["raw"][i]
        assert y == data["label"][i]


def test_reader_selects_one_feature(tmp_path):
    tfrecords.write_tfrecords_local(frame(4), tmp_path / "ds", SCHEMA)
    ds = tfrecords.read_tfrecords(tmp_path / "ds", features="window_end", batch_size=4)
    assert next(ds.as_numpy_iterator()).tolist() == [0, 2**40, 2**41, 3 * 2**40]


def test_bad_row_fails_the_write_naming_row_and_feature(tmp_path):
    data = frame(3)
    data["sequence"] = [np.zeros(4, dtype=np.float32) if i == 1 else v
                        for i, v in enumerate(data["sequence"])]
    with pytest.raises(TFRecordSchemaError, match=r"row 1: feature 'sequence'"):
        tfrecords.write_tfrecords_local(data, tmp_path / "ds", SCHEMA)
    # The files were staged beside ``ds`` and the staging folder removed: no ``ds``, no torn
    # file, no schema.json claiming completion, no staging folder left.
    assert list(tmp_path.iterdir()) == []


def test_missing_schema_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="write_tfrecords"):
        tfrecords.read_tfrecords(tmp_path)


def test_a_failed_write_leaves_no_file_behind(tmp_path):
    def records():
        yield b"one"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        tfrecords.write_file(tmp_path / "part-00000.tfrecord", records())
    assert list(tmp_path.iterdir()) == []  # neither a torn part file nor its temporary
    assert tfrecords.write_file(tmp_path / "part-00000.tfrecord", [b"a", b"bc"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.tfrecord"]


# --------------------------------------------------------------------------- the destination


def test_a_folder_that_is_not_a_tfrecord_output_is_refused_and_left_intact(tmp_path):
    shared = tmp_path / "share_storages"
    (shared / "models").mkdir(parents=True)
    (shared / "models" / "model.keras").write_bytes(b"weights")
    (shared / "part-00000.tfrecord").write_bytes(b"")  # looks like one, but no schema.json
    with pytest.raises(tfrecords.TFRecordDestinationError, match="not a TFRecord output") as info:
        tfrecords.write_tfrecords_local(frame(2), shared, SCHEMA)
    assert isinstance(info.value, LabError) and str(shared) in str(info.value)
    assert "choose an empty or new folder" in str(info.value)
    assert (shared / "models" / "model.keras").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["share_storages"]


def test_a_folder_with_more_than_a_previous_output_is_refused(tmp_path):
    tfrecords.write_tfrecords_local(frame(2), tmp_path / "ds", SCHEMA)
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(tfrecords.TFRecordDestinationError, match="notes.txt"):
        tfrecords.write_tfrecords_local(frame(3), tmp_path / "ds", SCHEMA)
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"
    assert tfrecords.load_schema(tmp_path / "ds")[1]["records"] == 2


def test_a_previous_output_is_replaced_and_an_empty_folder_used(tmp_path):
    (tmp_path / "ds").mkdir()
    tfrecords.write_tfrecords_local(frame(7), tmp_path / "ds", SCHEMA, files=3)
    summary = tfrecords.write_tfrecords_local(frame(4), tmp_path / "ds", SCHEMA, files=1)
    assert summary["records"] == 4
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "part-00000.tfrecord", "schema.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no staging or old folder left


def test_a_failed_write_leaves_the_previous_output_intact(tmp_path):
    tfrecords.write_tfrecords_local(frame(5), tmp_path / "ds", SCHEMA, files=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    bad = frame(3)
    bad["label"] = [0, 1.5, 0]
    with pytest.raises(TFRecordSchemaError, match="row 1: feature 'label'"):
        tfrecords.write_tfrecords_local(bad, tmp_path / "ds", SCHEMA, files=1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_the_classifiers_name_a_variable_length_input_they_cannot_take():
    from lab_utils.training.classifiers import _fixed_shape

    schema = TFRecordSchema((Feature("mel", "float32", (4, 8)), Feature("v", "float32", None)))
    assert _fixed_shape(schema, "mel", "ds") == (4, 8)
    with pytest.raises(TFRecordSchemaError, match="'v' in ds is variable-length"):
        _fixed_shape(schema, "v", "ds")


# --------------------------------------------------------------------------- non-finite floats

WINDOW = TFRecordSchema((
    Feature("customer_id", "string"),
    Feature("features", "float32", (2, 2)),
    Feature("baseline_calls", "float32"),
))


@pytest.mark.parametrize("value, shown", [
    (np.array([[1.0, np.nan], [0.0, 2.0]]), "nan"),
    (np.array([[1.0, 2.0], [np.inf, 2.0]]), "inf"),
    (np.array([[-np.inf, 2.0], [0.0, 2.0]]), "-inf"),
    (np.array([[1.0, 2.0], [0.0, 1e39]]), "1e+39"),  # finite in float64, inf in float32
])
def test_a_non_finite_float_is_refused_naming_feature_value_and_fix(value, shown):
    with pytest.raises(TFRecordSchemaError, match="non-finite") as info:
        tfrecords.check_value(WINDOW["features"], value)
    message = str(info.value)
    assert "'features'" in message and shown in message
    assert "allow_non_finite=True" in message  # the fix, or the opt-in


def test_nan_features_and_an_inf_baseline_fail_the_write_and_keep_the_previous_output(
        tmp_path):
    good = pd.DataFrame({"customer_id": ["C1", "C2", "C3"],
                         "features": [np.ones(4)] * 3, "baseline_calls": [0.5, 1.0, 2.0]})
    tfrecords.write_tfrecords_local(good, tmp_path / "ds", WINDOW)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    nan_features = good.assign(features=[np.ones(4), np.array([1.0, np.nan, 1.0, 1.0]),
                                         np.ones(4)])
    with pytest.raises(TFRecordSchemaError, match=r"row 1: feature 'features'.* nan"):
        tfrecords.write_tfrecords_local(nan_features, tmp_path / "ds", WINDOW)
    inf_baseline = good.assign(baseline_calls=[0.5, 1.0, np.inf])
    with pytest.raises(TFRecordSchemaError, match=r"row 2: feature 'baseline_calls'.* inf"):
        tfrecords.write_tfrecords_local(inf_baseline, tmp_path / "ds", WINDOW)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_a_schema_may_allow_non_finite_floats_explicitly(tmp_path):
    schema = TFRecordSchema((Feature("x", "float32", (3,), allow_non_finite=True),
                             Feature("y", "float32")))
    data = pd.DataFrame({"x": [np.array([np.nan, np.inf, -np.inf]), np.zeros(3)],
                         "y": [1.0, 2.0]})
    tfrecords.write_tfrecords_local(data, tmp_path / "ds", schema)
    loaded, raw = tfrecords.load_schema(tmp_path / "ds")
    assert loaded == schema and loaded["x"].allow_non_finite and not loaded["y"].allow_non_finite
    assert [f.get("allow_non_finite") for f in raw["features"]] == [True, False]
    x = [row["x"] for row in tfrecords.read_tfrecords(tmp_path / "ds").as_numpy_iterator()]
    assert np.isnan(x[0][0]) and x[0][1:].tolist() == [np.inf, -np.inf]
    with pytest.raises(TFRecordSchemaError, match="'y'.*non-finite"):  # only where it is allowed
        tfrecords.write_tfrecords_local(data.assign(y=[1.0, np.nan]), tmp_path / "ds", schema)
    with pytest.raises(TFRecordSchemaError, match="float32"):
        Feature("n", "int64", allow_non_finite=True)


def test_an_old_schema_json_without_the_flag_loads_as_not_allowed(tmp_path):
    tfrecords.write_tfrecords_local(frame(2), tmp_path / "ds", SCHEMA)
    path = tmp_path / "ds" / tfrecords.SCHEMA_FILE
    data = json.loads(path.read_text())
    for feature in data["features"]:  # as written before the flag existed
        feature.pop("allow_non_finite", None)
    path.write_text(json.dumps(data))
    loaded, _ = tfrecords.load_schema(tmp_path / "ds")
    assert loaded == SCHEMA and not loaded["sequence"].allow_non_finite
    assert len(list(tfrecords.read_tfrecords(tmp_path / "ds").as_numpy_iterator())) == 2


# --------------------------------------------------------------------------- format("tfrecord")
# The data source's pure parts: schemas both ways, options, the record diagnosis, and its
# writer's write/commit/abort called as Spark calls them (no JVM here; the Spark runs are in
# tests/spark and tests/cluster).


def _source():
    from lab_utils.data.tfrecords import datasource

    return datasource


def test_the_datasource_examples_run(tmp_path):
    from tests.utils.doctests import run_examples

    assert run_examples(_source(), tmp_path) >= 4


def test_spark_schema_of_every_dtype_and_shape():
    ds = _source()
    assert ds.spark_schema(SCHEMA).simpleString() == (
        "struct<customer_id:string,window_end:bigint,sequence:array<array<float>>,"
        "tags:array<bigint>,raw:binary,label:bigint>")


def test_derive_schema_from_columns_options_and_a_given_schema(tmp_path):
    from pyspark.sql import types as T

    ds = _source()
    struct = T.StructType([T.StructField(name, kind) for name, kind in (
        ("id", T.IntegerType()), ("ok", T.BooleanType()), ("x", T.DoubleType()),
        ("name", T.StringType()), ("blob", T.BinaryType()), ("v", T.ArrayType(T.FloatType())),
        ("m", T.ArrayType(T.ArrayType(T.DoubleType()))))])
    derived = ds.derive_schema(struct, {"shape.M": "2, 3", "compression": "ZLIB"})
    assert [(f.name, f.dtype, f.shape) for f in derived.features] == [
        ("id", "int64", ()), ("ok", "int64", ()), ("x", "float32", ()), ("name", "string", ()),
        ("blob", "bytes", ()), ("v", "float32", None), ("m", "float32", (2, 3))]
    assert derived.compression == "ZLIB"
    # A given schema (JSON, or the path of a schema.json) names what is written, other columns
    # are left out; its kinds and nesting must fit the columns.
    given = TFRecordSchema((Feature("id", "int64"), Feature("v", "float32", (4,))), "GZIP")
    (tmp_path / "schema.json").write_text(given.to_json())
    for option in (given.to_json(), str(tmp_path), str(tmp_path / "schema.json")):
        assert ds.derive_schema(struct, {"schema": option}) == given
    with pytest.raises(TFRecordSchemaError, match="feature 'name': the schema says int64"):
        ds.derive_schema(struct, {"schema": TFRecordSchema((Feature("name", "int64"),)).to_json()})
    with pytest.raises(TFRecordSchemaError, match="'gone' of option 'schema' is not a column"):
        ds.derive_schema(struct, {"schema": TFRecordSchema((Feature("gone", "int64"),)).to_json()})
    with pytest.raises(TFRecordSchemaError, match="option schema='/no/such.json'"):
        ds.derive_schema(struct, {"schema": "/no/such.json"})
    with pytest.raises(TFRecordSchemaError, match="compression='lz4': use none, gzip or zlib"):
        ds.derive_schema(struct, {"shape.m": "2,3", "compression": "lz4"})
    with pytest.raises(TFRecordSchemaError, match="column 'when' is timestamp.*cast it"):
        ds.derive_schema(T.StructType([T.StructField("when", T.TimestampType())]), {})
    with pytest.raises(TFRecordSchemaError, match="column 'm' is a nested array.*shape.m"):
        ds.derive_schema(struct, {})


def _batches(data: pd.DataFrame, size: int):
    import pyarrow as pa

    table = pa.Table.from_pandas(data.assign(sequence=[
        np.stack(s).tolist() for s in data["sequence"]]), preserve_index=False)
    return iter(table.to_batches(max_chunksize=size))


def test_the_writer_commits_the_whole_output_and_abort_leaves_the_previous_one(tmp_path):
    ds = _source()
    dest = tmp_path / "out"
    data = frame(7)
    writer = ds.TFRecordWriter(dest, SCHEMA, overwrite=True)
    assert not dest.exists() and writer.staging.parent == tmp_path  # staged beside dest
    message = writer.write(_batches(data, 3))  # one task (partition 0 outside Spark)
    assert message == ds.PartWritten(0, "part-00000.tfrecord", 7, message.bytes)
    assert not dest.exists()  # nothing visible before commit
    writer.commit([message])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in dest.iterdir()) == ["part-00000.tfrecord", "schema.json"]
    rows = list(ds.read_file_rows(str(dest / "part-00000.tfrecord"), SCHEMA, batch=4))
    assert [r[0] for r in rows] == list(data["customer_id"])
    assert rows[3][2] == np.stack(data["sequence"][3]).astype(np.float32).tolist()
    assert [r[3] for r in rows] == [t.tolist() for t in data["tags"]]
    assert [r[4] for r in rows] == list(data["raw"])
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    failing = ds.TFRecordWriter(dest, SCHEMA, overwrite=True)
    partial = failing.write(_batches(frame(3), 2))
    failing.abort([partial, None])  # another task failed: Spark aborts the job
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_append_adds_files_of_the_same_schema_and_refuses_another(tmp_path):
    ds = _source()
    dest = tmp_path / "out"
    for size in (3, 4):
        writer = ds.TFRecordWriter(dest, SCHEMA, overwrite=False)
        writer.commit([writer.write(_batches(frame(size), 8))])
    summary = tfrecords.load_schema(dest)[1]
    assert [(f["name"], f["records"]) for f in summary["files"]] == [
        ("part-00000.tfrecord", 3), ("part-00001.tfrecord", 4)]
    assert summary["records"] == 7
    other = TFRecordSchema(SCHEMA.features, compression="GZIP")
    with pytest.raises(tfrecords.TFRecordDestinationError, match="mode append: .* another "
                       "schema .*compression GZIP"):
        ds.TFRecordWriter(dest, other, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_writer_refuses_a_user_folder_before_any_task(tmp_path):
    ds = _source()
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (True, False):
        with pytest.raises(tfrecords.TFRecordDestinationError, match="not a TFRecord output"):
            ds.TFRecordWriter(tmp_path, SCHEMA, overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_record_of_another_schema_is_named_with_its_file_record_and_feature(tmp_path):
    ds = _source()
    tfrecords.write_tfrecords_local(frame(5), tmp_path / "ds", SCHEMA)
    path = str(tmp_path / "ds" / "part-00000.tfrecord")
    wrong = TFRecordSchema((Feature("customer_id", "string"), Feature("label", "float32")))
    with pytest.raises(TFRecordSchemaError, match=r"part-00000.tfrecord, record 0: feature "
                       r"'label' holds a int64_list where the schema says float32\. Read the"):
        list(ds.read_file_rows(path, wrong, batch=2))
    fewer = TFRecordSchema((Feature("sequence", "float32", (2, 2)),))
    with pytest.raises(TFRecordSchemaError, match=r"holds 6 values where the schema's shape "
                       r"\(2, 2\) needs 4"):
        list(ds.read_file_rows(path, fewer))
