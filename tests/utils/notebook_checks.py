"""What each notebook must have computed: one check per notebook, in notebook order.

Each notebook records its figures with :func:`lab_utils.notebooks.record_results`; the check of
the same name asserts them. Three layers apply them: ``tests/notebooks/test_notebooks.py`` to
every notebook it runs, ``tests/browser/test_browser.py`` to notebook 01's run in JupyterLab,
and ``tests/docker/test_docker_lab.py`` to the notebooks it runs in the JupyterLab container.
"""

from __future__ import annotations

from collections.abc import Callable


def check_00_getting_started(r: dict, *, master: str = "spark://127.0.0.1:") -> None:
    """``master``: the URL's expected start (the Docker layer passes the compose master's)."""
    assert r["master"].startswith(master)
    assert r["alive_workers"] == 2
    assert r["cluster_cores"] >= 2
    if r["spark_api"] == "classic":
        assert r["executors_seen"] == 2  # one 1-core executor on each worker
    else:
        # The Connect server's application grows executors while a job waits (dynamic
        # allocation): a short job sees those that registered in time, one or both (seen in
        # the Docker layer, where executors start slower), and every one it saw is checked.
        assert 1 <= r["executors_seen"] <= 2, r["executors_seen"]
    assert r["executor_hosts"] and r["driver_host"]
    assert r["mismatches"] == []
    assert r["driver_versions"]["pyspark"].startswith("4.3.")
    n = r["n_rows"]
    assert n == 20_000  # the smoke size
    assert r["expected_sum"] == n * (n + 1) // 2
    assert r["udf_sums"] == {style: r["expected_sum"] for style in
                             ("python UDF (pickled)", "python UDF (Arrow)", "pandas UDF",
                              "Arrow UDF")}
    assert (r["bucket_rows"], r["bucket_total"]) == (n, n * (n - 1) // 2)
    assert sorted(t["style"] for t in r["timings"]) == sorted(r["udf_sums"])  # each timed
    assert all(t["seconds"] > 0 for t in r["timings"])
    # A plain @udf with pa.Array hints is an Arrow UDF (PythonEvalType.SQL_SCALAR_ARROW_UDF).
    assert r["hinted_kind"] == {"plus_one_hinted": 250, "plus_one_arrow_udf": 250}
    # The plan says how rows reach Python: pickled rows, or Arrow batches for both Arrow kinds.
    assert r["plans"] == {"python UDF (pickled)": ["BatchEvalPython"],
                          "python UDF (Arrow)": ["ArrowEvalPython"],
                          "pandas UDF": ["ArrowEvalPython"],
                          "Arrow UDF": ["ArrowEvalPython"]}
    assert r["task_slots"] == 2  # LAB_APP_CORES_MAX, read from the conf in both modes
    # Section 7: spark.sparkContext is fine in classic mode, refused under Connect.
    assert r["classic_api_error"] == {"classic": None,
                                      "connect": "JVM_ATTRIBUTE_NOT_SUPPORTED"}[r["spark_api"]]
    # Section 8: the module is missing on the workers until shipped (addArtifacts under Connect,
    # addPyFile in classic); the shipped file is read by every task through SparkFiles.
    assert r["shipping"] == {
        "error_before": "ModuleNotFoundError: No module named 'lab_tips'",
        "tips_after": [f"tip {n}: ship what the workers lack" for n in range(3)],
        "file_on_workers": ["0.75"] * 3}, r["shipping"]
    assert r["session_seconds"] > 0  # printed in section 1, read in section 7
    # Section 9 at smoke size, no worker killed (KILL_A_WORKER defaults to False): every key
    # once, every value id + 1, the job committed.
    assert r["worker_loss"] == {"rows_expected": 2000, "rows_written": 2000, "duplicates": 0,
                                "missing": 0, "unexpected": 0, "null_values": 0,
                                "committed": True, "temporary_left": False, "wrong_values": 0,
                                "worker_killed": False}, r["worker_loss"]


def check_01_udf_inference_keras(r: dict) -> None:
    assert r["n_images"] == 300  # smoke: 30 scans x 10 classes
    assert r["classes"] == [str(d) for d in range(10)]
    assert r["holdout_accuracy"] >= 0.7 and r["baseline_accuracy"] <= 0.2
    assert r["folder_accuracy"] >= 0.8
    assert r["task_slots"] == 2  # LAB_APP_CORES_MAX, in both modes
    # The partition predictor runs on the RDD: classic only, skipped under Connect.
    classic = r["spark_api"] == "classic"
    rdd_style = ["partition predictor"] if classic else []
    assert r["styles"] == sorted(["row UDF (pickled)", "row UDF (Arrow)", "pandas UDF",
                                  "iterator UDF", "predict_batch_udf", "Arrow UDF",
                                  "mapInPandas", *rdd_style])
    assert r["styles_agree"] == dict.fromkeys(r["styles"], True), r["styles_agree"]
    assert r["rows_per_style"] == dict.fromkeys(r["styles"], 300), r["rows_per_style"]
    # Parity: each style written on the page gives the rows of its lab_utils factory (same
    # paths, predictions and errors, confidences within 1e-6) on the same 300 images.
    on_the_page = ["row UDF (pickled)", "row UDF (Arrow)", "pandas UDF", "iterator UDF",
                   "predict_batch_udf", "mapInPandas"]
    assert r["parity"] == dict.fromkeys(on_the_page, True), r["parity"]
    assert r["parity_rows"] == dict.fromkeys(on_the_page, 300), r["parity_rows"]
    # The plan shows how rows reach Python; the partition predictor runs on the RDD (none).
    assert r["python_operators"] == {
        "row UDF (pickled)": ["BatchEvalPython"], "row UDF (Arrow)": ["ArrowEvalPython"],
        "pandas UDF": ["ArrowEvalPython"], "iterator UDF": ["ArrowEvalPython"],
        "predict_batch_udf": ["ArrowEvalPython"], "Arrow UDF": ["ArrowEvalPython"],
        "mapInPandas": ["MapInPandas"],
        **({"partition predictor": []} if classic else {})}, r["python_operators"]
    # The iterator Arrow UDF written on the page gives the iterator pandas UDF's rows (paths,
    # predictions, errors; confidences within 1e-6), and a plain udf() with its pa.Array hints
    # is the same kind of UDF (PythonEvalType.SQL_SCALAR_ARROW_ITER_UDF).
    assert r["arrow_rows_equal"] is True and r["arrow_rows"] == 300
    assert r["udf_kinds"] == {"arrow_udf": 251, "udf with pa.Array hints": 251}, r["udf_kinds"]
    # A cache dict defined in the notebook is pickled with the function: one load per task.
    # The module cache (lab_utils.inference) loads once per Python worker, fewer than tasks.
    notebook_dict = r["cache_demo"]["dict in the notebook"]
    module_cache = r["cache_demo"]["inference.cached_predict_fn"]
    assert notebook_dict["loads"] == notebook_dict["tasks"] == 8, notebook_dict
    assert module_cache["tasks"] == 8, module_cache
    assert 1 <= module_cache["loads"] == module_cache["python_workers"] < 8, module_cache
    assert r["plotted_styles"] == [*on_the_page[:5], "Arrow UDF", "mapInPandas", *rdd_style]
    assert set(r["seconds_by_style"]) == set(r["styles"])
    assert all(s > 0 for s in r["seconds_by_style"].values()), r["seconds_by_style"]
    assert r["placed_files"] == r["files_in_class_folders"] == 300
    assert r["mixed_files"] == r["mixed_expected"] >= 12
    assert r["bad_files_reported"] == r["bad_files_expected"] >= 5
    # predict_batch_udf's ModelCache is keyed by a uuid made per predict_batch_udf call: a
    # Python worker keeps its load for a rerun of the same UDF and loads again for a new one.
    demo = r["model_cache_demo"]
    assert demo["loads_first"] == demo["python_workers"] >= 1, demo
    assert demo["workers_in_every_run"] >= 1, demo
    assert demo["reloads_same_uuid"] == 0, demo
    assert demo["reloads_new_uuid"] == demo["workers_in_every_run"], demo


def check_02_benchmark_udf_styles(r: dict) -> None:
    n = r["wrong_way_n"]
    assert r["wrong_way_rows"]["df.count()"] == 0  # the UDF column is pruned away
    assert r["wrong_way_rows"]["df.show(1)"] < 10  # the limit is pushed below the UDF
    assert r["wrong_way_rows"]["noop write (every row)"] == n
    # Counted by an Observation (both modes): a metric on the UDF's column keeps the UDF.
    assert r["wrong_way_rows"]["df.count() with the observation"] == n
    expected = {"baseline_pipelined", "baseline_naive", "single_thread", "transfer_only",
                "row_pickled", "row_arrow", "pandas_series", "iterator", "predict_batch_udf",
                "map_in_pandas", "partition_predictor"}
    assert set(r["styles_measured"]) == expected
    runs = {(row["model"], row["n"], row["style"]): row["rows"] for row in r["rows"]}
    for model, sizes in r["sizes"].items():
        for size in sizes:
            for style in expected:
                assert runs[(model, size, style)] == size, (model, size, style)  # complete
    assert set(r["best_ratio"]) == {f"cnn@{n}" for n in r["sizes"]["cnn"]} | {
        f"resnet50@{n}" for n in r["sizes"]["resnet50"]}
    assert all(v > 0 for v in r["best_ratio"].values())
    # Each Python worker loads a model once for all styles and sizes (2 workers; a worker Spark
    # replaces loads again), not once per style: that would be 2 x 6 styles x sizes.
    assert set(r["model_loads"]) == {"cnn", "resnet50"}
    assert all(1 <= loads <= 4 for loads in r["model_loads"].values()), r["model_loads"]
    assert r["plots"] == ["cnn.png", "resnet50.png"]
    # Section 2's table, computed from this run: one row per model and N, the best Spark style's
    # ratio to the baseline (the same figure as best_ratio), the transfer-only cost, and the
    # iterator UDF's plan with its ArrowEvalPython operator.
    summary = {f"{row['model']}@{row['n']}": row for row in r["summary"]}
    assert set(summary) == set(r["best_ratio"]), summary
    for key, row in summary.items():
        assert abs(row["best_ratio"] - r["best_ratio"][key]) <= 1e-3 or row["best_style"] not in {
            "iterator", "predict_batch_udf", "map_in_pandas", "pandas_series",
            "partition_predictor"}, (key, row)
        assert 0 < row["worst_ratio"] <= row["best_ratio"], (key, row)
        assert row["transfer_only_s"] > 0 and row["best_s"] > 0, (key, row)
        assert row["baseline_images_per_s"] > 0, (key, row)
    assert r["iterator_operators"] == ["ArrowEvalPython"]
    # Section 4, the UDF profiler (perf) on the two styles written on the page: the model's
    # load, the decoding and the model calls all took time inside the profiled UDF; the cache
    # key is new, so each Python worker (2; a replaced one reloads) loads the model once, and
    # every batch is decoded once and goes through the model in one call.
    profiled = {"iterator UDF", "predict_batch_udf"}
    assert set(r["profile_split"]) == set(r["profile_calls"]) == profiled
    for name in profiled:
        split, calls = r["profile_split"][name], r["profile_calls"][name]
        parts = [split[p] for p in ("model load", "decode", "model calls")]
        assert all(p > 0 for p in parts), (name, split)
        assert sum(parts) <= split["profiled total"] * 1.05, (name, split)  # disjoint parts
        ncalls = {fn: int(str(n).split("/")[0]) for fn, n in calls.items()}
        assert 1 <= ncalls["load_model"] <= 4, (name, ncalls)
        assert ncalls["decode_all"] == ncalls["run_model"] >= 2, (name, ncalls)
        # The SQL tab's Python metrics of the same query: one Arrow operator that scored every
        # image, ran Python code for part of its workers' time, and moved the JPEG bytes
        # in (hundreds of bytes each at least) and less back (a short struct per image).
        metrics = r["python_metrics"][name]
        assert list(metrics) == ["ArrowEvalPython"], (name, metrics)
        m = metrics["ArrowEvalPython"]
        assert m["rows"] == r["profile_n"] == r["sizes"]["cnn"][0], (name, m)
        # Start and init are 0 ms where a task got a Python worker the benchmark left running.
        assert m["worker_start_s"] >= 0 and m["worker_init_s"] >= 0, (name, m)
        assert 0 < m["python_code_s"] <= m["python_run_s"] * 1.05 + 0.1, (name, m)
        assert m["bytes_sent"] > 300 * m["rows"] > 0, (name, m)
        assert 0 < m["bytes_returned"] < m["bytes_sent"], (name, m)
    # The memory profiler, line by line of the iterator UDF (its figures summed over the line's
    # occurrences, in all tasks): one Python worker, TensorFlow and the model in it, holds
    # hundreds of MiB, not tens of GiB.
    lines = r["memory"]["lines"]
    assert len(lines) >= 3, r["memory"]
    assert all(line["occurrences"] >= 1 for line in lines), lines
    assert all(abs(line["worker_mib"] - line["mem_usage_mib"] / line["occurrences"]) <= 0.1
               for line in lines), lines
    assert 100 < max(line["worker_mib"] for line in lines) < 8192, lines
    assert any("score_images" in code for code in r["memory"]["codes"]), r["memory"]["codes"]
    # Section 5: of the 6 files checked, the UDF logged one line for each it could not decode
    # (the empty and the text file, the truncated JPEG if Pillow refuses it; the 3 good ones log
    # nothing), read back from the workers with python_worker_logs(): the same lines, warnings.
    logs = r["worker_logs"]
    assert logs["files"] == 6, logs
    assert logs["logged"] == logs["expected"] and 2 <= len(logs["expected"]) <= 3, logs
    assert all(line.startswith("cannot decode file:") for line in logs["logged"]), logs
    assert logs["levels"] == ["WARNING"], logs  # log.warning in the UDF, read back as such


def check_03_resnet50_batch_inference(r: dict) -> None:
    n = r["n_images"]
    assert n == 24
    # Broadcast weights are classic-only: under Connect (no sparkContext) the way is skipped
    # with the reason, and the replacement is shown on the page.
    connect = r["spark_api"] == "connect"
    broadcast = () if connect else ("broadcast weights",)
    ways = (*broadcast, "shared storage", "lab_utils iterator_udf")
    assert r["rows"] == dict.fromkeys(ways, n)
    assert r["errors"] == dict.fromkeys(ways, 0)
    # The page's `classify` UDF gives the factory's rows; broadcast weights give the file's.
    assert r["parity"] == {"iterator UDF": True} and r["parity_rows"] == n
    if connect:
        assert r["same_predictions"] is None
        assert "Spark Connect" in r["broadcast_skipped"] and "addArtifacts" in r[
            "broadcast_skipped"]
    else:
        assert r["same_predictions"] is True and r["broadcast_skipped"] is None
    assert r["python_operators"] == ["ArrowEvalPython"]
    # The memory guard as the running session has it, and as each Python worker applied it:
    # pyspark.memory / executor cores, passed as PYSPARK_EXECUTOR_MEMORY_MB, set as RLIMIT_AS.
    mb, guard = r["python_worker_memory_mb"], r["memory_guard"]
    cores = int(guard["spark.executor.cores"])
    assert cores >= 1 and guard["spark.task.cpus"] == "1"
    if connect:
        # Static settings are the Connect server's: the lab's server runs one-core executors
        # and sets no pyspark.memory, so the notebook's cap is not applied and says so.
        assert cores == 1 and guard["spark.executor.pyspark.memory"] is None
        assert r["guard_not_applied"] == {"spark.executor.pyspark.memory": f"{mb * cores}m"}
        assert r["worker_limits"] == [[None, None]]
    else:
        assert guard["spark.executor.pyspark.memory"] == f"{mb * cores}m"
        assert r["guard_not_applied"] == {}
        assert r["worker_limits"] == [[str(mb), mb]]
    # Random weights in the tests (the opt-in download is off): no table of meaningless names.
    assert r["imagenet_weights"] is False and r["prediction_table_shown"] is False
    assert r["imagenet_download"] is False
    # The recipe as published, run live on SEED_N photos: every row scored, 1,000 floats back
    # per image, and slower than the corrected UDF against the same plain process (it builds
    # ResNet-50 in each task and moves float arrays through Arrow).
    seed = r["seed"]
    assert seed["n"] == seed["rows"] == 4 and seed["partitions"] == 2, seed
    assert seed["floats_per_row"] == [1000], seed
    assert 0 < seed["ratio_to_one_process"] < r["spark_vs_one_process"], (
        seed, r["spark_vs_one_process"])
    # What the Python workers holding ResNet-50 report: resident below address space, and in
    # classic mode every peak under the cap the notebook set (RLIMIT_AS).
    memory = r["worker_memory"]
    assert memory and all(0 < w["VmHWM"] <= w["VmPeak"] and w["VmRSS"] <= w["VmSize"]
                          for w in memory), memory
    assert max(w["VmHWM"] for w in memory) > 300, memory  # TensorFlow and ResNet-50 loaded
    if not connect:
        assert all(w["VmPeak"] <= mb for w in memory), (memory, mb)
    assert r["max_records_per_batch"] == 64
    assert len(r["timings"]) == 2 * (len(broadcast) + 1)
    assert all(t["seconds"] > 0 for t in r["timings"])
    steady = {t["model from"]: t["images/s"] for t in r["timings"] if t["run"].startswith("second")}
    assert r["one_process_images_per_s"] > 0
    ratio = steady["shared storage"] / r["one_process_images_per_s"]
    assert abs(r["spark_vs_one_process"] - ratio) <= 1e-9 * ratio  # computed in the notebook
    assert r["plotted"] == ["one process", *broadcast, "shared storage", "recipe as published"]


def check_04_partition_predictor(r: dict) -> None:
    assert r["rows"] >= 300
    assert r["top1_accuracy"] >= 0.8 and r["top3_accuracy"] >= r["top1_accuracy"]
    assert r["top3_accuracy"] >= 0.95
    # The page's predict_partition gives the lab's PartitionPredictor's rows, row by row: its
    # RDD form in classic mode, its mapInPandas form under Connect (no RDDs there). In classic
    # mode the page's RDD run also gives the page's mapInPandas rows; under Connect it is
    # skipped with the reason printed.
    if r["spark_api"] == "connect":
        assert r["parity"] == {"partition predictor": True}, r["parity"]
        assert r["package_form"] == "map_in_pandas"
        assert "Spark Connect" in r["rdd_skipped"] and "mapInPandas" in r["rdd_skipped"]
    else:
        assert r["parity"] == {"partition predictor": True, "mapInPandas == RDD": True}, r[
            "parity"]
        assert r["package_form"] == "rdd" and r["rdd_skipped"] is None
    assert r["parity_rows"] == r["rows"]
    assert r["python_operators"] == ["MapInPandas"]  # the page's scored rows: mapInPandas
    assert r["agrees_with_iterator_udf"] is True
    assert r["errors"] == 0
    # The confusion matrix plotted every row; its diagonal is the top-1 hits.
    assert r["confusion_total"] == r["rows"]
    assert r["confusion_diagonal"] == round(r["top1_accuracy"] * r["rows"])
    assert r["devices"] == ["/CPU:0"]  # no GPU on the test machines
    assert r["modulo_devices"] == ["/GPU:0", "/GPU:1"]
    # The page's task_gpus/keep_tensorflow_to/pick_device (section 3) ran in every partition:
    # no GPU assigned, TensorFlow left alone, the same device as the lab's select_device.
    assert r["device_parity"] is True
    assert r["task_gpus"] == ["none"] and r["tf_kept_to"] == ["all"]
    # Section 2's explain(): the RDD run is opaque to Spark (classic; no RDDs under Connect).
    if r["spark_api"] == "connect":
        assert r["rdd_plan_scan_existing_rdd"] is None
    else:
        assert r["rdd_plan_scan_existing_rdd"] is True
        assert r["rdd_plan_python_operators"] == []
    # One GPU per executor is the rule: two with reused Python workers are refused, with the fix.
    assert "one GPU per executor" in r["gpu_rule_refused"]
    assert "worker_reuse=False" in r["gpu_rule_refused"]
    assert r["partitions"] >= 2
    # Stage-level scheduling (section 5). Classic: the decode stage's 1-core tasks ran two at
    # once on the session's one 2-core executor (spark.cores.max = 2), the model stage's tasks
    # took the profile's 2 cores each, so one at a time, with TensorFlow sized to 2 threads in
    # fresh Python workers (OMP_NUM_THREADS=2), and gave section 2b's top-1 on every image.
    # Connect: the lab's server (one-core executors) refuses a 2-cpu task profile, and says so.
    if r["spark_api"] == "connect":
        assert r["stages"] is None and r["fat_rows"] is None
        assert "has to be >= the number of cpus per task = 2" in r["profile_refused"], r[
            "profile_refused"]
    else:
        assert r["profile_refused"] is None
        thin, fat = r["stages"]["thin"], r["stages"]["fat"]
        assert thin["profile_id"] == 0 and fat["profile_id"] > 0, r["stages"]
        assert (thin["task_cpus"], fat["task_cpus"]) == (1.0, 2.0), r["stages"]
        assert thin["tasks"] >= 8 and fat["tasks"] == 2, r["stages"]
        assert thin["max_concurrent"] == 2 and fat["max_concurrent"] == 1, r["stages"]
        assert thin["executors"] == fat["executors"] == 1, r["stages"]
        assert thin["wall_s"] > 0 and fat["wall_s"] > 0, r["stages"]
        assert r["fat_task_cpus"] == [2] and r["fat_tf_threads"] == [2]
        assert r["fat_omp_threads"] == ["2"]
        assert r["fat_rows"] == r["rows"] and r["fat_same_top1"] is True
        assert r["fat_score_gap"] < 1e-5
    # The GPU settings written out (section 6): a worker's 2 GPUs found by the lab's script,
    # one per executor, half of one per task; the per-stage profile asks the same.
    gpu = r["gpu_settings"]
    assert gpu["spark.worker.resource.gpu.amount"] == "2"
    assert gpu["spark.worker.resource.gpu.discoveryScript"].endswith(
        "lab_utils/ops/getGpusResources.sh")
    assert gpu["spark.executor.resource.gpu.amount"] == "1"
    assert gpu["spark.task.resource.gpu.amount"] == "0.5"
    assert r["gpu_stage_task_resources"] == {"cpus": 1.0, "gpu": 0.5}


def check_05_parallel_training(r: dict) -> None:
    # Registry complete: every group exactly once, every row accounted for.
    assert r["groups"] == 102 and r["registry_groups"] == r["groups"]  # smoke: 100 + 2 broken
    assert r["registry_missing"] == [] and r["registry_extra"] == []
    assert r["rows_in_registry"] == r["rows"]
    # The broken groups fail with their reason; all the others train.
    assert set(r["failed"]) == {"bad_tiny", "bad_nan"}
    assert "at least 10 are needed" in r["failed"]["bad_tiny"]
    assert "NaN" in r["failed"]["bad_nan"]
    assert r["trained_groups"] == r["groups"] - 2
    # Coefficients recovered: the seed's slopes within 0.05, every slope within 6 standard errors.
    assert abs(r["seed_slopes"]["seed_a"] - 2.5) < 0.05
    assert abs(r["seed_slopes"]["seed_b"] - 3.0) < 0.05
    assert r["slopes_within_6se"] == r["trained_groups"]
    # The seed's scalar-UDF recipe trains one model per Arrow batch: 5,000 rows / 1,024.
    assert r["seed_recipe_models_for_one_group"] == 5
    # The page's train(key, pdf) and lab_utils' train_groups give the same rows: same groups,
    # coefficients and metrics within 1e-9, the same failures.
    assert r["parity"] == {"applyInPandas trainer": True, "sorted mapInArrow trainer": True}
    # The page's sorted mapInArrow trainer (train around the same key cuts as train_groups'
    # default plan) ran in train_groups' task count and gave its rows.
    assert r["sorted_parity_max_difference"] < 1e-9
    assert r["sorted_partitions"] == r["tasks_lab"] and 0 < r["sorted_tasks"] <= r["tasks_lab"]
    assert r["parity_groups"] == r["groups"] and r["parity_max_difference"] < 1e-9
    assert set(r["first_trainer_failed"]) == set(r["failed"])
    assert "at least 10 are needed" in r["first_trainer_failed"]["bad_tiny"]
    assert "NaN" in r["first_trainer_failed"]["bad_nan"]
    mine, lab = r["first_trainer_seed_slopes"], r["seed_slopes"]
    assert set(mine) == set(lab) and all(abs(mine[g] - lab[g]) < 1e-9 for g in lab)
    assert r["lab_method"] == "sorted-mapInArrow"
    # Its plan: a shuffle by the key (spark.sql.shuffle.partitions), then one call per group.
    assert r["python_operators"] == ["FlatMapGroupsInPandas"]
    assert r["shuffle_before_python"] is True
    assert r["plan_shuffle_partitions"] == r["shuffle_partitions"]
    # The partitioning trap: AQE coalesces the naive plan; the lab's plan keeps its tasks.
    assert r["tasks_naive"] < r["tasks_lab"] == 8
    assert r["streamed_groups"] > 0 and r["streamed_max_slope_difference"] < 1e-9
    assert r["gbm_refused_too_big"] == r["streamed_groups"]
    assert len(r["keras_r2"]) == 2 and all(v > 0.9 for v in r["keras_r2"].values())
    assert r["search_candidates"] == 4 and set(r["search_best"]) == {"n_estimators", "max_depth"}
    assert r["gbm_trained"] == r["trained_groups"]
    # Scoring: nothing lost; broken and unknown groups marked; each model loaded once.
    assert r["scored_rows_in"] == r["scored_rows_out"] == r["rows"] + 2
    assert r["scored_errors"] == {"bad_nan": 200, "bad_tiny": 3, "never_trained": 2}
    assert r["scored_ok"] == r["scored_rows_in"] - 205
    assert r["model_loads"] == r["trained_groups"]
    assert r["score_rmse"] < 1.1 * r["noise_rms"]
    styles = {b["style"] for b in r["bench"]}
    assert {"sequential", "spark (naive)"} <= styles and len(styles) >= 4
    assert all(b["seconds"] > 0 and b["ratio_to_sequential"] > 0 for b in r["bench"])


def check_06_timeseries_windows_tfrecord(r: dict) -> None:
    assert r["n_customers"] == r["customers"] == 300  # the smoke size
    # Cleaning finds exactly what the generator injected, and every raw row is accounted for.
    rejected, injected = r["rejected"], r["injected_without_customer"]
    assert r["duplicates_dropped"] == r["injected_duplicates"] > 0
    assert rejected["missing customer_id"] == injected["missing_customer_id"] > 0
    assert rejected["unknown customer"] == injected["unknown_customer"] > 0
    invalid = {"unknown event_type", "missing or negative value",
               "timestamp outside the observation period"}
    assert set(rejected) == invalid | {"missing customer_id", "unknown customer"}
    assert sum(rejected[k] for k in invalid) == r["injected_invalid"] > 0
    assert r["clean_events"] + sum(rejected.values()) + r["duplicates_dropped"] == r["raw_events"]
    # Windows: every customer has windows or one error row; no-event customers are kept.
    assert r["customers_with_windows"] + r["error_customers"] == r["customers"]
    assert r["error_customers"] == len(r["errors"]) >= 1
    assert all("is before signup_date" in e for e in r["errors"])
    assert r["customers_without_events"] >= 1 and r["windows_of_customers_without_events"] >= 10
    assert 4000 < r["windows"] < 7000 and 0.02 < r["positives"] / r["windows"] < 0.12
    # TFRecords: one file per partition, nothing temporary left, what is written is read.
    parts = ["part-00000.tfrecord", "part-00001.tfrecord"]
    assert r["tfrecord_files"] == {"train": parts, "test": parts}
    assert r["files_on_disk"] == {"train": [*parts, "schema.json"],
                                  "test": [*parts, "schema.json"]}
    assert sum(r["tfrecord_records"].values()) == r["windows"]
    assert r["read_back"] == r["tfrecord_records"]
    # spark.read.format("tfrecord") reads what df.write.format("tfrecord") wrote, with no
    # option: the counts schema.json lists, the Spark types it implies, and the first test
    # record equal to tf.data's, feature by feature.
    assert r["spark_read_counts"] == r["tfrecord_records"]
    assert r["spark_read_types"] == {"customer_id": "string", "window_end": "bigint",
                                     "features": "array<array<float>>",
                                     "baseline_calls": "float", "label": "bigint"}
    assert r["spark_same_record"] == dict.fromkeys(r["spark_read_types"], True)
    # The model beats chance and every one-feature rule on held-out customers.
    assert r["test_positives"] >= 40
    assert set(r["rule_auc"]) == {"complaints in window", "fewer calls in window",
                                  "smaller top-ups in window"}
    assert r["best_rule_auc"] == max(r["rule_auc"].values())
    assert r["auc"] >= 0.72 and r["auc"] >= r["best_rule_auc"] + 0.03, r
    # The page's applyInPandas function and mapInPandas writer give what lab_utils gives: the
    # same window rows (every row counted equally in both), the same files and records.
    assert r["parity"] == {"applyInPandas windows": True, "mapInPandas writer": True,
                           "Example encoding": True}, r["parity"]
    # The page's encode_example gave the lab's tf.train.Examples on the held-out rows it tried.
    assert r["encoding_rows"] == min(50, r["tfrecord_records"]["test"]) > 0
    rows = r["windows"] + r["error_customers"]  # one error row per bad customer
    assert r["parity_windows"] == {"page": rows, "lab_utils": rows, "differ": 0}
    assert list(r["page_writer_records"]) == parts
    assert sum(r["page_writer_records"].values()) == r["tfrecord_records"]["test"]
    # The plans: one call per customer after a shuffle; the writer streams whole partitions
    # (the grouped operator below it is the cached windows' plan).
    assert r["plans"] == {"windows": ["FlatMapGroupsInPandas"],
                          "writer": ["MapInPandas", "FlatMapGroupsInPandas"]}, r["plans"]
    assert r["window_seconds"] > 0 and r["window_cores"] >= 1


def check_07_audio_features(r: dict) -> None:
    words = ["down", "left", "no", "right", "up", "yes"]
    assert r["n_clips"] == r["feature_rows"] == 192  # 6 words x 4 voices x 2 x 2 x (1 + 1)
    assert r["per_word"] == {w: 32 for w in words}
    assert r["feature_errors"] == 0 and r["source_rates"] == [22050] and r["frames"] == 98
    assert sum(r["tfrecord_records"].values()) == 192 and r["tfrecord_records"]["test"] >= 20
    assert r["read_back"] == r["tfrecord_records"]
    parts = ["part-00000.tfrecord", "part-00001.tfrecord"]
    assert r["tfrecord_files"] == {"train": parts, "test": parts}
    # format("tfrecord") read back by Spark: every clip, per word, and one clip's mel features
    # equal to the UDF's.
    assert r["spark_by_word"] == {w: 32 for w in words}
    assert r["spark_same_clip"] is True
    assert r["chance"] == 1 / 6
    assert r["accuracy"] >= 0.6 and r["accuracy"] > r["majority"] + 0.25, r
    assert r["plotted_labels"] == words
    # The read + pandas UDF written on the page give the rows of lab_utils' read_audio +
    # log_mel_udf: same files and labels, same errors, features within 1e-6; one Arrow UDF.
    assert r["parity"] == {"clips": True, "bad files": True}
    assert r["parity_rows"] == {"clips": 192, "bad files": 12}
    assert 0 <= r["parity_max_feature_diff"] <= 1e-6
    assert r["python_operators"] == ["ArrowEvalPython"]
    assert r["plain_read_skips"] == ["empty.wav"]  # Spark's file sources skip zero-byte files
    # Broken files: each has the error it should, usable odd formats have features, and the
    # text file outside the *.wav glob is listed as skipped, not lost.
    expected = r["bad_expected"]
    assert r["bad_skipped"] == ["notes.txt"] and expected.pop("notes.txt") == "skipped"
    assert set(r["bad_outcome"]) == set(expected) and len(expected) >= 12
    for name, want in expected.items():
        got = r["bad_outcome"][name]
        assert (got is None) if want is None else (got is not None and want in got), (name, got)
    # The inference half (section 7): the iterator UDF scored every held-out clip from its WAV
    # bytes with the saved model, as accurately as the TFRecord evaluation (at most one clip
    # apart: the standardisation is NumPy's there, TensorFlow's here); the broken files got an
    # error exactly where the feature UDF gave one, the usable odd ones a word.
    assert r["udf_scored"] == r["test_clips"] and r["udf_errors"] == 0
    assert abs(r["udf_accuracy"] - r["accuracy"]) <= 1 / r["test_clips"] + 1e-9, r
    assert set(r["udf_bad_outcome"]) == set(r["bad_outcome"])
    for name, error in r["bad_outcome"].items():
        assert (r["udf_bad_outcome"][name] is None) == (error is None), (name, error)
    assert set(r["udf_bad_words"]) <= set(words) and r["udf_bad_words"]


def check_08_external_api_scoring(r: dict) -> None:
    n = r["n_images"]
    assert n == 120 == r["images_written"]  # the smoke size, written by 08 itself
    assert r["server"] == "lab"  # the test cluster runs the lab's model server: it was used
    assert r["status_state"] == "AVAILABLE" and r["bad_request_status"] == 400
    assert r["rows_rest"] == r["rows_in_spark"] == r["unique_paths_rest"] == n
    assert r["errors_rest"] == 0
    assert r["agree"] is True and r["max_confidence_diff"] < 1e-4
    # The REST UDF written on the page gives the rows of lab_utils' rest_udf (paths,
    # predictions, errors, attempts; confidences within 1e-6), through one Arrow UDF.
    assert r["parity"] == {"REST UDF": True} and r["parity_rows"] == [n, n]
    assert r["python_operators"] == ["ArrowEvalPython"]
    assert r["plotted_runs"] == ["no retries", "with retries"]
    no_retries, retries = r["faults"]["no retries"], r["faults"]["with retries"]
    for run in (no_retries, retries):
        assert run["rows"] == run["unique_paths"] == n  # no lost or duplicated rows
        assert run["agree_on_scored"] is True
    # Without retries exactly the rows of the requests the server failed carry an error.
    assert no_retries["errors"] == no_retries["server_failed_rows"] > 0
    assert no_retries["retried_row_attempts"] == 0
    # With retries every row is scored; each extra attempt matches one injected failure.
    assert retries["errors"] == 0
    assert retries["retried_row_attempts"] == retries["server_failed_rows"] > 0
    assert retries["server_503s"] > 0
    assert r["rest_to_spark_ratio"] > 0
    assert r["rest_rows_per_s"] > 0 and r["spark_rows_per_s"] > 0
    # Requests in flight (section 6): every level scored every row, with the in-Spark
    # predictions; rows/s only positive here (ratios between levels belong in benchmarks).
    sweep = r["in_flight"]
    assert list(sweep) == ["1", "2", "4", "8"]
    admission = r["server_admission"]  # read from the lab's server's /stats, not typed in
    assert admission["concurrency"] >= 1 and admission["queue"] >= 0
    for k, level in sweep.items():
        assert level["in_flight_per_job"] == 2 * int(k)  # 2 partitions
        assert level["rows"] == n and level["errors"] == 0 and level["same_predictions"] is True
        assert level["rows_per_s"] > 0
        if level["in_flight_per_job"] <= admission["concurrency"] + admission["queue"]:
            assert level["retried_rows"] == 0  # all admitted: no 429 to retry
    assert r["micro_batches_per_task"] == 4  # 60 rows a task, 16 images a request
    rates = {int(k): level["rows_per_s"] for k, level in sweep.items()}
    assert rates[r["in_flight_best"]] == max(rates.values())
    # The figures the prose quotes are the sweep's (rel. 1e-9: the same float arithmetic).
    gain, to_spark = max(rates.values()) / rates[1], max(rates.values()) / r["spark_rows_per_s"]
    assert abs(r["in_flight_gain"] - gain) <= 1e-9 * gain
    assert abs(r["in_flight_best_to_spark"] - to_spark) <= 1e-9 * to_spark


def check_09_streaming_inference(r: dict) -> None:
    # Smoke: 3 producer batches of 12 while the query runs, 12 more and 4 broken files while it
    # is stopped.
    assert r["files_landed"] == 3 * 12 + 12 + 4
    assert r["files_expected_rows"] == r["files_landed"] - 1  # the empty file has no row
    once = r["exactly_once"]
    assert once["files_landed"] == r["files_landed"]
    assert once["rows"] == r["files_expected_rows"] == r["final_rows"]
    assert once["duplicated"] == 0 and once["missing"] == [] and once["unexpected"] == []
    assert once["empty_file_rows"] == 0  # Spark's file scan skips zero-byte files
    assert once["rows_on_disk"] >= once["rows"]  # plus the files of a batch stop() cut short
    # Stopped mid-stream: rows in, files still waiting; the restart is the same query.
    assert 16 <= r["rows_at_stop"] < r["files_landed"] and r["waiting_at_stop"] > 0
    assert r["same_query_id"] is True
    # The broken files are error rows (the empty one is not a row at all).
    assert sorted(r["errors"]) == ["b99-notes.png", "b99-random.png", "b99-truncated.png"]
    assert "truncated" in r["errors"]["b99-truncated.png"]
    assert all("not an image" in r["errors"][n] for n in ("b99-notes.png", "b99-random.png"))
    assert r["accuracy"] >= 0.7  # the smoke CNN on digits it was partly trained on
    # One model load per Python worker across all micro-batches of both runs, however many
    # workers the application used (under Connect the server's executors may start more
    # Python workers than a classic application's two, one load each still).
    assert r["loads_per_worker"] == [1] * r["python_workers"]
    assert r["model_loads"] == r["python_workers"] >= 1
    assert r["micro_batches"] >= 2
    # Progress reports: every row read by some batch, at most maxFilesPerTrigger (8) a batch
    # (the empty file reads as 0 rows), in both modes.
    assert r["progress_rows"] == r["files_expected_rows"]
    first = r["progress_first_run"]
    assert first["batches"] >= 2 and first["rows"] <= 8 * first["batches"]
    assert first["median_processed_rows_per_s"] > 0 and first["median_batch_ms"] > 0
    assert first["median_input_rows_per_s"] > 0
    latency = r["latency_s"]
    assert r["latency_all_positive"] is True and 0 < latency["min"] <= latency["50%"]
    assert latency["50%"] <= latency["max"] < 300
    # cleanSource: committed files archived, at most the last batches' still in the folder.
    cleanup = r["cleanup"]
    assert cleanup["archived"] + cleanup["still_in_landing"] == r["files_landed"]
    assert cleanup["archived"] > cleanup["still_in_landing"]
    # Written in place: read once, half written, never again, though whole on disk now.
    in_place = r["in_place"]
    assert in_place["rows"] == 1 and in_place["decodes_now"] is True
    assert in_place["length_read"] < in_place["length_on_disk"]
    assert "truncated" in in_place["error"]


def check_10_text_embeddings_search(r: dict) -> None:
    # The smoke corpus: every entry that answers a question plus 250 seeded distractors, each
    # embedded once and written to Parquet; every question has an answer in it.
    assert r["files"] > 40 and r["questions"] >= 20
    assert r["no_answer_in_corpus"] == []
    assert r["answers_in_corpus"] >= r["questions"]
    assert r["entries"] == r["embedded_rows"] == r["answers_in_corpus"] + 250
    assert set(r["entries_by_library"]) <= {"pyspark", "pandas", "numpy", "sklearn", "keras",
                                            "tensorflow"}
    assert sum(r["entries_by_library"].values()) == r["entries"]
    assert r["sample_rows"] == 128
    # Both UDF forms on the page give the single-process encoder's vectors.
    assert r["form_diff"] < 1e-4
    assert r["min_cosine_spark_vs_local"] > 0.9999
    assert r["iter_vs_local_max_diff"] < 1e-4
    # Sorting by length leaves less padding (the rates are only positive here: timings of a
    # shared CI machine are a benchmark's business, not a test's).
    assert 0 <= r["padding_sorted"] < r["padding_unsorted"] < 1
    assert r["rate_sorted"] > 0 and r["rate_unsorted"] > 0 and r["one_process_rate"] > 0
    assert all(v > 0 for v in r["form_rates"].values()) and len(r["form_rates"]) == 2
    assert r["embed_rate"] > 0 and r["spark_to_one_process"] > 0
    # Search: TOP=10 rows per question both ways; nearestByJoin ("approx") evaluates the full
    # cross product in Spark 4.3, so it returns the exact top 10 (ties aside).
    assert r["exact_rows"] == r["nearest_rows"] == 10 * r["questions"]
    assert r["top_k_agreement"] >= 0.95
    assert r["exact_s"] > 0 and r["nearest_s"] > 0
    # Quality: recall@5 over the labelled questions, a floor written before the first run.
    recall = [r["recall"][str(k)] for k in range(1, 11)]
    assert recall == sorted(recall)  # recall@k never falls as k grows
    assert r["k"] == 5 and r["recall_at_k"] == r["recall"]["5"]
    assert r["recall_at_k"] >= 0.6, r["unanswered"]


def check_11_distributed_training(r: dict) -> None:
    steps, workers, tol = r["steps"], r["workers"], r["tolerance"]
    assert (steps, workers, tol) == (8, 2, 1e-5)  # the smoke size
    assert "3 workers asked for, but this application runs 2 tasks at once" in r["slots_error"]
    # One model: 1 and 2 workers follow the single-process reference step by step (float32).
    assert len(r["reference"]) == steps
    assert {k: len(v) for k, v in r["curves"].items()} == {"1": steps, "2": steps}
    assert r["reference"][-1] < r["reference"][0]  # it trained
    assert set(r["max_diff"]) == {"reference (1 process)", "1 worker", "2 workers"}
    assert r["max_diff"]["reference (1 process)"] == 0.0
    assert all(d <= tol for d in r["max_diff"].values()), r["max_diff"]
    assert r["ranks"] == [0, 1]
    assert len(r["checksums"]) == 2 and len(set(r["checksums"])) == 1, r["checksums"]
    assert set(r["steps_per_s"]) == {"1", "2"} and all(v > 0 for v in r["steps_per_s"].values())
    assert 0 < r["allreduce_s"] < 5
    p = r["prediction"]
    assert p["compute_s_1_worker"] > 0 and p["allreduce_s_ring_8"] > 0
    predicted = p["compute_s_1_worker"] / 8 + p["allreduce_s_ring_8"]
    assert abs(p["step_s_8_workers"] - predicted) <= 1e-9 * predicted
    # Keras 3 fit fails under the multi-worker strategy; tf-keras fit trains, ranks equal.
    assert "PerReplica" in (r["keras3_fit_error"] or ""), r["keras3_fit_error"]  # keras#20585
    assert len(r["tf_keras"]["losses"]) == 2 and all(v > 0 for v in r["tf_keras"]["losses"])
    assert len(set(r["tf_keras"]["checksums"])) == 1  # tf-keras fit: one model on both ranks
    if r["spark_api"] == "classic":
        assert r["barrier"] is True
        # By hand: allGather'd gradients give the reference's losses too.
        assert len(r["hand_losses"]) == 3 and r["hand_diff"] <= tol, r["hand_diff"]
        assert r["hand_gather_s"] > 0
        # Killed before step 5 on its first attempt, resumed from the step-4 checkpoint, same
        # final weights as the uninterrupted run, model saved by rank 0.
        res = r["resume"]
        assert (res["kill_at"], res["checkpoint_every"]) == (5, 2)
        assert res["start_step"] == 4 and res["steps"] == steps - 4, res
        assert res["attempts"] == [1, 1]
        assert res["logs"] == ["rank0-attempt0.log", "rank0-attempt1.log",
                               "rank1-attempt0.log", "rank1-attempt1.log"]
        assert res["equal"] is True and res["checksums"] == r["checksums"], res
        assert res["saved"].endswith("models/digits_cnn_distributed")
    else:
        # The lab's Connect server has dynamic allocation on: Spark refuses barrier stages, so
        # the launcher gathered addresses through files and the barrier-only parts were skipped.
        assert r["barrier"] is False
        assert r["hand_losses"] is None and r["resume"] is None


#: Notebook stem -> its check, in notebook order.
CHECKS: dict[str, Callable[[dict], None]] = {
    "00_getting_started": check_00_getting_started,
    "01_udf_inference_keras": check_01_udf_inference_keras,
    "02_benchmark_udf_styles": check_02_benchmark_udf_styles,
    "03_resnet50_batch_inference": check_03_resnet50_batch_inference,
    "04_partition_predictor": check_04_partition_predictor,
    "05_parallel_training": check_05_parallel_training,
    "06_timeseries_windows_tfrecord": check_06_timeseries_windows_tfrecord,
    "07_audio_features": check_07_audio_features,
    "08_external_api_scoring": check_08_external_api_scoring,
    "09_streaming_inference": check_09_streaming_inference,
    "10_text_embeddings_search": check_10_text_embeddings_search,
    "11_distributed_training": check_11_distributed_training,
}
