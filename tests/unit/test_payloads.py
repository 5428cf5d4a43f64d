"""Predict payloads through the model server's app (fake models, FastAPI TestClient): every
malformed body is a 400 naming the problem and the expected shape, the values a model's dtype
allows, the instance limit, and image files in TF Serving's binary form ``{"b64": ...}``
decoded exactly as in-Spark inference decodes them. No TensorFlow, no Spark."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from lab_utils.serving import inputs
from tests.utils.fake_models import brightness_loader, write_model
from tests.utils.servers import client_for, image, served_models


@pytest.fixture
def models_dir(tmp_path):
    return served_models(tmp_path)


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
    monkeypatch.setattr(inputs, "MAX_INSTANCES", 3)  # read where it is used
    with client_for(models_dir) as client:
        response = client.post("/v1/models/tiny:predict", json={"instances": [image(0)] * 4})
        assert response.status_code == 413
        assert "send smaller batches" in response.json()["error"]


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
