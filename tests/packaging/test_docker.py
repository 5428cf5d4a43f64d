"""The Docker path, checked statically and in seconds: compose is validated with Debian's
docker-compose (offline) and both Dockerfiles are linted with hadolint and read. The images are
built and the compose lab is run for real by ``tests/docker/``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "spark" / "Dockerfile", ROOT / "jupyterlab" / "Dockerfile"]
SECRETS = {"SPARK_AUTH_SECRET": "test-secret-value-1", "JUPYTER_TOKEN": "test-token-value-1",
           "SPARK_CONNECT_AUTHENTICATE_TOKEN": "test-connect-token-1"}
SERVICES = {"spark-master", "spark-worker", "spark-history", "model-server", "jupyterlab",
            "spark-connect"}


def compose(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose not found: `.ci/run` installs it (apt-get docker-compose)"
    return subprocess.run([binary, "--project-directory", str(project), "-f",
                           str(project / "docker-compose.yaml"), "config"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the compose file in a folder whose .env holds secrets, as `make env` leaves it."""
    folder = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / "docker-compose.yaml", folder / "docker-compose.yaml")
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    return folder


@pytest.fixture(scope="module")
def config_text(project) -> str:
    result = compose(project, {})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def resolved(config_text) -> dict:
    return yaml.safe_load(config_text)


def test_secrets_reach_containers_as_files_only(project, config_text, resolved):
    # `docker compose config` (and so `docker inspect`) never shows a secret's value: the
    # compose file reads none from .env; each one is a file mounted under /run/secrets/.
    for value in SECRETS.values():
        assert value not in config_text
    text = (ROOT / "docker-compose.yaml").read_text()
    for key in SECRETS:
        assert "${" + key not in text, key
    declared = resolved["secrets"]
    assert set(declared) == {"spark_auth_secret", "jupyter_token", "spark_connect_token"}
    for item in declared.values():
        assert item["file"].startswith(str(project)) and "/.lab/secrets/" in item["file"]


def test_each_service_gets_only_the_secrets_its_role_needs(resolved):
    def names(service):
        return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}

    services = resolved["services"]
    assert names(services["model-server"]) == set()
    assert names(services["jupyterlab"]) == {"spark_auth_secret", "jupyter_token",
                                             "spark_connect_token"}
    # The Connect server and its clients (the kernels) hold its token; nobody else does.
    assert names(services["spark-connect"]) == {"spark_auth_secret", "spark_connect_token"}
    for name in ("spark-master", "spark-worker", "spark-history"):
        assert names(services[name]) == {"spark_auth_secret"}, name
    for name in ("spark-master", "spark-worker", "spark-history", "spark-connect", "jupyterlab"):
        assert services[name]["environment"]["SPARK_AUTH_SECRET_FILE"] == \
            "/run/secrets/spark_auth_secret"
    assert services["jupyterlab"]["environment"]["JUPYTER_TOKEN_FILE"] == \
        "/run/secrets/jupyter_token"
    for name in ("spark-connect", "jupyterlab"):
        assert services[name]["environment"]["SPARK_CONNECT_AUTHENTICATE_TOKEN_FILE"] == \
            "/run/secrets/spark_connect_token", name
    for service in services.values():
        assert not set(SECRETS) & set(service["environment"])


def test_containers_are_hardened(resolved):
    for name, service in resolved["services"].items():
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "user" not in service, f"{name}: the uid comes from the image's build args"
    worker = resolved["services"]["spark-worker"]
    assert worker["mem_limit"] in ("6g", 6 * 1024**3, "6442450944")
    for name in ("spark-master", "jupyterlab"):
        assert set(resolved["services"][name]["build"]["args"]) >= {"lab_uid", "lab_gid"}


def test_compose_has_the_six_services(resolved):
    services = resolved["services"]
    assert set(services) == SERVICES
    assert services["spark-worker"]["deploy"]["replicas"] == 2
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: container_name blocks --scale"
        assert service["healthcheck"]["test"][:3] == ["CMD", "lab", "health"], name
        assert service["command"][:2] == ["lab", "run"], name
        for other, dependency in service.get("depends_on", {}).items():
            # Only the service whose network namespace it joins needs no more than started.
            if service.get("network_mode") == f"service:{other}":
                continue
            assert dependency["condition"] == "service_healthy", name


def test_one_spark_image_for_every_role(resolved):
    services = resolved["services"]
    spark = {services[n]["image"] for n in ("spark-master", "spark-worker", "spark-history",
                                             "model-server", "spark-connect")}
    assert spark == {"spark-dl-lab/spark:latest"}
    assert services["jupyterlab"]["build"]["args"]["spark_image"] == "spark-dl-lab/spark:latest"
    roles = {n: services[n]["command"][2] for n in services}
    assert roles == {"spark-master": "master", "spark-worker": "worker",
                     "spark-history": "history", "model-server": "model-server",
                     "jupyterlab": "jupyter", "spark-connect": "connect"}


def _ports(service: dict) -> list[str]:
    """``host_ip:published:target`` of each published port, in either compose's config form."""
    return [(port if isinstance(port, str) else
             f"{port['host_ip']}:{port['published']}:{port['target']}").removesuffix("/tcp")
            for port in service.get("ports", [])]


def test_ports_bound_to_loopback_and_rpc_not_published(resolved):
    published = []
    for name, service in resolved["services"].items():
        for text in _ports(service):
            assert text.startswith("127.0.0.1:"), f"{name} publishes {text} beyond loopback"
            published.append(int(text.split(":")[2].split("/")[0]))
    # The driver UIs are published as they are (4040-4043), so the port a kernel reports is
    # the port the host's browser opens; so are Spark Connect's gRPC port and its UI.
    assert sorted(published) == [4040, 4041, 4042, 4043, 4050, 8080, 8501, 8888, 15002, 18080]
    assert 7077 not in published and 6066 not in published


def test_shared_storage_and_public_urls(resolved):
    services = resolved["services"]
    for name, service in services.items():
        mounts = {v.split(":")[1] for v in service["volumes"]} if isinstance(
            service["volumes"][0], str) else {v["target"] for v in service["volumes"]}
        assert "/lab/share_storages" in mounts, name
    env = services["jupyterlab"]["environment"]
    assert env["LAB_DRIVER_HOST"] == "jupyterlab"
    # Printed URLs are the host's: 127.0.0.1 and the published ports, never container names.
    assert env["LAB_PUBLIC_HOST"] == "127.0.0.1"
    for key in ("LAB_PUBLIC_JUPYTER_URL", "LAB_PUBLIC_MASTER_UI_URL", "LAB_PUBLIC_HISTORY_URL",
                "LAB_PUBLIC_MODEL_SERVER_URL"):
        assert env[key].startswith("http://127.0.0.1:"), key


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_clean(dockerfile):
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_run_as_non_root(dockerfile):
    users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
    assert users, f"{dockerfile} sets no USER"
    assert users[-1] == "${lab_uid}:${lab_gid}"
    assert 'ARG lab_uid=1000' in dockerfile.read_text()


def test_images_install_from_the_lock_through_one_script():
    spark, jupyter = (p.read_text() for p in DOCKERFILES)
    assert "COPY pyproject.toml uv.lock" in spark and "install-env.sh" in spark
    assert "FROM ${spark_image}" in jupyter and "install-env.sh --group jupyter" in jupyter
    script = (ROOT / "spark" / "install-env.sh").read_text()
    assert re.search(r"uv\S*\"? sync --frozen", script)
    # No package version is typed into the images: they all come from uv.lock.
    for text in (spark, jupyter, script):
        assert not re.search(r"(pyspark|tensorflow|pandas|jupyterlab)\s*==", text)
    assert re.search(r'CMD \["lab", "run", "master"\]', spark)
    assert re.search(r'CMD \["lab", "run", "jupyter"\]', jupyter)


def test_espeak_ng_installed_by_the_image_and_ci():
    # Notebook 07 synthesizes speech with it: the Spark image (JupyterLab builds FROM it) and
    # CI on a fresh machine must install it.
    spark = DOCKERFILES[0].read_text()
    assert re.search(r"apt-get install -y --no-install-recommends (?:[^\n]|\\\n)*\bespeak-ng\b",
                     spark)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "command -v espeak-ng >/dev/null || need+=(espeak-ng)" in ci


def test_model_server_service(resolved):
    services = resolved["services"]
    server = services["model-server"]
    assert server["command"] == ["lab", "run", "model-server"]
    assert server["healthcheck"]["test"] == ["CMD", "lab", "health", "model-server"]
    assert "depends_on" not in server  # it needs nothing but the shared storage
    assert server["environment"]["LAB_HOST"] == "0.0.0.0"  # inside its container only
    jupyter = services["jupyterlab"]
    assert jupyter["environment"]["LAB_MODEL_SERVER_URL"] == "http://model-server:8501"
    assert jupyter["depends_on"]["model-server"]["condition"] == "service_healthy"
    assert "8501" in (ROOT / "spark" / "Dockerfile").read_text().split("EXPOSE", 1)[1]


def test_connect_service(resolved):
    """The Connect server shares JupyterLab's network namespace: kernels reach it as
    sc://localhost:PORT (with a token PySpark's client uses TLS for any other host spelling, and
    the server has no TLS), and its ports are published on jupyterlab, on loopback only."""
    services = resolved["services"]
    server, jupyter = services["spark-connect"], services["jupyterlab"]
    assert server["command"] == ["lab", "run", "connect"]
    assert server["healthcheck"]["test"] == ["CMD", "lab", "health", "connect"]
    assert server["network_mode"] == "service:jupyterlab"
    assert "ports" not in server  # a service in another's network namespace publishes none
    assert server["depends_on"]["spark-master"]["condition"] == "service_healthy"
    env = server["environment"]
    assert env["SPARK_MASTER_URL"] == "spark://spark-master:7077"
    # Executors reach its driver by JupyterLab's name, whose address it shares.
    assert env["LAB_DRIVER_HOST"] == "jupyterlab" == jupyter["environment"]["LAB_DRIVER_HOST"]
    assert env["LAB_HOST"] == "0.0.0.0"
    # Both services agree on the ports, and each is published as it is.
    jenv = jupyter["environment"]
    for key, port in (("LAB_CONNECT_PORT", "15002"), ("LAB_CONNECT_UI_PORT", "4050")):
        assert str(env[key]) == str(jenv[key]) == port, key
        assert f"127.0.0.1:{port}:{port}" in _ports(jupyter), (key, _ports(jupyter))
    assert jenv["LAB_SPARK_API"] == "classic"  # the default; LAB_SPARK_API=connect in .env
