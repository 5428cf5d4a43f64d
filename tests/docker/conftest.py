"""The Docker lab for real: both images built from the repository's Dockerfiles, the compose lab
up with 2 workers from this checkout, notebooks executed inside its JupyterLab container.

Without a Docker engine the layer skips with one line saying how to get one, except where
``LAB_REQUIRE_DOCKER=1`` (CI sets it): there a missing engine fails the run.

The compose project gets its own name, free host ports, and its own shared and secrets folders
under ``test-output/docker/lab/`` (owned by whoever runs the tests: root in CI, so the services
run as uid 1000 and the folder is handed to it, as `make docker-up` does for a root checkout).
Not under pytest's temporary directory: another pytest run on the machine may rotate that away
while the lab still writes there. The user's own ``share_storages/`` and lab are never touched.

Fixtures only: the helpers the tests share with them are in ``tests/utils/docker_lab.py``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab_utils.common.net import free_ports
from lab_utils.ops import docker
from tests.utils.docker_lab import BASE_IMAGE, DockerLab, ensure_base_image

ROOT = Path(__file__).resolve().parents[2]
HOW_TO_GET_AN_ENGINE = (
    "no Docker engine answers: `apt-get install docker.io docker-compose mmdebstrap`, start "
    "`dockerd &` as root, then `make test-docker` (see docs/docker.md)")
#: Debian's own CA folder for locally added certificates (`man update-ca-certificates`).
HOST_CA_FOLDER = Path("/usr/local/share/ca-certificates")


@pytest.fixture(scope="session")
def engine() -> None:
    if docker.engine_answers():
        return
    if os.environ.get("LAB_REQUIRE_DOCKER") == "1":
        pytest.fail(f"LAB_REQUIRE_DOCKER=1 but {HOW_TO_GET_AN_ENGINE}")
    pytest.skip(HOW_TO_GET_AN_ENGINE)


@pytest.fixture(scope="session")
def docker_lab(engine) -> Iterator[DockerLab]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    timings["base image"] = 0.0
    how = ensure_base_image()
    timings["base image"] = time.monotonic() - started
    print(f"\n[docker] base image {BASE_IMAGE}: {how}")
    timings[f"base image ({how})"] = timings.pop("base image")
    certs = sorted(HOST_CA_FOLDER.glob("*.crt")) if HOST_CA_FOLDER.is_dir() else []
    if certs:  # the host's locally added CAs (a TLS-intercepting proxy), as users add theirs
        docker.copy_extra_ca(ROOT, HOST_CA_FOLDER)

    work = ROOT / "test-output" / "docker" / "lab"
    shutil.rmtree(work, ignore_errors=True)  # the last run's, kept for reading until now
    work.mkdir(parents=True)
    uid, gid = docker.host_ids(ROOT)
    ports = free_ports(8)
    # Connect's two ports, outside the block of driver UIs (only its first port was checked).
    connect_port, connect_ui_port = [p for p in ports[5:] if not 0 <= p - ports[4] <= 3][:2]
    env = {
        "COMPOSE_PROJECT_NAME": f"labtest{uuid.uuid4().hex[:8]}",
        "LAB_UID": str(uid), "LAB_GID": str(gid), "LAB_WORKERS": "2",
        "LAB_SHARE_HOST_DIR": str(work / "share_storages"),
        "LAB_SECRETS_DIR": str(work / "secrets"),
        "LAB_MASTER_UI_PORT": str(ports[0]), "LAB_HISTORY_PORT": str(ports[1]),
        "LAB_MODEL_SERVER_PORT": str(ports[2]), "LAB_JUPYTER_PORT": str(ports[3]),
        # A block of four driver UI ports, published as they are.
        "LAB_DRIVER_UI_PORT": str(ports[4]), "LAB_DRIVER_UI_PORT_LAST": str(ports[4] + 3),
        "LAB_CONNECT_PORT": str(connect_port), "LAB_CONNECT_UI_PORT": str(connect_ui_port),
        # The Connect server's idle executors go back soon, so the classic notebooks after its
        # run get their cores at once.
        "LAB_CONNECT_IDLE_TIMEOUT": "15",
        # Fresh secrets: the test never reads or writes the user's .env.
        "JUPYTER_TOKEN": secrets.token_urlsafe(32),
        "SPARK_AUTH_SECRET": secrets.token_urlsafe(32),
        "SPARK_CONNECT_AUTHENTICATE_TOKEN": secrets.token_urlsafe(32),
    }
    project = docker.Project(root=ROOT, env={**os.environ, **env})
    lab = DockerLab(project, timings)
    try:
        mark = time.monotonic()
        docker.build(project)
        timings["build both images"] = time.monotonic() - mark
        mark = time.monotonic()
        docker.up(project, timeout=420, build_images=False)
        timings["up until healthy"] = time.monotonic() - mark
        yield lab
    finally:
        logs = ROOT / "test-output" / "docker"
        logs.mkdir(parents=True, exist_ok=True)
        out = docker.compose(project, "logs", "--no-color", check=False, capture=True)
        text = out.stdout + out.stderr
        for value in lab.secret_values:  # JupyterLab logs its URL with the token
            text = text.replace(value, "<redacted>")
        (logs / "compose.log").write_text(text)
        docker.down(project)
        line = "[docker] " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        print(line)
        # The root conftest prints every fresh *.summary.txt at the end of the run, so the CI
        # log says what the layer cost (build, start) without -s.
        (logs / "timings.summary.txt").write_text(line + "\n")
