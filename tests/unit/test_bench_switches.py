"""The benchmark's Spark 4 instruments without Spark: the Arrow style's scorer, the
``--switches`` bookkeeping, the equal warm-up, the UDF profiler's top functions and the Python
operators' SQL metrics."""

from __future__ import annotations

import cProfile
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lab_utils.bench import cases, inference_suite, peers, report, styles
from lab_utils.inference import score_arrow, score_images


def _png(level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (level, level, level)).save(buf, format="PNG")
    return buf.getvalue()


def _brightness(pixels):
    light = pixels.reshape(len(pixels), -1).mean(axis=1) / 255
    return np.stack([1 - light, light], axis=1)


def test_the_arrow_scorer_gives_score_images_rows_as_one_struct_array():
    import pyarrow as pa

    contents = [_png(v) for v in (0, 60, 200, 255)] + [b"", b"junk"]
    paths = [f"{i}.png" for i in range(len(contents))]
    got = score_arrow(paths, contents, _brightness, ("dark", "light"), (4, 4), batch_size=3)
    assert isinstance(got, pa.StructArray) and len(got) == 6
    expected = score_images(paths, contents, _brightness, ("dark", "light"), (4, 4),
                            batch_size=3)
    rows = got.to_pylist()
    assert [r["prediction"] for r in rows] == list(expected["prediction"])
    assert [r["error"] for r in rows] == list(expected["error"])
    assert np.allclose([np.nan if r["confidence"] is None else r["confidence"] for r in rows],
                       expected["confidence"].to_numpy(), equal_nan=True)


def test_the_arrow_scorer_turns_a_non_probability_into_a_rows_error():
    def bad(pixels):
        out = _brightness(pixels)
        out[0] = np.nan
        return out

    rows = score_arrow(["a", "b"], [_png(0), _png(255)], bad, ("dark", "light"),
                       (4, 4)).to_pylist()
    assert rows[0]["prediction"] is None and "nan" in rows[0]["error"].lower()
    assert rows[1] == {"prediction": "light", "confidence": 1.0, "error": None}


def test_every_switch_names_a_spark_43_setting_and_says_when_it_is_fixed():
    assert set(cases.SWITCHES) == {"pipelined", "zstd", "lz4", "max_bytes"}
    pipelined, at_start = cases.SWITCHES["pipelined"]
    assert at_start and pipelined["spark.python.udf.pipelined.enabled"] == "true"
    for name in ("zstd", "lz4", "max_bytes"):
        conf, fixed = cases.SWITCHES[name]
        assert not fixed and all(k.startswith("spark.sql.execution.arrow.") for k in conf)
    assert cases.switch_style("arrow_udf", "lz4") == "arrow_udf+lz4"
    assert cases.base_style("arrow_udf+lz4") == "arrow_udf"


def test_make_bench_runs_the_arrow_style_and_notebook_02s_set_is_unchanged():
    assert "arrow_udf" in cases.BENCH_STYLES and "arrow_udf" not in cases.STYLES
    assert set(cases.BENCH_STYLES) - set(cases.STYLES) == {"arrow_udf"}


def test_an_unknown_switch_is_named_before_a_session_starts(capsys):
    with pytest.raises(SystemExit):
        inference_suite.main(["--suites", "inference", "--switches", "pipelined,gzip"])
    assert "unknown switches ['gzip']" in capsys.readouterr().err


class _Conf:
    def __init__(self, values):
        self.values = dict(values)

    def get(self, key, default=None):
        return self.values.get(key, default)

    def set(self, key, value):
        self.values[key] = value

    def unset(self, key):
        self.values.pop(key, None)


class _Session:
    def __init__(self, values):
        self.conf = _Conf(values)


def test_a_runtime_switch_is_on_for_its_run_only_and_the_old_values_come_back():
    spark = _Session({"spark.sql.execution.arrow.compression.codec": "none"})
    conf = {"spark.sql.execution.arrow.compression.codec": "zstd",
            "spark.sql.execution.arrow.maxBytesPerBatch": "1048576"}
    with pytest.raises(RuntimeError), styles.session_conf(spark, conf):
        assert spark.conf.values == conf
        raise RuntimeError("the style failed")
    assert spark.conf.values == {"spark.sql.execution.arrow.compression.codec": "none"}


def test_spark_and_the_peers_warm_up_on_the_same_rows(monkeypatch, tmp_path):
    """One full batch per core for both: the peers' warm-up query gets warmup_rows files."""
    prepared = []

    class Engine:
        def __init__(self, args):
            self.settings = {}

        def prepare(self, files):
            prepared.append(len(files))
            return files

        def score(self, data):
            (tmp_path / "marks" / "1").write_text(f"ready 1.0 100\nbatch 1.0 {len(data)} 2.0 100\n")
            return len(data), 2.5

        def close(self):
            pass

    monkeypatch.setattr(peers, "DaftEngine", Engine)
    args = {"engine": "daft", "cores": 2, "batch": 16, "files": [f"f{i}" for i in range(100)],
            "sizes": [60], "marks": str(tmp_path / "marks")}
    peers.run(args, out=io.StringIO())
    assert prepared == [cases.warmup_rows(2, 16), 60] == [32, 60]


def test_the_profilers_top_functions_are_read_from_its_dump(tmp_path):
    def hot():  # all its time is its own: no call inside the loop
        total = 0
        for i in range(300_000):
            total += i * i
        return total

    profiler = cProfile.Profile()
    profiler.runcall(hot)
    profiler.dump_stats(str(tmp_path / "udf_7_perf.pstats"))
    top = styles.top_functions(tmp_path, limit=3)
    assert 1 <= len(top) <= 3
    assert [t["own_s"] for t in top] == sorted((t["own_s"] for t in top), reverse=True)
    assert top[0]["own_s"] > 0 and "(hot)" in top[0]["function"]
    assert top[0]["calls"] == 1
    assert styles.top_functions(tmp_path / "none") == []


def test_python_metrics_come_from_the_timed_runs_python_operator_only():
    old = {"id": 1, "nodes": [{"nodeName": "ArrowEvalPython", "metrics": [
        {"name": "time to execute Python code", "value": "1 s"}]}]}
    new = {"id": 2, "status": "COMPLETED", "nodes": [
        {"nodeName": "InMemoryTableScan", "metrics": [{"name": "number of output rows",
                                                       "value": "3000"}]},
        {"nodeName": "ArrowEvalPython", "metrics": [
            {"name": "time to execute Python code", "value": "420 ms"},
            {"name": "time to initialize Python workers", "value": "80 ms"}]}]}
    got = styles.python_metrics([old], [old, new])
    assert got == {"ArrowEvalPython: time to execute Python code": "420 ms",
                   "ArrowEvalPython: time to initialize Python workers": "80 ms"}
    assert styles.python_metrics(None, [old, new]) == {}
    json.dumps(got)  # stored in results.json


def test_switch_rows_compete_for_best_spark_and_are_shown_against_the_run_without():
    base = {"model": "cnn", "n": 100, "spark_cores": 2}
    table = report.summarize(pd.DataFrame([{**base, **r} for r in [
        {"style": "baseline_naive", "rows": 100, "seconds": 0.5},
        {"style": "iterator", "rows": 100, "seconds": 0.5},
        {"style": "iterator+pipelined", "switch": "pipelined", "rows": 100, "seconds": 0.25},
        {"style": "iterator+zstd", "switch": "zstd", "rows": 100, "seconds": 1.0},
    ]]))
    assert set(table["best_spark_style"]) == {"iterator+pipelined"}
    text = report.switches_side_by_side(table)
    assert text == ("cnn N=100 iterator: off 200 images/s; pipelined 400 (x2.00); "
                    "zstd 100 (x0.50)")
    assert report.switches_side_by_side(table[~table["style"].str.contains("+", regex=False)]
                                        ) == ""
