"""The Arrow UDF style (``arrow_udf``, ``ArrowUDFType.SCALAR_ITER``) on ``local[2]``: the same
rows as the iterator pandas UDF, the same per-row errors, ``fail_fast`` naming the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lab_utils import inference
from tests.utils import fake_models


@pytest.fixture(scope="module")
def scored_input(local_spark, tmp_path_factory):
    """The fake model and a 3-partition frame of 40 PNGs of every grey level, a bad file and an
    empty one."""
    root = tmp_path_factory.mktemp("arrow-udf")
    model = fake_models.write_model(root / "model")
    images = root / "images"
    images.mkdir()
    for i, level in enumerate(np.linspace(0, 255, 40).astype(int)):
        buf = io.BytesIO()
        Image.new("RGB", (6, 6), (int(level),) * 3).save(buf, format="PNG")
        (images / f"{i:02d}.png").write_bytes(buf.getvalue())
    (images / "broken.png").write_bytes(b"not an image")
    (images / "empty.png").write_bytes(b"")
    df = inference.read_images(local_spark, images).repartition(3)
    return model, df


def _rows(df, udf):
    out = df.select("path", udf("path", "content").alias("r")).select("path", "r.*")
    return sorted(tuple(row) for row in out.collect())


def test_its_rows_equal_the_iterator_udfs(scored_input):
    model, df = scored_input
    arrow = inference.arrow_iterator_udf(model, fake_models.make_predict_fn, batch_size=7)
    pandas_iter = inference.iterator_udf(model, fake_models.make_predict_fn, batch_size=7)
    got, expected = _rows(df, arrow), _rows(df, pandas_iter)
    assert len(got) == 42
    assert got == expected
    errors = {path.rsplit("/", 1)[1]: error for path, _, _, error in got if error}
    assert set(errors) == {"broken.png", "empty.png"}
    assert sum(prediction == "light" for _, prediction, _, _ in got) == 20


def test_fail_fast_names_the_bad_file(scored_input):
    model, df = scored_input
    udf = inference.arrow_iterator_udf(model, fake_models.make_predict_fn, fail_fast=True)
    with pytest.raises(Exception, match=r"(broken|empty)\.png"):
        df.select(udf("path", "content").alias("r")).write.format("noop").mode(
            "overwrite").save()


def test_it_is_sparks_arrow_iterator_udf(scored_input):
    """Spark's own Arrow iterator kind (pyarrow arrays in and out), not a pandas one."""
    from pyspark.sql.functions import ArrowUDFType, PandasUDFType

    model, _ = scored_input
    udf = inference.arrow_iterator_udf(model, fake_models.make_predict_fn)
    assert udf.evalType == ArrowUDFType.SCALAR_ITER != PandasUDFType.SCALAR_ITER
