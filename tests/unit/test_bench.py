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
