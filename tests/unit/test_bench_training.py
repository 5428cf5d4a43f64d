"""The training benchmark's bookkeeping without Spark: medians of the runs, the dealing of
groups to plain processes."""

from __future__ import annotations

import pandas as pd
import pytest

from lab_utils.bench import training_suite as bench


def test_groups_are_dealt_biggest_first_to_the_least_loaded_process():
    sizes = pd.Series({"a": 10, "b": 70, "c": 30, "d": 40, "e": 20})
    shares = bench.deal_groups(sizes, 2)
    assert shares == [["b", "e"], ["d", "c", "a"]]
    assert sorted(g for share in shares for g in share) == list("abcde")
    assert bench.deal_groups(sizes.iloc[:1], 3) == [["a"], [], []]


def _runs(seq, spark):
    rows = []
    for run, (s, p) in enumerate(zip(seq, spark, strict=True)):
        base = {"workload": "w", "phase": "train", "groups": 10, "rows": 100, "run": run,
                "task_slots": 2, "failed": 0, "imbalance": 1.0, "warmup_s": 1.0, "cpu": "x"}
        rows += [{**base, "style": "sequential", "seconds": s, "tasks": 1},
                 {**base, "style": "spark", "seconds": p, "tasks": 8}]
    table = pd.DataFrame(rows)
    table["ratio_to_sequential"] = table["run"].map(dict(enumerate(seq))) / table["seconds"]
    return table


def test_the_summary_is_the_median_of_the_runs_with_their_range():
    summary = bench.summarize(_runs([20.0, 24.0, 22.0], [10.0, 16.0, 12.0])).set_index("style")
    spark = summary.loc["spark"]
    assert spark["runs"] == 3 and spark["tasks"] == 8
    assert spark["seconds"] == 12.0 and (spark["seconds_min"], spark["seconds_max"]) == (10, 16)
    # The ratio is taken within each run (sequential and Spark side by side), then the median.
    assert spark["ratio_to_sequential"] == pytest.approx(22 / 12)
    assert (spark["ratio_min"], spark["ratio_max"]) == pytest.approx((1.5, 2.0))
    assert spark["ideal"] == 2.0
    assert spark["parallel_efficiency"] == pytest.approx(22 / 12 / 2)
    assert summary.loc["sequential", "ratio_to_sequential"] == 1.0
    assert "parallel_efficiency" in bench.report(summary.reset_index())
