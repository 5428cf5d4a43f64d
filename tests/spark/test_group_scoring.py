"""Scoring with per-group models on ``local[2]``: the sha256 check runs where models load."""

from __future__ import annotations

import joblib
import pandas as pd
from pyspark.sql import Observation

from lab_utils.training import groups as gt


class _RunsCode:
    """A pickle that runs code when loaded (creates a file: a harmless stand-in)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_swapped_model_file_marks_its_group_and_runs_no_code(local_spark, tmp_path):
    specs = gt.group_specs(4, mean_rows=200, skew=0.0, seed=3)
    data = pd.concat([gt.group_rows(s) for s in specs.to_dict("records")], ignore_index=True)
    run = gt.train_sequential(data, run="swap", models_dir=tmp_path)
    victim = run.registry.iloc[0]
    marker = tmp_path / "code-ran"
    joblib.dump(_RunsCode(marker), victim.model_path)  # after training, before scoring
    df = local_spark.createDataFrame(data[["group", "x", "y"]])
    scored = gt.score_groups(df, run.registry, partitions=2).toPandas()
    assert len(scored) == len(data)
    bad = scored[scored["group"] == victim.group]
    assert bad["prediction"].isna().all()
    assert bad["error"].str.contains("ModelIntegrityError: .* is not the model file its "
                                     "registry recorded").all()
    assert scored[scored["group"] != victim.group]["error"].isna().all()
    assert not marker.exists()


def test_both_scoring_plans_give_the_same_rows(local_spark, tmp_path):
    specs = gt.group_specs(12, mean_rows=300, skew=1.0, seed=4, bad_groups=True)
    data = pd.concat([gt.group_rows(s) for s in specs.to_dict("records")], ignore_index=True)
    run = gt.train_sequential(data, run="plans", models_dir=tmp_path)
    new = pd.concat([gt.group_rows(s, seed=9) for s in specs.to_dict("records")],
                    ignore_index=True)
    new["id"] = range(len(new))
    new.loc[7, "x"] = float("nan")
    stranger = pd.DataFrame({"group": ["stranger"] * 2, "x": [1.0, 2.0], "y": 0.0,
                             "id": [-1, -2]})
    df = local_spark.createDataFrame(pd.concat([new, stranger], ignore_index=True))
    got = {}
    for method in gt.SCORE_METHODS:
        # An Observation counts in both modes (classic and Spark Connect).
        loads = Observation(f"loads {method}")
        scored = gt.score_groups(df, run.registry, method=method, partitions=3, loads=loads)
        assert scored.columns == ["group", "x", "y", "id", "prediction", "error"]
        got[method] = scored.toPandas().sort_values("id").reset_index(drop=True)
        assert len(got[method]) == len(new) + 2
        # Each group lives in one task: its model is loaded once (the sorted plan runs first,
        # on files no worker has cached; the Python workers may keep them for the second).
        n = loads.get["model_loads"]
        first = method == gt.SCORE_METHODS[0]
        assert n == len(run.trained) if first else n <= len(run.trained)
    arrow, pandas = (got[m] for m in gt.SCORE_METHODS)
    pd.testing.assert_frame_equal(arrow, pandas)
    assert arrow["error"].notna().groupby(arrow["group"]).sum().to_dict() == {
        **{g: 0 for g in run.trained["group"] if g != new.loc[7, "group"]},
        new.loc[7, "group"]: 1, "bad_nan": 200, "bad_tiny": 3, "stranger": 2}
