"""The benchmark's bookkeeping without Spark: ratios, and the opt-in REST style."""

import pandas as pd
import pytest

from lab_utils.bench import cases, inference_suite, references, report


def test_summarize_gives_ratios_to_the_baseline_and_to_the_iterator_udf():
    table = report.summarize(pd.DataFrame([
        {"model": "cnn", "n": 100, "style": "baseline_naive", "rows": 100, "seconds": 1.0},
        {"model": "cnn", "n": 100, "style": "baseline_pipelined", "rows": 100, "seconds": 1.25},
        {"model": "cnn", "n": 100, "style": "transfer_only", "rows": 100, "seconds": 0.5},
        {"model": "cnn", "n": 100, "style": "iterator", "rows": 100, "seconds": 2.0},
        {"model": "cnn", "n": 100, "style": "rest", "rows": 100, "seconds": 8.0},
    ])).set_index("style")
    # The baseline is the faster single-process loop (here the naive one, 100 rows/s).
    assert table.loc["iterator", "ratio_to_baseline"] == pytest.approx(0.5)
    assert table.loc["baseline_pipelined", "ratio_to_baseline"] == pytest.approx(0.8)
    assert table.loc["rest", "ratio_to_iterator"] == pytest.approx(0.25)
    assert table.loc["rest", "ratio_to_baseline"] == pytest.approx(0.125)


def test_rest_is_opt_in_and_unknown_styles_are_named(capsys):
    assert "rest" not in cases.STYLES and "rest" in cases.EXTRA_STYLES
    with pytest.raises(SystemExit):
        inference_suite.main(["--styles", "iterator,resst"])
    assert "unknown styles ['resst']" in capsys.readouterr().err


def test_the_baselines_two_loops_score_every_row_in_order():
    import io

    import numpy as np
    from PIL import Image

    from lab_utils.bench import baseline

    def png(value):
        buf = io.BytesIO()
        Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    contents = [png(v) for v in range(0, 250, 10)]  # 25 images
    seen = []

    def predict(x):
        seen.append(x.shape[0])
        return x.reshape(len(x), -1)[:, 0]

    loops = baseline.Loops(predict, (4, 4), threads=2)
    try:
        chunks = [contents[i:i + 8] for i in range(0, 25, 8)]
        assert loops.parallel(chunks) == loops.naive(chunks) == 25
        assert seen == [8, 8, 8, 1] * 2
        first = loops.decode_parallel(contents[:3])
        assert first.shape[:3] == (3, 4, 4)
        assert np.array_equal(first, loops.decode_serial(contents[:3]))
    finally:
        loops.close()


def _table(rows):
    base = {"model": "cnn", "n": 100, "spark_cores": 2}
    return report.summarize(pd.DataFrame([{**base, **r} for r in rows])).set_index("style")


def test_the_all_cores_ideal_is_the_single_threaded_rate_times_the_cores():
    from lab_utils.bench.baseline import ideal_rows_per_s

    assert ideal_rows_per_s(300, 1.5, 2) == pytest.approx(400.0)
    table = _table([
        {"style": "baseline_naive", "rows": 100, "seconds": 0.5},
        {"style": "single_thread", "rows": 100, "seconds": 0.4},      # 250/s, x2 cores = 500/s
        {"style": "iterator", "rows": 100, "seconds": 0.25},           # 400/s
        {"style": "predict_batch_udf", "rows": 100, "seconds": 0.5},   # 200/s
        {"style": "ray_data", "rows": 90, "seconds": 0.3},             # 300/s
        {"style": "daft", "rows": 100, "seconds": 0.2},                # 500/s
    ])
    assert list(table["ideal_rows_per_s"]) == pytest.approx([500.0] * 6)
    assert table.loc["iterator", "efficiency"] == pytest.approx(0.8)
    assert table.loc["single_thread", "efficiency"] == pytest.approx(0.5)
    assert table.loc["daft", "efficiency"] == pytest.approx(1.0)
    # Best Spark style: the faster batched style; peers and baselines do not compete for it.
    assert (table["best_spark_style"] == "iterator").all()
    assert table.loc["ray_data", "ratio_to_best_spark"] == pytest.approx(0.75)
    assert table.loc["ray_data", "ratio_to_baseline"] == pytest.approx(1.5)
    assert table.loc["predict_batch_udf", "ratio_to_best_spark"] == pytest.approx(0.5)


def test_without_a_single_threaded_run_the_ideal_is_unknown_not_wrong():
    table = _table([{"style": "baseline_naive", "rows": 100, "seconds": 0.5},
                    {"style": "iterator", "rows": 100, "seconds": 0.25}])
    assert table["ideal_rows_per_s"].isna().all() and table["efficiency"].isna().all()


def test_report_and_side_by_side_show_peers_baselines_and_efficiency():
    table = _table([
        {"style": "baseline_naive", "rows": 100, "seconds": 0.5, "warmup_s": 1.0,
         "worker_peak_rss_mb": 700.0},
        {"style": "baseline_pipelined", "rows": 100, "seconds": 0.6, "warmup_s": 1.0,
         "worker_peak_rss_mb": 700.0},
        {"style": "single_thread", "rows": 100, "seconds": 0.4, "warmup_s": 1.0,
         "worker_peak_rss_mb": 600.0},
        {"style": "iterator", "rows": 100, "seconds": 0.25, "warmup_s": 2.0,
         "worker_peak_rss_mb": 800.0},
        {"style": "ray_data", "rows": 90, "seconds": 0.3, "warmup_s": 3.0,
         "worker_peak_rss_mb": 900.0},
        {"style": "daft", "rows": 100, "seconds": 0.2, "warmup_s": 3.0,
         "worker_peak_rss_mb": 950.0, "rows_out": 100, "query_s": 4.0},
    ]).reset_index()
    by_style = table.set_index("style")
    # A peer's query end to end includes starting its instances; Spark's is its timed run.
    assert by_style.loc["daft", "query_rows_per_s"] == pytest.approx(25.0)
    assert by_style.loc["iterator", "query_rows_per_s"] == pytest.approx(400.0)
    text = report.report(table)
    for column in ("efficiency", "ratio_to_best_spark", "ratio_to_baseline"):
        assert column in text.splitlines()[0]
    lines = report.side_by_side(table).splitlines()
    assert lines[0].startswith("cnn, N=100: all-cores ideal 500 images/s (2 cores")
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["baseline_pipelined", "baseline_naive", "single_thread", "iterator",
                     "ray_data", "daft"]
    assert "(best Spark)" in lines[4] and "efficiency 0.80" in lines[4]
    assert "x0.75 best Spark" in lines[5] and "950 MB" in lines[6]
    assert "one query end to end 25 images/s" in lines[6]


def test_a_peers_steady_state_opens_when_its_last_instance_is_ready(tmp_path):
    from lab_utils.bench import peers

    (tmp_path / "11").write_text("ready 10.0 500.0\nbatch 10.5 256 10.8 510.0\n"
                                 "batch 11.0 256 11.3 520.0\n")
    (tmp_path / "12").write_text("ready 10.4 480.0\nbatch 10.45 256 10.7 490.0\n"
                                 "batch 10.9 232 12.0 495.0\n")
    result = peers.window_result(peers.read_marks(tmp_path), began=8.0, ended=12.4,
                                 rows_out=1000)
    # Opens at 10.4 (the later ready); the batch that started at 10.0-10.4 is not counted.
    assert result["window"] == "all ready"
    assert result["warmup_s"] == pytest.approx(2.4)
    assert result["seconds"] == pytest.approx(2.0)
    assert result["rows"] == 256 + 256 + 256 + 232
    assert result["wall_s"] == pytest.approx(4.4)
    assert result["tail_s"] == pytest.approx(0.4)  # last batch ended at 12.0
    assert result["worker_peak_rss_mb"] == pytest.approx(520.0)
    assert result["python_workers"] == 2 and result["model_loads"] == 2


def test_with_small_n_a_peers_window_opens_at_its_first_ready_instance(tmp_path):
    from lab_utils.bench import peers

    # One instance did all the work before the other was ready.
    (tmp_path / "11").write_text("ready 10.0 500.0\nbatch 10.1 200 10.2 510.0\n")
    (tmp_path / "12").write_text("ready 10.3 480.0\n")
    result = peers.window_result(peers.read_marks(tmp_path), began=9.0, ended=10.5,
                                 rows_out=200)
    assert result["window"] == "first ready"
    assert result["rows"] == 200
    assert result["seconds"] == pytest.approx(0.5)
    assert result["warmup_s"] == pytest.approx(1.0)


def test_a_peer_scorer_decodes_and_predicts_like_the_spark_styles(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from lab_utils.bench import peers

    def png(value):
        buf = io.BytesIO()
        Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    def load(kind, model_file, threads):
        assert threads == 1  # one TensorFlow thread per instance, as a 1-core Spark task
        return lambda x: np.tile([[0.25, 0.75]], (len(x), 1))

    scorer = peers.Scorer("keras", "m.keras", ["a", "b"], [4, 4], 8, str(tmp_path), load=load)
    scores = scorer.score([f"f{i}" for i in range(5)], [png(v) for v in range(0, 50, 10)])
    assert scores.dtype == np.float32 and list(scores) == [0.75] * 5
    marks = peers.read_marks(tmp_path)
    (record,) = marks.values()
    assert len(record["ready"]) == 1 and [r for _, r, _ in record["batches"]] == [5]


def test_peers_are_opt_in_and_unknown_engines_are_named(capsys):
    assert set(cases.PEERS) == {"ray", "daft"}
    with pytest.raises(SystemExit):
        inference_suite.main(["--peers", "--peer-engines", "ray,dask"])
    assert "unknown peer engines ['dask']" in capsys.readouterr().err


def test_the_peer_engines_are_importable_when_the_group_is_installed():
    pytest.importorskip("ray")
    pytest.importorskip("daft")
    references.check_peers(cases.PEERS)  # no SystemExit


def test_the_rest_profiles_timers_measure_time_and_this_processs_cpu():
    import os
    import time

    from lab_utils.bench import rest_profile

    calls = []
    sleeps = iter([0.05, 0.01, 0.03])
    shortest = rest_profile.best(lambda: calls.append(time.sleep(next(sleeps))), 3)
    assert len(calls) == 3 and 0.01 <= shortest < 0.03  # the shortest pass, not the mean
    before = rest_profile.cpu_seconds(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn 0.3 s of this process's CPU
        pass
    assert 0.2 <= rest_profile.cpu_seconds(os.getpid()) - before <= 1.0


@pytest.mark.parametrize(("style", "in_flight", "payload"), [
    ("rest", 1, "auto"), ("rest_pixels", 1, "pixels"),
    ("rest_in_flight", cases.REST_IN_FLIGHT, "auto")])
def test_rest_styles_ask_rest_udf_for_their_requests_in_flight(monkeypatch, style, in_flight,
                                                               payload):
    from types import SimpleNamespace

    from lab_utils.bench import styles
    from lab_utils.inference import rest_udf

    asked = {}

    def fake_rest_udf(spec, url, *, client, payload):
        asked.update(spec=spec, url=url, client=client, payload=payload)
        return lambda *columns: columns

    monkeypatch.setattr(rest_udf, "rest_udf", fake_rest_udf)
    model = SimpleNamespace(spec="the-spec")
    styles.style_builder(style, model, make=None, batch=8, rest_url="http://x")  # type: ignore[arg-type]
    assert asked["client"].in_flight == in_flight > 0
    assert asked["client"].batch_size == cases.REST_BATCH
    assert (asked["spec"], asked["url"], asked["payload"]) == ("the-spec", "http://x", payload)
    assert cases.REST_IN_FLIGHT > 1
