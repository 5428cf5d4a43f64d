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
