"""REST scoring from Spark against real model servers on loopback: the lab's own (started with
the test cluster) and private ones with injected faults, killed and restarted mid-job.

Every job must give one row per input row, no duplicates, and for each row either the in-Spark
prediction or an error on exactly the rows whose request could not be answered.
"""

from __future__ import annotations

import threading

import pytest

from lab_utils import inference
from lab_utils.common import net, process
from lab_utils.inference.rest_client import RestOptions
from lab_utils.inference.rest_udf import ModelServerUnavailableError, rest_udf
from lab_utils.ops import services
from lab_utils.serving.faults import Faults
from lab_utils.serving.process import launch
from lab_utils.training import cnn

N = 120
BATCH = 10


@pytest.fixture(scope="module")
def spec(lab_cluster):
    return cnn.ensure_model(lab_cluster.cfg)  # the lab's CNN, trained at smoke size


@pytest.fixture(scope="module")
def images_df(spark, spec, lab_cluster):
    folder = lab_cluster.cfg.share_dir / "data" / "images"
    df = (inference.read_images(spark, folder).orderBy("path").limit(N).repartition(2).cache())
    assert df.count() == N
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def reference(images_df, spec):
    """The in-Spark iterator UDF's answers for the same rows."""
    return collect(images_df, inference.iterator_udf(spec, batch_size=BATCH))


def collect(df, udf):
    out = (df.select("path", udf("path", "content").alias("r")).select("path", "r.*")
           .toPandas())
    assert len(out) == N and out["path"].is_unique  # row count in == out, no duplicates
    return out.sort_values("path").reset_index(drop=True)


def assert_matches(out, reference, rows=None):
    rows = out.index if rows is None else rows
    assert list(out.loc[rows, "path"]) == list(reference.loc[rows, "path"])
    assert list(out.loc[rows, "prediction"]) == list(reference.loc[rows, "prediction"])
    assert out.loc[rows, "confidence"].to_numpy() == pytest.approx(
        reference.loc[rows, "confidence"].to_numpy(), abs=1e-4)


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory):
    """One private server for the fault tests (loading TensorFlow is the slow part of a start):
    a quarter of the requests answered 503, 15% answered only after 5 s, seeded."""
    log = tmp_path_factory.mktemp("model-server") / "model-server.log"
    faults = Faults(fail_rate=0.25, delay=5.0, delay_rate=0.15, seed=3)
    with launch(faults=faults, log_file=log) as server:
        yield server


def failures(before: dict, after: dict) -> int:
    """Rows of the requests the server failed (503) or answered too late, between two reads."""
    return sum(after[k] - before[k] for k in ("injected_error_rows", "delayed_rows"))


def test_the_labs_server_gives_the_in_spark_predictions(lab_cluster, images_df, spec,
                                                        reference):
    url = lab_cluster.cfg.model_server_url
    assert services.healthy(services.Service("model-server", "model-server"), lab_cluster.cfg)
    assert reference["error"].isna().all()
    # The default sends the image files ({"b64": ...}: the server declares an image input);
    # forced pixel lists must give the same rows.
    for payload, sent in (("auto", "b64"), ("pixels", "pixels")):
        udf = rest_udf(spec, url, client=RestOptions(batch_size=BATCH), payload=payload)
        assert udf.payload == sent
        out = collect(images_df, udf)
        assert out["error"].isna().all(), out["error"].dropna().head()
        assert_matches(out, reference)
        assert set(out["attempts"]) == {1}  # nothing to retry on a healthy server


def test_without_retries_exactly_the_failed_requests_rows_are_marked(images_df, spec,
                                                                     reference, faulty_server):
    # The breaker off: every request is sent, so the server's counters account for every row.
    udf = rest_udf(spec, faulty_server.url, client=RestOptions(
        batch_size=BATCH, retries=0, read_timeout=2.5, breaker_failures=None))
    before = faulty_server.stats()
    out = collect(images_df, udf)
    after = faulty_server.stats()
    failed = out["error"].notna()
    assert failed.sum() == failures(before, after) > 0
    assert out.loc[failed, "error"].str.contains(
        "HTTP 503: injected fault|no answer within read_timeout=2.5s").all()
    assert out.loc[failed, "prediction"].isna().all()
    assert_matches(out, reference, rows=out.index[~failed])
    assert set(out["attempts"]) == {1}


def test_injected_503s_and_slow_answers_are_retried_to_completion(images_df, spec, reference,
                                                                  faulty_server):
    udf = rest_udf(spec, faulty_server.url, client=RestOptions(
        batch_size=BATCH, read_timeout=2.5, retries=8, backoff=0.05, backoff_max=0.5))
    before = faulty_server.stats()
    out = collect(images_df, udf)
    after = faulty_server.stats()
    assert out["error"].isna().all(), out["error"].dropna().head()
    assert_matches(out, reference)
    assert after["injected_errors"] > before["injected_errors"]
    # Every extra attempt is one 503 or one read timeout, for each row of that request.
    assert int((out["attempts"] - 1).sum()) == failures(before, after) > 0


def test_requests_in_flight_give_the_in_spark_predictions(lab_cluster, images_df, spec,
                                                          reference):
    """Four requests in flight per task against the lab's server: the same rows, one request
    per micro-batch (the server's own count), none refused for want of room."""
    url = lab_cluster.cfg.model_server_url
    before = net.http_json(f"{url}/stats", timeout=5)
    udf = rest_udf(spec, url, client=RestOptions(batch_size=BATCH, in_flight=4))
    out = collect(images_df, udf)
    after = net.http_json(f"{url}/stats", timeout=5)
    assert out["error"].isna().all(), out["error"].dropna().head()
    assert_matches(out, reference)
    assert set(out["attempts"]) == {1}
    assert after["predict_requests"] - before["predict_requests"] == N // BATCH
    assert after["busy_refusals"] == before["busy_refusals"]  # 2 tasks x 4 within the queue


def test_retries_with_requests_in_flight_are_each_requests_own(images_df, spec, reference,
                                                               faulty_server):
    """The faulty server with three requests in flight per task: every row scored, and each
    extra attempt still matches one injected failure of that row's own request."""
    udf = rest_udf(spec, faulty_server.url, client=RestOptions(
        batch_size=BATCH, read_timeout=2.5, retries=8, backoff=0.05, backoff_max=0.5,
        in_flight=3))
    before = faulty_server.stats()
    out = collect(images_df, udf)
    after = faulty_server.stats()
    assert out["error"].isna().all(), out["error"].dropna().head()
    assert_matches(out, reference)
    assert int((out["attempts"] - 1).sum()) == failures(before, after) > 0


def test_server_killed_mid_job_and_restarted(images_df, spec, reference, faulty_server):
    udf = rest_udf(spec, faulty_server.url, client=RestOptions(
        batch_size=5, read_timeout=2.5, retries=20, backoff=0.5, backoff_max=4.0))
    start = faulty_server.stats()["rows_answered"]
    result = {}
    job = threading.Thread(target=lambda: result.update(out=collect(images_df, udf)))
    job.start()
    assert process.wait_until(lambda: faulty_server.stats()["rows_answered"] - start >= 20,
                          timeout=60, interval=0.1)
    assert job.is_alive()  # killed mid-job: some rows scored, the job still running
    faulty_server.kill()
    faulty_server.start()  # same port; the model loads again while the clients back off
    job.join(240)
    assert not job.is_alive()
    answered_after_restart = faulty_server.stats()["rows_answered"]  # the new process's
    out = result["out"]
    assert out["error"].isna().all(), out["error"].dropna().head()
    assert_matches(out, reference)
    assert out["attempts"].max() > 1  # requests failed with the server and were retried
    assert answered_after_restart > 0  # the rest was scored by the restarted server


def test_no_server_is_a_driver_error_before_any_job(spark, spec):
    url = f"http://127.0.0.1:{net.free_port()}"
    jobs_before = spark.sparkContext.statusTracker().getJobIdsForGroup()
    with pytest.raises(ModelServerUnavailableError,
                       match=rf"the model server at {url} does not answer .*make lab"):
        rest_udf(spec, url)
    assert spark.sparkContext.statusTracker().getJobIdsForGroup() == jobs_before
