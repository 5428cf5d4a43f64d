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
