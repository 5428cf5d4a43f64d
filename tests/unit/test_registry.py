"""The served models through the model server's app (fake models, FastAPI TestClient): status
and metadata in TF Serving's shape, 404 naming the served models, a model that fails to load or
whose files are broken is its own error state while the others are served. No TensorFlow."""

from __future__ import annotations

import json

import pytest

from lab_utils.serving.model_server import create_app
from lab_utils.serving.registry import image_input
from tests.utils.fake_models import CLASSES, brightness_loader, write_model
from tests.utils.servers import TestClient, client_for, image, served_models, spec_of


@pytest.fixture
def models_dir(tmp_path):
    return served_models(tmp_path)


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

    app = create_app(models_dir, loader=broken, preload=False)
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
    app = create_app(models_dir, loader=brightness_loader)  # preload, as served
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


def test_error_messages_name_files_relative_to_the_models_folder(models_dir):
    broken = write_model(models_dir / "broken")
    (broken / "metadata.json").write_text("{not json")

    def failing(spec):
        raise OSError(f"cannot open {spec.model_file.resolve()}")

    app = create_app(models_dir, loader=failing, preload=False)
    with TestClient(app) as client:
        [bad_files] = client.get("/v1/models/broken").json()["model_version_status"]
        error = bad_files["status"]["error_message"]
        assert error.startswith("broken/metadata.json is not valid JSON"), error
        failed = client.post("/v1/models/tiny:predict", json={"instances": [image(0)]}).json()
        assert failed["error"].startswith("model 'tiny' failed to load: OSError: cannot open "
                                          "tiny/model.keras; fix the model in tiny/ (")
        for message in (error, failed["error"]):
            assert str(models_dir.parent) not in message  # nothing of the server's disk


def test_metadata_declares_the_image_input(models_dir):
    with client_for(models_dir) as client:
        meta = client.get("/v1/models/tiny/metadata").json()["metadata"]
    assert meta["image_input"] == {
        "name": "image_bytes", "encoding": "b64", "decoded_to": [4, 4, 3],
        "decode": "lab_utils.data.images.decode_image: any image Pillow reads, converted to "
                  "RGB, resized (bilinear) to the model's size", "for_input": "pixels"}
    assert image_input(spec_of((4, 4), channels=1)) is None  # decoded files are RGB
    assert image_input(spec_of((4, 4), dtype="int8")) is None  # 255 does not fit
    assert image_input(spec_of((4, 4), dtype="float32"))["decoded_to"] == [4, 4, 3]
