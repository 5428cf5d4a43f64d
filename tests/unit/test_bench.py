"""The benchmark's bookkeeping without Spark: ratios, and the opt-in REST style."""

import pandas as pd
import pytest

from lab_utils.bench import inference as bench


def test_summarize_gives_ratios_to_the_baseline_and_to_the_iterator_udf():
    table = bench.summarize(pd.DataFrame([
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
    assert "rest" not in bench.STYLES and "rest" in bench.EXTRA_STYLES
    with pytest.raises(SystemExit):
        bench.main(["--styles", "iterator,resst"])
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
