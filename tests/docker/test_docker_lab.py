"""The compose lab as a user runs it (`make docker-up`), checked from the engine and from inside.

The fixture ``docker_lab`` (conftest) builds both images and brings the lab up with 2 workers;
the tests below run in file order and the last one takes it down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab_utils.common.net import http_json
from lab_utils.common.spark_conf import CONNECT_SERVER_APP
from lab_utils.ops import docker
from tests.utils.docker_lab import run
from tests.utils.notebook_checks import CHECKS

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"spark-master", "spark-worker", "spark-history", "model-server", "jupyterlab",
            "spark-connect"}
#: Notebook runs inside the JupyterLab container (notebook, LAB_SPARK_API), with the native
#: layer's checks, in two rounds of two side by side, as two users would (each application may
#: hold 2 of the 4 worker cores): 00 classic and 00 through the Connect server, then 01 and 05.
ROUNDS = ((("00_getting_started", "classic"), ("00_getting_started", "connect")),
          (("01_udf_inference_keras", "classic"), ("05_parallel_training", "classic")))
RUNS = tuple(run for pair in ROUNDS for run in pair)


def _service(item: dict) -> str:
    return item["Config"]["Labels"]["com.docker.compose.service"]


def _hosts(docker_lab) -> dict[str, str]:
    """Each container's host name and its service. spark-connect is left out: it runs in
    JupyterLab's network namespace and so has JupyterLab's host name."""
    return {item["Config"]["Hostname"]: _service(item) for item in docker_lab.containers()
            if not item["HostConfig"]["NetworkMode"].startswith("container:")}


def test_every_service_is_healthy_with_two_workers(docker_lab):
    found = docker_lab.containers()
    assert sorted(_service(c) for c in found) == sorted(
        [*SERVICES - {"spark-worker"}, "spark-worker", "spark-worker"])
    assert all(c["State"]["Health"]["Status"] == "healthy" for c in found)
    state = http_json(docker.urls(docker_lab.project)["Master UI"] + "/json/")
    assert state["aliveworkers"] == 2 and state["status"] == "ALIVE"
    # The Connect server is an application of the master, and lives in JupyterLab's network.
    assert [a["name"] for a in state["activeapps"]] == [CONNECT_SERVER_APP]
    by_service = {_service(c): c for c in found}
    assert by_service["spark-connect"]["HostConfig"]["NetworkMode"] == \
        f"container:{by_service['jupyterlab']['Id']}"


def test_containers_run_unprivileged_with_tini_as_init(docker_lab):
    uid = docker_lab.project.env["LAB_UID"]
    for item in docker_lab.containers():
        name = item["Name"].lstrip("/")
        assert item["Config"]["User"] == f"{uid}:{docker_lab.project.env['LAB_GID']}", name
        host = item["HostConfig"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"], name
        assert host["CapDrop"] == ["ALL"], name
        status = run("docker", "exec", name, "cat", "/proc/1/status").stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split()[0] == uid != "0", name  # real uid of PID 1
        assert fields["CapEff"].strip() == "0000000000000000", name
        assert fields["NoNewPrivs"].strip() == "1", name
        # PID 1 is tini, which reaps the Python workers Spark forks, and it runs the role.
        argv = run("docker", "exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert Path(argv[0]).name == "tini" and argv[2:5] == item["Config"]["Cmd"], name
        if _service(item) == "spark-worker":
            assert host["Memory"] == 6 * 1024**3, "the worker's memory limit from .env"


def test_only_loopback_ports_are_published(docker_lab):
    published = []
    for item in docker_lab.containers():
        for target, bindings in (item["HostConfig"]["PortBindings"] or {}).items():
            for binding in bindings:
                assert binding["HostIp"] == "127.0.0.1", (item["Name"], target, binding)
                published.append(int(target.split("/")[0]))
    assert 7077 not in published and 6066 not in published
    env = docker_lab.project.env
    connect = {int(env["LAB_CONNECT_PORT"]), int(env["LAB_CONNECT_UI_PORT"])}
    assert {8080, 18080, 8501, 8888} | connect <= set(published)


def test_no_secret_in_inspect_or_config(docker_lab):
    inspected = json.dumps(docker_lab.containers())
    config = docker.compose(docker_lab.project, "config", capture=True).stdout
    for value in docker_lab.secret_values:
        assert value not in inspected and value not in config


def test_each_role_gets_only_its_secrets(docker_lab):
    expected = {"spark-master": {"spark_auth_secret"}, "spark-worker": {"spark_auth_secret"},
                "spark-history": {"spark_auth_secret"}, "model-server": set(),
                "jupyterlab": {"spark_auth_secret", "jupyter_token", "spark_connect_token"},
                "spark-connect": {"spark_auth_secret", "spark_connect_token"}}
    env = docker_lab.project.env
    for item in docker_lab.containers():
        name, service = item["Name"].lstrip("/"), _service(item)
        listed = run("docker", "exec", name, "sh", "-c", "ls /run/secrets 2>/dev/null || true")
        assert set(listed.stdout.split()) == expected[service], name
        # No process's environment holds a secret's value (compose hands files, not values):
        # the Connect server reads its token and the Spark secret from its 0600 properties file.
        environ = run("docker", "exec", name, "sh", "-c",
                      "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' || true").stdout
        assert env["JUPYTER_TOKEN"] not in environ, name
        assert env["SPARK_CONNECT_AUTHENTICATE_TOKEN"] not in environ, name
        if service != "spark-worker":  # a worker hands the Spark secret to its executors
            assert env["SPARK_AUTH_SECRET"] not in environ, name
        # Nor any command line (the Connect server's executors included).
        argv = run("docker", "exec", name, "sh", "-c",
                   "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' || true").stdout
        for value in docker_lab.secret_values:
            assert value not in argv, name


def test_printed_urls_open_from_the_host(docker_lab):
    urls = docker.urls(docker_lab.project)
    with urllib.request.urlopen(urls["JupyterLab"], timeout=10) as page:
        assert page.status == 200
    api = urls["JupyterLab"].replace("/lab?", "/api/status?")
    assert "started" in http_json(api, timeout=10)
    with pytest.raises(urllib.error.HTTPError):  # the token is required
        http_json(api.split("?")[0], timeout=10)
    assert http_json(urls["Master UI"] + "/json/")["status"] == "ALIVE"
    assert isinstance(http_json(urls["History server"] + "/api/v1/applications"), list)
    assert http_json(urls["Model server"] + "/healthz")["status"] == "ok"


def test_a_notebook_session_prints_the_hosts_addresses(docker_lab):
    """A driver in the JupyterLab container prints (and links) 127.0.0.1 and published ports;
    its Spark UI opens from the host while the session runs."""
    script = (
        "import json, sys\n"
        "from lab_utils import config\n"
        "from lab_utils.session import get_spark\n"
        "spark = get_spark('docker-url-check')\n"
        "print('LINKS ' + json.dumps(config.load().links(spark.sparkContext.uiWebUrl)),"
        " flush=True)\n"
        "sys.stdin.read()\n"
        "spark.stop()\n")
    proc = subprocess.Popen(["docker", "exec", "-i", docker_lab.container("jupyterlab"),
                             "python", "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # A session that never starts never prints: the read below then ends when this kills it.
    hung = threading.Timer(300, proc.kill)
    hung.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("LINKS "):
                break
        hung.cancel()
        assert lines and lines[-1].startswith("LINKS "), (
            "no LINKS line within 300 s", "".join(lines)[-3000:])
        links = json.loads(lines[-1][len("LINKS "):])
        described = "".join(lines)
        ui = links["Spark UI"]
        assert ui.startswith("http://127.0.0.1:"), links
        assert f"UI {ui}" in described, described  # get_spark's own line names it too
        for url in links.values():
            assert url.startswith("http://127.0.0.1:"), links
        apps = http_json(f"{ui}/api/v1/applications", timeout=10)
        assert [a["name"] for a in apps] == ["docker-url-check"]
    finally:
        hung.cancel()
        proc.stdin.close()
        proc.wait(timeout=120)


#: A Spark Connect client (the host's PySpark, no JVM): one query per URL, or why it failed.
CONNECT_CLIENT = """
import sys
from pyspark.sql import SparkSession
for url in sys.argv[1:]:
    try:
        spark = SparkSession.builder.remote(url).create()
        print("ROWS", spark.sql("SELECT 41 + 1 AS x").collect()[0].x, flush=True)
        spark.stop()
    except Exception as exc:
        print("FAILED", type(exc).__name__, str(exc).replace(chr(10), " ")[:300], flush=True)
"""


def test_connect_server_refuses_a_client_without_the_token(docker_lab):
    """From the host, through the published port: no token and a wrong one are refused, the
    lab's token works. `localhost`: with a token, PySpark's client uses TLS for any other host."""
    env = docker_lab.project.env
    url = docker.urls(docker_lab.project)["Spark Connect"].split()[0]
    assert url == f"sc://localhost:{env['LAB_CONNECT_PORT']}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "LAB_"))}
    done = run(sys.executable, "-c", CONNECT_CLIENT, url, f"{url}/;token=not-the-token",
               f"{url}/;token={env['SPARK_CONNECT_AUTHENTICATE_TOKEN']}", env=clean, timeout=180)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("ROWS", "FAILED"))]
    assert len(lines) == 3, done.stdout + done.stderr
    for refused in lines[:2]:
        assert refused.startswith("FAILED") and "UNAUTHENTICATED" in refused, refused
    assert lines[2] == "ROWS 42", lines[2]


def test_a_connect_session_in_the_jupyterlab_container(docker_lab):
    """A kernel's get_spark in Connect mode: the token from its secret file, the server on
    sc://localhost in the same network namespace, the host's addresses printed. (Tasks on the
    worker containers, whose executors reach the server's driver by JupyterLab's name: notebook
    00's Connect run below.)"""
    script = ("from lab_utils.session import get_spark\n"
              "spark = get_spark('docker-connect-check')\n"
              "print('ROWS', spark.sql('SELECT 41 + 1 AS x').collect()[0].x, flush=True)\n")
    done = docker_lab.exec("jupyterlab", "python", "-c", script,
                           env={"LAB_SPARK_API": "connect"}, timeout=300)
    env = docker_lab.project.env
    assert "ROWS 42" in done.stdout, done.stdout
    assert f"Spark Connect session on sc://localhost:{env['LAB_CONNECT_PORT']}" in done.stdout
    assert f"UI http://127.0.0.1:{env['LAB_CONNECT_UI_PORT']}" in done.stdout, done.stdout
    assert env["SPARK_CONNECT_AUTHENTICATE_TOKEN"] not in done.stdout + done.stderr
    # That UI is the server's application's, published on the host.
    ui = docker.urls(docker_lab.project)["Connect UI"]
    apps = http_json(f"{ui}/api/v1/applications", timeout=10)
    assert [a["name"] for a in apps] == [CONNECT_SERVER_APP]


def test_files_written_by_the_containers_belong_to_the_host_user(docker_lab):
    share = docker_lab.project.share_dir
    uid = int(docker_lab.project.env["LAB_UID"])
    made = [share / sub for sub in ("data", "models", "output", "spark-events")]
    made += list((share / "spark-events").iterdir())  # event logs the drivers wrote
    assert made and all(path.stat().st_uid == uid for path in made)


@pytest.fixture(scope="module")
def executed(docker_lab) -> dict[tuple[str, str], dict | BaseException]:
    """Each round's two runs side by side, each in a fresh kernel in the container."""
    found: dict[tuple[str, str], dict | BaseException] = {}

    def lane(stem: str, api: str) -> None:
        try:
            docker_lab.exec("jupyterlab", "python", "-m", "lab_utils.notebooks", "run",
                            f"/lab/notebooks/{stem}.ipynb",
                            env={"LAB_SMOKE": "1", "LAB_SPARK_API": api}, timeout=1200)
            suffix = "" if api == "classic" else f".{api}"  # lab_utils.notebooks.results_path
            path = docker_lab.project.share_dir / "output" / "notebooks" / f"{stem}{suffix}.json"
            found[stem, api] = json.loads(path.read_text())
        except BaseException as exc:  # noqa: BLE001 - reported by that run's test
            found[stem, api] = exc

    for pair in ROUNDS:
        threads = [threading.Thread(target=lane, args=run) for run in pair]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return found


@pytest.mark.parametrize(("stem", "api"), RUNS, ids=[f"{s}-{a}" for s, a in RUNS])
def test_notebook_runs_in_the_jupyterlab_container(docker_lab, executed, stem, api):
    result = executed[stem, api]
    if isinstance(result, BaseException):
        raise result
    if stem == "00_getting_started":
        assert result["spark_api"] == api
        CHECKS[stem](result, master="spark://spark-master:7077")
        # The tasks ran in the worker containers, not in the kernel's (classic: the driver;
        # Connect: the client, the driver being the Connect server in its network namespace).
        hosts = _hosts(docker_lab)
        assert {hosts[h] for h in result["executor_hosts"]} == {"spark-worker"}
        assert len(result["executor_hosts"]) == 2
        assert hosts[result["driver_host"]] == "jupyterlab"
    else:
        CHECKS[stem](result)


def test_another_host_uid_owns_what_the_containers_write(docker_lab, tmp_path):
    """A Mac user (uid 501, gid 20, a gid Debian already has): the image is built with their ids
    and the share folder's new files belong to them."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand a folder to uid 501")
    tag = f"spark-dl-lab/spark:uid501-{docker_lab.name}"
    run("docker", "build", "-q", "-f", "spark/Dockerfile", "--build-arg", "lab_uid=501",
        "--build-arg", "lab_gid=20", "-t", tag, ".", cwd=ROOT,
        env={**os.environ, "DOCKER_BUILDKIT": "0"})
    share = tmp_path / "share"
    share.mkdir()
    os.chown(share, 501, 20)
    try:
        done = run("docker", "run", "--rm", "--cap-drop=ALL",
                   "--security-opt=no-new-privileges:true", "-v", f"{share}:/lab/share_storages",
                   tag, "python", "-c",
                   "import os; from lab_utils import config; from lab_utils.ops import services;"
                   "services.prepare(config.load(), spark=False); print(os.getuid(), os.getgid())")
        assert done.stdout.split()[-2:] == ["501", "20"]
        made = [share / sub for sub in ("data", "models", "output", "spark-events")]
        assert all((p.stat().st_uid, p.stat().st_gid) == (501, 20) for p in made)
    finally:
        run("docker", "rmi", tag, check=False)


def test_readme_and_notebook_edits_rebuild_nothing(docker_lab, tmp_path):
    """The build context holds only what the image needs, so an edited README or notebook
    gives the very same image (no layer rebuilt, the TensorFlow layer least of all)."""
    context = tmp_path / "context"
    files = run("git", "ls-files", cwd=ROOT).stdout.split()
    for name in files:
        target = context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    for cert in (ROOT / docker.CA_FOLDER).glob("*.crt"):
        shutil.copy2(cert, context / docker.CA_FOLDER / cert.name)
    with open(context / "README.md", "a") as readme:
        readme.write("\nAn edit.\n")
    notebook = next((context / "notebooks").glob("00_*.ipynb"))
    notebook.write_text(notebook.read_text().replace("Getting started", "Getting Started"))
    env = docker_lab.project.env
    args = ["--build-arg", f"lab_uid={env['LAB_UID']}", "--build-arg", f"lab_gid={env['LAB_GID']}"]
    tag = f"spark-dl-lab/spark:cache-{docker_lab.name}"
    built = run("docker", "build", "-f", "spark/Dockerfile", *args, "-t", tag, ".", cwd=context,
                env={**os.environ, "DOCKER_BUILDKIT": "0"})
    try:
        ids = [run("docker", "image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
               for image in (tag, "spark-dl-lab/spark:latest")]
        assert ids[0] == ids[1], built.stdout[-3000:]
    finally:
        run("docker", "rmi", tag, check=False)


def test_docker_down_leaves_nothing_behind(docker_lab):
    docker.down(docker_lab.project)
    label = f"label=com.docker.compose.project={docker_lab.name}"
    for kind in ("container", "network", "volume"):
        flags = ["-a"] if kind == "container" else []
        left = run("docker", kind, "ls", *flags, "-q", "--filter", label).stdout.split()
        assert left == [], f"{kind}s left: {left}"
    print("[docker] " + ", ".join(f"{k} {v:.0f} s" for k, v in docker_lab.timings.items()))
