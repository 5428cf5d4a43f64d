"""The SQL tab's Python metrics: Spark's metric text to numbers, the Python operators of an
execution, and the tagged query found through the REST API (answered here by a fake)."""

from __future__ import annotations

import pytest

from lab_utils.common import sql_metrics
from lab_utils.common.sql_metrics import SqlMetricsError, metric_value, python_metrics

HEADER = "total (min, med, max (stageId: taskId))\n"


def _metric(name: str, value: str) -> dict:
    return {"name": name, "value": value}


#: One ArrowEvalPython node as Spark 4.3's REST API returned it (a 20,000-row iterator UDF).
ARROW_NODE = {"nodeId": 1, "nodeName": "ArrowEvalPython", "metrics": [
    _metric("time to run Python workers",
            HEADER + "3.3 s (1.6 s, 1.6 s, 1.6 s (stage 2.0: task 3))"),
    _metric("data returned from Python workers",
            HEADER + "156.5 KiB (78.3 KiB, 78.3 KiB, 78.3 KiB (stage 2.0: task 2))"),
    _metric("time to execute Python code",
            HEADER + "54 ms (20 ms, 34 ms, 34 ms (stage 2.0: task 2))"),
    _metric("time to start Python workers",
            HEADER + "1.9 s (962 ms, 966 ms, 966 ms (stage 2.0: task 2))"),
    _metric("time to initialize Python workers",
            HEADER + "1.3 s (638 ms, 656 ms, 656 ms (stage 2.0: task 3))"),
    _metric("data sent to Python workers", HEADER + "159.0 KiB (79.5 KiB, 79.5 KiB, 79.5 KiB)"),
    _metric("number of output rows", "20,000"),
]}
EXECUTION = {"id": 7, "status": "COMPLETED", "nodes": [
    {"nodeId": 0, "nodeName": "WholeStageCodegen (2)",
     "metrics": [_metric("duration", HEADER + "12 ms (5 ms, 6 ms, 6 ms)")]},
    ARROW_NODE,
    {"nodeId": 2, "nodeName": "Range", "metrics": [_metric("number of output rows", "20,000")]},
]}


@pytest.mark.parametrize(("text", "value"), [
    (HEADER + "3.3 s (1.6 s, 1.6 s, 1.6 s (stage 2.0: task 3))", 3.3),
    (HEADER + "54 ms (20 ms, 34 ms, 34 ms (stage 2.0: task 2))", 0.054),
    (HEADER + "1.5 m (40.0 s, 50.0 s, 50.0 s)", 90.0),
    (HEADER + "1.25 h (1.0 h, 1.0 h, 1.0 h)", 4500.0),
    ("156.5 KiB", 156.5 * 1024),
    (HEADER + "2.0 MiB (1.0 MiB, 1.0 MiB, 1.0 MiB)", 2 * 1024**2),
    ("0.0 B", 0.0),
    ("20,000", 20_000.0),
    ("7", 7.0),
])
def test_metric_value_reads_the_total_in_seconds_bytes_or_rows(text, value):
    assert metric_value(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "n/a", "3.3 parsecs", HEADER])
def test_metric_value_refuses_text_it_cannot_read(text):
    with pytest.raises(SqlMetricsError, match="SQL tab"):
        metric_value(text)


def test_python_metrics_keeps_only_python_operators_with_their_figures():
    found = python_metrics(EXECUTION)
    assert list(found) == ["ArrowEvalPython"]
    assert found["ArrowEvalPython"] == pytest.approx({
        "python_run_s": 3.3, "bytes_returned": 156.5 * 1024, "python_code_s": 0.054,
        "worker_start_s": 1.9, "worker_init_s": 1.3, "bytes_sent": 159.0 * 1024,
        "rows": 20_000})


def test_python_metrics_numbers_a_second_operator_of_the_same_name():
    two = {"nodes": [ARROW_NODE, {**ARROW_NODE, "nodeId": 3}]}
    assert list(python_metrics(two)) == ["ArrowEvalPython", "ArrowEvalPython#2"]
    assert python_metrics({"nodes": []}) == {}


class FakeUi:
    """The REST API of an application that ran job 4 (tagged) in SQL execution 7, which the UI
    reports complete after ``ready_after`` polls."""

    def __init__(self, job_tag: str, ready_after: int = 0):
        self.job_tag, self.ready_after = job_tag, ready_after
        self.calls: list[str] = []

    def __call__(self, url: str, timeout: float = 3.0):
        self.calls.append(url)
        base = "http://ui:4040/api/v1/applications/app-1"
        assert url.startswith(base), url
        polls = sum(u.endswith("/jobs") for u in self.calls)
        if url.endswith("/jobs"):
            return [{"jobId": 3, "jobTags": []}, {"jobId": 4, "jobTags": [self.job_tag]}]
        if "/sql?" in url:
            done = polls > self.ready_after
            return [{"id": 6, "successJobIds": [3], "status": "COMPLETED"},
                    {"id": 7, "successJobIds": [4] if done else [],
                     "runningJobIds": [] if done else [4],
                     "status": "COMPLETED" if done else "RUNNING"}]
        assert url.endswith("/sql/7?details=true"), url
        return EXECUTION


@pytest.mark.parametrize("job_tag", [
    "nb02-x1",  # as the tag was given
    "spark-session-0f1e-nb02-x1",  # classic: session-scoped tags carry a prefix
    "SparkConnect_OperationTag_User__Session_ab12_Tag_nb02-x1",  # a Connect server's job tag
])
def test_the_tagged_query_is_found_in_either_mode(monkeypatch, job_tag):
    ui = FakeUi(job_tag)
    monkeypatch.setattr(sql_metrics.net, "http_json", ui)
    found = sql_metrics.tagged_query_metrics("http://ui:4040/", "app-1", "nb02-x1")
    assert found["ArrowEvalPython"]["worker_start_s"] == pytest.approx(1.9)


def test_a_query_still_running_is_polled_until_the_ui_has_it(monkeypatch):
    ui, slept = FakeUi("nb02-x1", ready_after=2), list[float]()
    monkeypatch.setattr(sql_metrics.net, "http_json", ui)
    found = sql_metrics.tagged_query_metrics("http://ui:4040", "app-1", "nb02-x1",
                                             sleep=slept.append)
    assert found["ArrowEvalPython"]["rows"] == 20_000
    assert slept == [0.5, 0.5]


def test_an_untagged_query_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(sql_metrics.net, "http_json", FakeUi("other-tag"))
    with pytest.raises(SqlMetricsError, match=r"spark.addTag\('nb02-x1'\)"):
        sql_metrics.tagged_query_metrics("http://ui:4040", "app-1", "nb02-x1", wait_s=0,
                                         sleep=lambda s: None)


def test_an_application_without_a_ui_is_refused():
    with pytest.raises(SqlMetricsError, match="spark.ui.enabled=false"):
        sql_metrics.tagged_query_metrics(None, "app-1", "nb02-x1")
