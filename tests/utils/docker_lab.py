"""The Docker layer's helpers (``tests/docker``): commands that fail with their output, the
base image made when Docker Hub does not answer, and the handle the ``docker_lab`` fixture
yields. The fixtures themselves are in ``tests/docker/conftest.py``."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lab_utils.ops import docker

BASE_IMAGE = "debian:bookworm-slim"


def run(*argv: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` (output captured, ``timeout`` seconds at most); with ``check``, a non-zero
    exit fails the test with the command and the end of its output."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` failed ({done.returncode}):\n"
                             f"{(done.stdout + done.stderr)[-4000:]}")
    return done


def ensure_base_image() -> str:
    """``debian:bookworm-slim``: pulled if Docker Hub answers, else made from Debian's archive."""
    if run("docker", "image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return "present"
    try:
        if run("docker", "pull", BASE_IMAGE, check=False, timeout=120).returncode == 0:
            return "pulled"
    except subprocess.TimeoutExpired:
        pass
    if not shutil.which("mmdebstrap"):
        pytest.fail(f"{BASE_IMAGE} cannot be pulled and mmdebstrap is missing: "
                    "apt-get install mmdebstrap (CI's .ci/run does)")
    # The same tag the Dockerfile names, made from Debian's archive (minbase: apt, no docs).
    with subprocess.Popen(["mmdebstrap", "--quiet", "--variant=minbase", "bookworm", "-"],
                          stdout=subprocess.PIPE) as debootstrap:
        run("docker", "import", "-", BASE_IMAGE, stdin=debootstrap.stdout, timeout=900)
    assert debootstrap.returncode == 0, "mmdebstrap failed"
    return "made with mmdebstrap"


class DockerLab:
    """The running compose project, and what the tests need to know about it."""

    def __init__(self, project: docker.Project, timings: dict[str, float]):
        self.project = project
        self.timings = timings

    @property
    def name(self) -> str:
        return self.project.env["COMPOSE_PROJECT_NAME"]

    def containers(self) -> list[dict]:
        return docker.inspect(docker.container_ids(self.project))

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.name}_{service}_{index}"

    def exec(self, service: str, *argv: str, env: dict[str, str] | None = None,
             timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return run("docker", "exec", *flags, self.container(service), *argv, timeout=timeout,
                   check=check)

    @property
    def secret_values(self) -> list[str]:
        return [self.project.env[key] for key in docker.SECRET_FILES.values()]
