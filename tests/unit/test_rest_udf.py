"""The driver's side of REST scoring without Spark: the server check against a real server on
loopback (fake model), the payload chosen from the model's metadata."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from lab_utils.common import net
from lab_utils.inference import rest_client, rest_scoring, rest_udf
from tests.utils import servers

CLASSES = ("dark", "light")


def png(value: int, size=(4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def live_server(tmp_path):
    """A real uvicorn on loopback serving a fake model, in a thread of this process."""
    with servers.fake_model_server(tmp_path) as url:
        yield url


def test_driver_check_waits_until_available_then_scores_over_http(live_server):
    status = rest_udf.check_model_server(live_server, "tiny", wait=10)
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    options = rest_client.RestOptions(batch_size=3)
    with requests.Session() as session:
        def post_fn(pixels):
            return rest_client.post_with_retries(
                session, f"{live_server}/v1/models/tiny:predict",
                rest_scoring.encode_instances(pixels), options)

        out = rest_scoring.score_images_rest(
            [str(i) for i in range(7)], [png(v) for v in (0, 40, 90, 160, 200, 230, 255)],
            post_fn, CLASSES, (4, 4), batch_size=3)
    assert list(out["prediction"]) == ["dark"] * 3 + ["light"] * 4
    assert out["error"].isna().all() and set(out["attempts"]) == {1}


def test_driver_check_names_the_url_and_the_fix_when_nothing_answers():
    url = f"http://127.0.0.1:{net.free_port()}"
    with pytest.raises(rest_udf.ModelServerUnavailableError) as caught:
        rest_udf.check_model_server(url, "tiny", timeout=1)
    assert url in str(caught.value) and "make lab" in str(caught.value)


def test_driver_check_names_the_served_models(live_server):
    with pytest.raises(rest_udf.ModelServerUnavailableError,
                       match=r"does not serve model 'nope': .*This server serves: tiny"):
        rest_udf.check_model_server(live_server, "nope")


def test_auto_payload_reads_the_models_metadata(live_server):
    assert rest_udf.resolve_payload(live_server, "tiny") == "b64"
    assert rest_udf.resolve_payload(live_server, "tiny", "pixels") == "pixels"
    assert rest_udf.resolve_payload(servers.closed_port_url(), "tiny") == "pixels"
    with pytest.raises(rest_scoring.PayloadError, match=r"payload='png' is not one of \('auto', "
                                                        r"'b64', 'pixels'\)"):
        rest_udf.resolve_payload(live_server, "tiny", "png")


def signature(inputs):
    return {"metadata": {"signature_def": {"signature_def": {"serving_default": {
        "inputs": inputs}}}}}


@pytest.mark.parametrize("metadata, declared", [
    (signature({"image_bytes": {"dtype": "DT_STRING"}}), True),  # a TF Serving bytes export
    (signature({"image_bytes": {"dtype": "DT_FLOAT"}}), False),
    (signature({"pixels": {"dtype": "DT_STRING"}}), False),  # not named *_bytes
    (signature({"image_bytes": {"dtype": "DT_STRING"}, "key": {"dtype": "DT_STRING"}}), False),
    (signature({"pixels": {"dtype": "DT_FLOAT"}}), False),  # a tensor input: pixels
    ({"metadata": {"image_input": None, **signature({})["metadata"]}}, False),
    ({}, False),
    ({"metadata": "?"}, False),
])
def test_which_metadata_declares_an_image_input(metadata, declared):
    assert rest_udf.declares_image_input(metadata) is declared


# --------------------------------------------------------------------------- what else answers


@pytest.fixture
def odd_server():
    """A server on loopback that is not TF Serving, or whose model is not ready."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    answers = {
        "/healthz": lambda: JSONResponse({"status": "ok"}),
        "/v1/models/page": lambda: HTMLResponse("<html>a web page</html>"),
        "/v1/models/other": lambda: JSONResponse({"models": []}),
        "/v1/models/busy": lambda: JSONResponse({"error": "overloaded"}, status_code=503),
        "/v1/models/retired": lambda: JSONResponse(
            {"model_version_status": [{"version": "1", "state": "END"}]}),
    }
    app = Starlette(routes=[Route(path, lambda request, make=make: make())
                            for path, make in answers.items()])
    with servers.in_thread(app) as url:
        yield url


@pytest.mark.parametrize("name, message", [
    ("page", r"/v1/models/page did not answer TF Serving's model status "
             r"\('<html>a web page</html>'\): is http://127\.0\.0\.1:\d+ a TF Serving REST "
             r"endpoint\?"),
    ("other", r"/v1/models/other did not answer TF Serving's model status "
              r"\('\{\"models\": \[\]\}'\)"),
    ("busy", r"/v1/models/busy answered HTTP 503: overloaded$"),
    ("retired", r"model 'retired' at http://127\.0\.0\.1:\d+ is END, not AVAILABLE: .* read the "
                r"server's log"),
])
def test_driver_check_says_what_answered_instead(odd_server, name, message):
    with pytest.raises(rest_udf.ModelServerUnavailableError, match=message):
        rest_udf.check_model_server(odd_server, name, timeout=2, wait=0)
    assert rest_udf.resolve_payload(odd_server, name) == "pixels"


@pytest.fixture
def garbled_server():
    with servers.garbled_server() as url:
        yield url


def test_a_garbled_answer_is_no_answer(garbled_server):
    with pytest.raises(rest_udf.ModelServerUnavailableError,
                       match=rf"the model server at {garbled_server} does not answer "
                             r"\(BadStatusLine\): start the lab with `make lab`"):
        rest_udf.check_model_server(garbled_server, "tiny", timeout=2)
    assert rest_udf.resolve_payload(garbled_server, "tiny") == "pixels"


def test_a_garbled_answer_is_an_oserror_for_every_http_json_caller(garbled_server):
    # services.healthy and serving.process.server_healthy count OSError as "not answering".
    from lab_utils.common.net import NotHttpError, http_json
    from lab_utils.serving.process import server_healthy

    with pytest.raises(NotHttpError, match="did not answer with HTTP") as caught:
        http_json(garbled_server + "/healthz", timeout=2)
    assert isinstance(caught.value, OSError)
    assert server_healthy(garbled_server, timeout=2) is False


# --------------------------------------------------------------------------- requests in flight


class InFlightServer:
    """A TF Serving look-alike on loopback that counts the predicts it holds at once: each is
    held ``hold`` seconds (the first ones longest, so answers come back out of order), then
    answered from the images' brightness (dark/light). A batch whose first pixel is in
    ``refuse`` is answered 500 (not retried); one in ``flaky`` 503 on its first try."""

    def __init__(self, hold=0.1, refuse=(), flaky=()):
        self.hold, self.refuse, self.flaky = hold, set(refuse), set(flaky)
        self.now = self.peak = self.requests = 0
        self.tried: set[int] = set()

    def app(self):
        import asyncio

        import numpy as np
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def predict(request: Request) -> JSONResponse:
            pixels = np.asarray((await request.json())["instances"], dtype=float)
            first = int(pixels.flat[0])
            self.requests += 1
            self.now += 1  # one event loop: no lock needed
            self.peak = max(self.peak, self.now)
            try:
                await asyncio.sleep(self.hold * (2 if self.requests <= 2 else 1))
            finally:
                self.now -= 1
            if first in self.refuse:
                return JSONResponse({"error": "broken model"}, status_code=500)
            if first in self.flaky and first not in self.tried:
                self.tried.add(first)
                return JSONResponse({"error": "busy"}, status_code=503)
            light = pixels.reshape(len(pixels), -1).mean(axis=1) / 255
            return JSONResponse({"predictions": [[1 - v, v] for v in light]})

        return Starlette(routes=[
            Route("/healthz", lambda request: JSONResponse({"status": "ok"})),
            Route("/v1/models/tiny:predict", predict, methods=["POST"])])


def in_flight_task(url, in_flight, values, *, arrow_batch=None, batch_size=2, sessions=None,
                   **options):
    """Score one image per value as a task does, ``arrow_batch`` rows per Arrow batch."""
    import pandas as pd

    paths, contents = [f"f{i:02d}" for i in range(len(values))], [png(v) for v in values]
    step = arrow_batch or len(values)
    batches = ((pd.Series(paths[i:i + step]), pd.Series(contents[i:i + step]))
               for i in range(0, len(values), step))
    client = rest_client.RestOptions(batch_size=batch_size, in_flight=in_flight, backoff=0.01,
                                     **options)
    return pd.concat(rest_scoring.score_task(batches, f"{url}/v1/models/tiny:predict", client,
                                             CLASSES, (4, 4), where=url, new_session=sessions),
                     ignore_index=True)


# 24 images, dark and light in turn: 12 micro-batches of 2, every one with a dark and a light.
VALUES = [v for i in range(12) for v in (10 + i, 240 - i)]
EXPECTED = ["dark", "light"] * 12


@pytest.mark.parametrize("in_flight", [1, 4])
def test_in_flight_is_the_bound_and_rows_keep_their_order(in_flight):
    server = InFlightServer(hold=0.1)
    made = []

    class Session(requests.Session):
        closed = False

        def close(self):
            self.closed = True
            super().close()

    def new_session():
        made.append(Session())
        return made[-1]

    with servers.in_thread(server.app()) as url:
        out = in_flight_task(url, in_flight, VALUES, arrow_batch=10,
                             sessions=None if in_flight == 1 else new_session)
    assert list(out["prediction"]) == EXPECTED  # in input order, though answered out of it
    assert out["error"].isna().all() and set(out["attempts"]) == {1}
    assert server.requests == 12
    assert server.peak == in_flight  # never more than asked; reached, with 12 batches of 0.1 s
    if in_flight > 1:
        # one session per sending thread, at most in_flight of them, every one closed
        assert 1 <= len(made) <= in_flight
        assert all(session.closed for session in made)


def test_in_flight_keeps_errors_and_retries_per_request():
    """Batch 3 is refused (500: not retried), batch 5 answered 503 once (retried): exactly
    their rows show it, every other row is scored at once, as with one request at a time."""
    server = InFlightServer(hold=0.05, refuse={VALUES[6]}, flaky={VALUES[10]})
    with servers.in_thread(server.app()) as url:
        out = in_flight_task(url, 3, VALUES)
    refused, retried = [6, 7], [10, 11]
    assert list(out["prediction"].drop(refused)) == [p for i, p in enumerate(EXPECTED)
                                                     if i not in refused]
    assert out["prediction"][refused].isna().all()
    assert out["error"][refused].str.endswith("refused the request: HTTP 500: broken model").all()
    assert out["error"].drop(refused).isna().all()
    assert list(out["attempts"][retried]) == [2, 2]
    assert set(out["attempts"].drop(retried)) == {1}
    assert server.requests == 13 and server.peak <= 3


def test_in_flight_shares_the_tasks_breaker():
    """Against a server that is down, the threads share the task's breaker: once 2 batches
    failed no further batch is sent, only those already in flight finish."""
    url = servers.closed_port_url()
    out = in_flight_task(url, 3, VALUES, retries=1, breaker_failures=2)
    assert out["prediction"].isna().all()
    gave_up = out["error"].str.startswith("gave up after 2 attempts")
    not_sent = out["error"].str.startswith("not sent: circuit breaker open after")
    assert (gave_up | not_sent).all()
    # 2 batches open it; at most in_flight - 1 more were already being sent (2 rows a batch)
    assert 2 * 2 <= gave_up.sum() <= 2 * (2 + 3 - 1)
    assert set(out["attempts"][not_sent]) == {0}


def test_one_session_is_refused_with_several_threads():
    with pytest.raises(rest_scoring.RestScoringError, match="with in_flight=2 pass new_session="):
        next(rest_scoring.score_task(iter([]), "http://127.0.0.1:1/v1/models/tiny:predict",
                                     rest_client.RestOptions(in_flight=2), CLASSES, (4, 4),
                                     session=requests.Session()))
