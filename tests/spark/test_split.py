"""``common.split.held_out_column`` marks in Spark exactly the keys Python holds out."""

from __future__ import annotations

from lab_utils.common import split
from lab_utils.data import speech


def test_spark_and_python_hold_out_the_same_keys(local_spark):
    keys = [f"C{i:05d}" for i in range(2000)]
    df = local_spark.createDataFrame([(k,) for k in keys], "customer_id string")
    spark_side = {r["customer_id"] for r in
                  df.where(split.held_out_column("customer_id")).collect()}
    assert spark_side == {k for k in keys if split.is_held_out(k)}
    assert 300 < len(spark_side) < 500


def test_audio_column_keeps_noisy_copies_with_their_clip(local_spark):
    paths = [f"file:/data/{w}/{w}_en-us_s{s}_p{p}{n}.wav" for w in ("yes", "no", "up")
             for s in (130, 160, 190) for p in (35, 50, 70) for n in ("", "_n1", "_n2")]
    df = local_spark.createDataFrame([(p,) for p in paths], "path string")
    marked = {r["path"]: r["h"] for r in df.select("path", speech.holdout_column().alias("h"))
              .collect()}
    assert marked == {p: speech.holdout(p) for p in paths}
    assert 0 < sum(marked.values()) < len(paths)
