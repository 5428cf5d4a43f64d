"""`lab_utils.ops.docker` without an engine: the ids a checkout maps to and what a rebuild
removes. The Docker layer (tests/docker) runs the real thing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lab_utils.ops import docker


def _project(tmp_path: Path, **env: str) -> docker.Project:
    return docker.Project(root=tmp_path, env=env)


def test_a_root_checkout_runs_as_1000_any_other_as_its_owner(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to hand a folder to another uid")
    os.chown(tmp_path, 0, 0)
    assert docker.host_ids(tmp_path) == (1000, 1000)
    os.chown(tmp_path, 501, 20)
    assert docker.host_ids(tmp_path) == (501, 20)


def test_image_tags_follow_lab_image_tag(tmp_path):
    assert docker.image_tags(_project(tmp_path)) == [
        "spark-dl-lab/spark:latest", "spark-dl-lab/jupyterlab:latest"]
    assert docker.image_tags(_project(tmp_path, LAB_IMAGE_TAG="v2"))[1] == \
        "spark-dl-lab/jupyterlab:v2"


class FakeEngine:
    """Image ids by tag; `compose build` gives a tag a new id when `changed` says so."""

    def __init__(self, ids: dict[str, str], changed: set[str]):
        self.ids, self.changed, self.removed = dict(ids), changed, []

    def compose(self, project, *argv, **kw):
        assert argv[0] == "build"
        tag = {"spark-master": "spark-dl-lab/spark:latest",
               "jupyterlab": "spark-dl-lab/jupyterlab:latest"}[argv[1]]
        if tag in self.changed:
            self.ids[tag] = f"new-{tag}"

    def run(self, argv, **kw):
        if argv[:3] == ["docker", "image", "inspect"]:
            tag = argv[-1]
            found = tag in self.ids
            return subprocess.CompletedProcess(argv, 0 if found else 1,
                                               self.ids.get(tag, "") + "\n", "")
        if argv[:3] == ["docker", "image", "rm"]:
            self.removed.append(argv[3])
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(argv)


@pytest.mark.parametrize(("changed", "removed"), [
    (set(), []),  # a warm rebuild: same ids, nothing removed
    ({"spark-dl-lab/spark:latest", "spark-dl-lab/jupyterlab:latest"},
     ["old-jupyter", "old-spark"]),  # JupyterLab's first: it was built FROM the old Spark image
    ({"spark-dl-lab/jupyterlab:latest"}, ["old-jupyter"]),
])
def test_a_rebuild_removes_only_the_images_it_replaced(tmp_path, monkeypatch, changed, removed):
    engine = FakeEngine({"spark-dl-lab/spark:latest": "old-spark",
                         "spark-dl-lab/jupyterlab:latest": "old-jupyter"}, changed)
    monkeypatch.setattr(docker, "compose", engine.compose)
    monkeypatch.setattr(docker.subprocess, "run", engine.run)
    docker.build(_project(tmp_path))
    assert engine.removed == removed


def test_a_first_build_removes_nothing(tmp_path, monkeypatch):
    engine = FakeEngine({}, {"spark-dl-lab/spark:latest", "spark-dl-lab/jupyterlab:latest"})
    monkeypatch.setattr(docker, "compose", engine.compose)
    monkeypatch.setattr(docker.subprocess, "run", engine.run)
    docker.build(_project(tmp_path))
    assert engine.removed == []


SECRETS = {"SPARK_AUTH_SECRET": "s" * 20, "JUPYTER_TOKEN": "j" * 20,
           "SPARK_CONNECT_AUTHENTICATE_TOKEN": "c" * 20}


def test_each_secret_gets_its_own_0600_file_the_connect_token_included(tmp_path):
    project = _project(tmp_path, LAB_UID=str(os.getuid()), LAB_GID=str(os.getgid()))
    folder = docker.write_secrets(project, SECRETS)
    assert folder == tmp_path / ".lab" / "secrets"
    assert sorted(p.name for p in folder.iterdir()) == sorted(docker.SECRET_FILES)
    for name, key in docker.SECRET_FILES.items():
        path = folder / name
        assert path.read_text() == SECRETS[key]
        assert path.stat().st_mode & 0o777 == 0o600, name
    assert (folder / "spark_connect_token").read_text() == "c" * 20


def test_no_secret_file_without_the_connect_token(tmp_path):
    project = _project(tmp_path, LAB_UID=str(os.getuid()), LAB_GID=str(os.getgid()))
    values = {k: v for k, v in SECRETS.items() if k != "SPARK_CONNECT_AUTHENTICATE_TOKEN"}
    with pytest.raises(docker.DockerError, match="SPARK_CONNECT_AUTHENTICATE_TOKEN.*make env"):
        docker.write_secrets(project, values)
    assert not (tmp_path / ".lab" / "secrets").exists()  # none written: all or nothing


def test_urls_name_the_connect_endpoint_as_localhost(tmp_path):
    """With a token, PySpark's client uses TLS unless the host is spelled `localhost`."""
    found = docker.urls(_project(tmp_path, LAB_CONNECT_PORT="25002"))
    assert found["Spark Connect"].startswith("sc://localhost:25002 ")
    assert found["Connect UI"] == "http://127.0.0.1:4050"
    assert docker.expected_containers(_project(tmp_path, LAB_WORKERS="3")) == 8
