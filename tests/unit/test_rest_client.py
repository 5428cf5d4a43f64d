"""The REST client's transport without Spark: retries and backoff with a scripted session, and
the options' checks and defaults."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import requests

from lab_utils.inference import rest_body, rest_client, rest_scoring
from tests.utils import servers

URL = "http://127.0.0.1:1/v1/models/tiny:predict"


class Raw:
    """urllib3's side of an answer: ``read1`` gives what has come, ``b""`` at the end."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def read1(self, size, decode_content):
        chunk = self.data[self.at:self.at + size]
        self.at += len(chunk)
        return chunk


class Answer:
    """An answer as ``requests`` gives it with ``stream=True``: the body is read from ``raw``
    (from its start again once closed: a script may give the same answer twice)."""

    def __init__(self, status: int, body=None, headers=None):
        self.status_code = status
        self.reason = "reason"
        self.headers = headers or {}
        self.encoding = "utf-8"
        self.raw = Raw(b"no JSON" if body is None else json.dumps(body).encode())

    def close(self):
        self.raw.at = 0


class ScriptedSession:
    """Answers (or raises) from a script, one item per POST, and records each call."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def post(self, url, data, timeout, headers, stream):
        assert stream  # the answer is read by the client, within its deadline
        self.calls.append({"url": url, "timeout": timeout, "rows": len(json.loads(data)[
            "instances"])})
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def post(session, options, sleeps):
    body = rest_scoring.encode_instances(np.zeros((2, 4, 4, 3), np.uint8))
    return rest_client.post_with_retries(session, URL, body, options, sleep=sleeps.append,
                                          jitter=lambda: 1.0)


def test_retries_transient_failures_with_exponential_backoff():
    ok = Answer(200, {"predictions": [[1, 0], [0, 1]]})
    session = ScriptedSession([requests.exceptions.ConnectionError("refused"),
                               Answer(503, {"error": "busy"}),
                               requests.exceptions.ReadTimeout("slow"),
                               Answer(429, {"error": "slow down"}), Answer(502, None), ok])
    sleeps = []
    options = rest_client.RestOptions(retries=5, backoff=0.1, backoff_max=1.0,
                                       connect_timeout=2, read_timeout=7)
    result = post(session, options, sleeps)
    assert result == rest_client.PostResult([[1, 0], [0, 1]], 6)
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])  # doubling, capped
    assert {c["timeout"] for c in session.calls} == {(2, 7)}


def test_gives_up_after_the_retries_naming_the_last_error():
    session = ScriptedSession([Answer(503, {"error": "injected fault"})] * 3)
    sleeps = []
    result = post(session, rest_client.RestOptions(retries=2, backoff=0.0), sleeps)
    assert result.outputs is None and result.attempts == 3 and len(session.calls) == 3
    assert result.error == f"gave up after 3 attempts at {URL}: HTTP 503: injected fault"


@pytest.mark.parametrize("status", [400, 404, 413, 500])
def test_answers_a_retry_cannot_change_are_not_retried(status):
    # 500 included: the lab's server answers it for a broken model, the same every time.
    session = ScriptedSession([Answer(status, {"error": "the same next time"})] * 6)
    result = post(session, rest_client.RestOptions(retries=5), [])
    assert result.attempts == 1 and len(session.calls) == 1
    assert f"refused the request: HTTP {status}: the same next time" in result.error


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_answers_that_can_change_are_retried(status):
    session = ScriptedSession([Answer(status, {"error": "busy"}),
                               Answer(200, {"predictions": [[1, 0], [0, 1]]})])
    result = post(session, rest_client.RestOptions(retries=5, backoff=0.0), [])
    assert result == rest_client.PostResult([[1, 0], [0, 1]], 2)


def test_client_errors_are_not_retried():
    session = ScriptedSession([Answer(400, {"error": "each image has shape [5, 5, 3]"})])
    result = post(session, rest_client.RestOptions(retries=5), [])
    assert result.attempts == 1 and len(session.calls) == 1
    assert "refused the request: HTTP 400: each image has shape [5, 5, 3]" in result.error


def test_retry_after_is_honoured_within_the_cap():
    session = ScriptedSession([Answer(429, {"error": "x"}, {"Retry-After": "3"}),
                               Answer(429, {"error": "x"}, {"Retry-After": "60"}),
                               Answer(200, {"predictions": []})])
    sleeps = []
    post(session, rest_client.RestOptions(retries=3, backoff=0.1, backoff_max=5.0), sleeps)
    assert sleeps == [3.0, 5.0]


def test_no_retries_means_one_attempt():
    session = ScriptedSession([requests.exceptions.ConnectTimeout("down")])
    result = post(session, rest_client.RestOptions(retries=0, connect_timeout=0.5), [])
    assert result.attempts == 1
    assert "no connection within connect_timeout=0.5s" in result.error


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size=0 must be at least 1"),
    ({"retries": -1}, "retries=-1 must be 0 or more"),
    ({"read_timeout": 0}, "must be positive"),
    ({"breaker_failures": 0}, r"breaker_failures=0 must be .* at least 1 \(None turns"),
    ({"breaker_failures": 2.5}, "breaker_failures=2.5 must be a whole number"),
    ({"task_timeout": 0}, r"task_timeout=0 must be positive seconds \(None: no deadline\)"),
    ({"in_flight": 0}, r"in_flight=0 must be a whole number of requests, at least 1"),
    ({"in_flight": 2.0}, r"in_flight=2.0 must be a whole number"),
    ({"in_flight": True}, r"in_flight=True must be a whole number"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rest_client.RestOptions(**kwargs)


def test_breaker_and_deadline_defaults():
    options = rest_client.RestOptions()
    assert options.breaker_failures == 3 and options.task_timeout is None
    assert options.in_flight == 1  # one request at a time per task unless asked


def test_the_guard_counts_failures_from_several_threads():
    """The task's sending threads share one guard: 8 threads recording 50 failures each open
    the breaker once, with every failure counted (no update lost to a race)."""
    import threading

    guard = rest_client.TaskGuard(rest_client.RestOptions(breaker_failures=400), "X")
    failed = rest_client.PostResult(None, 1, "gave up", unavailable=True)
    threads = [threading.Thread(target=lambda: [guard.record(failed) for _ in range(50)])
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert guard.failures == 400
    assert guard.blocked() is not None and "after 400 failed micro-batches" in guard.blocked()


# --------------------------------------------------------------------------- a deadline that holds


def test_a_dripping_answer_is_cut_at_the_read_timeout():
    # 48 bytes at a byte every 0.5 s: 24 s, though no socket read waits more than 0.5 s.
    answer = json.dumps({"predictions": [[0.5, 0.5]] * 2}).encode().ljust(48)
    with servers.dripping_server(answer, interval=0.5) as url, requests.Session() as session:
        began = time.monotonic()
        result = rest_client.post_with_retries(
            session, f"{url}/v1/models/tiny:predict",
            rest_scoring.encode_instances(np.zeros((2, 4, 4, 3), np.uint8)),
            rest_client.RestOptions(read_timeout=1.5, retries=0))
        seconds = time.monotonic() - began
    assert seconds < 1.5 + 1.0  # the deadline, and a margin for a busy machine
    assert result.outputs is None and result.attempts == 1 and result.unavailable
    assert re.fullmatch(rf"gave up after 1 attempts at {url}/v1/models/tiny:predict: answer not "
                        r"complete within read_timeout=1.5s \(\d+ of 48 bytes came\)",
                        result.error)


def test_the_answer_cap_grows_with_the_batch():
    assert rest_body.answer_byte_cap(2, 2) == 2 * 2 * 64 + 64 * 1024
    assert rest_body.answer_byte_cap(64, 10) == 64 * 10 * 64 + 64 * 1024
