"""The Docker lab from the host: ``make docker-up`` / ``make docker-down``.

``python3 -m lab_utils.ops.docker up`` prepares what the compose file mounts, builds both images,
starts ``LAB_WORKERS`` workers, waits until every container is healthy and prints the URLs a
browser on this machine opens. It runs with the host's plain ``python3`` (standard library only)
and drives Compose v2 (``docker compose``) or docker-compose 1.x, whichever is installed, the same
way: the worker count is passed as ``--scale`` (1.x ignores ``deploy.replicas``), and the wait is
done here because 1.x has no ``up --wait``.

What it prepares, and why:

* **The host user's ids** (``LAB_UID``/``LAB_GID`` in ``.env``): the images' ``lab`` user is
  built with the checkout owner's uid and gid, so what the containers write in the bind-mounted
  ``share_storages/`` belongs to that owner. Containers never run as root, so a checkout owned by
  root (CI, a root shell) gets uid 1000, and ``share_storages/`` is handed to it.
* **The secret files** (``.lab/secrets/``, mode 0600, owned by ``LAB_UID``): compose mounts them
  as secrets under ``/run/secrets/``; they hold the same values as ``.env``, so the native lab and
  the Docker lab share one Jupyter token, one Spark secret and one Spark Connect token.
* **Extra CA certificates** (``--extra-ca DIR``): ``*.crt`` files copied into
  ``docker/ca-certificates/``, trusted by apt, pip and uv during the build (company proxies).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab_utils import config as lab_config
from lab_utils import envfile
from lab_utils.common.atomic import atomic_write_text
from lab_utils.common.process import wait_until
from lab_utils.errors import LabError
from lab_utils.ops.services import SHARE_SUBDIRS

#: The uid a root-owned checkout's containers run as (they never run as root).
FALLBACK_ID = 1000
#: Compose secret name -> the ``.env`` key whose value its file holds.
SECRET_FILES = {"spark_auth_secret": "SPARK_AUTH_SECRET", "jupyter_token": "JUPYTER_TOKEN",
                "spark_connect_token": "SPARK_CONNECT_AUTHENTICATE_TOKEN"}
CA_FOLDER = Path("docker") / "ca-certificates"
#: Services in build order: the JupyterLab image is built FROM the Spark image.
BUILD_ORDER = ("spark-master", "jupyterlab")


class DockerError(LabError, RuntimeError):
    """The Docker lab cannot be built, started or stopped; the message says how to fix it."""


@dataclass(frozen=True)
class Project:
    """One compose project: the checkout it runs from and the variables compose reads."""

    root: Path
    env: Mapping[str, str]  # os.environ plus .env's values, as compose sees them

    @property
    def share_dir(self) -> Path:
        return (self.root / self.env.get("LAB_SHARE_HOST_DIR", "share_storages")).resolve()

    @property
    def secrets_dir(self) -> Path:
        return (self.root / self.env.get("LAB_SECRETS_DIR", ".lab/secrets")).resolve()

    @property
    def workers(self) -> int:
        return int(self.env.get("LAB_WORKERS") or 2)

    def port(self, name: str, default: int) -> int:
        return int(self.env.get(name) or default)


def compose_command() -> list[str]:
    """``docker compose`` (v2) if it answers, else ``docker-compose`` (1.x)."""
    if shutil.which("docker"):
        found = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if found.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise DockerError(
        "neither `docker compose` nor `docker-compose` is installed: install Docker "
        "(Debian: apt-get install docker.io docker-compose) or run the native lab, `make lab`")


def engine_answers() -> bool:
    """True when a Docker engine answers (``docker info``)."""
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def host_ids(path: Path) -> tuple[int, int]:
    """The uid and gid the containers run as for a checkout at ``path``: its owner's, or
    :data:`FALLBACK_ID` when the owner is root."""
    info = path.stat()
    if info.st_uid == 0:
        return FALLBACK_ID, FALLBACK_ID
    return info.st_uid, info.st_gid


def ensure_ids(root: Path) -> dict[str, str]:
    """``.env`` with its secrets and with ``LAB_UID``/``LAB_GID`` (the checkout owner's)."""
    path = root / ".env"
    values = envfile.ensure(path)
    if not values.get("LAB_UID") or not values.get("LAB_GID"):
        uid, gid = host_ids(root)
        values = envfile.update(path, {"LAB_UID": str(uid), "LAB_GID": str(gid)})
    return values


def _own(path: Path, uid: int, gid: int) -> None:
    if os.geteuid() == 0 and (path.stat().st_uid, path.stat().st_gid) != (uid, gid):
        os.chown(path, uid, gid)


def write_secrets(project: Project, values: Mapping[str, str]) -> Path:
    """Write each secret to its own 0600 file for compose to mount (see the module doc)."""
    missing = [key for key in SECRET_FILES.values() if not values.get(key)]
    if missing:  # before any file is written: all of them or none
        raise DockerError(f"{', '.join(missing)} missing from .env: run `make env`")
    uid, gid = int(project.env["LAB_UID"]), int(project.env["LAB_GID"])
    folder = project.secrets_dir
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _own(folder, uid, gid)
    for name, key in SECRET_FILES.items():
        path = atomic_write_text(folder / name, values[key], mode=0o600)
        _own(path, uid, gid)
    return folder


def prepare_share(project: Project) -> None:
    """Create ``share_storages/`` and its folders; hand them to ``LAB_UID`` if root owns them.

    Only a root user can (and needs to) do that: a checkout owned by anyone else already
    belongs to the uid the images are built with.
    """
    uid, gid = int(project.env["LAB_UID"]), int(project.env["LAB_GID"])
    share = project.share_dir
    for sub in SHARE_SUBDIRS:
        (share / sub).mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        probe = share / "data"
        if not os.access(probe, os.W_OK):
            raise DockerError(
                f"{probe} is not writable by uid {os.geteuid()}, which the containers run as: "
                f"give it back with `sudo chown -R {os.geteuid()} {share}`")
        return
    for folder, _dirs, files in os.walk(share):
        _own(Path(folder), uid, gid)
        for name in files:
            if not Path(folder, name).is_symlink():
                _own(Path(folder, name), uid, gid)


def copy_extra_ca(root: Path, source: Path) -> list[Path]:
    """Copy ``source``'s ``*.crt`` files into the build context's CA folder."""
    found = sorted(source.glob("*.crt"))
    if not found:
        raise DockerError(f"{source} holds no *.crt files: point --extra-ca at a folder of "
                          "PEM certificates (Debian keeps local ones in "
                          "/usr/local/share/ca-certificates)")
    target = root / CA_FOLDER
    copied = []
    for cert in found:
        copied.append(Path(shutil.copyfile(cert, target / cert.name)))
    return copied


def project_for(root: Path, extra_env: Mapping[str, str] | None = None) -> Project:
    """The compose project at ``root``: ``.env`` (with ids and secrets ensured) under the
    process environment, as compose itself layers them."""
    values = ensure_ids(root)
    env = {**values, **os.environ, **(extra_env or {})}
    return Project(root=root, env=env)


def compose(project: Project, *args: str, check: bool = True,
            capture: bool = False) -> subprocess.CompletedProcess:
    """Run one compose command in ``project``'s folder with its variables."""
    argv = [*compose_command(), *args]
    done = subprocess.run(argv, cwd=project.root, env=dict(project.env), text=True,
                          capture_output=capture)
    if check and done.returncode != 0:
        detail = f":\n{done.stderr[-3000:]}" if capture else " (its output is above)"
        raise DockerError(f"`{' '.join(argv)}` failed with exit code {done.returncode}{detail}")
    return done


def image_tags(project: Project) -> list[str]:
    """The two images compose builds, with ``LAB_IMAGE_TAG`` (default ``latest``)."""
    tag = project.env.get("LAB_IMAGE_TAG") or "latest"
    return [f"spark-dl-lab/spark:{tag}", f"spark-dl-lab/jupyterlab:{tag}"]


def _image_id(tag: str) -> str | None:
    found = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag],
                           capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def build(project: Project) -> None:
    """Build the Spark image, then the JupyterLab image FROM it.

    The images these tags named before are removed when nothing else uses them (no other tag,
    no container): each dependency change would otherwise leave ~3.8 GB of untagged images.
    """
    before = {tag: _image_id(tag) for tag in image_tags(project)}
    for service in BUILD_ORDER:
        compose(project, "build", service)
    # JupyterLab's old image first: it is built FROM the old Spark image.
    for tag in reversed(image_tags(project)):
        old = before[tag]
        if old and old != _image_id(tag):
            subprocess.run(["docker", "image", "rm", old], capture_output=True)


def container_ids(project: Project) -> list[str]:
    out = compose(project, "ps", "-q", capture=True).stdout
    return [line for line in out.split() if line]


def inspect(ids: Sequence[str]) -> list[dict]:
    if not ids:
        return []
    out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def health(project: Project) -> dict[str, str]:
    """Each container's name and its health (``healthy``, ``starting``, ``exited``, ...)."""
    found = {}
    for item in inspect(container_ids(project)):
        state = item["State"]
        status = state.get("Health", {}).get("Status") if state.get("Running") else None
        found[item["Name"].lstrip("/")] = status or state.get("Status", "unknown")
    return found


def expected_containers(project: Project) -> int:
    # master, history, model server, JupyterLab, the Connect server and the workers
    return 5 + project.workers


def wait_healthy(project: Project, timeout: float) -> dict[str, str]:
    """Wait until every container is healthy; DockerError with the sick ones' logs if not (at
    once when one has exited, died or turned unhealthy: it will not recover by waiting)."""
    states: dict[str, str] = {}

    def all_healthy() -> bool:
        states.clear()
        states.update(health(project))
        return len(states) >= expected_containers(project) and all(
            s == "healthy" for s in states.values())

    def failed() -> bool:
        return any(s in {"exited", "dead", "unhealthy"} for s in states.values())

    if wait_until(all_healthy, timeout, 2.0, abort=failed):
        return dict(states)
    sick = [name for name, s in states.items() if s != "healthy"]
    logs = []
    for name in sick:
        tail = subprocess.run(["docker", "logs", "--tail", "20", name], capture_output=True,
                              text=True)
        logs.append(f"--- {name} ({states[name]}):\n{(tail.stdout + tail.stderr).strip()}")
    raise DockerError(f"the Docker lab is not healthy after {timeout:.0f} s: "
                      f"{states or 'no containers'}\n" + "\n".join(logs))


def urls(project: Project) -> dict[str, str]:
    """What a browser on this machine opens (the published ports on 127.0.0.1)."""
    token = project.env.get("JUPYTER_TOKEN", "")
    first_ui = project.port("LAB_DRIVER_UI_PORT", 4040)
    last_ui = project.port("LAB_DRIVER_UI_PORT_LAST", first_ui + 3)
    return {
        "JupyterLab": f"http://127.0.0.1:{project.port('LAB_JUPYTER_PORT', 8888)}/lab"
                      f"?token={token}",
        "Master UI": f"http://127.0.0.1:{project.port('LAB_MASTER_UI_PORT', 8080)}",
        "History server": f"http://127.0.0.1:{project.port('LAB_HISTORY_PORT', 18080)}",
        "Model server": f"http://127.0.0.1:{project.port('LAB_MODEL_SERVER_PORT', 8501)}",
        "Spark UI": f"http://127.0.0.1:{first_ui} (to {last_ui}: one per running notebook "
                    "session)",
        # `localhost`, not 127.0.0.1: with a token, PySpark's client uses TLS for any other host.
        "Spark Connect": f"sc://localhost:{project.port('LAB_CONNECT_PORT', 15002)} (token: "
                         "SPARK_CONNECT_AUTHENTICATE_TOKEN in .env; notebooks: "
                         "LAB_SPARK_API=connect)",
        "Connect UI": f"http://127.0.0.1:{project.port('LAB_CONNECT_UI_PORT', 4050)}",
    }


def up(project: Project, *, timeout: float = 600.0, build_images: bool = True) -> dict[str, str]:
    """Prepare, build, start ``LAB_WORKERS`` workers and wait; return the URLs."""
    write_secrets(project, project.env)
    prepare_share(project)
    if build_images:
        build(project)
    compose(project, "up", "--detach", "--no-build", "--scale",
            f"spark-worker={project.workers}")
    wait_healthy(project, timeout)
    return urls(project)


def down(project: Project) -> None:
    """Stop and remove the containers, the network and anonymous volumes."""
    compose(project, "down", "--volumes", "--remove-orphans", "--timeout", "20")


def _print_urls(found: Mapping[str, str]) -> None:
    print("\nThe Docker lab is up.")
    for name, url in found.items():
        print(f"  {name:15s} {url}")
    print("Logs: `docker compose logs SERVICE` (docker-compose 1.x: `docker-compose logs`); "
          "stop it with `make docker-down`.")


def _up(project: Project, args: argparse.Namespace) -> None:
    _print_urls(up(project, timeout=args.timeout))


def _build(project: Project, args: argparse.Namespace) -> None:
    write_secrets(project, project.env)
    build(project)


def _prepare(project: Project, args: argparse.Namespace) -> None:
    write_secrets(project, project.env)
    prepare_share(project)


def _down(project: Project, args: argparse.Namespace) -> None:
    down(project)


def _urls(project: Project, args: argparse.Namespace) -> None:
    _print_urls(urls(project))


#: ``python3 -m lab_utils.ops.docker COMMAND``: each command's handler (the Makefile's
#: docker-* targets call these).
COMMANDS: dict[str, Callable[[Project, argparse.Namespace], None]] = {
    "up": _up, "down": _down, "build": _build, "urls": _urls, "prepare": _prepare,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab_utils.ops.docker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=tuple(COMMANDS))
    parser.add_argument("--extra-ca", type=Path, metavar="DIR",
                        help="copy DIR/*.crt into the build (TLS-intercepting proxies)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for every container to be healthy")
    args = parser.parse_args(argv)
    root = lab_config.load().root
    try:
        project = project_for(root)
        if args.extra_ca:
            for cert in copy_extra_ca(root, args.extra_ca):
                print(f"trusting {cert.name} in the image build")
        COMMANDS[args.command](project, args)
    except (LabError, ValueError) as exc:
        print(f"docker lab: error: {exc}", file=sys.stderr)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main())
