"""A notebook's UDFs run from the thin Spark Connect client alone (``pyspark-client``).

Run by tests/cluster/test_thin_client.py with the Python of a venv built from
``requirements.txt`` (no JVM, no full pyspark, no lab_utils), from this file: under
``python -c`` the thin client's import looks for SPARK_HOME.

    python thin_client_job.py sc://localhost:PORT IMAGE_FOLDER OUT_JSON

The token comes from ``SPARK_CONNECT_AUTHENTICATE_TOKEN``. The UDFs are notebook 01's shapes
(iterator pandas UDF, ``predict_batch_udf``) with ``lab_utils`` imported on the workers only,
where the lab's venv has it; the model is a function of the pixels (dark or light by the mean
grey level) so the test can compute every answer without Spark. Writes what it saw as JSON.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ("dark", "light")
SIZE = (4, 4)
RESULT = "prediction string, confidence float, error string"


def client_facts() -> dict[str, object]:
    """What this interpreter has: the thin client, and none of the JVM side or the lab."""
    import pyspark

    package = Path(pyspark.__file__).parent
    return {
        "python": sys.executable,
        "pyspark_version": pyspark.__version__,
        "distributions": sorted(d.metadata["Name"].lower()
                                for d in importlib.metadata.distributions()),
        "has_jars": (package / "jars").exists(),
        "has_bin": (package / "bin").exists(),
        "py4j": importlib.util.find_spec("py4j") is not None,
        "lab_utils": importlib.util.find_spec("lab_utils") is not None,
        "spark_home": os.environ.get("SPARK_HOME"),
    }


def brightness(pixels: np.ndarray) -> np.ndarray:
    """The "model": probabilities (dark, light) from the mean grey level of each image."""
    light = pixels.reshape(len(pixels), -1).mean(axis=1) / 255
    return np.stack([1 - light, light], axis=1)


def make_model():
    return brightness


def main(url: str, folder: str, out: str) -> None:
    began = time.perf_counter()
    facts = client_facts()
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import FloatType, StringType, StructField, StructType

    spark = SparkSession.builder.remote(url).getOrCreate()
    session_s = time.perf_counter() - began

    @pandas_udf(RESULT)
    def predict_batches(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        from lab_utils import inference  # on the worker: the lab's venv has it, this one not

        predict = inference.cached_predict_fn(("thin-client", "brightness"), make_model)
        for paths, contents in batches:
            yield inference.score_images(paths, contents, predict, CLASSES, SIZE, batch_size=2)

    def make_predict_fn():
        from lab_utils import inference

        def predict_columns(paths: np.ndarray, contents: np.ndarray) -> dict[str, np.ndarray]:
            frame = inference.score_images(paths, contents, brightness, CLASSES, SIZE,
                                           batch_size=2)
            return {name: frame[name].to_numpy() for name in result_type.names}

        return predict_columns

    result_type = StructType([StructField("prediction", StringType()),
                              StructField("confidence", FloatType()),
                              StructField("error", StringType())])
    predict_batch = predict_batch_udf(make_predict_fn, return_type=result_type, batch_size=2)

    @pandas_udf("lab_utils string, pyspark string, python string")
    def worker_facts(ids: pd.Series) -> pd.DataFrame:
        import pyspark

        import lab_utils

        return pd.DataFrame({"lab_utils": [lab_utils.__file__] * len(ids),
                             "pyspark": [pyspark.__version__] * len(ids),
                             "python": [sys.executable] * len(ids)})

    # Spark's binaryFile source lists no empty file: an upload that never arrived is no row.
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
             .load(folder).select("path", "content"))
    steps = {"session": session_s}
    results = {}
    for name, udf in {"iterator UDF": predict_batches, "predict_batch_udf": predict_batch}.items():
        t0 = time.perf_counter()
        rows = files.select("path", udf("path", "content").alias("r")).select("path", "r.*")
        results[name] = rows.toPandas().sort_values("path").to_dict(orient="records")
        steps[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    workers = (spark.range(1).select(worker_facts("id").alias("w")).select("w.*")
               .toPandas().iloc[0].to_dict())
    steps["worker facts"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    count, total_bytes = files.agg(F.count("*"), F.sum(F.length("content"))).first()
    steps["count"] = time.perf_counter() - t0
    facts.update(server_version=spark.version, workers=workers, results=results,
                 session_s=session_s, steps=steps, total_s=time.perf_counter() - began,
                 rows=count, total_bytes=total_bytes)
    spark.stop()
    Path(out).write_text(json.dumps(facts, indent=2, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:4])
