"""``lab``: the command line of the lab (``make lab``, ``make stop``, the containers' commands).

One table, :data:`COMMANDS`, says for each command what it does, which arguments it takes and
whether it may create ``.env``; :func:`main` parses, loads the configuration once and dispatches.
The work itself is in :mod:`lab_utils.ops.native` and :mod:`lab_utils.ops.services`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from lab_utils import config as lab_config
from lab_utils import envfile
from lab_utils.errors import LabError
from lab_utils.ops import native, services


def _print_urls(found: dict[str, str]) -> None:
    print()
    print("The lab is up.")
    print(f"  JupyterLab      {found['jupyter']}")
    print(f"  Spark master    {found['master']}  (UI {found['master_ui']})")
    print(f"  History server  {found['history']}")
    print(f"  Model server    {found['model_server']}  (TF Serving REST: /v1/models/NAME)")
    print(f"  Spark Connect   {found['connect']}  (UI {found['connect_ui']}; token: "
          "SPARK_CONNECT_AUTHENTICATE_TOKEN in .env; notebooks: LAB_SPARK_API=connect)")
    print("Stop it with `make stop`; logs are in .lab/logs/.")


def _start(args: argparse.Namespace, cfg: lab_config.LabConfig) -> int:
    _print_urls(native.start(cfg))
    return 0


def _stop(args: argparse.Namespace, cfg: lab_config.LabConfig) -> int:
    native.stop(cfg)
    return 0


def _status(args: argparse.Namespace, cfg: lab_config.LabConfig) -> int:
    report = native.status(cfg)
    for name, item in report.items():
        state = "healthy" if item["healthy"] else ("running" if item["pid"] else "stopped")
        print(f"{name:12s} {state:8s} {item['pid'] or ''}")
    if any(item["pid"] for item in report.values()):
        _print_urls(native.urls(cfg))
    return 0 if all(item["healthy"] for item in report.values()) else 3


def _env(args: argparse.Namespace, cfg: lab_config.LabConfig) -> int:
    from lab_utils.ops import docker

    project = docker.project_for(cfg.root)  # adds LAB_UID/LAB_GID, the Docker lab's ids
    folder = docker.write_secrets(project, project.env)
    print(f"{cfg.root / '.env'} holds the Jupyter token, the Spark secret and the Spark "
          "Connect token (mode 0600); "
          f"{folder}/ holds them as the files the Docker lab mounts. Services in Docker run as "
          f"uid {project.env['LAB_UID']}, gid {project.env['LAB_GID']}.")
    return 0


def _run(args: argparse.Namespace, cfg: lab_config.LabConfig) -> int:
    native.run(args.role, cfg)  # replaces this process (exec); returns only on error
    return 0


def _health(args: argparse.Namespace, cfg: lab_config.LabConfig) -> int:
    role_file = cfg.state_dir / "role"
    role = args.role or (role_file.read_text().strip() if role_file.is_file() else "")
    if role not in services.ROLES:
        print("lab: no role given and none recorded by `lab run`", file=sys.stderr)
        return 1
    return 0 if services.healthy(services.Service(role, role, index=1), cfg) else 1


def _role(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", choices=services.ROLES)


def _optional_role(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", nargs="?", choices=services.ROLES,
                        help="default: the role `lab run` started here")


@dataclass(frozen=True)
class Command:
    help: str
    handler: Callable[[argparse.Namespace, lab_config.LabConfig], int]
    #: ``ensure``: create ``.env`` (and missing secrets) if needed; ``read``: use it if present.
    env: str = "read"
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


COMMANDS: dict[str, Command] = {
    "start": Command("start the native lab, or its missing services (a lost worker), and wait "
                     "until it is healthy", _start, env="ensure"),
    "stop": Command("stop the native lab, leaving no process behind", _stop),
    "status": Command("show each service's pid and health", _status),
    "env": Command("create .env with a Jupyter token, a Spark secret, a Spark Connect token "
                   "and the Docker lab's ids if missing, and the secret files the Docker lab "
                   "mounts", _env,
                   env="ensure"),
    "run": Command("run one service in the foreground (containers)", _run, arguments=_role),
    "health": Command("exit 0 if a service is healthy (healthchecks)", _health,
                      arguments=_optional_role),
}


DESCRIPTION = ("Run the Spark DL Lab: natively as local processes (start, stop, status) or one "
               "service per container (run, health)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lab", description=DESCRIPTION)
    sub = top.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        one = sub.add_parser(name, help=command.help)
        if command.arguments:
            command.arguments(one)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = COMMANDS[args.command]
    env_path = lab_config.load().root / ".env"
    try:
        envfile.export(envfile.ensure(env_path) if command.env == "ensure"
                       else envfile.read(env_path))
        return command.handler(args, lab_config.load())
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
