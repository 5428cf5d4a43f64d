"""Notebook 03's opt-in download of ResNet-50's ImageNet files (``LAB_IMAGENET_DOWNLOAD``).

No test reaches the internet: the "network" is a closed port on loopback (nothing listens, every
connection is refused, as on a machine without a network) or a small HTTP server in a thread.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lab_utils import config
from lab_utils.errors import LabError
from lab_utils.inference import resnet
from tests.utils.servers import closed_port_url

WEIGHTS = b"not really an HDF5 file, but bytes with a known MD5"
INDEX = json.dumps({str(k): [f"n{k:08d}", "tench" if k == 0 else f"class_{k}"]
                    for k in range(1000)}).encode()


@contextmanager
def file_server(files: dict[str, bytes]) -> Iterator[str]:
    """An HTTP server on loopback that serves ``files`` by path, 404 for anything else."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_switch_is_off_by_default_and_read_from_the_environment():
    assert config.load({}).imagenet_download is False
    assert config.load({"LAB_IMAGENET_DOWNLOAD": "1"}).imagenet_download is True
    assert config.to_env(config.load({"LAB_IMAGENET_DOWNLOAD": "1"}))[
        "LAB_IMAGENET_DOWNLOAD"] == "1"


def test_without_the_switch_nothing_is_fetched(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("downloaded without LAB_IMAGENET_DOWNLOAD")

    monkeypatch.setattr(resnet.urllib.request, "urlopen", no_network)
    assert resnet.imagenet_weights(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_no_network_raises_a_lab_error_naming_the_switch_and_the_fix(tmp_path, monkeypatch):
    unreachable = closed_port_url()  # connection refused, like a machine without a network
    monkeypatch.setattr(resnet, "WEIGHTS_URL", f"{unreachable}/{resnet.WEIGHTS_FILE}")
    with pytest.raises(resnet.ImagenetDownloadError) as caught:
        resnet.imagenet_weights(tmp_path, download=True)
    err = caught.value
    assert isinstance(err, LabError) and isinstance(err, ConnectionError)
    message = str(err)
    # What was asked, from where, and both ways out: no switch (random weights), or the files
    # placed by hand, with the how-to.
    assert f"LAB_IMAGENET_DOWNLOAD=1 asked to download {resnet.WEIGHTS_FILE}" in message
    assert unreachable in message
    assert "unset LAB_IMAGENET_DOWNLOAD to run on random weights" in message
    assert f"put the files in {tmp_path} yourself" in message
    assert resnet.WEIGHTS_HOWTO in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written left


def test_a_download_writes_both_files_once(tmp_path):
    files = {"/w.h5": WEIGHTS, "/index.json": INDEX}
    with file_server(files) as url:
        kwargs = {"weights_url": f"{url}/w.h5", "class_index_url": f"{url}/index.json",
                  "weights_md5": hashlib.md5(WEIGHTS).hexdigest(), "timeout": 5}
        written = resnet.fetch_imagenet(tmp_path, **kwargs)
        assert sorted(p.name for p in written) == sorted(
            [resnet.WEIGHTS_FILE, resnet.CLASS_INDEX_FILE])
        assert (tmp_path / resnet.WEIGHTS_FILE).read_bytes() == WEIGHTS
        assert resnet.class_names(tmp_path)[0] == "tench"
        assert resnet.fetch_imagenet(tmp_path, **kwargs) == []  # present: not fetched again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [resnet.WEIGHTS_FILE, resnet.CLASS_INDEX_FILE])  # no temporary file left


def test_a_changed_file_is_refused_and_not_kept(tmp_path):
    with (file_server({"/w.h5": WEIGHTS + b"!", "/index.json": INDEX}) as url,
          pytest.raises(resnet.ImagenetDownloadError, match="is not the file Keras publishes")):
        resnet.fetch_imagenet(tmp_path, weights_url=f"{url}/w.h5",
                              class_index_url=f"{url}/index.json",
                              weights_md5=hashlib.md5(WEIGHTS).hexdigest(), timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_the_urls_are_the_ones_keras_uses():
    # Read from Keras' source text, without importing Keras (and TensorFlow) in the unit layer.
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("keras")
    root = Path(spec.origin).parent / "src" / "applications"
    resnet_src = (root / "resnet.py").read_text()
    utils_src = (root / "imagenet_utils.py").read_text()
    base = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
    assert base in resnet_src and base + resnet.WEIGHTS_FILE == resnet.WEIGHTS_URL
    assert resnet.WEIGHTS_MD5 in resnet_src
    assert '"data/imagenet_class_index.json"' in utils_src
    assert resnet.CLASS_INDEX_URL.endswith("data/imagenet_class_index.json")
