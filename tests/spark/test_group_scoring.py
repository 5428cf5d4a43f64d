"""Scoring with per-group models on ``local[2]``: the sha256 check runs where models load."""

from __future__ import annotations

import joblib
import pandas as pd

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
