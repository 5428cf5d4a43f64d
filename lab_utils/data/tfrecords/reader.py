"""``tf.data`` back from the TFRecord folders, with the parser built from ``schema.json``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    pass
from lab_utils.data.tfrecords.schema import (
    SCHEMA_FILE,
    TFRecordMissingError,
    TFRecordSchema,
    load_schema,
)


def feature_description(schema: TFRecordSchema) -> dict[str, Any]:
    """The ``tf.io.parse_example`` spec for ``schema`` (imports TensorFlow)."""
    import tensorflow as tf

    kinds = {"int64": tf.int64, "float32": tf.float32, "bytes": tf.string, "string": tf.string}
    return {f.name: (tf.io.VarLenFeature(kinds[f.dtype]) if f.shape is None
                     else tf.io.FixedLenFeature(f.shape, kinds[f.dtype]))
            for f in schema.features}


def tfrecord_files(folder: Path | str) -> list[str]:
    """The complete part files of ``folder`` in order (temporary files are not listed)."""
    _, data = load_schema(folder)
    files = [str(Path(folder) / f["name"]) for f in data["files"]]
    absent = [f for f in files if not Path(f).is_file()]
    if absent:
        raise TFRecordMissingError(f"{len(absent)} files listed in {Path(folder) / SCHEMA_FILE}"
                                   f" are missing (first: {absent[0]}): rewrite the data set")
    return files


def read_tfrecords(
    folder: Path | str,
    *,
    label: str | None = None,
    features: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    shuffle_buffer: int = 0,
    seed: int = 0,
    files: Sequence[str] | None = None,
):
    """A ``tf.data.Dataset`` over a folder written by :func:`write_tfrecords`.

    Parameters
    ----------
    folder : Path or str
        Holds ``schema.json`` and the part files.
    label : str, optional
        Yield ``(features, label)`` pairs, as ``Model.fit`` takes them.
    features : str or sequence of str, optional
        Keep only these features; a single name yields that tensor instead of a dict.
    batch_size : int, optional
        Batch (and parse whole batches at once, which is faster); None yields single records.
    shuffle_buffer : int
        Shuffle records with this buffer (0: file order, deterministic).
    seed : int
        Seed of the shuffle.
    files : sequence of str, optional
        A subset of the part files (default: all, in order).

    Returns
    -------
    tf.data.Dataset

    Examples
    --------
    Three records written by :func:`write_tfrecords_local`, read back as ``Model.fit`` takes
    them, in batches of two:

    >>> import pandas as pd
    >>> from lab_utils.data.tfrecords import Feature, write_tfrecords_local
    >>> schema = TFRecordSchema((Feature("x", "float32", (2,)), Feature("label", "int64")))
    >>> frame = pd.DataFrame({"x": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], "label": [0, 1, 1]})
    >>> _ = write_tfrecords_local(frame, tmp / "train", schema)
    >>> dataset = read_tfrecords(tmp / "train", label="label", batch_size=2)
    >>> [(x["x"].numpy().tolist(), y.numpy().tolist()) for x, y in dataset]
    [([[0.0, 1.0], [2.0, 3.0]], [0, 1]), ([[4.0, 5.0]], [1])]
    """
    import tensorflow as tf

    schema, _ = load_schema(folder)
    paths = list(files) if files is not None else tfrecord_files(folder)
    spec = feature_description(schema)
    wanted = ([features] if isinstance(features, str) else list(features)) if features \
        else [n for n in schema.names if n != label]
    keep = [*wanted, *([label] if label else [])]
    spec = {name: spec[name] for name in keep}
    variable = [name for name in keep if schema[name].shape is None]

    def parse(records):
        parsed = (tf.io.parse_example(records, spec) if batch_size
                  else tf.io.parse_single_example(records, spec))
        for name in variable:
            parsed[name] = tf.sparse.to_dense(parsed[name])
        x = parsed[wanted[0]] if isinstance(features, str) else {n: parsed[n] for n in wanted}
        return (x, parsed[label]) if label else x

    ds = tf.data.TFRecordDataset(paths, compression_type=schema.compression or "")
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if batch_size:
        ds = ds.batch(batch_size)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE)


def decode_strings(values: Any) -> Any:
    """``tf.string`` values as numpy gives them (bytes) back to ``str``, for ``string`` features."""
    if isinstance(values, bytes):
        return values.decode("utf-8")
    return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(values)
