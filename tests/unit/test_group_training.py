"""Per-group training without a cluster: the fit, the streaming path, errors and the files."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from lab_utils.training import groups as gt


def _batches(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [frame.iloc[i:i + size] for i in range(0, len(frame), size)]


@pytest.fixture
def specs():
    return gt.group_specs(12, mean_rows=800, skew=1.0, seed=7, bad_groups=True)


def test_specs_are_deterministic_and_keep_the_seed_slopes(specs):
    again = gt.group_specs(12, mean_rows=800, skew=1.0, seed=7, bad_groups=True)
    pd.testing.assert_frame_equal(specs, again)
    seeds = specs.set_index("group").loc[["seed_a", "seed_b"]]
    assert seeds["slope"].tolist() == [2.5, 3.0] and seeds["intercept"].tolist() == [0.0, 0.0]
    assert {"bad_tiny", "bad_nan"} <= set(specs["group"])
    sizes = specs["rows"].iloc[2:12]
    assert sizes.max() > 2 * sizes.min()  # skewed
    # A group's rows depend on the group, not on which other groups exist.
    small = gt.group_specs(3, mean_rows=800, skew=1.0, seed=7)
    pd.testing.assert_frame_equal(gt.group_rows(small.iloc[0]), gt.group_rows(specs.iloc[0]))


def test_linear_fit_recovers_the_slope_and_saves_atomically(tmp_path, specs):
    spec = specs.iloc[0]
    data = gt.group_rows(spec)
    opts = gt.FitOptions(run_dir=str(tmp_path))
    row = gt.fit_group("seed_a", _batches(data, 256), opts)
    assert row["error"] is None
    assert row["n_rows"] == len(data) == row["n_train"] + row["n_holdout"]
    assert row["n_holdout"] == (len(data) + gt.HOLDOUT_EVERY - 1) // gt.HOLDOUT_EVERY
    assert abs(row["slope"] - 2.5) < 0.05 and abs(row["intercept"]) < 0.3
    assert row["r2"] > 0.9
    model = joblib.load(row["model_path"])
    assert model.predict(np.array([[2.0]]))[0] == pytest.approx(2 * row["slope"] + row["intercept"])
    assert [p.name for p in tmp_path.iterdir()] == ["seed_a.joblib"]  # no temporary file left


def test_streamed_least_squares_equals_the_in_memory_fit(tmp_path, specs):
    data = gt.group_rows(specs.iloc[1])
    (tmp_path / "m").mkdir()
    memory = gt.fit_group("seed_b", _batches(data, 300),
                          gt.FitOptions(run_dir=str(tmp_path / "m")))
    (tmp_path / "s").mkdir()
    streamed = gt.fit_group("seed_b", _batches(data, 300),
                            gt.FitOptions(run_dir=str(tmp_path / "s"), max_rows=500))
    assert streamed["error"] is None and streamed["streamed"] and not memory["streamed"]
    for k in ("slope", "intercept", "r2", "rmse"):
        assert streamed[k] == pytest.approx(memory[k], rel=1e-9, abs=1e-9), k
    assert streamed["n_rows"] == memory["n_rows"] == len(data)
    assert joblib.load(streamed["model_path"]).predict([[1.0]])[0] == pytest.approx(
        streamed["slope"] + streamed["intercept"])


def test_a_group_too_big_for_memory_is_an_error_row_not_a_crash(tmp_path, specs):
    data = gt.group_rows(specs.iloc[0])
    row = gt.fit_group("seed_a", _batches(data, 100),
                       gt.FitOptions(run_dir=str(tmp_path), kind="gbm", max_rows=250))
    assert row["error"].startswith("MemoryError: group 'seed_a' has")
    assert "max_rows=250" in row["error"] and "kind='linear'" in row["error"]
    assert row["n_rows"] == len(data)  # counted to the end, nothing silently dropped
    assert row["model_path"] is None and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("group", "message"), [
    ("bad_tiny", "has 3 rows; at least 10 are needed (min_rows)"),
    ("bad_nan", "has 20 rows with NaN/inf in ['y']: drop or impute them"),
])
def test_untrainable_groups_are_recorded_with_their_reason(tmp_path, specs, group, message):
    spec = specs.set_index("group").loc[group].to_dict() | {"group": group}
    row = gt.fit_group(group, [gt.group_rows(spec)], gt.FitOptions(run_dir=str(tmp_path)))
    assert message in row["error"]
    assert row["model_path"] is None and row["train_seconds"] >= 0


def test_gbm_fit_has_holdout_metrics_and_no_coefficients(tmp_path, specs):
    data = gt.group_rows(specs.iloc[3])
    row = gt.fit_group("g00001", [data], gt.FitOptions(run_dir=str(tmp_path), kind="gbm",
                                                       params={"n_estimators": 20}))
    assert row["error"] is None and row["r2"] > 0.5
    assert row["slope"] is None
    model = joblib.load(row["model_path"])
    assert model.n_estimators == 20


def test_model_file_names_are_safe_and_distinct():
    names = ["a/b", "a_b", "../../etc/passwd", ".hidden", "ünïcode name", "x" * 300, "ok-1.2"]
    files = [gt.model_filename(n, ".joblib") for n in names]
    assert len(set(files)) == len(files)
    for f in files:
        assert "/" not in f and not f.startswith(".") and len(f) < 130
    assert gt.model_filename("ok-1.2", ".joblib") == "ok-1.2.joblib"


def test_sequential_training_writes_a_complete_registry(tmp_path, specs):
    data = pd.concat([gt.group_rows(s) for s in specs.to_dict("records")], ignore_index=True)
    run = gt.train_sequential(data, run="seq", models_dir=tmp_path)
    reg = gt.load_registry("seq", models_dir=tmp_path)
    assert sorted(reg["group"]) == sorted(specs["group"])
    assert list(reg.columns) == gt.REGISTRY_COLUMNS
    assert set(run.failed["group"]) == {"bad_tiny", "bad_nan"}
    assert reg["n_rows"].sum() == len(data)
    truth = specs.set_index("group")
    good = run.trained.set_index("group")
    # Within 6 standard errors of the slope estimate: se = noise / (std(x) * sqrt(n_train)).
    se = truth.loc[good.index, "noise"] / (10 / np.sqrt(12) * np.sqrt(good["n_train"]))
    assert ((good["slope"] - truth.loc[good.index, "slope"]).abs() < 6 * se).all()


def test_run_names_and_folders_are_checked(tmp_path):
    with pytest.raises(gt.GroupTrainingError, match="run name"):
        gt.prepare_run_dir("../escape", tmp_path)
    run_dir = gt.prepare_run_dir("r1", tmp_path)
    (run_dir / "old.joblib").write_bytes(b"x")
    with pytest.raises(gt.GroupTrainingError, match="overwrite=True"):
        gt.prepare_run_dir("r1", tmp_path, overwrite=False)
    assert not (gt.prepare_run_dir("r1", tmp_path) / "old.joblib").exists()
    with pytest.raises(FileNotFoundError, match="train the run first"):
        gt.load_registry("never", models_dir=tmp_path)


def test_split_sorted_cuts_groups_across_batch_boundaries():
    keys = ["a"] * 5 + ["b"] * 1 + ["c"] * 7
    frame = pd.DataFrame({"group": keys, "v": range(len(keys))})
    got = [(g, pd.concat(parts)["v"].tolist())
           for g, parts in gt.split_sorted(_batches(frame, 4) + [frame.iloc[:0]], "group")]
    assert got == [("a", [0, 1, 2, 3, 4]), ("b", [5]), ("c", list(range(6, 13)))]
    assert list(gt.split_sorted([], "group")) == []


def test_split_sorted_arrow_gives_the_same_groups_as_pandas():
    import pyarrow as pa

    keys = ["a"] * 5 + ["b"] * 1 + ["c"] * 7
    frame = pd.DataFrame({"group": keys, "x": np.arange(13.0), "y": np.arange(13.0) * 2})
    batches = [pa.RecordBatch.from_pandas(b, preserve_index=False) for b in _batches(frame, 4)]
    got = [(g, pd.concat(parts)["x"].tolist())
           for g, parts in gt.split_sorted_arrow(batches, "group", ["x", "y"])]
    assert got == [("a", [0.0, 1.0, 2.0, 3.0, 4.0]), ("b", [5.0]),
                   ("c", [float(v) for v in range(6, 13)])]


def test_a_model_retrained_under_the_same_path_is_loaded_afresh(tmp_path):
    # Python workers are reused: a cache keyed by path alone kept predicting the old model.
    from sklearn.linear_model import LinearRegression

    path = tmp_path / "g.joblib"

    def train(slope: float) -> str:
        model = LinearRegression().fit([[0.0], [1.0]], [0.0, slope])
        return gt.save_model(path, lambda p: joblib.dump(model, p))

    sha = train(2.0)
    assert gt.load_model(str(path), sha256=sha).predict([[1.0]])[0] == pytest.approx(2.0)
    assert gt.load_model(str(path), sha256=sha).predict([[1.0]])[0] == pytest.approx(2.0)
    sha = train(3.0)
    assert gt.load_model(str(path), sha256=sha).predict([[1.0]])[0] == pytest.approx(3.0)


# --------------------------------------------------------------------------- model integrity


class _RunsCode:
    """A pickle that runs code when loaded: it creates a file (harmless stand-in)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _seq_run(tmp_path, specs, run="seq"):
    data = pd.concat([gt.group_rows(s) for s in specs.to_dict("records")], ignore_index=True)
    return gt.train_sequential(data, run=run, models_dir=tmp_path)


def test_the_registry_records_each_model_files_sha256(tmp_path, specs):
    import hashlib

    run = _seq_run(tmp_path, specs)
    reg = gt.load_registry("seq", models_dir=tmp_path)
    assert "sha256" in gt.REGISTRY_COLUMNS and list(reg.columns) == gt.REGISTRY_COLUMNS
    for row in reg.itertuples():
        if row.error is None:
            digest = hashlib.sha256(Path(row.model_path).read_bytes()).hexdigest()
            assert row.sha256 == digest, row.group
        else:
            assert row.sha256 is None, row.group
    assert len(run.trained) == 12 and run.trained["sha256"].str.fullmatch("[0-9a-f]{64}").all()
    # The frames remember their run folder, which scoring confines the model paths to.
    assert reg.attrs["run_dir"] == run.registry.attrs["run_dir"] == str(run.run_dir)
    assert run.trained.attrs["run_dir"] == str(run.run_dir)
    streamed = gt.fit_group("seed_b", _batches(gt.group_rows(specs.iloc[1]), 300),
                            gt.FitOptions(run_dir=str(tmp_path), max_rows=500))
    assert streamed["streamed"]
    assert streamed["sha256"] == hashlib.sha256(
        Path(streamed["model_path"]).read_bytes()).hexdigest()


def test_a_tampered_model_file_is_refused_and_never_unpickled(tmp_path, specs):
    run = _seq_run(tmp_path, specs)
    row = run.trained.iloc[0]
    assert gt.load_model(row.model_path, sha256=row.sha256).predict([[1.0]]).shape == (1,)
    marker = tmp_path / "code-ran"
    joblib.dump(_RunsCode(marker), row.model_path)  # someone with write access swaps it
    with pytest.raises(gt.ModelIntegrityError, match=r"g\.joblib|is not the model file") as got:
        gt.load_model(row.model_path, sha256=row.sha256)
    message = str(got.value)
    assert row.model_path in message and "Retrain the run" in message and "restore" in message
    assert not marker.exists()  # the swapped file's code never ran
    # A file that was never recorded is refused the same way: the digest is the check.
    other = tmp_path / "other.joblib"
    joblib.dump(_RunsCode(marker), other)
    with pytest.raises(gt.ModelIntegrityError):
        gt.load_model(str(other), sha256="0" * 64)
    assert not marker.exists()


class _Frame:
    """Just enough of a Spark DataFrame for the checks score_groups makes on the driver."""

    columns = ["group", "x", "y"]

    @property
    def sparkSession(self):
        raise AssertionError("score_groups started a job")


@pytest.mark.parametrize("where", ["../../elsewhere/m.joblib", "absolute", "symlink"])
def test_a_registry_row_outside_its_run_folder_is_refused_on_the_driver(tmp_path, specs, where):
    run = _seq_run(tmp_path, specs)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside = elsewhere / "m.joblib"
    joblib.dump(_RunsCode(tmp_path / "code-ran"), outside)
    registry = run.registry.copy()
    victim = registry.index[registry["error"].isna()][0]
    group = registry.loc[victim, "group"]
    if where == "absolute":
        registry.loc[victim, "model_path"] = str(outside)
    elif where == "symlink":  # a link inside the folder, to a file outside it
        link = run.run_dir / "link.joblib"
        link.symlink_to(outside)
        registry.loc[victim, "model_path"] = str(link)
    else:
        registry.loc[victim, "model_path"] = where
    registry.loc[victim, "sha256"] = gt.save_model(  # even with a matching digest
        tmp_path / "digest-only.joblib", lambda p: p.write_bytes(outside.read_bytes()))
    with pytest.raises(gt.ModelIntegrityError, match=f"group {group!r} points at .*outside the "
                                                     "run folder .*before the job started"):
        gt.model_files(registry, run.run_dir)
    with pytest.raises(gt.ModelIntegrityError, match=f"group {group!r}"):
        gt.score_groups(_Frame(), registry)  # the run folder comes with the registry
    registry.to_parquet(run.registry_path)
    with pytest.raises(gt.ModelIntegrityError, match=f"group {group!r}"):
        gt.score_groups(_Frame(), str(run.run_dir))  # and with a registry read from disk
    assert not (tmp_path / "code-ran").exists()


def test_paths_inside_the_run_folder_are_accepted_relative_or_absolute(tmp_path, specs):
    run = _seq_run(tmp_path, specs)
    registry = run.registry.copy()
    files = gt.model_files(registry, run.run_dir)
    assert len(files) == 12
    assert all(path.startswith(str(run.run_dir.resolve())) for path, _ in files.values())
    registry["model_path"] = [None if p is None else p.rsplit("/", 1)[1]
                              for p in registry["model_path"]]  # relative to the run folder
    assert gt.model_files(registry, run.run_dir) == files


def test_a_registry_without_checksums_asks_for_a_retrain(tmp_path, specs):
    run = _seq_run(tmp_path, specs)
    old = run.registry.drop(columns=["sha256"])  # written before the lab recorded them
    with pytest.raises(gt.ModelIntegrityError, match="no sha256.*Retrain the run"):
        gt.model_files(old, run.run_dir)
    # A frame that does not say which run it belongs to (built by hand): the caller must say.
    with pytest.raises(gt.GroupTrainingError, match="pass run_dir="):
        gt.score_groups(_Frame(), pd.DataFrame(run.registry.to_dict("list")))


# --------------------------------------------------------------------------- scoring plans


def test_key_runs_keep_null_keys_apart_from_their_neighbours():
    import pyarrow as pa

    keys = pa.array([None, None, "a", "a", "b", None, "c"])
    assert list(gt.key_runs(keys)) == [(None, 0, 2), ("a", 2, 4), ("b", 4, 5), (None, 5, 6),
                                       ("c", 6, 7)]
    assert list(gt.key_runs(pa.array([3, 3, 3]))) == [(3, 0, 3)]
    assert list(gt.key_runs(pa.array([], pa.string()))) == []
    # The training splitter uses the same cuts: the null rows are their own group.
    batch = pa.RecordBatch.from_pydict({"group": [None, "a", "a"], "x": [1.0, 2.0, 3.0]})
    got = [(g, pd.concat(p)["x"].tolist())
           for g, p in gt.split_sorted_arrow([batch], "group", ["x"])]
    assert got == [(None, [1.0]), ("a", [2.0, 3.0])]


class _Loads:
    """Stands in for a Spark accumulator."""

    def __init__(self):
        self.value = 0

    def add(self, n):
        self.value += n


def _scoring_case(tmp_path, specs):
    run = _seq_run(tmp_path, specs)
    data = pd.concat([gt.group_rows(s, seed=5) for s in specs.to_dict("records")],
                     ignore_index=True)
    data = pd.concat([data, pd.DataFrame({"group": ["stranger"] * 3, "x": [1.0, 2.0, 3.0],
                                          "y": 0.0})], ignore_index=True)
    data = data.sort_values("group", kind="stable").reset_index(drop=True)
    bad = data.index[data["group"] == "seed_a"][:2]
    data.loc[bad, "x"] = [np.nan, np.inf]  # two bad rows in a group that trained
    paths = gt.model_files(run.registry, run.run_dir)
    errors = {g: e for g, e in zip(run.registry["group"], run.registry["error"], strict=True)
              if isinstance(e, str)}
    return run, data, paths, errors


def test_the_arrow_scorer_gives_the_pandas_scorers_rows_loading_each_model_once(tmp_path, specs):
    import pyarrow as pa

    gt.score._MODEL_CACHE._values.clear()  # a fresh Python worker
    run, data, paths, errors = _scoring_case(tmp_path, specs)
    loads = _Loads()
    scorer = gt.GroupScorer(paths, errors, ["x"], loads)
    arrow_fn = gt.make_arrow_score_fn(scorer, "group", loads_column="loaded")
    # Batches of 333 rows: most groups span two or more batches.
    batches = [pa.RecordBatch.from_pandas(b, preserve_index=False) for b in _batches(data, 333)]
    out = [b for b in arrow_fn(iter(batches))]
    assert [b.schema.names for b in out[:1]] == [["group", "x", "y", "prediction", "error",
                                                  "loaded"]]
    assert [b.num_rows for b in out] == [b.num_rows for b in batches]  # batch for batch
    got = pa.Table.from_batches(out).to_pandas()
    # Once per group, not once per batch: told to the accumulator, counted by the scorer and
    # carried in the column an Observation sums.
    assert loads.value == scorer.loaded == got.pop("loaded").sum() == len(run.trained)
    pandas_fn = gt.make_pandas_score_fn(gt.GroupScorer(paths, errors, ["x"]))
    want = pd.concat([pandas_fn((g,), part) for g, part in data.groupby("group", sort=True)],
                     ignore_index=True)
    pd.testing.assert_frame_equal(got, want)
    bad = data.index[~np.isfinite(data["x"])]
    assert len(bad) == 2 and got.loc[bad, "prediction"].isna().all()
    assert got.loc[bad, "error"].str.contains("NaN/inf in the features").all()
    rest = got[got["group"] == "seed_a"].drop(index=bad)
    assert rest["error"].isna().all() and rest["prediction"].notna().all()
    marked = got[got["error"].notna()].drop(index=bad).groupby("group")["error"].first()
    assert marked.str.contains("failed to train").tolist() == [True, True, False]
    assert marked["stranger"] == "no model for group 'stranger' in the registry"
    ok = got[got["error"].isna()].merge(specs, on="group")
    assert np.abs(ok["prediction"] - (ok["slope"] * ok["x"] + ok["intercept"])).mean() < 0.5


def test_a_model_that_fails_to_load_marks_only_its_groups_rows(tmp_path, specs):
    import pyarrow as pa

    run, data, paths, errors = _scoring_case(tmp_path, specs)
    victim = run.trained.iloc[1]
    joblib.dump(_RunsCode(tmp_path / "code-ran"), victim.model_path)
    fn = gt.make_arrow_score_fn(gt.GroupScorer(paths, errors, ["x"]), "group")
    got = pa.Table.from_batches(list(fn(iter(
        [pa.RecordBatch.from_pandas(b, preserve_index=False) for b in _batches(data, 500)]
    )))).to_pandas()
    bad = got[got["group"] == victim.group]
    assert bad["prediction"].isna().all()
    assert bad["error"].str.contains("ModelIntegrityError").all()
    assert got.loc[got["group"] == run.trained.iloc[0].group, "error"].isna().sum() > 0
    assert not (tmp_path / "code-ran").exists()


def test_score_groups_checks_its_method_before_anything_else(tmp_path, specs):
    run = _seq_run(tmp_path, specs)
    with pytest.raises(gt.GroupTrainingError, match="unknown method 'groupBy'"):
        gt.score_groups(_Frame(), run.registry, method="groupBy")
    assert gt.SCORE_METHODS[0] == "sorted-mapInArrow"


def test_the_arrow_splitter_reads_a_group_only_as_far_as_it_is_consumed(tmp_path, specs):
    import pyarrow as pa

    big = gt.group_rows(specs.iloc[1])  # seed_b, 800 rows
    frame = pd.concat([big, gt.group_rows(specs.iloc[2])], ignore_index=True)
    pulled = []

    def stream():
        for i, part in enumerate(_batches(frame, 100)):
            pulled.append(i)
            yield pa.RecordBatch.from_pandas(part, preserve_index=False)

    groups = gt.split_sorted_arrow(stream(), "group", ["x", "y"])
    group, frames = next(groups)
    assert group == "seed_b" and pulled == [0]
    assert len(next(frames)) == 100 and pulled == [0]  # nothing read ahead
    # fit_group streams the rest through the least-squares sums: max_rows of it held at most.
    row = gt.fit_group(group, frames, gt.FitOptions(run_dir=str(tmp_path), max_rows=250))
    assert row["streamed"] and row["error"] is None and row["n_rows"] == 700
    assert row["slope"] == pytest.approx(3.0, abs=0.05)
    assert [g for g, _ in groups] == [specs.iloc[2]["group"]]
