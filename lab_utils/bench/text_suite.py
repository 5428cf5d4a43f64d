"""``--suites text``: notebook 10's sentence encoder (all-MiniLM-L6-v2) on Spark against one
plain Python process and the all-cores ideal.

The texts are docstring entries of PySpark (``lab_utils.data.docstrings``, ``Class.method:
summary``, as notebook 10 embeds them), a fixed seeded sample of ``n``. Measured, each on its
own and side by side in one run:

* ``predict_batch_udf`` and ``iterator`` (an iterator pandas UDF): the page's two forms, each
  on the same cached input of one partition per core, after a warm-up query that loads the
  model in every Python worker, timed on Spark's ``noop`` sink (every row evaluated);
* ``baseline``: the same encoder (``lab_utils.inference.text.embed_texts``: the same
  tokenizer, sorted batches and model calls) in one Python process of its own with TensorFlow
  given the application's cores, model loaded and warmed up before timing;
* ``single_thread``: that process with one TensorFlow thread; times the cores it is the
  all-cores ideal (``ideal_rows_per_s``), the throughput no engine on these cores can beat
  without a faster model.

Run ``python -m lab_utils.bench.text_suite --one-process`` to time the reference alone (it reads
``{"model_dir", "texts", "threads", "batch"}`` as JSON on stdin).
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator  # at module level: pandas UDF hints resolve from globals
from typing import TYPE_CHECKING, Any

import pandas as pd

from lab_utils.bench.cases import BenchError, warmup_rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STYLES = ("predict_batch_udf", "iterator")
#: Texts per model call and per ``predict_batch_udf`` call, as notebook 10 uses them.
BATCH = 32
UDF_BATCH = 256


@functools.lru_cache(maxsize=4)
def library_texts(library: str) -> tuple[str, ...]:
    """Every distinct entry of ``library``'s docstrings as notebook 10 embeds it, sorted
    (parsed here, on the driver: a few seconds for PySpark's files; once per process)."""
    from lab_utils.data import docstrings

    seen: dict[str, str] = {}
    for lib, rel in docstrings.source_files([library]):
        for entry in docstrings.docstrings_in_file(lib, rel):
            seen.setdefault(entry["summary"],
                            f"{docstrings.short_name(entry['qualname'])}: {entry['summary']}")
    return tuple(sorted(seen.values()))


def sample_texts(n: int, *, seed: int = 0, library: str = "pyspark") -> list[str]:
    """``n`` entries of :func:`library_texts`, drawn with ``seed``."""
    texts = library_texts(library)
    if len(texts) < n:
        raise BenchError(f"{library} has {len(texts)} distinct docstring entries, {n} asked: "
                         f"ask for fewer (--text-n)")
    return random.Random(seed).sample(texts, n)


def one_process(args: dict[str, Any]) -> dict[str, float]:
    """The reference: load, warm up, then time the same texts as the Spark styles."""
    from lab_utils.inference import text

    t0 = time.perf_counter()
    text.embed_texts(args["texts"][:args["batch"]], args["model_dir"], threads=args["threads"])
    load_s = time.perf_counter() - t0
    text.embed_texts(args["texts"][:UDF_BATCH], args["model_dir"], batch_size=args["batch"],
                     threads=args["threads"])  # warm-up: one graph for every batch shape
    t0 = time.perf_counter()
    out = text.embed_texts(args["texts"], args["model_dir"], batch_size=args["batch"],
                           threads=args["threads"])
    seconds = time.perf_counter() - t0
    return {"load_s": load_s, "seconds": seconds, "rows": int(out.shape[0])}


def run_reference(model_dir: str, texts: list[str], threads: int) -> dict[str, float]:
    """:func:`one_process` in a process of its own (its own TensorFlow threads and memory)."""
    args = {"model_dir": model_dir, "texts": texts, "threads": threads, "batch": BATCH}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "lab_utils.bench.text_suite", "--one-process"],
                          input=json.dumps(args), capture_output=True, text=True, env=env,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"the one-process text encoder failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _udf(style: str, model_dir: str) -> Any:
    import numpy as np
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    from lab_utils.inference import text

    if style == "predict_batch_udf":
        return predict_batch_udf(text.make_predict_fn(model_dir, batch_size=BATCH),
                                 return_type=ArrayType(FloatType()), batch_size=UDF_BATCH)

    @F.pandas_udf(ArrayType(FloatType()))  # type: ignore[call-overload]
    def embed_iter(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        encoder = text.cached_encoder(model_dir)
        for texts in batches:
            vectors: np.ndarray = encoder.encode(texts.tolist(), batch_size=BATCH)
            yield pd.Series(list(vectors))

    return embed_iter


def run(spark: SparkSession, n: int = 2000) -> pd.DataFrame:
    """One row per style and reference: rows, seconds, rows/s, ratios to the baseline and to
    the all-cores ideal."""
    from lab_utils.common.connect import task_slots
    from lab_utils.inference import text

    cores = task_slots(spark)
    model_dir = str(text.unpack_model())
    texts = sample_texts(n)
    df = spark.createDataFrame(pd.DataFrame({"text": texts})).repartition(cores).cache()
    df.count()
    rows = []
    for style in STYLES:
        udf = _udf(style, model_dir)
        t0 = time.perf_counter()
        (df.limit(warmup_rows(cores, UDF_BATCH)).repartition(cores).select(udf("text"))
         .write.format("noop").mode("overwrite").save())
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        df.select(udf("text")).write.format("noop").mode("overwrite").save()
        rows.append({"style": style, "rows": n, "seconds": time.perf_counter() - t0,
                     "warmup_s": warmup_s})
    df.unpersist()
    base = run_reference(model_dir, texts, cores)
    single = run_reference(model_dir, texts, 1)
    rows.append({"style": "baseline", "rows": base["rows"], "seconds": base["seconds"],
                 "warmup_s": base["load_s"]})
    rows.append({"style": "single_thread", "rows": single["rows"], "seconds": single["seconds"],
                 "warmup_s": single["load_s"]})
    table = pd.DataFrame(rows)
    table["rows_per_s"] = table["rows"] / table["seconds"]
    base_rate = float(table.loc[table["style"] == "baseline", "rows_per_s"].iloc[0])
    ideal = float(table.loc[table["style"] == "single_thread", "rows_per_s"].iloc[0]) * cores
    table["ratio_to_baseline"] = table["rows_per_s"] / base_rate
    table["ratio_to_ideal"] = table["rows_per_s"] / ideal
    table.attrs.update(cores=cores, ideal_rows_per_s=ideal, n=n)
    return table


def report(table: pd.DataFrame) -> str:
    head = (f"Text encoder (all-MiniLM-L6-v2), {table.attrs['n']} docstring texts, "
            f"{table.attrs['cores']} cores; all-cores ideal "
            f"{table.attrs['ideal_rows_per_s']:,.0f} texts/s")
    body = table[["style", "rows", "warmup_s", "seconds", "rows_per_s", "ratio_to_baseline",
                  "ratio_to_ideal"]].to_string(index=False, float_format="%.2f".__mod__)
    return f"{head}\n{body}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--one-process"]:
        print(json.dumps(one_process(json.loads(sys.stdin.read()))))
        return 0
    print("usage: python -m lab_utils.bench.text_suite --one-process  (JSON on stdin); "
          "the suite itself: python -m lab_utils.bench --suites text", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
