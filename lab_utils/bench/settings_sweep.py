"""``make bench BENCH_ARGS=--sweep``: the CNN's iterator UDF with one setting changed at a
time against the lab's defaults (TensorFlow's thread pools, Arrow batch size, ``model(x)``
against ``model.predict``), each variant in a fresh application."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lab_utils import config as lab_config
from lab_utils import envfile
from lab_utils.bench.cases import BenchModel, list_files, prepare_models
from lab_utils.bench.references import run_baseline
from lab_utils.bench.styles import run_style
from lab_utils.common import tensorflow as tf_setup

#: One setting changed at a time against the lab's defaults: (name, Spark conf, predict variant).
SWEEP: tuple[tuple[str, dict[str, str], str], ...] = (
    ("lab defaults (TF threads = task cores = 1, Arrow 1024, model(x))", {}, "call"),
    ("TF pools left machine-sized in every worker", {"spark.executorEnv.LAB_TF_THREADS": "tf"},
     "call"),
    ("TF intra-op threads = 2 per task", {"spark.executorEnv.LAB_TF_THREADS": "2"}, "call"),
    ("one task per executor, spark.task.cpus = 2",
     {"spark.task.cpus": "2", "spark.executor.cores": "2"}, "call"),
    ("Arrow maxRecordsPerBatch = 64", {"spark.sql.execution.arrow.maxRecordsPerBatch": "64"},
     "call"),
    ("Arrow maxRecordsPerBatch = 10000 (Spark's default)",
     {"spark.sql.execution.arrow.maxRecordsPerBatch": "10000"}, "call"),
    ("model.predict(x) instead of model(x)", {}, "predict"),
)


def _predict_method_fn(model_file: str) -> tf_setup.MakePredictFn:
    def make() -> tf_setup.PredictFn:
        tf_setup.configure_tensorflow()
        import keras

        model = keras.saving.load_model(model_file, compile=False)
        return lambda x: model.predict(x.astype(np.float32), verbose=0)

    return make


def sweep(*, n: int = 3000, out_dir: Path | None = None,
          progress: Callable[[str], None] = print) -> pd.DataFrame:
    """The CNN's iterator UDF at N images, one setting changed at a time, each variant in a
    fresh application (TensorFlow's pools are fixed once a Python worker has used them)."""
    from lab_utils.session import get_spark

    cfg = lab_config.load()
    out_dir = out_dir or cfg.share_dir / "output" / "bench" / f"sweep-{time.strftime('%H%M%S')}"
    model = prepare_models(cfg, ("cnn",), n)[0]
    files = list_files(model.data_dir, n)
    base = run_baseline(model, files, cfg.app_cores_max, 256)
    rows = []
    for i, (name, conf, variant) in enumerate(SWEEP, start=1):
        progress(f"[{i}/{len(SWEEP)}] {name}")
        # Classic whatever LAB_SPARK_API says: each variant changes settings fixed when an
        # application starts, which a Spark Connect session cannot set on its server.
        spark = get_spark(f"benchmark sweep: {name}", conf=conf, quiet=True,
                          env={**envfile.read(cfg.root / ".env"), **os.environ,
                               "LAB_SPARK_API": "classic"})
        try:
            chosen = model if variant == "call" else BenchModel(
                model.name, model.spec, _predict_method_fn(str(model.spec.model_file)),
                model.data_dir, model.baseline_kind)
            result = run_style(spark, "iterator", chosen, files, batch=256,
                               partitions=max(spark.sparkContext.defaultParallelism, 2),
                               rss_dir=out_dir / "rss" / f"variant-{i}")
            rows.append({"setting": name, **result, **{k: v for k, v in conf.items()}})
        finally:
            spark.stop()
    table = pd.DataFrame(rows)
    table["rows_per_s"] = table["rows"] / table["seconds"]
    table["ratio_to_baseline"] = table["rows_per_s"] / (base["rows"] / base["seconds"])
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "sweep.csv", index=False)
    return table
