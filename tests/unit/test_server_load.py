"""The model server under load (fake models, a real uvicorn in a thread): predicts beyond the
bound and its queue are answered 429 with ``Retry-After`` (the body read first, so the client
gets the answer), ``/healthz`` answers while predicts are in flight, bodies parsed in child
processes answer as in threads, and a dead parser process is a 503 the next request recovers
from. Bounds here are generous: the figures are ``make bench BENCH_ARGS="--suites server"``'s
(lab_utils.bench.server_load). No TensorFlow, no Spark."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import requests

from lab_utils.common import saved_model
from lab_utils.common.process import wait_until
from lab_utils.serving import admission
from lab_utils.serving.admission import AdmissionSettingsError, PredictGate
from lab_utils.serving.inputs import ServingError
from lab_utils.serving.model_server import create_app, main
from lab_utils.serving.parsing import Parser
from tests.utils.fake_models import brightness_loader, write_model
from tests.utils.servers import image, in_thread

#: A generous bound for an answer that waits on nothing (the lab's probe gives up at 3 s).
QUICK_S = 2.0


@pytest.fixture
def models_dir(tmp_path):
    write_model(tmp_path / "models" / "tiny")
    return tmp_path / "models"


class Blocking:
    """A loader whose predict, after the registry's warm-up call, waits for :attr:`release`."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, spec):
        predict = brightness_loader(spec)

        def slow(pixels):
            self.calls += 1
            if self.calls > 1:  # the first call is the registry's warm-up on a blank image
                assert self.release.wait(30), "the test never released the model"
            return predict(pixels)

        return slow


def post(url, body, results, key):
    results[key] = requests.post(f"{url}/v1/models/tiny:predict", data=body, timeout=30,
                                 headers={"Content-Type": "application/json"})


def admission_state(url):
    return requests.get(f"{url}/stats", timeout=5).json()["admission"]


def test_a_predict_beyond_the_queue_is_429_with_retry_after_and_healthz_answers(models_dir):
    model = Blocking()
    app = create_app(models_dir, loader=model, concurrency=1, queue=1)
    small = json.dumps({"instances": [image(255)]}).encode()
    # A large body: read and dropped before the 429, which its client gets.
    padded = small[:-1] + b" " * 2_000_000 + b"}"
    results: dict[str, requests.Response] = {}
    with in_thread(app) as url:
        first = threading.Thread(target=post, args=(url, small, results, "first"))
        first.start()
        assert wait_until(lambda: admission_state(url)["running"] == 1, timeout=10,
                          interval=0.05)
        second = threading.Thread(target=post, args=(url, small, results, "second"))
        second.start()  # admitted: it waits for the running one
        assert wait_until(lambda: admission_state(url)["waiting"] == 1, timeout=10,
                          interval=0.05)
        began = time.monotonic()
        health = requests.get(f"{url}/healthz", timeout=10)
        assert health.json()["status"] == "ok" and time.monotonic() - began < QUICK_S
        post(url, padded, results, "third")  # beyond the bound and the queue
        stats = requests.get(f"{url}/stats", timeout=5).json()
        model.release.set()
        first.join(30)
        second.join(30)
    third = results["third"]
    assert third.status_code == 429
    assert int(third.headers["Retry-After"]) >= 1
    error = third.json()["error"]
    assert "busy: 1 predicts running and 1 waiting" in error and "--concurrency 1" in error
    assert f"retry after {third.headers['Retry-After']} s" in error
    assert results["first"].json() == results["second"].json() == {"predictions": [[0.0, 1.0]]}
    assert stats["busy_refusals"] == 1 and stats["admission"] == {
        "concurrency": 1, "queue": 1, "running": 1, "waiting": 1}


def test_bodies_parsed_in_processes_answer_as_in_threads(models_dir):
    app = create_app(models_dir, loader=brightness_loader, parse_processes=True)
    with in_thread(app) as url:
        predict = f"{url}/v1/models/tiny:predict"
        good = requests.post(predict, json={"instances": [image(0), image(255)]}, timeout=30)
        assert good.json() == {"predictions": [[1.0, 0.0], [0.0, 1.0]]}
        text = [[["255"] * 3] * 4] * 4  # strings, not integers
        bad = requests.post(predict, json={"instances": [text]}, timeout=30)
        assert bad.status_code == 400  # the child's ServingError, whole
        assert 'instances[0][0][0][0] is "255" (a string): not an integer' in bad.json()["error"]


def test_a_dead_parser_process_is_a_503_and_the_next_request_is_parsed(models_dir):
    spec = saved_model.load_spec(models_dir / "tiny")
    body = json.dumps({"instances": [image(0)]}).encode()
    parser = Parser(1)

    async def run():
        parser.start()
        pixels, form = await parser.parse(body, spec)
        assert form == "instances" and pixels.shape == (1, 4, 4, 3)
        [child] = parser._pool._processes.values()  # noqa: SLF001 - the test kills it
        child.kill()
        child.join(10)
        with pytest.raises(ServingError) as lost:
            await parser.parse(body, spec)
        assert lost.value.status == 503 and "retry the request" in lost.value.message
        again, _ = await parser.parse(body, spec)
        assert again.shape == (1, 4, 4, 3)

    try:
        asyncio.run(run())
    finally:
        parser.close()


def test_retry_after_grows_with_the_queue_and_is_capped():
    gate = PredictGate(concurrency=2, queue=4)
    assert gate.retry_after() == 1  # nothing measured yet: one second
    gate._service_s = 1.5  # noqa: SLF001 - one turn's measured duration
    for _ in range(6):
        assert gate.try_admit()
    assert not gate.try_admit()  # 2 + 4 admitted: the 7th is refused
    assert gate.retry_after() == 5  # 6 turns ahead on 2 slots, 1.5 s each: 4.5 -> 5
    gate._service_s = 100.0  # noqa: SLF001
    assert gate.retry_after() == admission.MAX_RETRY_AFTER
    gate.release()
    assert gate.try_admit()


@pytest.mark.parametrize("concurrency, queue", [(0, 4), (2, -1)])
def test_bad_bounds_are_refused(concurrency, queue, capsys):
    with pytest.raises(AdmissionSettingsError, match="concurrency must be at least 1"):
        PredictGate(concurrency, queue)
    with pytest.raises(SystemExit):
        main(["--concurrency", str(concurrency), "--queue", str(queue)])
    assert "queue at least 0" in capsys.readouterr().err
