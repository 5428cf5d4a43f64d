"""The model server's REST API with fake models (FastAPI TestClient): TF Serving's payload and
answer shapes, the 4xx errors, and seeded fault injection. No TensorFlow, no Spark."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests

with warnings.catch_warnings():
    # Starlette 1.x suggests httpx2 for its TestClient; the httpx it still supports is locked.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from lab_utils.common import saved_model
from lab_utils.serving import model_server, payloads, registry
from tests.utils import servers
from tests.utils.fake_models import CLASSES, brightness_loader, write_model


@pytest.fixture
def models_dir(tmp_path):
    write_model(tmp_path / "models" / "tiny")
    write_model(tmp_path / "models" / ".tiny.tmp-1")  # a model being saved: not served
    return tmp_path / "models"


def client_for(models_dir, faults=None, loader=brightness_loader):
    app = model_server.create_app(models_dir, faults=faults, loader=loader, preload=False)
    # An exception the app does not handle is answered as a server would (a plain 500), not
    # raised into the test: the tests below check that no body gets that far.
    return TestClient(app, raise_server_exceptions=False)


def image(value, size=(4, 4)):
    return np.full((*size, 3), value, dtype=np.int64).tolist()


def test_status_in_tf_serving_shape(models_dir):
    with client_for(models_dir) as client:
        first = client.get("/v1/models/tiny").json()
        [status] = first["model_version_status"]
        assert status["state"] == "LOADING"  # not loaded until used (preload off)
        assert status["status"] == {"error_code": "OK", "error_message": ""}
        mtime = int((models_dir / "tiny" / "model.keras").stat().st_mtime)
        assert status["version"] == str(mtime)
        client.post("/v1/models/tiny:predict", json={"instances": [image(0)]})
        loaded = client.get(f"/v1/models/tiny/versions/{mtime}").json()
        assert loaded["model_version_status"][0]["state"] == "AVAILABLE"
        assert client.get("/healthz").json() == {"status": "ok", "models": ["tiny"]}
        meta = client.get("/v1/models/tiny/metadata").json()
        sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
        dims = [d["size"] for d in sig["inputs"]["pixels"]["tensor_shape"]["dim"]]
        assert dims == ["-1", "4", "4", "3"] and meta["metadata"]["class_names"] == list(CLASSES)


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


@pytest.mark.parametrize("body, status, fragments", [
    (b"{not json", 400, ["not valid JSON", '{"instances": [<image>, ...]}', "[4, 4, 3]"]),
    (b"[1, 2]", 400, ["must be a JSON object, got list"]),
    (b"{}", 400, ['neither of "instances" and "inputs"']),
    (json.dumps({"instances": [image(0)], "inputs": [image(0)]}).encode(), 400, ["both of"]),
    (json.dumps({"instances": []}).encode(), 400, ['"instances" must be a non-empty list']),
    (json.dumps({"instances": [image(0, (5, 4))]}).encode(), 400,
     ["has shape [5, 4, 3], but the model takes [4, 4, 3]"]),
    (json.dumps({"instances": [image(0), [[1]]]}).encode(), 400,
     ["instances[1] has shape [1, 1], but the model takes [4, 4, 3]"]),
    (json.dumps({"instances": [image(0), image(0, (4, 3))]}).encode(), 400,
     ["instances[1] has shape [4, 3, 3], but the model takes [4, 4, 3] (instances[1][0] is a "
      "list of 3)"]),
    (json.dumps({"instances": [[[["a"] * 3] * 4] * 4]}).encode(), 400,
     ['instances[0][0][0][0] is "a" (a string): not an integer']),
    (json.dumps({"instances": [image(300)]}).encode(), 400, ["from 0 to 255"]),
    (json.dumps({"instances": [{"image": image(0)}]}).encode(), 400, ['{"pixels": <image>}']),
    (json.dumps({"inputs": {"x": [image(0)]}}).encode(), 400, ["only input is \"pixels\""]),
    (json.dumps({"instances": [image(0)], "extra": 1}).encode(), 400, ["unexpected keys"]),
    (json.dumps({"instances": [image(0)], "signature_name": "other"}).encode(), 400,
     ["unknown signature_name 'other'"]),
    (json.dumps({"instances": [image(0)], "signature_name": [[[[1]]]]}).encode(), 400,
     ["unknown signature_name a list of 1"]),
])
def test_bad_payloads_are_400_naming_the_problem_and_the_shape(models_dir, body, status,
                                                               fragments):
    with client_for(models_dir) as client:
        response = client.post("/v1/models/tiny:predict", content=body)
        assert response.status_code == status
        message = response.json()["error"]  # TF Serving's error shape
        for fragment in fragments:
            assert fragment in message
        assert client.get("/stats").json()["bad_requests"] == 1


def with_pixel(value, at=(1, 2, 0)):
    pixels = image(0)
    y, x, c = at
    pixels[y][x][c] = value
    return pixels


@pytest.mark.parametrize("body, fragment", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # RecursionError in json
    (b'{"instances": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "nested too deeply"),
    (b'{"instances": [[[[' + b"9" * 5_000 + b"]]]]}", "not valid JSON"),  # ValueError in json
    (json.dumps({"instances": [with_pixel(10 ** 400)]}).encode(),  # OverflowError in numpy
     "instances[0][1][2][0] is 1000000000... (an integer): out of range"),
    (json.dumps({"instances": [[[[[0] * 3] * 3] * 4] * 4]}).encode(),
     "instances[0][0][0][0] is a list of 3: not an integer"),
    (b'{"instances": [' + json.dumps(image(0)).replace("0", "NaN", 1).encode() + b"]}",
     "instances[0][0][0][0] is NaN (a number): not an integer"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
])
def test_any_unparsable_body_is_400_in_tf_servings_error_json(models_dir, body, fragment):
    with client_for(models_dir) as client:
        response = client.post("/v1/models/tiny:predict", content=body)
        assert response.status_code == 400, response.text
        assert fragment in response.json()["error"]
        assert "[4, 4, 3] nested list of uint8 values" in response.json()["error"]


@pytest.mark.parametrize("value, fragment", [
    ("255", 'instances[0][1][2][0] is "255" (a string): not an integer'),
    (True, "instances[0][1][2][0] is true (a boolean): not an integer"),
    (1.9, "instances[0][1][2][0] is 1.9 (a number): not an integer"),
    (2.0, "instances[0][1][2][0] is 2.0 (a number): not an integer"),
    (None, "instances[0][1][2][0] is null: not an integer"),
    (-1, "instances[0][1][2][0] is -1 (an integer): out of range"),
    (256, "instances[0][1][2][0] is 256 (an integer): out of range"),
])
def test_pixels_of_a_uint8_model_are_integers_from_0_to_255(models_dir, value, fragment):
    with client_for(models_dir) as client:
        for body in ({"instances": [image(0), with_pixel(value)]},
                     {"inputs": {"pixels": [image(0), with_pixel(value)]}}):
            response = client.post("/v1/models/tiny:predict", json=body)
            assert response.status_code == 400
            message = response.json()["error"]
            where = 'inputs["pixels"][1]' if "inputs" in body else "instances[1]"
            assert fragment.replace("instances[0]", where) in message
            assert ("the model's input is uint8, so each value must be a JSON integer from 0 "
                    "to 255") in message
        named = client.post("/v1/models/tiny:predict",
                            json={"instances": [{"pixels": with_pixel(value)}]})
        assert 'instances[0]["pixels"][1][2][0] is ' in named.json()["error"]


def float_model(folder):
    write_model(folder)
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, "input_dtype": "float32"}))
    return folder


def dtype_loader(seen):
    def load(spec):
        def predict(pixels):
            seen.append(pixels.dtype)
            return np.tile([0.5, 0.5], (len(pixels), 1))
        return predict
    return load


def test_a_float_model_takes_numbers_but_not_booleans_or_strings(tmp_path):
    float_model(tmp_path / "models" / "soft")
    seen = []
    with client_for(tmp_path / "models", loader=dtype_loader(seen)) as client:
        ok = client.post("/v1/models/soft:predict",
                         json={"instances": [with_pixel(0.25), with_pixel(-3)]})
        assert ok.status_code == 200 and seen[-1] == np.float32
        for value, fragment in ((True, "is true (a boolean): not a number"),
                                ("0.5", 'is "0.5" (a string): not a number'),
                                (1e39, "is 1e+39 (a number): out of range"),
                                (10 ** 400, "is 1000000000... (an integer): out of range")):
            response = client.post("/v1/models/soft:predict",
                                   json={"instances": [with_pixel(value)]})
            assert response.status_code == 400
            assert f"instances[0][1][2][0] {fragment}" in response.json()["error"]
            assert "the model's input is float32, so each value must be a finite JSON number" \
                in response.json()["error"]
        infinite = client.post("/v1/models/soft:predict", content=b'{"instances": ['
                               + json.dumps(image(0)).replace("0", "Infinity", 1).encode()
                               + b"]}")
        assert "instances[0][0][0][0] is Infinity (a number): not finite" in \
            infinite.json()["error"]


def test_too_many_instances_is_413(models_dir, monkeypatch):
    monkeypatch.setattr(payloads, "MAX_INSTANCES", 3)  # read where it is used
    with client_for(models_dir) as client:
        response = client.post("/v1/models/tiny:predict", json={"instances": [image(0)] * 4})
        assert response.status_code == 413
        assert "send smaller batches" in response.json()["error"]


def spec_of(size, channels=3, dtype="uint8"):
    return saved_model.ModelSpec(Path("m"), CLASSES, size, channels, {"input_dtype": dtype})


def test_the_body_limit_follows_the_models_input_shape():
    small, digits = spec_of((4, 4)), spec_of((32, 32))
    assert registry.max_batch(small) == registry.MAX_INSTANCES == 4096
    assert registry.max_batch(digits) == 682  # 2**21 values of 32x32x3
    assert registry.max_batch(spec_of((224, 224))) == 13
    assert registry.max_batch(spec_of((2000, 2000))) == 1  # always room for one image
    assert registry.max_body_bytes(small) == 4096 * (48 * 5 + 21 * 4) * 2 + 64 * 1024
    assert registry.max_body_bytes(digits) < 32 * 1024 * 1024  # a 32 MiB body is refused
    assert registry.max_body_bytes(spec_of((2000, 2000), dtype="float64")) == \
        registry.MAX_BODY_BYTES  # the overall cap
    # The largest valid batch, as json.dumps writes it (", " separators), always fits.
    for spec, value in ((small, 255), (digits, 255), (spec_of((4, 4), dtype="float64"),
                                                       -2.2250738585072014e-308)):
        h, w = spec.image_size
        biggest = json.dumps({"instances": [[[[value] * 3] * w] * h] * registry.max_batch(spec)})
        assert len(biggest) <= registry.max_body_bytes(spec)


def padded(limit, size):
    """A valid one-image body padded with whitespace to ``size`` bytes."""
    head = json.dumps({"instances": [image(0)]}).encode()[:-1]
    return head + b" " * (size - len(head) - 1) + b"}"


def test_a_body_over_the_models_limit_is_413_with_or_without_content_length(models_dir,
                                                                            monkeypatch):
    monkeypatch.setattr(payloads, "MAX_INSTANCES", 3)  # read where it is used
    limit = registry.max_body_bytes(saved_model.load_spec(models_dir / "tiny"))
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
    monkeypatch.setattr(payloads, "MAX_INSTANCES", 3)  # read where it is used
    limit = registry.max_body_bytes(saved_model.load_spec(models_dir / "tiny"))
    app = model_server.create_app(models_dir, loader=brightness_loader)
    with servers.in_thread(app) as url, \
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


def test_unknown_model_is_404_naming_the_served_models(models_dir):
    write_model(models_dir / "other")
    with client_for(models_dir) as client:
        for response in (client.get("/v1/models/nope"),
                         client.post("/v1/models/nope:predict", json={"instances": [image(0)]}),
                         client.get("/v1/models/.tiny.tmp-1")):
            assert response.status_code == 404
            assert "This server serves: other, tiny" in response.json()["error"]
        wrong = client.get("/v1/models/tiny/versions/7")
        assert wrong.status_code == 404 and "Version" in wrong.json()["error"]
        path = client.get("/v2/whatever")
        assert path.status_code == 404 and "POST /v1/models/NAME:predict" in path.json()["error"]


def test_empty_models_dir_says_how_to_create_a_model(tmp_path):
    with client_for(tmp_path / "none") as client:
        error = client.get("/v1/models/digits_cnn").json()["error"]
        assert "none yet" in error and "make models" in error


def test_a_model_that_fails_to_load_is_500_with_the_cause(models_dir):
    def broken(spec):
        raise OSError("truncated archive")

    app = model_server.create_app(models_dir, loader=broken, preload=False)
    with TestClient(app) as client:
        response = client.post("/v1/models/tiny:predict", json={"instances": [image(0)]})
        assert response.status_code == 500
        assert "failed to load: OSError: truncated archive" in response.json()["error"]
        status = client.get("/v1/models/tiny").json()["model_version_status"][0]
        assert status["state"] == "END" and "truncated" in status["status"]["error_message"]


@pytest.mark.parametrize("metadata, fragment", [
    ("{not json", "metadata.json is not valid JSON"),
    ('["a list"]', "metadata.json must hold a JSON object, not list"),
    (json.dumps({"class_names": ["dark", "light"], "image_size": "4x4", "channels": 3}),
     "image_size must be [height, width] in pixels, not '4x4'"),
    (json.dumps({"class_names": ["dark", "light"], "image_size": [4, 4], "channels": 3,
                 "input_dtype": "str"}), "input_dtype 'str' is not an integer or float dtype"),
])
def test_a_broken_model_is_its_error_state_and_the_others_are_served(models_dir, metadata,
                                                                     fragment):
    broken = write_model(models_dir / "broken")
    (broken / "metadata.json").write_text(metadata)
    app = model_server.create_app(models_dir, loader=brightness_loader)  # preload, as served
    with TestClient(app) as client:  # start-up goes through the broken model
        assert client.get("/healthz").json() == {"status": "ok", "models": ["broken", "tiny"]}
        [status] = client.get("/v1/models/broken").json()["model_version_status"]
        assert status["state"] == "END" and status["status"]["error_code"] == "INVALID_ARGUMENT"
        assert fragment in status["status"]["error_message"]
        assert "make models" in status["status"]["error_message"]
        for answer in (client.post("/v1/models/broken:predict", json={"instances": [image(0)]}),
                       client.get("/v1/models/broken/metadata")):
            assert answer.status_code == 500
            assert answer.json()["error"].startswith("model 'broken' cannot be served: ")
            assert fragment in answer.json()["error"]
        good = client.post("/v1/models/tiny:predict", json={"instances": [image(255)]})
        assert good.json() == {"predictions": [[0.0, 1.0]]}
        write_model(broken)  # fixed in place: served from the next request, no restart
        fixed = client.post("/v1/models/broken:predict", json={"instances": [image(255)]})
        assert fixed.status_code == 200 and fixed.json() == {"predictions": [[0.0, 1.0]]}


def test_faults_are_off_by_default(models_dir):
    with client_for(models_dir) as client:
        codes = [client.post("/v1/models/tiny:predict", json={"instances": [image(0)]})
                 .status_code for _ in range(20)]
        assert codes == [200] * 20
        stats = client.get("/stats").json()
        assert stats["injected_errors"] == 0 and stats["faults"]["fail_rate"] == 0.0


def test_fault_injection_is_seeded_and_counted(models_dir):
    def run(seed):
        faults = model_server.Faults(fail_rate=0.3, seed=seed)
        with client_for(models_dir, faults) as client:
            codes = [client.post("/v1/models/tiny:predict",
                                 json={"instances": [image(0)] * 2}).status_code
                     for _ in range(40)]
            return codes, client.get("/stats").json()

    codes, stats = run(seed=1)
    assert codes == run(seed=1)[0]  # same seed, same faults
    assert codes != run(seed=2)[0]
    failed = codes.count(503)
    assert set(codes) == {200, 503} and 4 <= failed <= 20  # about 30% of 40
    assert stats["injected_errors"] == failed and stats["injected_error_rows"] == 2 * failed
    assert stats["rows_answered"] == 2 * (40 - failed)


def test_delay_injection_sleeps_before_answering(models_dir):
    import time

    faults = model_server.Faults(delay=0.3, delay_rate=1.0)
    with client_for(models_dir, faults) as client:
        began = time.perf_counter()
        response = client.post("/v1/models/tiny:predict", json={"instances": [image(0)]})
        assert response.status_code == 200 and time.perf_counter() - began >= 0.3
        assert client.get("/stats").json()["delayed"] == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"fail_rate": 1.5}, "fail_rate=1.5 must be between 0 and 1"),
    ({"delay_rate": -0.1}, "delay_rate=-0.1"),
    ({"delay": -1}, "delay=-1 must be >= 0"),
])
def test_bad_fault_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model_server.Faults(**kwargs)


def test_cli_refuses_a_bad_rate(capsys):
    with pytest.raises(SystemExit):
        model_server.main(["--fail-rate", "2"])
    assert "not a fraction between 0 and 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- image files (b64)


def encoded(pixels, fmt="PNG", **kw) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def recording_loader(seen):
    """Brightness predictions, and every batch the model got kept in ``seen``."""
    def load(spec):
        predict = brightness_loader(spec)

        def recording(pixels):
            seen.append(pixels.copy())
            return predict(pixels)
        return recording
    return load


def varied_files():
    """Files whose decode is not trivial: noise PNG and JPEG, a larger one that is resized,
    grayscale, RGBA (composited on white)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (4, 4, 3))
    return [encoded(noise), encoded(noise, "JPEG", quality=80),
            encoded(rng.integers(0, 256, (30, 40, 3))), encoded(noise[:, :, 0]),
            encoded(np.dstack([noise, noise[:, :, :1]]))]


def test_image_files_as_b64_are_predicted_exactly_as_their_decoded_pixels(models_dir):
    from lab_utils.data import images

    files = varied_files()
    pixels = [images.decode_image(f, (4, 4)).tolist() for f in files]  # the in-Spark decode
    seen = []
    with client_for(models_dir, loader=recording_loader(seen)) as client:
        lists = client.post("/v1/models/tiny:predict", json={"instances": pixels})
        assert lists.status_code == 200
        bodies = [{"instances": [b64(f) for f in files]},
                  {"instances": [{"image_bytes": b64(f)} for f in files]},
                  {"inputs": {"image_bytes": [b64(f) for f in files]}},
                  {"inputs": [b64(f) for f in files]}]
        for body in bodies:
            answer = client.post("/v1/models/tiny:predict", json=body)
            assert answer.status_code == 200, answer.text
            key = "predictions" if "instances" in body else "outputs"
            assert answer.json()[key] == lists.json()["predictions"]  # exactly, not approx
        websafe = client.post("/v1/models/tiny:predict", json={"instances": [
            {"b64": base64.urlsafe_b64encode(f).decode()} for f in files]})
        assert websafe.json() == lists.json()
    warm_up, from_lists, *from_files = seen  # the registry traces the model on zeros first
    assert not warm_up.any() and len(from_files) == len(bodies) + 1
    for batch in from_files:  # the model got the very same uint8 array every time
        assert batch.dtype == np.uint8 and np.array_equal(batch, from_lists)
    assert len(set(np.asarray(lists.json()["predictions"])[:, 1])) == len(files)


def test_metadata_declares_the_image_input(models_dir):
    with client_for(models_dir) as client:
        meta = client.get("/v1/models/tiny/metadata").json()["metadata"]
    assert meta["image_input"] == {
        "name": "image_bytes", "encoding": "b64", "decoded_to": [4, 4, 3],
        "decode": "lab_utils.data.images.decode_image: any image Pillow reads, converted to "
                  "RGB, resized (bilinear) to the model's size", "for_input": "pixels"}
    assert registry.image_input(spec_of((4, 4), channels=1)) is None  # decoded files are RGB
    assert registry.image_input(spec_of((4, 4), dtype="int8")) is None  # 255 does not fit
    assert registry.image_input(spec_of((4, 4), dtype="float32"))["decoded_to"] == [4, 4, 3]


def test_a_float_model_gets_decoded_files_as_floats(tmp_path):
    float_model(tmp_path / "models" / "soft")
    seen = []
    with client_for(tmp_path / "models", loader=dtype_loader(seen)) as client:
        ok = client.post("/v1/models/soft:predict", json={"instances": [b64(encoded(
            np.full((4, 4, 3), 9)))]})
        assert ok.status_code == 200 and seen == [np.float32, np.float32]  # warm-up, request


def test_undecodable_files_are_each_named_with_their_reason(models_dir):
    good = encoded(np.full((4, 4, 3), 200))
    noise = encoded(np.random.default_rng(1).integers(0, 256, (32, 32, 3)))
    body = {"instances": [b64(good), b64(noise[:len(noise) // 2]), {"b64": "not base64!"},
                          b64(b"just text"), b64(good)]}
    with client_for(models_dir) as client:
        response = client.post("/v1/models/tiny:predict", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error.startswith("3 of 5 image files cannot be used: instances[1]: corrupt or "
                                "truncated image")
        assert "instances[2] is not valid base64" in error
        assert "instances[3]: not an image file (Pillow cannot identify it)" in error
        assert "instances[0]" not in error and "instances[4]" not in error
        named = client.post("/v1/models/tiny:predict", json={"inputs": {"image_bytes": [
            b64(good), b64(b"")]}})
        assert 'inputs["image_bytes"][1]: empty file (0 bytes)' in named.json()["error"]
        assert client.get("/stats").json()["bad_requests"] == 2


def test_more_than_ten_bad_files_are_counted_not_all_named(models_dir):
    with client_for(models_dir) as client:
        error = client.post("/v1/models/tiny:predict", json={"instances": [
            b64(b"x")] * 12}).json()["error"]
    assert error.startswith("12 of 12 image files cannot be used")
    assert "instances[9]:" in error and "instances[10]" not in error and "and 2 more" in error


@pytest.mark.parametrize("body, fragment", [
    ({"instances": [{"b64": 5}]}, 'instances[0] is an object with keys [\'b64\']: an image file '
                                  'goes in {"b64": "<base64 of the file>"}'),
    ({"instances": [b64(b"x"), image(0)]}, "instances[1] is a list of 4: an image file goes in"),
    ({"instances": [{"image_bytes": "aGVsbG8="}]},
     'instances[0]["image_bytes"] is "aGVsbG8=" (a string): an image file goes in {"b64"'),
    ({"instances": [{"b64": "aGVsbG8=", "x": 1}]}, '{"pixels": <image>} or {"image_bytes": '
                                                   '{"b64": ...}} (the model\'s only input)'),
    ({"inputs": {"photo_bytes": [b64(b"x")]}},
     'only input is "pixels" (or "image_bytes" for image files)'),
])
def test_malformed_binary_payloads_are_400_saying_the_form(models_dir, body, fragment):
    with client_for(models_dir) as client:
        response = client.post("/v1/models/tiny:predict", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_a_model_that_takes_no_rgb_files_refuses_them_saying_to_send_pixels(tmp_path):
    folder = write_model(tmp_path / "models" / "narrow")
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, "input_dtype": "int8"}))
    with client_for(tmp_path / "models") as client:
        assert client.get("/v1/models/narrow/metadata").json()["metadata"]["image_input"] is None
        response = client.post("/v1/models/narrow:predict",
                               json={"instances": [b64(encoded(np.zeros((4, 4, 3))))]})
    assert response.status_code == 400
    assert "this model takes no image files" in response.json()["error"]
    assert "send pixels as nested lists" in response.json()["error"]
