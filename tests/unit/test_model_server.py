"""The model server's app and CLI (fake models): TF Serving's answer shapes, a body over the
model's limit refused while it arrives (with or without Content-Length) as ``/healthz`` keeps
answering, and the CLI's checks. The payloads, the registry and the faults have their own test
files. No TensorFlow, no Spark."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest
import requests

from lab_utils.common import saved_model
from lab_utils.serving import inputs
from lab_utils.serving.model_server import create_app, main
from tests.utils.fake_models import brightness_loader
from tests.utils.servers import client_for, image, in_thread, served_models


@pytest.fixture
def models_dir(tmp_path):
    return served_models(tmp_path)


def test_row_form_answers_predictions_and_columnar_answers_outputs(models_dir):
    with client_for(models_dir) as client:
        rows = client.post("/v1/models/tiny:predict",
                           json={"instances": [image(0), image(255)]})
        assert rows.status_code == 200
        assert rows.json() == {"predictions": [[1.0, 0.0], [0.0, 1.0]]}
        named = client.post("/v1/models/tiny:predict",
                            json={"instances": [{"pixels": image(255)}]})
        assert named.json() == {"predictions": [[0.0, 1.0]]}
        columns = client.post("/v1/models/tiny:predict",
                              json={"inputs": {"pixels": [image(0), image(51)]}})
        assert columns.json() == {"outputs": [[1.0, 0.0], pytest.approx([0.8, 0.2])]}
        plain = client.post("/v1/models/tiny:predict", json={"inputs": [image(255)]})
        assert plain.json() == {"outputs": [[0.0, 1.0]]}
        assert client.get("/stats").json()["rows_answered"] == 6


def padded(limit, size):
    """A valid one-image body padded with whitespace to ``size`` bytes."""
    head = json.dumps({"instances": [image(0)]}).encode()[:-1]
    return head + b" " * (size - len(head) - 1) + b"}"


def test_a_body_over_the_models_limit_is_413_with_or_without_content_length(models_dir,
                                                                            monkeypatch):
    monkeypatch.setattr(inputs, "MAX_INSTANCES", 3)  # read where it is used
    limit = inputs.max_body_bytes(saved_model.load_spec(models_dir / "tiny"))
    assert limit == 3 * 324 * 2 + 64 * 1024
    body = padded(limit, limit + 1)
    with client_for(models_dir) as client:
        sized = client.post("/v1/models/tiny:predict", content=body)
        chunked = client.post("/v1/models/tiny:predict",  # an iterator: no Content-Length
                              content=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]))
        for response in (sized, chunked):
            assert response.status_code == 413
            error = response.json()["error"]
            assert f"over {limit} bytes, the most model 'tiny' takes (3 images of [4, 4, 3]" \
                in error and "send smaller batches" in error
        assert f"of {limit + 1} bytes" in sized.json()["error"]
        assert f"refused after {limit + 1} bytes" in chunked.json()["error"]
        fits = client.post("/v1/models/tiny:predict", content=padded(limit, limit))
        assert fits.status_code == 200 and fits.json() == {"predictions": [[1.0, 0.0]]}
        assert client.get("/stats").json()["bad_requests"] == 2


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def read_answer(sock) -> bytes:
    """What the server sends back, until its JSON body ends or it closes the connection."""
    answer = b""
    with contextlib.suppress(ConnectionResetError):  # closed with our unread bytes: reset
        while not answer.endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer


def test_an_upload_is_refused_once_past_the_limit_and_healthz_answers_meanwhile(models_dir,
                                                                               monkeypatch):
    monkeypatch.setattr(inputs, "MAX_INSTANCES", 3)  # read where it is used
    limit = inputs.max_body_bytes(saved_model.load_spec(models_dir / "tiny"))
    app = create_app(models_dir, loader=brightness_loader)
    with in_thread(app) as url, \
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunk(b'{"instances": ['))
        for _ in range(3):  # a slow upload in flight: the health probe is answered at once
            sock.sendall(chunk(b" " * 1000))
            began = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=5).json()["status"] == "ok"
            assert time.monotonic() - began < 1.0
        sent = 3000
        while sent <= limit:  # and never the last chunk: this body has no end
            sock.sendall(chunk(b" " * 8192))
            sent += 8192
        answer = read_answer(sock)  # a server reading to the end first never answers (timeout)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"refused after" in answer


def test_cli_refuses_a_bad_rate(capsys):
    with pytest.raises(SystemExit):
        main(["--fail-rate", "2"])
    assert "not a fraction between 0 and 1" in capsys.readouterr().err
